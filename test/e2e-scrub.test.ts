/**
 * The scheduled scrub against a running system (smbd + vfsx, vfsx serve with
 * replication, Redis, the DR site): changes no journal record describes are
 * found and repaired as ordinary replication, and the scrub's progress shows
 * in status, /metrics and events.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, truncate, utimes, writeFile } from 'node:fs/promises';
import { statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import type { Status } from '../src/operator/status';
import type { SiteClient } from '../src/site-link/site-client';
import { verifyShare } from '../src/replication/verify';
import { DrSiteHarness } from './helpers/dr-site-harness';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness } from './helpers/service-harness';
import { smbclient } from './helpers/smbclient';
import { SmbdHarness } from './helpers/smbd-harness';
import { waitFor } from './helpers/wait-for';

let redis: RedisHarness;
let dr: DrSiteHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;
let local: string;
const SHARE = 'scrubbed';
const QUEUE = 'vfsx-scrub-test';

before(async () => {
  redis = await RedisHarness.start();
  dr = await DrSiteHarness.start();
  local = await mkdtemp(join(tmpdir(), 'vfsx-scrub-'));
  svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    extra: {
      journal: { sweepIntervalMs: 200, reconcileAfterMs: 3000, reconcileDelayMs: 0, queueName: QUEUE },
      replication: {
        enabled: true, ...dr.replication, maxBackoffMs: 1000,
        scrub: { startDelayMs: 0, intervalMs: 2000, contentIntervalMs: 6000, maxFilesPerSecond: 50000 },
      },
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

async function put(name: string, content: string): Promise<void> {
  const f = join(local, 'upload');
  await writeFile(f, content);
  const r = await smbclient(smbd.port, SHARE, `put ${f} "${name}"`);
  assert.deepEqual(r.statuses, [], r.stderr);
}

async function status(): Promise<Status> {
  const r = await svc.cli(['status', '--json']);
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Status;
}

async function withSite<T>(f: (c: SiteClient) => Promise<T>): Promise<T> {
  const c = await dr.repo();
  try {
    return await f(c);
  } finally {
    c.close();
  }
}

const siteHas = (path: string) => withSite(async (c) => (await c.call('object.stat', { bucket: SHARE, path })) !== null);

/** Until the share and the site are identical (block hashes compared). */
const converged = (what: string) => waitFor(what, () => withSite(async (c) => (await verifyShare(c, SHARE, smbd.sharePath(SHARE), { content: true })).length === 0), 60000, 500);

async function recentEvents(): Promise<Array<{ type: string; path?: string; what?: string; repaired?: number }>> {
  const conn = new IORedis({ path: redis.socket });
  try {
    return (await conn.lrange(`${svc.prefix}:events:recent`, 0, -1)).map((l) => JSON.parse(l));
  } finally {
    conn.disconnect();
  }
}

test('files changed directly on disk, not through smbd, are found by the scrub and repaired; status, /metrics and events show it', async () => {
  await put('edited.txt', 'first version');
  await put('removed.txt', 'will be deleted on disk');
  await put('same-size.txt', 'AAAAAAAAAAAAAAAA');
  await waitFor('the files at the site', async () => (await siteHas('edited.txt')) && (await siteHas('removed.txt')) && (await siteHas('same-size.txt')), 60000, 250);
  await converged('the first sync');
  const root = smbd.sharePath(SHARE);
  await writeFile(join(root, 'edited.txt'), 'second version, written behind smbd');
  await writeFile(join(root, 'behind-samba.txt'), 'never seen by smbd');
  await rm(join(root, 'removed.txt'));
  // Same size and same mtime: only a content pass can see this one.
  const st = statSync(join(root, 'same-size.txt'));
  await writeFile(join(root, 'same-size.txt'), 'BBBBBBBBBBBBBBBB');
  await utimes(join(root, 'same-size.txt'), st.atime, st.mtime);
  await converged('the scrub to repair every difference');
  const repaired = (await recentEvents()).filter((e) => e.type === 'scrub-repaired').map((e) => e.path);
  for (const p of ['edited.txt', 'behind-samba.txt', 'removed.txt', 'same-size.txt']) assert.ok(repaired.includes(p), `${p} in ${repaired.join(', ')}`);
  assert.ok((await recentEvents()).some((e) => e.type === 'scrub-finished' && (e.repaired ?? 0) > 0));
  const s = (await status()).shares.find((x) => x.share === SHARE);
  assert.ok(s && s.scrub.state !== 'never' && s.scrub.lastMetadataAt !== null && s.scrub.lastContentAt !== null, JSON.stringify(s?.scrub));
  const metrics = await (await fetch(`${svc.httpUrl}/metrics`)).text();
  assert.match(metrics, new RegExp(`vfsx_scrub_last_pass_timestamp_seconds\\{share="${SHARE}",kind="content"[^}]*\\} \\d`));
  const human = await svc.cli(['status']);
  assert.match(human.stdout, /(metadata|content) (pass|.* ago)/);
});

