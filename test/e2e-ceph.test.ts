/**
 * The DR site on S3-compatible object storage, proven on a real Ceph
 * cluster (mon, BlueStore OSD, radosgw from Debian's packages, started here
 * on loopback): the whole system replicates SMB workloads into it, packs
 * leave the site's disk for the object store, restores read them back by
 * range, nothing readable reaches the cluster, and SIGKILL of the DR site,
 * of radosgw and of the OSD during replication all converge.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Tree } from '../src/native/tree';
import { restoreShare } from '../src/operator/restore';
import { SiteSync } from '../src/replication/site-sync';
import IORedis from 'ioredis';
import { INDEX_COPIES_KEPT } from '../src/dr-site/index-snapshots';
import { S3Packs } from '../src/dr-site/s3-packs';
import { CephHarness } from './helpers/ceph-harness';
import { DrSiteHarness } from './helpers/dr-site-harness';
import { ReplicationStack } from './helpers/replication-stack';
import { q, smbclient } from './helpers/smbclient';
import { waitFor } from './helpers/wait-for';

let ceph: CephHarness;
let stack: ReplicationStack;
let bucket: string;

before(async () => {
  assert.ok(CephHarness.available(), 'Ceph is not installed: npm test runs scripts/setup.sh, which installs it');
  ceph = await CephHarness.start();
  const target = await ceph.bucket();
  bucket = target.bucket;
  stack = await ReplicationStack.start({
    drExtra: {
      // Small packs closed after 300 ms idle, so packs go up while the workloads run;
      // full ones (8 MiB) above multipartBytes go up in parts.
      packBytes: 8 << 20,
      // Index copies only on the way out and before pack deletes (the lost-index test controls when).
      storage: { backend: 's3', uploadIdleMs: 300, indexCopySeconds: 86400, s3: { ...target, prefix: 'site-a/', multipartBytes: 5 << 20 } },
    },
  });
});

after(async () => {
  try {
    await stack?.destroy();
  } finally {
    await ceph?.destroy();
  }
});

async function smb(cmds: string): Promise<void> {
  const r = await smbclient(stack.smbd.port, stack.share, cmds);
  assert.deepEqual(r.statuses, [], `${cmds}: ${r.stdout}${r.stderr}`);
}

const localPacks = (): string[] => {
  const dir = join(stack.dr.dataDir, 'packs');
  return readdirSync(dir).flatMap((sub) => readdirSync(join(dir, sub)));
};

/** Every pack the site indexes is in the object store and none is left on the site's disk. */
async function allUploaded(): Promise<Array<{ key: string; etag: string }>> {
  await waitFor('every pack to be uploaded', () => {
    const s = stack.dr.stats();
    return s.packs > 0 && s.remotePacks === s.packs && localPacks().length === 0;
  }, 120000, 200);
  const keys = await ceph.keys(bucket);
  const s = stack.dr.stats();
  assert.equal(keys.filter((k) => k.key.startsWith('site-a/packs/')).length, s.packs, `objects ${keys.length} vs packs ${s.packs}`);
  return keys;
}

