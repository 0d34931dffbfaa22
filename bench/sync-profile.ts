/**
 * A diagnostic, not part of `npm run bench`: one initial sync of the mixed
 * tree (2,000 x 4 KiB + 4 x 64 MiB) into a fresh encrypted site, printing
 * wall time and the CPU time of both processes. With VFSX_PROF=dir both
 * write V8 CPU profiles there (this process: run it with --cpu-prof).
 *   node [--cpu-prof --cpu-prof-dir=D] dist/bench/sync-profile.js [rounds] [plain]
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { restartWithTunables } from '../src/native/malloc-tunables';
import { Tree } from '../src/native/tree';
import { SiteSync } from '../src/replication/site-sync';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { mixedTree, ms, settle } from './bench-util';

/** User + system CPU seconds of a process so far (/proc/PID/stat). */
function cpuOf(pid: number): { user: number; sys: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const v = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return { user: Number(v[11]) / 100, sys: Number(v[12]) / 100 };
}

async function main(): Promise<void> {
  restartWithTunables(); // this process does the work of vfsx replicate and vfsx restore, which run with these malloc tunables

  const rounds = Number(process.argv[2] ?? 3);
  const encrypt = process.argv[3] !== 'plain';
  if (process.env.VFSX_PROF) process.env.VFSX_SITE_PROF = process.env.VFSX_PROF;
  const work = await mkdtemp(join(tmpdir(), 'vfsx-sprof-'));
  try {
    const src = join(work, 'src');
    mixedTree(src);
    for (let r = 0; r < rounds; r++) {
      const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
      const client = await site.repo({ encryptNew: encrypt });
      try {
        await client.call('bucket.ensure', { bucket: 'bench' });
        const sync = new SiteSync({ site: client, bucket: 'bench', tree: Tree.open(src), blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
        settle();
        const pid = site.pid as number;
        const c0 = process.cpuUsage();
        const s0 = cpuOf(pid);
        const t0 = process.hrtime.bigint();
        await sync.syncTree('');
        const wall = ms(t0);
        const c = process.cpuUsage(c0);
        const s1 = cpuOf(pid);
        console.log(`round ${r + 1}: ${(wall / 1000).toFixed(2)} s; CPU s user/sys: replicator ${(c.user / 1e6).toFixed(2)}/${(c.system / 1e6).toFixed(2)}, site ${(s1.user - s0.user).toFixed(2)}/${(s1.sys - s0.sys).toFixed(2)}`);
      } finally {
        client.close();
        await site.stop('SIGTERM');
        await site.destroy();
      }
    }
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
