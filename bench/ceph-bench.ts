/**
 * npm run bench (part 6): the DR site on Ceph (S3 backend) side by side
 * with the plain AWS SDK against the same radosgw, in one run on this
 * machine. Prints a Markdown table. Asserts nothing.
 *  - initial sync of the mixed tree (2,000 x 4 KiB + 4 x 64 MiB) into a new
 *    site whose packs go to Ceph, timed until every pack is in Ceph,
 *    encrypted (the default); against PUT of every file as its own object
 *    with the SDK at the replicator's concurrency (8; files above 16 MiB in
 *    parts, 4 at a time), as rclone copy would;
 *  - restore of that tree from the site against GET of every object;
 *  3 rounds interleaved, caches dropped before each.
 */
import { createReadStream, createWriteStream, readdirSync, rmSync, statSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, relative, dirname } from 'node:path';
import { pipeline } from 'node:stream/promises';
import { GetObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { restartWithTunables } from '../src/native/malloc-tunables';
import { Tree } from '../src/native/tree';
import { restoreShare } from '../src/operator/restore';
import { SiteSync } from '../src/replication/site-sync';
import { CephHarness, S3Target } from '../test/helpers/ceph-harness';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { waitFor } from '../test/helpers/wait-for';
import { median, mixedTree, ms, settle } from './bench-util';

const CONCURRENCY = 8;

function files(dir: string): string[] {
  return readdirSync(dir, { recursive: true, withFileTypes: true }).filter((d) => d.isFile()).map((d) => join(d.parentPath, d.name));
}

async function pool<T>(items: T[], n: number, fn: (t: T) => Promise<void>): Promise<void> {
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) await fn(items[next++]);
  }));
}

async function sdkPut(s3: S3Client, target: S3Target, src: string): Promise<number> {
  settle();
  const t0 = process.hrtime.bigint();
  await pool(files(src), CONCURRENCY, async (f) => {
    const up = new Upload({
      client: s3, queueSize: 4, partSize: 16 << 20,
      params: { Bucket: target.bucket, Key: relative(src, f), Body: createReadStream(f), ContentLength: statSync(f).size },
    });
    await up.done();
  });
  return ms(t0);
}

async function sdkGet(s3: S3Client, target: S3Target, src: string, dest: string): Promise<number> {
  rmSync(dest, { recursive: true, force: true });
  settle();
  const t0 = process.hrtime.bigint();
  await pool(files(src).map((f) => relative(src, f)), CONCURRENCY, async (key) => {
    const r = await s3.send(new GetObjectCommand({ Bucket: target.bucket, Key: key }));
    await mkdir(dirname(join(dest, key)), { recursive: true });
    const out = createWriteStream(join(dest, key));
    await pipeline(r.Body as NodeJS.ReadableStream, out);
  });
  return ms(t0);
}

async function main(): Promise<void> {
  restartWithTunables(); // this process does the work of vfsx replicate and vfsx restore, which run with these malloc tunables

  const work = await mkdtemp(join(tmpdir(), 'vfsx-cbench-'));
  const ceph = await CephHarness.start();
  const s3 = ceph.client();
  try {
    const src = join(work, 'src');
    const totalMiB = mixedTree(src);
    const vfsxR: number[] = [];
    const sdkR: number[] = [];
    const restoreR: number[] = [];
    const getR: number[] = [];
    let packs = 0;
    for (let r = 0; r < 3; r++) {
      const plain = await ceph.bucket();
      sdkR.push(await sdkPut(s3, plain, src));
      getR.push(await sdkGet(s3, plain, src, join(work, 'got')));

      const target = await ceph.bucket();
      const dr = await DrSiteHarness.start({ maxFrameBytes: 64 << 20, storage: { backend: 's3', uploadIdleMs: 200, s3: target } });
      const site = await dr.repo();
      try {
        await site.call('bucket.ensure', { bucket: 'bench' });
        const tree = Tree.open(src);
        settle();
        const t0 = process.hrtime.bigint();
        await new SiteSync({ site, bucket: 'bench', tree, blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } }).syncTree('');
        await waitFor('every pack in Ceph', () => {
          const st = dr.stats();
          return st.packs > 0 && st.remotePacks === st.packs;
        }, 600000, 20);
        vfsxR.push(ms(t0));
        tree.close();
        packs = dr.stats().packs;
        const dest = join(work, 'restored');
        rmSync(dest, { recursive: true, force: true });
        settle();
        const t1 = process.hrtime.bigint();
        const p = await restoreShare(site, 'bench', dest);
        restoreR.push(ms(t1));
        if (p.failed.length + p.refused.length > 0) throw new Error(`restore failed: ${[...p.failed, ...p.refused].join('; ')}`);
      } finally {
        site.close();
        await dr.destroy();
      }
    }
    const rate = (t: number) => `${(totalMiB / (t / 1000)).toFixed(0)} MiB/s (${(t / 1000).toFixed(1)} s)`;
    const lines = [
      `DR site on Ceph (S3 backend), measured ${new Date().toISOString().slice(0, 10)} on the same machine: a one-host Ceph 16 (BlueStore OSD on a file, radosgw) on loopback; medians of 3 interleaved rounds, caches dropped before each.`,
      '',
      '| workload | vfsx (encrypted, packs in Ceph) | AWS SDK, one object per file, 8 at a time | vfsx vs SDK |',
      '|---|---|---|---|',
      `| initial sync, 2,000 x 4 KiB + 4 x 64 MiB (${totalMiB.toFixed(0)} MiB), until all is in Ceph | ${rate(median(vfsxR))} | ${rate(median(sdkR))} | ${(median(sdkR) / median(vfsxR)).toFixed(2)}x throughput |`,
      `| restore of that tree | ${rate(median(restoreR))} | ${rate(median(getR))} (GET of every object) | ${(median(getR) / median(restoreR)).toFixed(2)}x throughput |`,
      '',
      `vfsx rounds: ${vfsxR.map((x) => (x / 1000).toFixed(1)).join(', ')} s (${packs} packs); SDK: ${sdkR.map((x) => (x / 1000).toFixed(1)).join(', ')} s. vfsx also hashes, compresses and seals every block and keeps versions; the SDK copy is plaintext with no history.`,
    ];
    process.stdout.write(`\n${lines.join('\n')}\n`);
  } finally {
    s3.destroy();
    await ceph.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack}\n`);
  process.exit(1);
});