test('a random workload and large files replicate into Ceph: packs leave the site\'s disk, a restore reads them back by range and matches diff -r', async () => {
  // 20 MiB of random data: full 8 MiB packs, uploaded in parts.
  await writeFile(join(stack.local, 'big'), randomBytes(20 << 20));
  await smb(`put ${q(join(stack.local, 'big'))} big.bin`);
  await stack.randomWorkload('ceph-random', 1000);
  await stack.drained();
  const keys = await allUploaded();
  // Full packs went up in parts, packs closed when idle in one PUT (with Content-MD5).
  assert.ok(keys.some((k) => /-\d+"?$/.test(k.etag)), `no multipart upload: ${JSON.stringify(keys.slice(0, 5))}`);
  assert.ok(keys.some((k) => /^"?[0-9a-f]{32}"?$/.test(k.etag)), `no single-PUT upload: ${JSON.stringify(keys.slice(0, 5))}`);
  await stack.converged('ceph-random');
});

test('nothing readable in the Ceph cluster: after a workload with a marker in contents and names, no RADOS object of any pool holds either', async () => {
  const marker = 'PlatypusMarker5527';
  await writeFile(join(stack.local, 'marked'), `${marker} quarterly figures\n`.repeat(2000));
  await smb(`mkdir ${marker}-dir; put ${q(join(stack.local, 'marked'))} ${marker}-dir/${marker}.txt`);
  await stack.drained();
  await allUploaded();
  const objects = await ceph.rawObjects();
  const data = objects.filter((o) => o.pool === 'default.rgw.buckets.data');
  assert.ok(data.reduce((n, o) => n + o.data.length, 0) > 20 << 20, `the data pool holds only ${data.length} objects`);
  for (const o of objects) {
    assert.equal(o.data.indexOf(marker), -1, `${marker} is readable in ${o.pool}/${o.name}`);
    assert.ok(!o.name.includes(marker), `${marker} names RADOS object ${o.pool}/${o.name}`);
  }
});

test('with the DR site killed (SIGKILL) while packs go up to Ceph and restarted, nothing is lost: uploads resume and the site converges', async () => {
  const run = stack.randomWorkload('ceph-sitekill', 600);
  const before = stack.dr.stats().remotePacks;
  await waitFor('packs going up', () => stack.dr.stats().remotePacks > before, 60000, 20);
  await stack.dr.stop('SIGKILL');
  await run;
  await stack.dr.startServer();
  await stack.reconnect();
  await stack.converged('ceph-sitekill');
  await allUploaded();
});

test('with radosgw killed (SIGKILL) during replication and restarted 2 s later, replication converges and every pack reaches Ceph', async () => {
  const run = stack.randomWorkload('ceph-rgwkill', 600);
  await new Promise((r) => setTimeout(r, 3000));
  await ceph.kill('rgw');
  await new Promise((r) => setTimeout(r, 2000));
  await ceph.startRgw();
  await run;
  await stack.converged('ceph-rgwkill');
  await allUploaded();
});

test('with the Ceph OSD killed (SIGKILL) during replication and restarted 3 s later, replication converges and every pack reaches Ceph', async () => {
  const run = stack.randomWorkload('ceph-osdkill', 600);
  await new Promise((r) => setTimeout(r, 3000));
  await ceph.kill('osd');
  await new Promise((r) => setTimeout(r, 3000));
  await ceph.startOsd();
  await run;
  await stack.converged('ceph-osdkill');
  await allUploaded();
  // Restored from what is in Ceph now: every block read back by range after the OSD's restart.
  await stack.converged('ceph-after-osd');
});

test('a DR site whose data directory is lost comes back from its index copy in Ceph and converges (changes after the copy by a full sync); with packs but no copy it refuses to start and deletes nothing', async () => {
  const s3 = new S3Packs({
    endpoint: ceph.endpoint, accessKeyId: ceph.accessKeyId, secretAccessKey: ceph.secretAccessKey, bucket, prefix: 'site-a/',
    forcePathStyle: true, region: 'us-east-1', multipartBytes: 5 << 20, retryForMs: 10000,
  });
  const conn = new IORedis({ path: stack.redis.socket });
  try {
    await stack.randomWorkload('ceph-lost-a', 300);
    await stack.drained();
    await allUploaded();
    // A graceful stop leaves a copy of the index in the bucket; the site then runs on, and more changes reach it.
    await stack.dr.stop('SIGTERM');
    const copies = await s3.listIndex();
    assert.ok(copies.length >= 1 && copies.length <= INDEX_COPIES_KEPT, `index copies: ${copies.join(', ')}`);
    await stack.dr.startServer();
    await stack.reconnect();
    await stack.randomWorkload('ceph-lost-b', 300);
    await writeFile(join(stack.local, 'after-copy'), randomBytes(300000));
    await smb(`put ${q(join(stack.local, 'after-copy'))} after-copy.bin`);
    await stack.drained();
    assert.deepEqual(await s3.listIndex(), copies, 'no copy since: the site knows more than its copy');
    const packsBefore = await s3.list();

    // The site's disk is lost.
    await stack.dr.stop('SIGKILL');
    await rm(stack.dr.dataDir, { recursive: true, force: true });

    // Without a copy of the index, the packs in the bucket are not taken for leftovers.
    const saved = await Promise.all(copies.map(async (n) => [n, await s3.getIndex(n)] as const));
    for (const n of copies) await s3.deleteIndex(n);
    await assert.rejects(stack.dr.startServer(), /holds \d+ packs but no copy of the index/);
    assert.deepEqual((await s3.list()).sort(), [...packsBefore].sort(), 'every pack object is still there');
    await rm(stack.dr.dataDir, { recursive: true, force: true });
    for (const [n, data] of saved) await s3.putIndex(n, data);

    // With it, the site recovers; the replicator sees it and syncs every share in full.
    const site = `${stack.svc.prefix}:state:site`;
    await conn.hset(site, 'initialSync', 'done');
    await stack.dr.startServer();
    assert.ok(stack.dr.logs.some((l) => String(l.msg).startsWith('the index was lost and is recovered')), 'the site says it recovered');
    await stack.reconnect();
    await waitFor('the replicator to mark the site for a full sync', async () => (await conn.hget(site, 'initialSync')) === 'pending', 30000, 100);
    await waitFor('the full sync', async () => (await conn.hget(site, 'initialSync')) === 'done', 120000, 200);
    await stack.converged('ceph-lost');
    await allUploaded();
  } finally {
    s3.close();
    conn.disconnect();
  }
});

test('garbage collection on Ceph: after deletes age out of retention, mostly dead packs are rewritten and their objects deleted (space measured), and restores now and --at a retained time still match', async () => {
  const target = await ceph.bucket();
  // A grace above the upload -> commit time of a sync: blocks sent but not yet committed must not be freed.
  const dr = await DrSiteHarness.start({
    retentionMs: 4000, gcIntervalMs: 250, orphanGraceMs: 2000, packBytes: 1 << 20, repackBelow: 0.5,
    storage: { backend: 's3', uploadIdleMs: 200, s3: target },
  });
  const src = join(stack.local, 'gc-src');
  await mkdir(src);
  const site = await dr.repo();
  // Pack objects (the bucket also holds copies of the index under index/).
  const objectCount = async () => (await ceph.keys(target.bucket)).filter((k) => k.key.startsWith('packs/')).length;
  const sync = async () => {
    const tree = Tree.open(src);
    try {
      await new SiteSync({ site, bucket: 'gc', tree, blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } }).syncTree('');
    } finally {
      tree.close();
    }
  };
  const uploaded = () => waitFor('every pack in Ceph', () => {
    const st = dr.stats();
    return st.packs > 0 && st.remotePacks === st.packs;
  }, 60000, 100);
  try {
    await site.call('bucket.ensure', { bucket: 'gc' });
    await writeFile(join(src, 'doomed.bin'), randomBytes(6 << 20));
    await writeFile(join(src, 'kept.txt'), 'version one\n');
    await sync();
    await uploaded();
    const full = { ...dr.stats(), objects: await objectCount() };

    await rm(join(src, 'doomed.bin'));
    await site.call('object.delete', { bucket: 'gc', path: 'doomed.bin' });
    await writeFile(join(src, 'kept.txt'), 'version two, after the delete\n');
    await sync();
    await waitFor('a repack', () => dr.logs.some((l) => l.msg === 'repack reclaimed space'), 60000, 100);
    await waitFor('the dead packs gone', () => dr.stats().packBytes < full.packBytes / 4, 60000, 100);
    await uploaded();
    // A repack drops packs from the index first and deletes their objects after the next index copy is up: wait for that.
    let objects = -1;
    await waitFor('every dropped pack\'s object deleted', async () => (objects = await objectCount()) === dr.stats().packs, 60000, 200).catch(() => undefined);
    const after = { ...dr.stats(), objects };
    process.stdout.write(`# gc on Ceph: ${full.packs} packs (${full.packBytes} bytes, ${full.objects} objects) -> ${after.packs} packs (${after.packBytes} bytes, ${after.objects} objects)\n`);
    assert.equal(after.objects, after.packs, 'every dropped pack\'s object is deleted from Ceph');
    assert.ok(after.objects < full.objects, `${full.objects} -> ${after.objects} objects`);

    // A new version now; the state just before it is within retention.
    await new Promise((r) => setTimeout(r, 20));
    const between = Date.now();
    await new Promise((r) => setTimeout(r, 20));
    await writeFile(join(src, 'kept.txt'), 'version three\n');
    await writeFile(join(src, 'new.bin'), randomBytes(300000));
    await sync();
    const atNow = join(stack.local, 'gc-now');
    const p = await restoreShare(site, 'gc', atNow);
    assert.deepEqual([p.failed, p.refused], [[], []]);
    assert.equal(await readFile(join(atNow, 'kept.txt'), 'utf8'), 'version three\n');
    assert.deepEqual(await readFile(join(atNow, 'new.bin')), await readFile(join(src, 'new.bin')));
    assert.deepEqual(readdirSync(atNow).sort(), ['kept.txt', 'new.bin']);
    const atBefore = join(stack.local, 'gc-before');
    const q2 = await restoreShare(site, 'gc', atBefore, { at: between });
    assert.deepEqual([q2.failed, q2.refused], [[], []]);
    assert.deepEqual(readdirSync(atBefore), ['kept.txt']);
    assert.equal(await readFile(join(atBefore, 'kept.txt'), 'utf8'), 'version two, after the delete\n');
  } finally {
    site.close();
    await dr.destroy();
  }
});
