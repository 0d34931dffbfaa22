/**
 * A diagnostic, not part of `npm run bench`: the 1-byte change of a 1 GiB
 * file (replication-bench's last row), with the time of every site call.
 *   node dist/bench/change-profile.js [rounds] [plain]
 */
import { closeSync, openSync, writeSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tree } from '../src/native/tree';
import { SiteSync } from '../src/replication/site-sync';
import type { SiteClient } from '../src/site-link/site-client';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { bigFile, ms, settle } from './bench-util';

async function main(): Promise<void> {
  const rounds = Number(process.argv[2] ?? 3);
  const work = await mkdtemp(join(tmpdir(), 'vfsx-cprof-'));
  const site = await DrSiteHarness.start({ maxFrameBytes: 64 << 20 });
  const client = await site.repo({ encryptNew: process.argv[3] !== 'plain' });
  try {
    const calls: string[] = [];
    const timed = new Proxy(client, {
      get(target, prop, recv) {
        const v = Reflect.get(target, prop, recv) as unknown;
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => {
          const r = (v as (...a: unknown[]) => unknown).apply(target, args);
          if (!(r instanceof Promise)) return r;
          const t0 = process.hrtime.bigint();
          return r.then((x) => {
            calls.push(`${String(prop)}${prop === 'call' ? ` ${String(args[0])}` : ''} ${ms(t0).toFixed(1)} ms`);
            return x;
          });
        };
      },
    }) as SiteClient;
    await client.call('bucket.ensure', { bucket: 'bench' });
    const src = join(work, 'src');
    await import('node:fs').then((fs) => fs.mkdirSync(src));
    const gib = join(src, 'gib.bin');
    bigFile(gib, 1024);
    const sync = new SiteSync({ site: timed, bucket: 'bench', tree: Tree.open(src), blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
    await sync.syncPath('gib.bin');
    for (let r = 0; r < rounds; r++) {
      const mid = 512 * 2 ** 20 + 12345 + r * 777777;
      const fd = openSync(gib, 'r+');
      writeSync(fd, Buffer.from([0xa5 ^ r]), 0, 1, mid);
      closeSync(fd);
      if (r % 2 === 0) settle();
      calls.length = 0;
      const t0 = process.hrtime.bigint();
      await sync.syncPath('gib.bin', [[mid, 1]]);
      console.log(`round ${r + 1} (${r % 2 === 0 ? 'cold' : 'warm'}): ${ms(t0).toFixed(1)} ms: ${calls.join(', ')}`);
    }
  } finally {
    client.close();
    await site.destroy();
    await rm(work, { recursive: true, force: true });
  }
}

void main().catch((err) => {
  console.error(err);
  process.exit(1);
});
