/**
 * npm run bench (part 2): replication to the DR site side by side with rsync
 * on the same machine. Prints a Markdown table. Asserts nothing.
 *  - initial sync of a mixed tree (2,000 x 4 KiB + 4 x 64 MiB), 3 rounds
 *    interleaved, each into a new site: vfsx resync (SiteSync over
 *    WebSocket) vs rsync -a and rsync -a --fsync between directories;
 *  - restore of that tree vs rsync -a --fsync the other way;
 *  - pack size, and stored bytes of a compressible tree (zstd vs none);
 *  - a 1-byte change in the middle of a 1 GiB file: vfsx (dirty range) vs
 *    rsync --inplace --no-whole-file (its delta algorithm).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { restartWithTunables } from '../src/native/malloc-tunables';
import { Tree } from '../src/native/tree';
import { restoreShare } from '../src/operator/restore';
import { SiteSync } from '../src/replication/site-sync';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { baselineEnv, bigFile, median, mixedTree, ms, settle } from './bench-util';

/** Text and CSV files of the kind offices keep, compressible as real ones are. */
function officeTree(dir: string): number {
  const words = 'invoice customer report quarterly total amount account payable receivable department budget forecast meeting minutes project status review approved pending'.split(' ');
  let seed = 42;
  const rnd = () => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) >>> 1) / 0x80000000;
  let bytes = 0;
  mkdirSync(join(dir, 'letters'), { recursive: true });
  mkdirSync(join(dir, 'ledgers'), { recursive: true });
  for (let i = 0; i < 600; i++) {
    let t = '';
    const size = 4096 + Math.floor(rnd() * 60000);
    while (t.length < size) t += `${words[Math.floor(rnd() * words.length)]}${rnd() < 0.1 ? '.\n' : ' '}`;
    writeFileSync(join(dir, 'letters', `letter${i}.txt`), t);
    bytes += t.length;
  }
  for (let i = 0; i < 100; i++) {
    const rows = ['date,account,description,amount'];
    for (let r = 0; r < 2000; r++) rows.push(`2026-${1 + (r % 12)}-${1 + (r % 28)},${1000 + Math.floor(rnd() * 500)},${words[Math.floor(rnd() * words.length)]},${(rnd() * 10000).toFixed(2)}`);
    const t = rows.join('\n');
    writeFileSync(join(dir, 'ledgers', `ledger${i}.csv`), t);
    bytes += t.length;
  }
  for (let i = 0; i < 20; i++) {
    const b = randomBytes(256 << 10); // photos and zip-based documents: already compressed
    writeFileSync(join(dir, `scan${i}.jpg`), b);
    bytes += b.length;
  }
  return bytes;
}

