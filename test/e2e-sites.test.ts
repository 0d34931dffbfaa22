/**
 * End to end: several DR sites. Each site is a real `vfsx dr-site` in a
 * network namespace of its own behind a veth link (remote hosts the test
 * creates and removes); real smbd with the vfsx module, vfsx serve, vfsx
 * replicate, Redis; encrypted repositories, each with its own passphrase.
 * Every site has its own queue and progress: one down never holds back
 * another, and nothing is lost for the one that was down.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '../src/config/load-config';
import { EventBus } from '../src/journal/events';
import { verifyShare } from '../src/replication/verify';
import { DrSiteHarness } from './helpers/dr-site-harness';
import { RandomWorkload, treeDiffers } from './helpers/random-workload';
import { RedisHarness } from './helpers/redis-harness';
import { createRemoteHost, RemoteHost } from './helpers/remote-host';
import { ServiceHarness } from './helpers/service-harness';
import { SiteMeter } from './helpers/site-meter';
import { putRandomFiles } from './helpers/smbclient';
import { SmbdHarness } from './helpers/smbd-harness';
import { waitFor } from './helpers/wait-for';
import { onDashboard } from './helpers/dashboard';
import { drained as drainedAll } from './helpers/replication-stack';

const SHARE = 'multi';
const MiB = 1024 * 1024;
const OUTAGE_MS = Number(process.env.VFSX_SITE_OUTAGE_MS ?? 60_000);

interface Site {
  name: string;
  host: RemoteHost;
  dr: DrSiteHarness;
}

let redis: RedisHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;
let local: string;
const sites: Site[] = [];
let seed = Number(process.env.VFSX_SEED ?? Date.now() % 100000);
/** change -> committed (ms) per site, while `recording`. */
const latencies = new Map<string, number[]>();
let recording = false;
let unsubscribe: (() => Promise<void>) | null = null;

async function startSite(name: string, subnet: number): Promise<Site> {
  const host = createRemoteHost(1000, `vfsxs${subnet}${process.pid % 1000}`, subnet);
  try {
    return { name, host, dr: await DrSiteHarness.start({}, { netns: host.netns, host: host.host }) };
  } catch (err) {
    host.remove();
    throw err;
  }
}

const siteEntry = (s: Site) => ({ name: s.name, url: s.dr.replication.siteUrl, token: s.dr.replication.token, passphraseFile: s.dr.replication.passphraseFile });

before(async () => {
  redis = await RedisHarness.start();
  sites.push(await startSite('near', 2), await startSite('far', 3));
  svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    extra: { replication: { enabled: true, sites: sites.map(siteEntry), blockSize: 65536, maxBackoffMs: 1000 } },
  });
  (svc.config.redis as Record<string, unknown>).prefix = svc.prefix;
  await svc.rewriteConfig();
  await svc.start();
  smbd = await SmbdHarness.start([{ name: SHARE, vfsObjects: 'vfsx streams_xattr acl_xattr', vfsx: { socket: svc.socket, spool: svc.spool } }]);
  local = await mkdtemp(join(tmpdir(), 'vfsx-sites-'));
  const cfg = validateConfig(svc.config);
  unsubscribe = await EventBus.subscribe(cfg.redis, (e) => {
    if (!recording || e.type !== 'committed' || e.latencyMs === undefined) return;
    const site = e.site ?? 'default';
    if (!latencies.has(site)) latencies.set(site, []);
    latencies.get(site)?.push(e.latencyMs);
  });
});

after(async () => {
  await unsubscribe?.();
  await smbd?.destroy();
  await svc?.destroy();
  for (const s of sites) {
    await s.dr.destroy();
    s.host.remove();
  }
  await redis?.stop();
  if (local) await rm(local, { recursive: true, force: true });
});

/** Every site's backlog empty (for a whole second). */
const drained = (timeoutMs = 180_000) => drainedAll(svc.config, timeoutMs);

async function workload(tag: string, ops: number): Promise<void> {
  const w = new RandomWorkload(++seed, tag, join(local, `rw-${tag}`));
  w.plan(ops);
  const res = await w.run(smbd.port, SHARE);
  assert.deepEqual(await treeDiffers(smbd.sharePath(SHARE), tag, res.expected), [], `seed ${w.seed}: the share does not match the workload's model`);
  process.stdout.write(`# ${tag}: seed ${w.seed}, ${JSON.stringify(res.counts)}\n`);
}

