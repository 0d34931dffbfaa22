// scratch: small files only vs big files only (not committed)
import { mkdirSync, writeFileSync, readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tree } from '../src/native/tree';
import { SiteSync } from '../src/replication/site-sync';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { bigFile, ms, settle } from './bench-util';
function fltOf(pid: number) { const f = readFileSync(`/proc/${pid}/stat`, 'utf8'); const v = f.slice(f.lastIndexOf(')') + 2).split(' '); return Number(v[7]); }
function cpuOf(pid: number) { const f = readFileSync(`/proc/${pid}/stat`, 'utf8'); const v = f.slice(f.lastIndexOf(')') + 2).split(' '); return Number(v[11]) / 100 + Number(v[12]) / 100; }
async function main() {
  const work = await mkdtemp(join(tmpdir(), 'vfsx-split-'));
  const small = join(work, 'small'); const big = join(work, 'big');
  mkdirSync(small); mkdirSync(big);
  for (let d = 0; d < 20; d++) { mkdirSync(join(small, `d${d}`)); for (let i = 0; i < 100; i++) writeFileSync(join(small, `d${d}`, `f${i}`), randomBytes(4096)); }
  for (let i = 0; i < 4; i++) bigFile(join(big, `big${i}`), 64);
  for (let r = 0; r < Number(process.argv[2] ?? 2); r++) for (const [name, src] of [['small', small], ['big', big]]) {
    const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
    const client = await site.repo({ encryptNew: process.argv[3] !== 'plain' });
    try {
      await client.call('bucket.ensure', { bucket: 'bench' });
      const sync = new SiteSync({ site: client, bucket: 'bench', tree: Tree.open(src), blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
      settle();
      const c0 = process.cpuUsage(); const s0 = cpuOf(site.pid as number); const f0 = fltOf(process.pid), g0 = fltOf(site.pid as number); const t0 = process.hrtime.bigint();
      await sync.syncTree('');
      const wall = ms(t0); const c = process.cpuUsage(c0);
      console.log(`${name}: ${(wall / 1000).toFixed(2)} s; CPU replicator ${((c.user + c.system) / 1e6).toFixed(2)} site ${(cpuOf(site.pid as number) - s0).toFixed(2)}; minflt replicator ${fltOf(process.pid) - f0} site ${fltOf(site.pid as number) - g0}`);
    } finally { client.close(); await site.stop('SIGTERM'); await site.destroy(); }
  }
  await rm(work, { recursive: true, force: true });
}
void main();
