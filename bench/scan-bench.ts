/**
 * npm run bench (part 4): the metadata and content passes over a whole
 * share (what verify, a no-change resync and a scrub do), side by side with
 * the tools an operator would compare them to, in the same run:
 *  - metadata: `vfsx verify` (type, size, mode, mtime, xattrs of every
 *    entry against the site's list) and a no-change `vfsx resync`, vs a
 *    no-change `rsync -a` between two local copies;
 *  - content: `vfsx verify --content` (every block hashed, compared with the
 *    site's ids) vs `sha256sum` of every file.
 * 50,000 x 1 KiB files in 100 directories. Prints a Markdown table.
 */
import { execFileSync, execSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tree } from '../src/native/tree';
import { SiteSync } from '../src/replication/site-sync';
import { verifyShare } from '../src/replication/verify';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';

const FILES = 50_000;
const DIRS = 100;
const ms = (t0: bigint) => Number(process.hrtime.bigint() - t0) / 1e6;

async function timed(f: () => Promise<unknown> | unknown, rounds = 3): Promise<number> {
  const out: number[] = [];
  for (let i = 0; i < rounds; i++) {
    const t0 = process.hrtime.bigint();
    await f();
    out.push(ms(t0));
  }
  return out.sort((a, b) => a - b)[Math.floor(rounds / 2)];
}

async function main(): Promise<void> {
  const work = await mkdtemp(join(tmpdir(), 'vfsx-sbench-'));
  const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
  const client = await site.client();
  const src = join(work, 'src');
  try {
    for (let d = 0; d < DIRS; d++) {
      mkdirSync(join(src, `d${d}`), { recursive: true });
      for (let i = 0; i < FILES / DIRS; i++) writeFileSync(join(src, `d${d}`, `f${i}.txt`), randomBytes(1024));
    }
    execFileSync('rsync', ['-a', `${src}/`, join(work, 'copy')]);
    await client.call('bucket.ensure', { bucket: 'scan' });
    const srcTree = Tree.open(src);
    const sync = new SiteSync({ site: client, bucket: 'scan', tree: srcTree, blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
    await sync.syncTree('');
    // Warm caches for every pass alike: this measures the passes, not the disk.
    execSync(`find ${src} -type f | xargs cat > /dev/null`);

    const rsyncNoop = await timed(() => execFileSync('rsync', ['-a', `${src}/`, join(work, 'copy')]));
    const verifyMeta = await timed(async () => {
      const d = await verifyShare(client, 'scan', src);
      if (d.length > 0) throw new Error(`verify found ${d.length} differences`);
    });
    const resyncNoop = await timed(() => sync.syncTree(''));
    const sha = await timed(() => execSync(`find ${src} -type f -print0 | xargs -0 sha256sum > /dev/null`), 1);
    const verifyContent = await timed(async () => {
      const d = await verifyShare(client, 'scan', src, { content: true });
      if (d.length > 0) throw new Error(`verify --content found ${d.length} differences`);
    }, 1);
    srcTree.close();

    const rate = (t: number) => `${Math.round(FILES / (t / 1000)).toLocaleString('en-US')} files/s (${(t / 1000).toFixed(2)} s)`;
    const mib = (FILES * 1024) / 2 ** 20;
    const date = new Date().toISOString().slice(0, 10);
    const lines = [
      `Whole-share passes, measured ${date} on ${cpus().length} cores (${cpus()[0]?.model.trim()}); ${FILES.toLocaleString('en-US')} x 1 KiB files in ${DIRS} directories, page cache warm, DR site over loopback WebSocket; medians of 3 (content: 1 run).`,
      '',
      '| pass | vfsx | baseline | vfsx vs baseline |',
      '|---|---|---|---|',
      `| metadata: \`vfsx verify\` | ${rate(verifyMeta)} | \`rsync -a\` no change: ${rate(rsyncNoop)} | ${(rsyncNoop / verifyMeta).toFixed(2)}x |`,
      `| metadata: no-change resync | ${rate(resyncNoop)} | \`rsync -a\` no change: ${rate(rsyncNoop)} | ${(rsyncNoop / resyncNoop).toFixed(2)}x |`,
      `| content: \`vfsx verify --content\` | ${(mib / (verifyContent / 1000)).toFixed(1)} MiB/s, ${rate(verifyContent)} | \`sha256sum\`: ${(mib / (sha / 1000)).toFixed(1)} MiB/s | ${(sha / verifyContent).toFixed(2)}x |`,
    ];
    process.stdout.write(`\n${lines.join('\n')}\n`);
  } finally {
    client.close();
    await site.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`scan bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