/** The site is identical to the share: verify (with content) through the CLI's --site, and a restore from it equals the share. */
async function identicalAt(s: Site, tag: string): Promise<void> {
  const v = await svc.cli(['verify', SHARE, '--site', s.name, '--source', smbd.sharePath(SHARE), '--content', '--json']);
  assert.equal(v.code, 0, `site ${s.name} differs: ${v.stdout.slice(0, 3000)} ${v.stderr.slice(0, 2000)}`);
  assert.equal(JSON.parse(v.stdout).identical, true);
  const repo = await s.dr.repo();
  try {
    assert.deepEqual(await verifyShare(repo, SHARE, smbd.sharePath(SHARE), { content: true }), [], `site ${s.name}`);
  } finally {
    repo.close();
  }
  const dest = join(local, `restore-${tag}-${s.name}`);
  const r = await svc.cli(['restore', SHARE, dest, '--site', s.name, '--json']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const diff = spawnSync('diff', ['-r', smbd.sharePath(SHARE), dest], { encoding: 'utf8', maxBuffer: 64 << 20 });
  assert.equal(diff.status, 0, `site ${s.name}: ${diff.stdout.slice(0, 3000)}${diff.stderr}`);
  await rm(dest, { recursive: true, force: true });
}

const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];

test('the random workload converges at both sites while one is stopped; the healthy site keeps its pace', async () => {
  const [near, far] = sites;
  // Normal range first: both sites up.
  latencies.clear();
  recording = true;
  await workload('both-up', 600);
  await drained();
  recording = false;
  const normal = latencies.get('near') ?? [];
  assert.ok(normal.length > 0, 'near committed changes');

  // One site down for the outage; the workload runs meanwhile.
  await far.dr.stop('SIGKILL');
  const down = Date.now();
  latencies.clear();
  recording = true;
  await workload('far-down', 2000);
  // The healthy site catches up on its own while the other is still down.
  await waitFor('near to have everything while far is down', async () => {
    const st = JSON.parse((await svc.cli(['status', '--json'])).stdout);
    const v = st.sites.find((x: { site: { name: string } }) => x.site.name === 'near');
    return v.shares.every((s: { backlog: { records: number } }) => s.backlog.records === 0);
  }, 120_000, 500);
  recording = false;
  const during = latencies.get('near') ?? [];
  await identicalAt(near, 'far-down');

  // Far's backlog waits for it: nothing dropped.
  const st = JSON.parse((await svc.cli(['status', '--json'])).stdout);
  const farView = st.sites.find((x: { site: { name: string } }) => x.site.name === 'far');
  assert.ok(farView.shares.some((s: { backlog: { records: number } }) => s.backlog.records > 0), 'far keeps a backlog while it is down');
  assert.notEqual(farView.site.state, 'up');
  assert.match((await svc.cli(['status'])).stdout, /DR site far \(ws:\/\/[^)]+\): (DOWN|CONNECTING)/);
  const metrics = await (await fetch(`${svc.httpUrl}/metrics`)).text();
  assert.match(metrics, /vfsx_site_up\{site="far"\} 0/);
  assert.match(metrics, /vfsx_site_up\{site="near"\} 1/);
  assert.match(metrics, new RegExp(`vfsx_backlog_records\\{share="${SHARE}",site="far"\\} [1-9]`));
  // Close -> committed per site: each site's commits (far's from before its outage) under its own label.
  assert.match(metrics, /vfsx_change_to_commit_seconds_count\{site="near"\} [1-9]/);
  assert.match(metrics, /vfsx_change_to_commit_seconds_count\{site="far"\} [1-9]/);
  // The dashboard shows every site's shares and charts, not only the first site's.
  await onDashboard(`${svc.httpUrl}/`, async (page) => {
    await page.waitForSelector(`#shares tr[data-site="far"][data-share="${SHARE}"]`, { timeout: 15000 });
    await page.waitForSelector(`#shares tr[data-site="near"][data-share="${SHARE}"]`, { timeout: 15000 });
    assert.ok(Number(await page.textContent(`#shares tr[data-site="far"] td.records`)) > 0, 'far\'s backlog on its own row');
    assert.equal(Number(await page.textContent(`#shares tr[data-site="near"] td.records`)), 0);
    // far is the second site: its charts end in @far, and they plot its backlog.
    await page.waitForFunction(`Number(document.getElementById('chart-backlog-${SHARE}@far')?.dataset.last) > 0`, undefined, { timeout: 15000 });
  });

  const p99 = { normal: pct(normal, 0.99), during: pct(during, 0.99) };
  process.stdout.write(`# near close->committed: both up p50 ${pct(normal, 0.5)} p99 ${p99.normal} ms (${normal.length}); far down p50 ${pct(during, 0.5)} p99 ${p99.during} ms (${during.length})\n`);
  assert.ok(p99.during <= Math.max(2 * p99.normal, p99.normal + 1500), `near's p99 while far was down: ${p99.during} ms against ${p99.normal} ms with both up`);

  // The rest of the outage, then far comes back and converges.
  const left = OUTAGE_MS - (Date.now() - down);
  if (left > 0) await new Promise((r) => setTimeout(r, left));
  await far.dr.startServer();
  await drained(240_000);
  await identicalAt(far, 'far-back');
  await identicalAt(near, 'far-back');
});

