/**
 * npm run fuzz: millions of hostile inputs where hostile bytes come in
 * (test/helpers/fuzz.ts): bridge frames through the decoder, parser and op
 * table (VFSX_FUZZ_FRAMES, default 10M) and into the real service's socket
 * (VFSX_FUZZ_SOCKET_FRAMES, default 1M),
 * JSON-RPC and binary frames into a real DR site (VFSX_FUZZ_RPC, default
 * 1M), hostile object lists into restore (VFSX_FUZZ_RESTORES, default
 * 2,000). VFSX_FUZZ_SEED replays a run. Exits 1 on any finding.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FuzzResult, fuzzBridgeFrames, fuzzBridgeSocket, fuzzDrSite, fuzzRestore, randomSeed } from '../test/helpers/fuzz';
import { RedisHarness } from '../test/helpers/redis-harness';
import { ServiceHarness } from '../test/helpers/service-harness';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';

const n = (name: string, d: number) => Number(process.env[name] ?? d);

function report(what: string, r: FuzzResult): void {
  process.stdout.write(`| ${what} | ${r.inputs.toLocaleString('en-US')} | ${r.refused.toLocaleString('en-US')} | ${(r.ms / 1000).toFixed(1)} s | ${r.findings.length} |\n`);
  for (const f of r.findings.slice(0, 20)) process.stdout.write(`    FINDING: ${f}\n`);
}

async function main(): Promise<void> {
  const seed = n('VFSX_FUZZ_SEED', randomSeed());
  process.stdout.write(`fuzz seed ${seed}\n\n| target | inputs | cleanly refused | time | findings |\n|---|---|---|---|---|\n`);
  const results: FuzzResult[] = [];
  results.push(fuzzBridgeFrames(n('VFSX_FUZZ_FRAMES', 10_000_000), seed));
  report('bridge frames in process (decoder, parser, op table)', results[0]);
  const redis = await RedisHarness.start();
  const svc = await ServiceHarness.create({ redisSocket: redis.socket });
  try {
    await svc.start();
    results.push(await fuzzBridgeSocket(svc.socket, n('VFSX_FUZZ_SOCKET_FRAMES', 1_000_000), seed, () => svc.alive));
    report('bridge frames into the real service socket', results[results.length - 1]);
  } finally {
    await svc.destroy();
    await redis.stop();
  }
  const site = await DrSiteHarness.start({ maxFrameBytes: 16 << 20 });
  try {
    results.push(await fuzzDrSite(site.url, site.token, n('VFSX_FUZZ_RPC', 1_000_000), seed, () => site.alive));
    report('DR site JSON-RPC and binary frames', results[results.length - 1]);
  } finally {
    await site.destroy();
  }
  const sandbox = await mkdtemp(join(tmpdir(), 'vfsx-fuzz-'));
  try {
    results.push(await fuzzRestore(join(sandbox, 'box'), n('VFSX_FUZZ_RESTORES', 2000), seed));
    report('hostile object lists into restore', results[results.length - 1]);
  } finally {
    await rm(sandbox, { recursive: true, force: true });
  }
  process.exitCode = results.some((r) => r.findings.length > 0) ? 1 : 0;
}

main().catch((err) => {
  process.stderr.write(`fuzz failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
