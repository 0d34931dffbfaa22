/**
 * The operator surface against a running system (smbd + vfsx, vfsx serve
 * with replication, Redis, the DR site over WebSocket): status, why,
 * events and alert hooks, /metrics, doctor, and the dashboard in a real
 * headless Chromium.
 */
import assert from 'node:assert/strict';
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import IORedis from 'ioredis';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import type { Status } from '../src/operator/status';
import { DrSiteHarness } from './helpers/dr-site-harness';
import { RandomWorkload } from './helpers/random-workload';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness, VFSX_BIN } from './helpers/service-harness';
import { smbclient } from './helpers/smbclient';
import { sambaVersion, SmbdHarness } from './helpers/smbd-harness';
import { freePort } from './helpers/ports';
import { waitFor } from './helpers/wait-for';
import { onDashboard } from './helpers/dashboard';

let redis: RedisHarness;
let dr: DrSiteHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;
let local: string;
let hookLog: string;
const SHARE = 'ops';
const RPO_THRESHOLD_MS = 3000;

before(async () => {
  redis = await RedisHarness.start();
  dr = await DrSiteHarness.start();
  local = await mkdtemp(join(tmpdir(), 'vfsx-ops-'));
  hookLog = join(local, 'hook.log');
  svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    extra: {
      replication: { enabled: true, ...dr.replication, maxBackoffMs: 30000 },
      alerts: { rpoThresholdMs: RPO_THRESHOLD_MS, checkIntervalMs: 250, hooks: [{ command: `printf '%s\\n' "$VFSX_EVENT" >> ${hookLog}` }] },
    },
  });
  await svc.start();
  smbd = await SmbdHarness.start([{ name: SHARE, vfsx: { socket: svc.socket, spool: svc.spool } }]);
});

after(async () => {
  await smbd?.destroy();
  await svc?.destroy();
  await dr?.destroy();
  await redis?.stop();
  await rm(local, { recursive: true, force: true });
});

const cli = (args: string[]) => svc.cli(args);