test('a site limited to 2 MiB/s receives at most the limit +10%; the other runs unlimited', async () => {
  const [near, far] = sites;
  const set = await svc.cli(['bwlimit', '--site', 'far', '2M', '--json']);
  assert.equal(set.code, 0, set.stderr);
  const b = JSON.parse(set.stdout);
  assert.equal(b.site, 'far');
  assert.equal(b.limit, 2 * MiB);
  const meters = { near: new SiteMeter(near.dr.pid as number, near.host.iface), far: new SiteMeter(far.dr.pid as number, far.host.iface) };
  await putRandomFiles(smbd.port, SHARE, local, 'bw', 8, 3 * MiB);
  await drained(120_000);
  meters.near.stop();
  meters.far.stop();
  const farMax = meters.far.maxRate(5000);
  const nearRate = meters.near.maxRate(1000);
  process.stdout.write(`# far (2 MiB/s): max ${(farMax / MiB).toFixed(2)} MiB/s over 5 s; near (no limit): max ${(nearRate / MiB).toFixed(1)} MiB/s over 1 s\n`);
  assert.ok(farMax <= 2 * MiB * 1.1, `far received ${farMax} B/s over 5 s under a 2 MiB/s limit`);
  assert.ok(farMax >= 2 * MiB * 0.6, `the limit should bound far's rate: ${farMax} B/s`);
  assert.ok(nearRate > 2 * MiB * 3, `near is not limited: ${nearRate} B/s`);
  assert.ok(meters.far.total >= 24 * MiB && meters.near.total >= 24 * MiB, 'both sites received the 24 MiB');
  await svc.cli(['bwlimit', '--site', 'far', 'config']);
});

test('a site limited by a timetable switching mid-run: 1 MiB/s until the next minute, then none; the other runs unlimited', async () => {
  const [near, far] = sites;
  // At least 20 s of the limited part: start early enough in a minute.
  const sec = new Date().getSeconds();
  if (sec > 40) await new Promise((r) => setTimeout(r, (61 - sec) * 1000));
  const now = new Date();
  const next = new Date(now.getTime() + 60_000);
  const hhmm = (d: Date) => `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  const switchAt = new Date(next.getFullYear(), next.getMonth(), next.getDate(), next.getHours(), next.getMinutes()).getTime();
  const set = await svc.cli(['bwlimit', '--site', 'far', `${hhmm(now)},1M ${hhmm(next)},off`, '--json']);
  assert.equal(set.code, 0, set.stderr);
  assert.equal(JSON.parse(set.stdout).limit, MiB);
  const meters = { near: new SiteMeter(near.dr.pid as number, near.host.iface), far: new SiteMeter(far.dr.pid as number, far.host.iface) };
  // More than the limited part can carry, so the switch happens mid-transfer.
  const limitedSecs = (switchAt - Date.now()) / 1000;
  const files = Math.ceil((limitedSecs + 16) / 2);
  await putRandomFiles(smbd.port, SHARE, local, 'tt', files, 2 * MiB);
  await drained(180_000);
  meters.near.stop();
  meters.far.stop();
  const before = meters.far.maxRate(5000, 0, switchAt - 500);
  // From the last sample before the switch: the rest may all arrive within
  // one 250 ms sample of it (16 MiB at full speed), and the limited part a
  // sample can hold (256 KiB at 1 MiB/s) cannot lift a late switch past 3 MiB/s.
  const afterSwitch = meters.far.rateAfter(switchAt);
  const nearMax = meters.near.maxRate(1000);
  process.stdout.write(`# far by timetable: ${limitedSecs.toFixed(0)} s at 1 MiB/s: max ${(before / MiB).toFixed(2)} MiB/s over 5 s; after the switch ${(afterSwitch / MiB).toFixed(1)} MiB/s; near (no limit): max ${(nearMax / MiB).toFixed(1)} MiB/s over 1 s\n# far KiB/s from the switch on: ${meters.far.perSecondAfter(switchAt)}\n`);
  assert.ok(before <= MiB * 1.1, `far received ${before} B/s over 5 s under its timetable's 1 MiB/s`);
  assert.ok(before >= MiB * 0.6, `the timetable's limit should bound far's rate: ${before} B/s`);
  assert.ok(afterSwitch > MiB * 3, `after the switch to off far's rest went faster: ${afterSwitch} B/s; KiB per second from the switch on: ${meters.far.perSecondAfter(switchAt)}`);
  assert.ok(nearMax > MiB * 3, `near is not limited: ${nearMax} B/s`);
  await svc.cli(['bwlimit', '--site', 'far', 'config']);
});

