/**
 * The memory a whole-share pass holds (what the scrub and `vfsx verify` do):
 * N files of 1 KiB in N/1000 directories, resynced into a fresh encrypted
 * site, then a metadata and a content verify, each with the process's heap
 * (used, plus external and array buffers) sampled every 5 ms: what it
 * retains while it walks the source (after a full collection, once past
 * 1,024 entries) and its peak (garbage included), above the baseline.
 * Usage: node --expose-gc dist/bench/verify-memory.js [N]
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tree } from '../src/native/tree';
import { SiteSync } from '../src/replication/site-sync';
import { verifyShare } from '../src/replication/verify';
import { restoreShare } from '../src/operator/restore';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';

const N = Number(process.argv[2] ?? 100_000);
const used = () => {
  const m = process.memoryUsage();
  return m.heapUsed + m.external + m.arrayBuffers;
};

async function peakDuring(f: () => Promise<unknown>): Promise<{ peak: number; ms: number }> {
  (global as { gc?: () => void }).gc?.();
  const base = used();
  let peak = base;
  const t = setInterval(() => { peak = Math.max(peak, used()); }, 5);
  const t0 = Date.now();
  try {
    await f();
  } finally {
    clearInterval(t);
  }
  peak = Math.max(peak, used());
  return { peak: peak - base, ms: Date.now() - t0 };
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'vfsx-vmem-'));
  const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
  const client = await site.repo();
  const src = join(work, 'src');
  try {
    const dirs = Math.max(1, Math.round(N / 1000));
    for (let d = 0; d < dirs; d++) {
      mkdirSync(join(src, `dir-${d}`), { recursive: true });
      for (let i = 0; i < N / dirs; i++) writeFileSync(join(src, `dir-${d}`, `file-number-${i}.txt`), randomBytes(1024));
    }
    await client.call('bucket.ensure', { bucket: 'mem' });
    const tree = Tree.open(src);
    await new SiteSync({ site: client, bucket: 'mem', tree, blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } }).syncTree('');
    tree.close();
    const gc = (global as { gc?: () => void }).gc ?? (() => undefined);
    for (const content of [false, true]) {
      // Retained: after a full collection, at the pass's first progress call past 1,024 entries (the listing is held then).
      gc();
      const base = used();
      let retained = 0;
      const pace = async (n: number) => {
        if (retained > 0 || n < 1024) return;
        gc();
        retained = used() - base;
      };
      const r = await peakDuring(async () => {
        const d = await verifyShare(client, 'mem', src, { content, pace });
        if (d.length > 0) throw new Error(`verify found ${d.length} differences`);
      });
      process.stdout.write(`| verify${content ? ' --content' : ''} | ${N} | ${(retained / 2 ** 20).toFixed(0)} MiB (${(retained / N).toFixed(0)} B/object) | ${(r.peak / 2 ** 20).toFixed(0)} MiB | ${(r.ms / 1000).toFixed(1)} s |\n`);
    }
    // Restore: retained once 90% of the objects are written (it holds every path listed so far then;
    // before 2026-12-07 it held the whole listing from the start, measured past 1,024 objects).
    gc();
    const base = used();
    let retained = 0;
    const onProgress = (p: { done: number }) => {
      if (retained > 0 || p.done < Math.floor(N * 0.9)) return;
      gc();
      retained = used() - base;
    };
    const r = await peakDuring(() => restoreShare(client, 'mem', join(work, 'restored'), { onProgress }));
    process.stdout.write(`| restore | ${N} | ${(retained / 2 ** 20).toFixed(0)} MiB (${(retained / N).toFixed(0)} B/object) | ${(r.peak / 2 ** 20).toFixed(0)} MiB | ${(r.ms / 1000).toFixed(1)} s |\n`);
  } finally {
    client.close();
    await site.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
