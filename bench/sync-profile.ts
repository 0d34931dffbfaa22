/**
 * A diagnostic, not part of `npm run bench`: one initial sync of the mixed
 * tree (2,000 x 4 KiB + 4 x 64 MiB) into a fresh encrypted site, printing
 * wall time and the CPU time of both processes. With VFSX_PROF=dir both
 * write V8 CPU profiles there (this process: of the timed syncs only, not
 * of making the tree).
 * With `phases`, each round syncs small/ first and then the rest (the four
 * large files), each timed, next to `rsync -a --fsync` of the same two
 * parts into an empty directory: where the time goes against rsync.
 *   [VFSX_PROF=D] node dist/bench/sync-profile.js [rounds] [plain] [phases]
 */
import { execFileSync } from 'node:child_process';
import { Session } from 'node:inspector/promises';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { restartWithTunables } from '../src/native/malloc-tunables';
import { Tree } from '../src/native/tree';
import { SiteSync } from '../src/replication/site-sync';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { baselineEnv, mixedTree, ms, settle } from './bench-util';

interface Cpu { user: number; sys: number; siteUser: number; siteSys: number }

/** "1.23 s; CPU s user/sys: replicator a/b, site c/d" */
function describe(wallMs: number, c: Cpu): string {
  return `${(wallMs / 1000).toFixed(2)} s; CPU s user/sys: replicator ${c.user.toFixed(2)}/${c.sys.toFixed(2)}, site ${c.siteUser.toFixed(2)}/${c.siteSys.toFixed(2)}`;
}

/** User + system CPU seconds of a process so far (/proc/PID/stat). */
function cpuOf(pid: number): { user: number; sys: number } {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const v = f.slice(f.lastIndexOf(')') + 2).split(' ');
  return { user: Number(v[11]) / 100, sys: Number(v[12]) / 100 };
}

async function main(): Promise<void> {
  restartWithTunables(); // this process does the work of vfsx replicate and vfsx restore, which run with these malloc tunables

  const rounds = Number(process.argv[2] ?? 3);
  const encrypt = !process.argv.slice(3).includes('plain');
  const phases = process.argv.slice(3).includes('phases');
  if (process.env.VFSX_PROF) process.env.VFSX_SITE_PROF = process.env.VFSX_PROF;
  const work = await mkdtemp(join(tmpdir(), 'vfsx-sprof-'));
  const prof = process.env.VFSX_PROF ? new Session() : null;
  prof?.connect();
  await prof?.post('Profiler.enable');
  try {
    const src = join(work, 'src');
    mixedTree(src);
    for (let r = 0; r < rounds; r++) {
      const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
      const client = await site.repo({ encryptNew: encrypt });
      try {
        await client.call('bucket.ensure', { bucket: 'bench' });
        const sync = new SiteSync({ site: client, bucket: 'bench', tree: Tree.open(src), blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
        const pid = site.pid as number;
        const cpu: Cpu = { user: 0, sys: 0, siteUser: 0, siteSys: 0 };
        /** Syncs rel with caches dropped first; the wall time, and the CPU of both processes added to cpu. */
        const timed = async (rel: string): Promise<number> => {
          settle();
          const c0 = process.cpuUsage();
          const s0 = cpuOf(pid);
          await prof?.post('Profiler.start');
          const t0 = process.hrtime.bigint();
          await sync.syncTree(rel);
          const wall = ms(t0);
          if (prof) {
            const { profile } = await prof.post('Profiler.stop');
            writeFileSync(join(process.env.VFSX_PROF as string, `replicator-${r + 1}-${rel || 'rest'}.cpuprofile`), JSON.stringify(profile));
          }
          const c = process.cpuUsage(c0);
          const s1 = cpuOf(pid);
          const phase: Cpu = { user: c.user / 1e6, sys: c.system / 1e6, siteUser: s1.user - s0.user, siteSys: s1.sys - s0.sys };
          for (const k of ['user', 'sys', 'siteUser', 'siteSys'] as const) cpu[k] += phase[k];
          if (phases) console.log(`  ${rel || 'large files'}: ${describe(wall, phase)}`);
          return wall;
        };
        let split = '';
        let wall: number;
        if (phases) {
          const small = await timed('small');
          const large = await timed('');
          wall = small + large;
          const dst = join(work, 'rsync-dst');
          const rsync = (from: string, to: string) => {
            settle();
            const t = process.hrtime.bigint();
            execFileSync('rsync', ['-a', '--fsync', `${from}/`, to], { env: baselineEnv() });
            return ms(t);
          };
          rmSync(dst, { recursive: true, force: true });
          mkdirSync(dst);
          const rSmall = rsync(join(src, 'small'), join(dst, 'small'));
          const rLarge = rsync(src, dst); // small/ is there already: rsync sends the large files
          split = `; small/ ${(small / 1000).toFixed(2)} s (rsync --fsync ${(rSmall / 1000).toFixed(2)} s), large files ${(large / 1000).toFixed(2)} s (rsync --fsync ${(rLarge / 1000).toFixed(2)} s)`;
        } else {
          wall = await timed('');
        }
        console.log(`round ${r + 1}: ${describe(wall, cpu)}${split}`);
      } finally {
        client.close();
        await site.stop('SIGTERM');
        await site.destroy();
      }
    }
  } finally {
    prof?.disconnect();
    await rm(work, { recursive: true, force: true });
  }
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
