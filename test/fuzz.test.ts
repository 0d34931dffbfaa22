/**
 * The short version of `npm run fuzz` (bench/fuzz.ts): hostile bridge
 * frames, hostile JSON-RPC into a real DR site, hostile object lists into
 * restore. A new seed each run (printed); a finding names its seed.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fuzzBridgeFrames, fuzzBridgeSocket, fuzzDrSite, fuzzRestore, randomSeed } from './helpers/fuzz';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness } from './helpers/service-harness';
import { DrSiteHarness } from './helpers/dr-site-harness';

const seed = Number(process.env.VFSX_FUZZ_SEED ?? randomSeed());

test(`200,000 hostile bridge frames are refused with a stable error code, never an exception (seed ${seed})`, () => {
  const r = fuzzBridgeFrames(200_000, seed);
  assert.deepEqual(r.findings, []);
  assert.ok(r.refused > r.inputs / 10, `${r.refused} of ${r.inputs} refused: the fuzzer must reach the refusals`);
});

test(`20,000 hostile frames into the real service's bridge socket leave it up and answering verdicts (seed ${seed})`, async () => {
  const redis = await RedisHarness.start();
  const svc = await ServiceHarness.create({ redisSocket: redis.socket });
  try {
    await svc.start();
    const r = await fuzzBridgeSocket(svc.socket, 20_000, seed, () => svc.alive);
    assert.deepEqual(r.findings, []);
    assert.ok(r.refused > 10, `${r.refused} connections closed for a protocol error`);
  } finally {
    await svc.destroy();
    await redis.stop();
  }
});

test(`30,000 hostile JSON-RPC and binary frames leave the DR site up and answering (seed ${seed})`, async () => {
  const site = await DrSiteHarness.start();
  try {
    const r = await fuzzDrSite(site.url, site.token, 30_000, seed, () => site.alive);
    assert.deepEqual(r.findings, []);
    assert.ok(r.refused > 1000, `${r.refused} answers`);
    assert.ok(site.alive);
  } finally {
    await site.destroy();
  }
});

test(`300 hostile object lists make restore refuse or fail, never write outside DEST or crash (seed ${seed})`, async () => {
  const sandbox = await mkdtemp(join(tmpdir(), 'vfsx-fuzz-'));
  try {
    const r = await fuzzRestore(join(sandbox, 'box'), 300, seed);
    assert.deepEqual(r.findings, []);
    assert.ok(r.refused > 0);
    // Most rounds get past the listing's pages into restore itself (else this fuzzed only the paging).
    assert.ok((r.restored ?? 0) > 100, `${r.restored} of 300 rounds restored`);
  } finally {
    await rm(sandbox, { recursive: true, force: true });
  }
});