test('a third site added to the running system is brought to identical without pausing the others', async () => {
  const third = await startSite('third', 4);
  sites.push(third);
  (svc.config.replication as { sites: unknown[] }).sites.push(siteEntry(third));
  await svc.rewriteConfig();
  latencies.clear();
  recording = true;
  // Its own replicator process, as a new systemd unit instance would be; the others keep running.
  await svc.startReplicator(['--site', 'third']);
  await workload('third-joins', 600);
  await waitFor('the third site\'s initial sync', async () => {
    const st = JSON.parse((await svc.cli(['status', '--json'])).stdout);
    return st.sites.find((x: { site: { name: string } }) => x.site.name === 'third')?.site.initialSync === 'done';
  }, 240_000, 1000);
  await drained(240_000);
  recording = false;
  for (const name of ['near', 'far']) assert.ok((latencies.get(name) ?? []).length > 0, `${name} kept committing while the third site was synced`);
  process.stdout.write(`# while the third site joined: near p99 ${pct(latencies.get('near') ?? [0], 0.99)} ms, far p99 ${pct(latencies.get('far') ?? [0], 0.99)} ms\n`);
  for (const s of sites) await identicalAt(s, 'three');
  const list = await svc.cli(['site', 'list', '--json']);
  assert.deepEqual(JSON.parse(list.stdout).map((x: { name: string }) => x.name), ['near', 'far', 'third']);
});

test('the limit on all sites together holds across replicator processes (near and far in one, third in its own): the three sites together receive at most the limit +15%', async () => {
  const set = await svc.cli(['bwlimit', '3M', '--json']);
  assert.equal(set.code, 0, set.stderr);
  assert.equal(JSON.parse(set.stdout).limit, 3 * MiB);
  // Every replicator looks for the limit each second.
  await new Promise((r) => setTimeout(r, 2000));
  const meters = sites.map((s) => new SiteMeter(s.dr.pid as number, s.host.iface));
  // 8 MiB to each of the three sites: 24 MiB at 3 MiB/s together, about 8 s.
  await putRandomFiles(smbd.port, SHARE, local, 'all-sites', 8, MiB);
  await drained(180_000);
  for (const m of meters) m.stop();
  const together = SiteMeter.maxCombinedRate(meters, 3000);
  const each = meters.map((m) => (m.maxRate(3000) / MiB).toFixed(2)).join(', ');
  process.stdout.write(`# all sites limited to 3 MiB/s: together max ${(together / MiB).toFixed(2)} MiB/s over 3 s (each: ${each})\n`);
  assert.ok(together <= 3 * MiB * 1.15, `the three sites together received ${together} B/s over 3 s under a 3 MiB/s limit on all sites (each: ${each} MiB/s)`);
  assert.ok(together >= 3 * MiB * 0.6, `the limit should bound the sites' rate together: ${together} B/s`);
  for (const m of meters) assert.ok(m.total >= 8 * MiB, 'every site received the 8 MiB');
  await svc.cli(['bwlimit', 'config']);
});
