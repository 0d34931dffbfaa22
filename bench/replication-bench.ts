/**
 * npm run bench (part 2): replication to the DR site side by side with rsync
 * on the same machine. Prints a Markdown table. Asserts nothing.
 *  - initial sync of a mixed tree (2,000 x 4 KiB + 4 x 64 MiB):
 *    vfsx resync (SiteSync over WebSocket) vs rsync -a between directories;
 *  - a 1-byte change in the middle of a 1 GiB file: vfsx (dirty range) vs
 *    rsync --inplace --no-whole-file (its delta algorithm).
 */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tree } from '../src/native/tree';
import { SiteSync } from '../src/replication-queue/site-sync';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';

const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

function settle(): void {
  execFileSync('sync');
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  } catch {
    /* sync alone */
  }
}

function bigFile(path: string, mib: number): void {
  const fd = openSync(path, 'w');
  const chunk = randomBytes(8 << 20);
  for (let i = 0; i < mib / 8; i++) writeSync(fd, chunk.map((b) => b ^ i));
  closeSync(fd);
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'vfsx-rbench-'));
  const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
  const client = await site.client();
  try {
    const src = join(work, 'src');
    mkdirSync(join(src, 'small'), { recursive: true });
    for (let i = 0; i < 2000; i++) writeFileSync(join(src, 'small', `f${i}.bin`), randomBytes(4096));
    for (let i = 0; i < 4; i++) bigFile(join(src, `large${i}.bin`), 64);
    const totalMiB = (2000 * 4096 + 4 * 64 * 2 ** 20) / 2 ** 20;

    settle();
    let t0 = process.hrtime.bigint();
    execFileSync('rsync', ['-a', `${src}/`, join(work, 'rsync-dst')]);
    const rsyncInitial = ms(t0);
    // The DR site makes every block durable before it commits; rsync --fsync is the like-for-like baseline.
    settle();
    t0 = process.hrtime.bigint();
    execFileSync('rsync', ['-a', '--fsync', `${src}/`, join(work, 'rsync-fsync-dst')]);
    const rsyncFsyncInitial = ms(t0);

    await client.call('bucket.ensure', { bucket: 'bench' });
    const stats = { commits: 0, blocksSent: 0, bytesSent: 0 };
    const sync = new SiteSync({ site: client, bucket: 'bench', tree: Tree.open(src), blockSize: 65536, stats });
    settle();
    t0 = process.hrtime.bigint();
    await sync.syncTree('');
    const vfsxInitial = ms(t0);

    const gib = join(src, 'gib.bin');
    bigFile(gib, 1024);
    execFileSync('rsync', ['-a', gib, join(work, 'rsync-dst', 'gib.bin')]);
    await sync.syncPath('gib.bin');
    const mid = 512 * 2 ** 20 + 12345;
    const fd = openSync(gib, 'r+');
    writeSync(fd, Buffer.from([0xa5]), 0, 1, mid);
    closeSync(fd);

    settle();
    t0 = process.hrtime.bigint();
    const out = execFileSync('rsync', ['--inplace', '--no-whole-file', '--stats', gib, join(work, 'rsync-dst', 'gib.bin')], { encoding: 'utf8' });
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
      `Replication, measured ${date} on the same machine; DR site over loopback WebSocket, block size 64 KiB, caches dropped before each run.`,
      '',
      '| workload | vfsx | rsync | vfsx vs rsync |',
      '|---|---|---|---|',
      `| initial sync, 2,000 x 4 KiB + 4 x 64 MiB (${totalMiB.toFixed(0)} MiB) | ${(totalMiB / (vfsxInitial / 1000)).toFixed(0)} MiB/s (${(vfsxInitial / 1000).toFixed(1)} s) | ${(totalMiB / (rsyncInitial / 1000)).toFixed(0)} MiB/s (${(rsyncInitial / 1000).toFixed(1)} s) | ${(rsyncInitial / vfsxInitial).toFixed(2)}x throughput |`,
      `| initial sync, same tree, vs rsync --fsync (durable copies, as the DR site makes them) | ${(totalMiB / (vfsxInitial / 1000)).toFixed(0)} MiB/s | ${(totalMiB / (rsyncFsyncInitial / 1000)).toFixed(0)} MiB/s (${(rsyncFsyncInitial / 1000).toFixed(1)} s) | ${(rsyncFsyncInitial / vfsxInitial).toFixed(2)}x throughput |`,
      `| 1 byte changed in a 1 GiB file | ${vfsxChange.toFixed(0)} ms, ${sentBlocks} block (${sentBytes} bytes) sent | ${rsyncChange.toFixed(0)} ms, ${literal} literal bytes | ${(rsyncChange / vfsxChange).toFixed(0)}x faster |`,
      '',
      'Block size (the replicator default is 64 KiB; each object keeps the size it was created with):',
      '',
      '| block size | initial push, 4 x 64 MiB | blocks stored | 1-byte change | bytes sent for it |',
      '|---|---|---|---|---|',
      ...bsRows,
      '',
      'rsync copies between two local directories (no network, no hashing of unchanged files on the initial copy);',
      'vfsx hashes every block and talks JSON-RPC over WebSocket to a separate DR site process.',
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