test('a change whose journal record was deleted by hand still reaches the site: the scrub repairs it', async () => {
  await dr.stop();
  await put('lost-record.txt', 'its record will be deleted by hand');
  // Delete every replication job by hand, as a damaged or hand-edited Redis would.
  const conn = new IORedis({ path: redis.socket, maxRetriesPerRequest: null });
  const q = new Queue(QUEUE, { connection: conn, prefix: svc.prefix });
  try {
    await waitFor('the record to become a job', async () => {
      const c = await q.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
      return Object.values(c).some((n) => n > 0);
    }, 30000, 100);
    await q.pause();
    await q.obliterate({ force: true });
    const left = await q.getJobCounts('waiting', 'active', 'delayed', 'prioritized');
    assert.deepEqual(Object.values(left).filter((n) => n > 0), [], 'the jobs are gone');
    await q.resume();
  } finally {
    await q.close();
    conn.disconnect();
  }
  await dr.startServer();
  await waitFor('the scrub to bring the file to the site', () => siteHas('lost-record.txt'), 60000, 250);
  await converged('the share and the site identical');
  assert.ok((await recentEvents()).some((e) => e.type === 'scrub-repaired' && e.path === 'lost-record.txt'));
  // Scrub passes that ran while the site was down failed and were retried; none took the replicator's thread down.
  assert.deepEqual(svc.logs.filter((l) => l.msg === 'journal pump thread exited; restarting' || l.msg === 'journal pump thread failed; restarting'), []);
});

test('a difference the scrub cannot repair (a file made on disk, too large for the site) is left out: named in status, /metrics, `vfsx why` and one event, and no pass failed for it; the differences after it are repaired, and the entry goes once the file does', async () => {
  const root = smbd.sharePath(SHARE);
  const huge = join(root, 'a-huge.img');
  // Sparse: 300 GiB is more 64 KiB blocks than the site takes, refused before a byte is read.
  await writeFile(huge, '');
  await truncate(huge, 300 * 2 ** 30);
  await writeFile(join(root, 'b-after-huge.txt'), 'repaired although a-huge.img cannot be');
  try {
    await waitFor('the scrub to repair the file after the one it cannot', () => siteHas('b-after-huge.txt'), 60000, 250);
    const s = await waitFor('the scrub to leave the file it cannot repair out', async () => {
      const x = (await status()).shares.find((y) => y.share === SHARE);
      return x?.leftOut.paths.some((e) => e.path === 'a-huge.img') && x.scrub.state === 'idle' && x.scrub.leftOut === 1 ? x : null;
    }, 60000, 250);
    assert.equal(s.leftOut.count, 1, JSON.stringify(s.leftOut));
    assert.match(s.leftOut.paths[0].error, /at most 4194304 blocks/);
    assert.equal(s.leftOut.paths[0].op, 'scrub');
    // The pass itself did its work: no error, so it is not run again every minute for this file.
    assert.equal(s.scrub.error, null, JSON.stringify(s.scrub));
    assert.ok(s.scrub.lastMetadataAt !== null);
    assert.equal(await siteHas('a-huge.img'), false);
    const ev = (await recentEvents()).filter((e) => e.type === 'left-out' && e.path === 'a-huge.img');
    assert.equal(ev.length, 1, 'one left-out event, however many passes find it');
    const metrics = await (await fetch(`${svc.httpUrl}/metrics`)).text();
    assert.match(metrics, new RegExp(`vfsx_left_out_paths\\{share="${SHARE}"[^}]*\\} 1\\b`));
    const human = await svc.cli(['status']);
    assert.match(human.stdout, /LEFT OUT[^\n]*\n\s+scrubbed:a-huge\.img scrub since .*at most 4194304 blocks/);
    const why = JSON.parse((await svc.cli(['why', SHARE, 'a-huge.img', '--json'])).stdout);
    assert.equal(why.verdict, 'left out', JSON.stringify(why));
  } finally {
    await rm(huge);
  }
  await converged('the share and the site identical once the large file is gone');
  // The next whole pass finds it gone and takes it off the list.
  await waitFor('the left-out entry to go', async () => (await status()).shares.find((x) => x.share === SHARE)?.leftOut.count === 0, 60000, 250);
});