/** One initial sync of `src` into a fresh site (so nothing is deduplicated against an earlier round). */
async function siteRound(src: string, extra: Record<string, unknown> = {}, encrypt = true): Promise<{ ms: number; site: DrSiteHarness }> {
  const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20, ...extra });
  // As a replicator opens a new site: encrypted (the default), or plaintext with encryption off.
  const client = await site.repo({ encryptNew: encrypt });
  try {
    await client.call('bucket.ensure', { bucket: 'bench' });
    const sync = new SiteSync({ site: client, bucket: 'bench', tree: Tree.open(src), blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
    settle();
    const t0 = process.hrtime.bigint();
    await sync.syncTree('');
    return { ms: ms(t0), site };
  } finally {
    client.close();
  }
}

function rsyncRound(src: string, dst: string, fsync: boolean): number {
  rmSync(dst, { recursive: true, force: true });
  settle();
  const t0 = process.hrtime.bigint();
  execFileSync('rsync', ['-a', ...(fsync ? ['--fsync'] : []), `${src}/`, dst], { env: baselineEnv() });
  return ms(t0);
}

async function main(): Promise<void> {
  restartWithTunables(); // this process does the work of vfsx replicate and vfsx restore, which run with these malloc tunables

  const work = await mkdtemp(join(tmpdir(), 'vfsx-rbench-'));
  const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
  const client = await site.repo();
  try {
    const src = join(work, 'src');
    const totalMiB = mixedTree(src);

    // Initial sync, 3 rounds interleaved: rsync, rsync --fsync, vfsx into a fresh site.
    const rsyncR: number[] = [];
    const rsyncFsyncR: number[] = [];
    const vfsxR: number[] = [];
    const plainR: number[] = [];
    let lastSite: DrSiteHarness | null = null;
    for (let r = 0; r < 3; r++) {
      rsyncR.push(rsyncRound(src, join(work, 'rsync-dst'), false));
      rsyncFsyncR.push(rsyncRound(src, join(work, 'rsync-fsync-dst'), true));
      const v = await siteRound(src);
      vfsxR.push(v.ms);
      await lastSite?.destroy();
      lastSite = v.site;
      const pl = await siteRound(src, {}, false);
      plainR.push(pl.ms);
      await pl.site.destroy();
    }
    const rsyncInitial = median(rsyncR);
    const rsyncFsyncInitial = median(rsyncFsyncR);
    const vfsxInitial = median(vfsxR);
    const mixedStats = (lastSite as DrSiteHarness).stats();

    // Restore of the same tree from the last round's site vs rsync --fsync the other way.
    const restoreR: number[] = [];
    const rsyncBackR: number[] = [];
    {
      const s = lastSite as DrSiteHarness;
      const k = await s.repo();
      try {
        for (let r = 0; r < 3; r++) {
          rsyncBackR.push(rsyncRound(join(work, 'rsync-fsync-dst'), join(work, 'rsync-back'), true));
          const dest = join(work, 'restored');
          rmSync(dest, { recursive: true, force: true });
          settle();
          const t0 = process.hrtime.bigint();
          const p = await restoreShare(k, 'bench', dest);
          restoreR.push(ms(t0));
          if (p.failed.length + p.refused.length > 0) throw new Error(`restore failed: ${[...p.failed, ...p.refused].join('; ')}`);
        }
      } finally {
        k.close();
      }
      await s.destroy();
    }

    // Pack size: one initial sync of the mixed tree per size.
    const packRows: string[] = [];
    for (const mib of [1, 4, 16, 64]) {
      const v = await siteRound(src, { packBytes: mib << 20 });
      const st = v.site.stats();
      await v.site.destroy();
      packRows.push(`| ${mib} MiB | ${(totalMiB / (v.ms / 1000)).toFixed(0)} MiB/s (${(v.ms / 1000).toFixed(1)} s) | ${st.packs} |`);
    }

    // A compressible tree: what the site stores against the source size.
    const office = join(work, 'office');
    const officeBytes = officeTree(office);
    const comp = await siteRound(office);
    const compStats = comp.site.stats();
    await comp.site.destroy();
    const plainZstd = await siteRound(office, {}, false);
    const plainZstdStats = plainZstd.site.stats();
    await plainZstd.site.destroy();
    const none = await siteRound(office, { compression: 'none' }, false);
    const noneStats = none.site.stats();
    await none.site.destroy();

    await client.call('bucket.ensure', { bucket: 'bench' });
    const stats = { commits: 0, blocksSent: 0, bytesSent: 0 };
    const sync = new SiteSync({ site: client, bucket: 'bench', tree: Tree.open(src), blockSize: 65536, stats });
    await sync.syncTree('');
    let t0: bigint;
    const gib = join(src, 'gib.bin');
    bigFile(gib, 1024);
    execFileSync('rsync', ['-a', gib, join(work, 'rsync-dst', 'gib.bin')], { env: baselineEnv() });
    await sync.syncPath('gib.bin');
    const mid = 512 * 2 ** 20 + 12345;
    const fd = openSync(gib, 'r+');
    writeSync(fd, Buffer.from([0xa5]), 0, 1, mid);
    closeSync(fd);

    settle();
    t0 = process.hrtime.bigint();
    const out = execFileSync('rsync', ['--inplace', '--no-whole-file', '--stats', gib, join(work, 'rsync-dst', 'gib.bin')], { encoding: 'utf8', env: baselineEnv() });
    const rsyncChange = ms(t0);
    const literal = Number(/Literal data: ([\d,]+)/.exec(out)?.[1].replace(/,/g, '') ?? NaN);

    const before = { ...stats };
    settle();
    t0 = process.hrtime.bigint();
    await sync.syncPath('gib.bin', [[mid, 1]]);
    const vfsxChange = ms(t0);
    const sentBlocks = stats.blocksSent - before.blocksSent;
    const sentBytes = stats.bytesSent - before.bytesSent;

    // Block size: initial push of 4 x 64 MiB, then a 1-byte change, per size (a fresh bucket each).
    const sizes = [16384, 65536, 262144, 1048576];
    const bsRows: string[] = [];
    const large = join(work, 'large');
    mkdirSync(large);
    for (let i = 0; i < 4; i++) bigFile(join(large, `l${i}.bin`), 64);
    for (const bs of sizes) {
      const bucket = `bs${bs}`;
      await client.call('bucket.ensure', { bucket });
      const st = { commits: 0, blocksSent: 0, bytesSent: 0 };
      const s = new SiteSync({ site: client, bucket, tree: Tree.open(large), blockSize: bs, stats: st });
      settle();
      t0 = process.hrtime.bigint();
      await s.syncTree('');
      const push = ms(t0);
      const f = openSync(join(large, 'l0.bin'), 'r+');
      const at = 32 * 2 ** 20 + 777 + bs; // a different byte each round
      writeSync(f, Buffer.from([0x5a]), 0, 1, at);
      closeSync(f);
      const b0 = st.bytesSent;
      t0 = process.hrtime.bigint();
      await s.syncPath('l0.bin', [[at, 1]]);
      const change = ms(t0);
      bsRows.push(`| ${bs / 1024} KiB | ${(256 / (push / 1000)).toFixed(0)} MiB/s | ${(256 * 2 ** 20) / bs} | ${change.toFixed(0)} ms | ${st.bytesSent - b0} |`);
    }

    const date = new Date().toISOString().slice(0, 10);
    const lines = [
      `Replication, measured ${date} on the same machine; DR site over loopback WebSocket, block size 64 KiB, caches dropped before each run; the repository encrypted (the default) unless a row says plaintext.`,
      '',
      '| workload | vfsx | rsync | vfsx vs rsync |',
      '|---|---|---|---|',
      `| initial sync, 2,000 x 4 KiB + 4 x 64 MiB (${totalMiB.toFixed(0)} MiB) | ${(totalMiB / (vfsxInitial / 1000)).toFixed(0)} MiB/s (${(vfsxInitial / 1000).toFixed(1)} s) | ${(totalMiB / (rsyncInitial / 1000)).toFixed(0)} MiB/s (${(rsyncInitial / 1000).toFixed(1)} s) | ${(rsyncInitial / vfsxInitial).toFixed(2)}x throughput |`,
      `| initial sync, same tree, vs rsync --fsync (durable copies, as the DR site makes them) | ${(totalMiB / (vfsxInitial / 1000)).toFixed(0)} MiB/s | ${(totalMiB / (rsyncFsyncInitial / 1000)).toFixed(0)} MiB/s (${(rsyncFsyncInitial / 1000).toFixed(1)} s) | ${(rsyncFsyncInitial / vfsxInitial).toFixed(2)}x throughput |`,
      `| initial sync, same tree, plaintext repository (encryption off) | ${(totalMiB / (median(plainR) / 1000)).toFixed(0)} MiB/s (${(median(plainR) / 1000).toFixed(1)} s) | ${(totalMiB / (rsyncFsyncInitial / 1000)).toFixed(0)} MiB/s (--fsync) | ${(rsyncFsyncInitial / median(plainR)).toFixed(2)}x throughput |`,
      `| 1 byte changed in a 1 GiB file | ${vfsxChange.toFixed(0)} ms, ${sentBlocks} block (${sentBytes} bytes) sent | ${rsyncChange.toFixed(0)} ms, ${literal} literal bytes | ${(rsyncChange / vfsxChange).toFixed(0)}x faster |`,
      `| restore of the mixed tree (vfsx restore vs rsync -a --fsync back into an empty directory) | ${(totalMiB / (median(restoreR) / 1000)).toFixed(0)} MiB/s (${(median(restoreR) / 1000).toFixed(1)} s) | ${(totalMiB / (median(rsyncBackR) / 1000)).toFixed(0)} MiB/s (${(median(rsyncBackR) / 1000).toFixed(1)} s) | ${(median(rsyncBackR) / median(restoreR)).toFixed(2)}x throughput |`,
      '',
      `Initial sync and restore: medians of 3 rounds, interleaved; each vfsx round into a new, empty site. vfsx rounds (encrypted): ${vfsxR.map((x) => (x / 1000).toFixed(1)).join(', ')} s; rsync --fsync: ${rsyncFsyncR.map((x) => (x / 1000).toFixed(1)).join(', ')} s. The site stored the mixed tree (random data) as ${mixedStats.blocks} blocks in ${mixedStats.packs} packs, ${(mixedStats.packBytes / 2 ** 20).toFixed(1)} MiB.`,
      '',
      'Stored bytes at the site for a compressible tree (600 letters, 100 CSV ledgers, 20 already-compressed scans):',
      '',
      '| source | stored, encrypted (zstd by the replicator, the default) | stored, plaintext (zstd at the site) | stored, plaintext, compression none | initial sync, encrypted / plaintext zstd / none |',
      '|---|---|---|---|---|',
      `| ${(officeBytes / 2 ** 20).toFixed(1)} MiB | ${(compStats.packBytes / 2 ** 20).toFixed(1)} MiB (${(compStats.packBytes / officeBytes).toFixed(2)} of the source) | ${(plainZstdStats.packBytes / 2 ** 20).toFixed(1)} MiB (${(plainZstdStats.packBytes / officeBytes).toFixed(2)}) | ${(noneStats.packBytes / 2 ** 20).toFixed(1)} MiB (${(noneStats.packBytes / officeBytes).toFixed(2)}) | ${(comp.ms / 1000).toFixed(2)} s / ${(plainZstd.ms / 1000).toFixed(2)} s / ${(none.ms / 1000).toFixed(2)} s |`,
      '',
      'Pack size (drSite.packBytes), one initial sync of the mixed tree each:',
      '',
      '| pack size | initial sync | packs |',
      '|---|---|---|',
      ...packRows,
      '',
      'Block size (the replicator default is 64 KiB; each object keeps the size it was created with):',
      '',
      '| block size | initial push, 4 x 64 MiB | blocks stored | 1-byte change | bytes sent for it |',
      '|---|---|---|---|---|',
      ...bsRows,
      '',
      'rsync copies between two local directories (no network, no hashing of unchanged files on the initial copy);',
      'vfsx hashes every block (HMAC-SHA256 ids), compresses and seals it (AES-256-GCM), and talks JSON-RPC over WebSocket to a separate DR site process.',
    ];
    process.stdout.write(`\n${lines.join('\n')}\n`);
  } finally {
    client.close();
    await site.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`replication bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