async function status(): Promise<Status> {
  const r = await cli(['status', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Status;
}

const share = (st: Status) => st.shares.find((s) => s.share === SHARE);

async function put(name: string, content: string): Promise<void> {
  const f = join(local, 'upload');
  await writeFile(f, content);
  const r = await smbclient(smbd.port, SHARE, `put ${f} "${name}"`);
  assert.deepEqual(r.statuses, [], r.stderr);
}

async function drained(): Promise<Status> {
  return waitFor('the share to drain', async () => {
    const st = await status();
    const s = share(st);
    return s && s.backlog.records === 0 && st.journal.unpumped === 0 && s.rpoAgeSeconds === 0 ? st : null;
  }, 120000, 250);
}

async function hookEvents(): Promise<Array<{ type: string; share?: string; rpoAgeMs?: number }>> {
  const text = await readFile(hookLog, 'utf8').catch(() => '');
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

test('vfsx status --json: backlog, RPO and throughput while a workload runs, and after it drains', async () => {
  const w = new RandomWorkload(7, 'status', join(local, 'rw'));
  w.plan(600);
  let running = true;
  // The site is frozen for the first seconds, so the backlog is sure to build up however fast replication is.
  dr.signal('SIGSTOP');
  const thaw = setTimeout(() => dr.signal('SIGCONT'), 3000);
  const run = w.run(smbd.port, SHARE).finally(() => { running = false; });
  const seen: Status[] = [];
  try {
    while (running) {
      seen.push(await status());
      await new Promise((r) => setTimeout(r, 200));
    }
    await run;
  } finally {
    clearTimeout(thaw);
    dr.signal('SIGCONT');
  }
  const during = seen.map(share).filter((s) => s !== undefined);
  assert.ok(during.some((s) => s.backlog.records > 0 && s.rpoAgeSeconds > 0), `a backlog was seen during the workload: ${JSON.stringify(during.slice(-3))}`);
  for (const s of during) {
    assert.ok(s.backlog.records >= 0 && s.backlog.files <= s.backlog.records && s.rpoAgeSeconds >= 0, JSON.stringify(s));
    assert.equal(s.backlog.exact, s.backlog.records <= 1000);
  }
  const st = await drained();
  const s = share(st) as NonNullable<ReturnType<typeof share>>;
  assert.equal(st.site.state, 'up');
  assert.equal(st.site.replicatorRunning, true);
  assert.equal(st.site.url, dr.url);
  assert.deepEqual(s.backlog, { records: 0, files: 0, bytes: 0, exact: true });
  assert.equal(s.rpoAgeSeconds, 0);
  assert.equal(s.oldestChangeAt, null);
  assert.ok(s.commits >= 600, `${s.commits} commits`);
  assert.ok(s.bytesSent > 0);
  assert.ok(s.lastCommitAt !== null && Date.now() - s.lastCommitAt < 60000);
  assert.ok(s.throughput.opsPerSec > 0, 'ops/s over the last minute');
  assert.deepEqual(s.retrying, []);
  assert.equal(st.spool.failOpenEngaged, false);
  assert.equal(st.spool.files, 0);
  const human = await cli(['status']);
  assert.match(human.stdout, /DR site .* UP/);
  assert.match(human.stdout, new RegExp(`^${SHARE}\\s+0\\s+0\\s`, 'm'));
});

test('/metrics parses as Prometheus text format and carries the status and latency figures', async () => {
  await put('metrics.txt', 'metrics');
  await drained();
  const res = await fetch(`${svc.httpUrl}/metrics`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get('content-type') ?? '', /text\/plain/);
  const text = await res.text();
  const families = parsePrometheusTextFormat(text) as Array<{ name: string; type: string; metrics: Array<{ labels?: Record<string, string>; value?: string; buckets?: Record<string, string>; count?: string }> }>;
  const fam = (name: string) => {
    const f = families.find((x) => x.name === name);
    assert.ok(f, `${name} is exposed`);
    return f;
  };
  assert.equal(fam('vfsx_rpo_age_seconds').type, 'GAUGE');
  assert.deepEqual(fam('vfsx_rpo_age_seconds').metrics.find((m) => m.labels?.share === SHARE)?.value, '0');
  assert.equal(fam('vfsx_backlog_records').metrics.find((m) => m.labels?.share === SHARE)?.value, '0');
  assert.equal(fam('vfsx_site_up').metrics[0].value, '1');
  assert.equal(fam('vfsx_redis_up').metrics[0].value, '1');
  assert.ok(Number(fam('vfsx_share_commits').metrics.find((m) => m.labels?.share === SHARE)?.value) > 0);
  assert.equal(fam('vfsx_verdict_latency_seconds').type, 'HISTOGRAM');
  assert.ok(Number(fam('vfsx_verdict_latency_seconds').metrics[0].count) > 0, 'verdicts were observed');
  assert.equal(fam('vfsx_change_to_commit_seconds').type, 'HISTOGRAM');
  // Per site (this parser folds a labelled histogram's counts away): read the count's line itself.
  assert.ok(Number(/^vfsx_change_to_commit_seconds_count\{site="default"\} (\d+)$/m.exec(text)?.[1]) > 0, 'commits were observed');
  assert.equal(fam('vfsx_replication_commits_total').type, 'COUNTER');
  assert.ok(fam('vfsx_queue_jobs').metrics.some((m) => m.labels?.state === 'completed'));
  for (const f of families) assert.match(f.name, /^vfsx_[a-z_]+$/);
});

test('vfsx events follows commits live; vfsx why explains a path', async () => {
  const ev: ChildProcess = spawn(process.execPath, [VFSX_BIN, 'events', '--json', '--config', svc.configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  ev.stdout?.on('data', (c: Buffer) => { out += c.toString(); });
  try {
    // `vfsx events` may take a while to subscribe on a loaded machine: write again every 2 s until one is seen.
    let polls = 0;
    const committed = await waitFor('a committed event', async () => {
      if (polls++ % 40 === 0) await put('explained.txt', 'explain me');
      return out.split('\n').filter(Boolean).map((l) => JSON.parse(l)).find((e) => e.type === 'committed' && e.path === 'explained.txt');
    }, 30000, 50);
    assert.equal(committed.share, SHARE);
    assert.ok(committed.latencyMs >= 0 && committed.latencyMs < 30000);
  } finally {
    ev.kill('SIGTERM');
  }
  await drained();
  const w = await cli(['why', SHARE, 'explained.txt', '--json']);
  assert.equal(w.code, 0, w.stderr);
  const r = JSON.parse(w.stdout);
  assert.equal(r.verdict, 'in sync');
  assert.equal(r.source.exists, true);
  assert.equal(r.source.size, 10);
  assert.equal(r.site.head.size, 10);
  assert.ok(r.records.some((x: { state: string }) => x.state === 'committed'));
  const human = await cli(['why', SHARE, 'explained.txt']);
  assert.match(human.stdout, /explained\.txt: IN SYNC/);
});

test('with the DR site stopped, RPO age grows, status shows the site down and the error, alert hooks fire; all recovers', async () => {
  await dr.stop();
  await put('while-down.txt', 'site is down');
  const first = await waitFor('RPO age to be reported', async () => {
    const s = share(await status());
    return s && s.rpoAgeSeconds > 0.5 ? s : null;
  }, 30000, 100);
  const crossed = await waitFor('the RPO threshold hook', async () =>
    (await hookEvents()).find((e) => e.type === 'rpo-threshold-crossed' && e.share === SHARE), 30000, 100);
  assert.ok((crossed.rpoAgeMs ?? 0) >= RPO_THRESHOLD_MS);
  // Older records whose batch needs no site call (already covered) may still complete; the age of what waits grows.
  let st = await status();
  const later = await waitFor('RPO age above the threshold and growing', async () => {
    st = await status();
    const s = share(st);
    return s && s.rpoAgeSeconds > first.rpoAgeSeconds && s.rpoAgeSeconds * 1000 >= RPO_THRESHOLD_MS ? s : null;
  }, 30000, 100);
  assert.equal(st.site.state, 'down');
  assert.ok(st.site.lastError);
  assert.ok(later.backlog.records >= 1);
  assert.ok(later.retrying.some((r) => r.path === 'while-down.txt' && r.attempts > 0 && r.error.length > 0), JSON.stringify(later.retrying));
  assert.ok((await hookEvents()).some((e) => e.type === 'site-down'));
  const w = JSON.parse((await cli(['why', SHARE, 'while-down.txt', '--json'])).stdout);
  assert.equal(w.verdict, 'site unreachable');
  assert.ok(w.pending >= 1 && w.heldBackBy);

  await dr.startServer();
  await drained();
  await waitFor('rpo-recovered and site-up hooks', async () => {
    const evs = await hookEvents();
    return evs.some((e) => e.type === 'rpo-recovered') && evs.some((e) => e.type === 'site-up');
  }, 30000, 100);
});

test('vfsx doctor passes on a healthy system and fails with the right message for each broken precondition', async () => {
  const doctor = async (extra: string[] = []) => {
    const r = await cli(['doctor', '--json', '--smb-conf', smbd.confPath, '--hook-status', hookStatus, ...extra]);
    const out = JSON.parse(r.stdout) as { ok: boolean; checks: Array<{ name: string; result: string; detail: string; fix?: string }> };
    return { code: r.code, ...out, failed: out.checks.filter((c) => c.result === 'fail') };
  };
  const hookStatus = join(local, 'samba-hook.json'); // none yet: the hook never had to rebuild
  const healthy = await doctor();
  assert.equal(healthy.code, 0, JSON.stringify(healthy.failed));
  assert.match(healthy.checks.find((c) => c.name === 'module build')?.detail ?? '', /VFS interface \d+; smbd is 4\./);

  // A Samba upgrade the apt hook could not rebuild the module for (scripts/samba-upgrade-hook.sh writes this).
  await writeFile(hookStatus, JSON.stringify({ ok: false, samba: '4.22.6', detail: 'could not rebuild the vfsx module for Samba 4.22.6 (built for 4.17.12): gcc: error', at: Date.now() }));
  const hookFailed = await doctor();
  assert.equal(hookFailed.code, 1);
  assert.deepEqual(hookFailed.failed.map((c) => c.name), ['Samba upgrades']);
  assert.match(hookFailed.failed[0].detail, /could not rebuild the vfsx module for Samba 4\.22\.6/);
  await rm(hookStatus);
  assert.ok(healthy.checks.find((c) => c.name === 'shares')?.detail.includes(SHARE));

  const empty = join(local, 'modules-empty');
  await mkdir(join(empty, 'vfs'), { recursive: true });
  const missing = await doctor(['--modules-dir', empty]);
  assert.equal(missing.code, 1);
  assert.deepEqual(missing.failed.map((c) => c.name), ['module installed']);
  assert.match(missing.failed[0].detail, /vfsx\.so is missing/);

  const wrong = join(local, 'modules-wrong');
  await mkdir(join(wrong, 'vfs'), { recursive: true });
  const modulesDir = /MODULESDIR:\s*(\S+)/.exec(await new Promise<string>((r) => execFile('smbd', ['-b'], (_e, o) => r(o))))?.[1] as string;
  const image = await readFile(join(modulesDir, 'vfs', 'vfsx.so'));
  const at = image.indexOf('vfsx-build: samba=');
  assert.ok(at > 0, 'the installed module carries its build id');
  image.write('vfsx-build: samba=4.99.00', at, 'latin1'); // same length as "vfsx-build: samba=4.17.12" or "=4.22.11"
  await writeFile(join(wrong, 'vfs', 'vfsx.so'), image);
  const mismatch = await doctor(['--modules-dir', wrong]);
  assert.equal(mismatch.code, 1);
  assert.deepEqual(mismatch.failed.map((c) => c.name), ['module build']);
  const installed = (/(\d+\.\d+\.\d+)/.exec(sambaVersion())?.[1] ?? '?').replaceAll('.', '\\.');
  assert.match(mismatch.failed[0].detail, new RegExp(`built for Samba 4\\.99\\.00 .*but smbd is ${installed}`));
  assert.match(mismatch.failed[0].fix ?? '', /build:module/);

  const admin = new IORedis({ path: redis.socket });
  try {
    await admin.config('SET', 'appendonly', 'no');
    const noAof = await doctor();
    assert.equal(noAof.code, 1);
    assert.deepEqual(noAof.failed.map((c) => c.name), ['redis AOF']);
    assert.match(noAof.failed[0].detail, /appendonly no/);
  } finally {
    await admin.config('SET', 'appendonly', 'yes');
    admin.disconnect();
  }

  await dr.stop();
  try {
    const down = await doctor();
    assert.equal(down.code, 1);
    assert.deepEqual(down.failed.map((c) => c.name), ['DR site']);
    assert.match(down.failed[0].detail, new RegExp(dr.url.replace(/[/.]/g, '\\$&')));
  } finally {
    await dr.startServer();
  }
  const human = await cli(['doctor', '--smb-conf', smbd.confPath]);
  assert.equal(human.code, 0, human.stdout);
  assert.match(human.stdout, /all checks passed/);
});

test('the dashboard in headless Chromium: shows the share, its charts move during a workload, a retry works', async () => {
  await onDashboard(`${svc.httpUrl}/`, async (page) => {
    await page.waitForSelector(`#shares tr[data-share="${SHARE}"]`, { timeout: 15000 });
    // The site was restarted by the test before: the link reconnects by itself, and the page shows it.
    await page.waitForFunction("document.querySelector('#site-state').textContent === 'up'", undefined, { timeout: 15000 });
    const chart = `#chart-backlog-${SHARE}`;
    const points0 = Number(await page.getAttribute(chart, 'data-points'));

    // The charts move while a workload runs: the backlog rises (the site is frozen meanwhile, so it must)
    // and falls back to zero once the site answers again.
    const w = new RandomWorkload(11, 'dash', join(local, 'rw-dash'));
    w.plan(400);
    dr.signal('SIGSTOP');
    try {
      await w.run(smbd.port, SHARE);
      await waitFor('the dashboard to plot a backlog', async () => Number(await page.getAttribute(chart, 'data-last')) > 0, 20000, 250);
    } finally {
      dr.signal('SIGCONT');
    }
    await waitFor('the plotted backlog to fall back to zero', async () => Number(await page.getAttribute(chart, 'data-last')) === 0, 60000, 250);
    assert.ok(Number(await page.getAttribute(chart, 'data-points')) > points0, 'the chart gained points');

    // A record held back by a stopped site appears with a retry button that works.
    await drained();
    await dr.stop();
    await put('retry-me.txt', 'retry');
    await page.waitForSelector('#retrying button.retry', { timeout: 30000 });
    // Let its backoff grow (attempt 5 waits 3-6 s), so the click, not the timer, brings it back.
    const held = await waitFor('the record to be retried a few times', async () =>
      share(await status())?.retrying.find((r) => r.path === 'retry-me.txt' && r.attempts >= 5), 60000, 200);
    await dr.startServer();
    const clickedAt = Date.now();
    await page.click(`#retrying button.retry[data-job="${held.jobId}"]`);
    await page.waitForFunction("document.querySelector('#retrying').textContent.includes('retried (delayed)')", undefined, { timeout: 5000 });
    const job = held.jobId;
    // The clicked record commits at once, not after its backoff (the path's other records may still wait theirs).
    await waitFor('the retried record to commit', async () => {
      const w = JSON.parse((await cli(['why', SHARE, 'retry-me.txt', '--json'])).stdout);
      return w.records.some((r: { jobId: string; state: string }) => r.jobId === job && r.state === 'committed');
    }, 3000, 100);
    assert.ok(Date.now() - clickedAt < 3500);
    await drained();
    const why = JSON.parse((await cli(['why', SHARE, 'retry-me.txt', '--json'])).stdout);
    assert.equal(why.verdict, 'in sync');
    assert.ok(why.records.some((r: { jobId: string; state: string }) => r.jobId === job && r.state === 'committed'));

    // The why view.
    await page.fill('#why-share', SHARE);
    await page.fill('#why-path', 'retry-me.txt');
    await page.click('#why-go');
    await page.waitForFunction(`document.querySelector('#why-out').textContent.includes('"verdict"')`);
    assert.match((await page.textContent('#why-out')) ?? '', /"verdict": "in sync"/);
  });
});

test('records of one path queued behind an outage coalesce: one sync covers them, the others complete without a site call', async () => {
  const coalesced = async () => {
    const text = await (await fetch(`${svc.httpUrl}/metrics`)).text();
    return Number(/^vfsx_replication_coalesced_total (\d+)/m.exec(text)?.[1] ?? NaN);
  };
  await put('toggled.txt', 'attributes toggled many times');
  await drained();
  const before = await coalesced();
  await dr.stop();
  const toggles = Array.from({ length: 20 }, () => 'setmode toggled.txt +h; setmode toggled.txt -h').join('; ');
  const r = await smbclient(smbd.port, SHARE, toggles);
  assert.deepEqual(r.statuses, []);
  await waitFor('records to wait for the site', async () => (share(await status())?.backlog.records ?? 0) >= 20, 30000, 200);
  await dr.startServer();
  await drained();
  const n = await waitFor('the coalesced counter to be reported', async () => {
    const c = await coalesced();
    return c - before >= 10 ? c - before : null;
  }, 10000, 500);
  assert.ok(n >= 10, `${n} records coalesced`);
  const w = JSON.parse((await cli(['why', SHARE, 'toggled.txt', '--json'])).stdout);
  assert.equal(w.verdict, 'in sync');
});

test('with the service down, status shows smbd spooling (fail-open); after a restart the spool is ingested and the fail-open hook ran', async () => {
  await drained();
  await svc.stop('SIGKILL');
  try {
    await put('spooled.txt', 'written while vfsx serve was down');
    // The replicator's heartbeat goes stale within 5 s of the kill.
    const st = await waitFor('status to show the spool and the replicator gone', async () => {
      const s = await status();
      return s.spool.failOpenEngaged && !s.site.replicatorRunning ? s : null;
    }, 15000, 100);
    assert.ok(st.spool.files >= 1 && st.spool.bytes > 0, JSON.stringify(st.spool));
    assert.equal(st.site.state, 'unknown');
    const human = await cli(['status']);
    assert.match(human.stdout, /FAIL-OPEN ENGAGED: \d+ spool files/);
    const doc = JSON.parse((await cli(['doctor', '--json', '--smb-conf', smbd.confPath])).stdout);
    const failed = doc.checks.filter((c: { result: string }) => c.result === 'fail').map((c: { name: string }) => c.name).sort();
    assert.deepEqual(failed, ['dashboard', 'socket', 'spool']);
  } finally {
    await svc.start();
  }
  const after = await drained();
  assert.equal(after.spool.files, 0);
  assert.equal(after.spool.failOpenEngaged, false);
  assert.ok(after.spool.ingestedFiles >= 1 && after.spool.lastIngestAt !== null);
  await waitFor('the fail-open hook', async () => (await hookEvents()).find((e) => e.type === 'fail-open'), 15000, 100);
  assert.equal(JSON.parse((await cli(['why', SHARE, 'spooled.txt', '--json'])).stdout).verdict, 'in sync');
});

test('the HTTP API answers hostile requests with 4xx and keeps serving; a token, when set, is required', async () => {
  const req = (path: string, init?: RequestInit) => fetch(`${svc.httpUrl}${path}`, init);
  assert.equal((await req('/nope')).status, 404);
  assert.equal((await req('/api/status', { method: 'DELETE' })).status, 404);
  assert.equal((await req('/api/why')).status, 400);
  assert.equal((await req('/api/why?share=ops')).status, 400);
  assert.equal((await req('/api/retry', { method: 'POST' })).status, 400);
  assert.equal((await req('/api/retry?job=no-such-job', { method: 'POST' })).status, 404);
  assert.equal((await req('/api/events?n=abc')).status, 200);
  assert.equal((await req('/api/events?n=-5')).status, 200);
  for (const bad of ['../../etc/passwd', 'a/../../b', 'nul\u0000byte']) {
    const r = await req(`/api/why?share=ops&path=${encodeURIComponent(bad)}`);
    assert.equal(r.status, 400, bad);
    assert.match(((await r.json()) as { error: string }).error, /not a path inside a share/);
  }
  const odd = await req(`/api/why?share=ops&path=${encodeURIComponent('odd % # & 😀 name')}`);
  assert.equal(odd.status, 200);
  assert.equal(((await odd.json()) as { source: { exists: boolean } }).source.exists, false);
  assert.equal((await req('/api/status')).status, 200, 'still serving');

  const token = 'a-token-of-enough-length';
  const port = freePort;
  const guarded = await ServiceHarness.create({ redisSocket: redis.socket, extra: { http: { port: await port(), token } } });
  try {
    await guarded.start();
    assert.equal((await fetch(`${guarded.httpUrl}/metrics`)).status, 401);
    assert.equal((await fetch(`${guarded.httpUrl}/metrics`, { headers: { authorization: 'Bearer wrong-token-of-same-len' } })).status, 401);
    assert.equal((await fetch(`${guarded.httpUrl}/metrics`, { headers: { authorization: `Bearer ${token}` } })).status, 200);
    assert.equal((await fetch(`${guarded.httpUrl}/api/status?token=${token}`)).status, 200);
  } finally {
    await guarded.destroy();
  }
  const exposed = await ServiceHarness.create({ redisSocket: redis.socket, extra: { http: { host: '0.0.0.0', port: await port() } } });
  try {
    await assert.rejects(exposed.start(), /http\.host 0\.0\.0\.0 is not loopback: set http\.token/);
  } finally {
    await exposed.destroy();
  }
});
