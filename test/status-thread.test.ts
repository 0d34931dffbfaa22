/**
 * The service reads its status (for alerts, the dashboard and /metrics) in a
 * worker thread: a read parses queued jobs, and on the main thread it held
 * the event loop that answers verdicts. Against a real redis-server.
 */
import assert from 'node:assert/strict';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { validateConfig } from '../src/config/load-config';
import { sitesOf } from '../src/config/schema';
import IORedis from 'ioredis';
import { Worker } from 'bullmq';
import { stateKeys } from '../src/journal/redis-connection';
import { StatusReader } from '../src/operator/status';
import { REPLICATION_JOB_OPTIONS, rpoMember } from '../src/replication-queue/batch';
import { StatusThread } from '../src/service/status-thread';
import { RedisHarness } from './helpers/redis-harness';

let redis: RedisHarness;

before(async () => {
  redis = await RedisHarness.start();
});

after(async () => {
  await redis?.stop();
});

/** The longest the caller's event loop was held (ms) while fn ran. */
async function longestStall<T>(fn: () => Promise<T>): Promise<{ value: T; stallMs: number }> {
  const h = monitorEventLoopDelay({ resolution: 1 });
  h.enable();
  try {
    const value = await fn();
    return { value, stallMs: h.max / 1e6 };
  } finally {
    h.disable();
  }
}

test('a status read in the status thread matches a direct read and leaves the caller\'s event loop free while it parses a backlog', async () => {
  const cfg = validateConfig({ redis: { path: redis.socket, prefix: 'st' }, replication: { enabled: true } });
  const reader = new StatusReader(cfg);
  const thread = new StatusThread({ config: cfg, logger: pino({ level: 'silent' }) });
  try {
    // A backlog of big queued jobs, each the oldest uncommitted change of a share: a read parses
    // their data for the backlog's files and bytes (the oldest SAMPLE records per share).
    const pad = 'x'.repeat(400_000);
    const conn = new IORedis({ path: redis.socket });
    for (let i = 0; i < 4; i++) {
      const jobs = await reader.queue.addBulk(Array.from({ length: 75 }, (_, k) => {
        const n = i * 75 + k;
        return { name: 'batch', data: { share: 'docs', seq: n + 1, records: [{ id: `r${n}`, share: 'docs', op: 'close', names: { path: `f${n}` }, ranges: [[0, 4096]], ts: 1, seq: n, outcome: 'confirmed' }], pad } };
      }));
      const p = conn.pipeline().sadd(stateKeys('st').shares, 'docs');
      jobs.forEach((j, k) => p.zadd(stateKeys('st').rpo('docs'), Date.now() - 1000 + i * 75 + k, rpoMember(String(j.id), 0)));
      await p.exec();
    }
    await conn.quit();
    thread.start();
    await thread.read(); // started and warm, as in a running service
    await reader.read();
    const direct = await longestStall(() => reader.read());
    const off = await longestStall(() => thread.read());
    assert.equal(direct.value.journal.queued.waiting, 300);
    assert.deepEqual(off.value.journal.queued, direct.value.journal.queued);
    const timeless = (v: typeof off.value) => v.shares.map(({ rpoAgeSeconds: _, ...rest }) => rest);
    assert.deepEqual(timeless(off.value), timeless(direct.value));
    assert.deepEqual(direct.value.shares[0].backlog, { records: 300, files: 300, bytes: 300 * 4096, exact: true }, 'the jobs were read');
    assert.equal(off.value.site.name, direct.value.site.name);
    assert.ok(direct.stallMs > 20, `a direct read holds the loop (${direct.stallMs.toFixed(1)} ms): the backlog is big enough to tell`);
    assert.ok(off.stallMs < direct.stallMs / 4, `the thread's read held the caller's loop ${off.stallMs.toFixed(1)} ms, a direct one ${direct.stallMs.toFixed(1)} ms`);
  } finally {
    await thread.close();
    await reader.close();
  }
  await assert.rejects(thread.read(), /status thread not running/);
});

test('a status read lists the jobs that were tried with their error, without reading the data of queued jobs that were not', async () => {
  const cfg = validateConfig({ redis: { path: redis.socket, prefix: 'rt' }, replication: { enabled: true } });
  const reader = new StatusReader(cfg);
  const conn = new IORedis({ path: redis.socket });
  const workerConn = new IORedis({ path: redis.socket, maxRetriesPerRequest: null });
  const worker = new Worker(reader.queue.name, async () => {
    throw new Error('site said no');
  }, { connection: workerConn, prefix: 'rt', autorun: false,
    settings: { backoffStrategy: () => 3_600_000 } });
  try {
    const rec = (path: string) => ({ id: path, share: 'docs', op: 'create', names: { path }, ts: Date.now(), seq: 1, outcome: 'confirmed' });
    // One job fails once (and waits an hour for its next attempt), then 150 big ones are queued untried.
    await reader.queue.add('batch', { share: 'docs', seq: 1, records: [rec('tried.txt')] }, { ...REPLICATION_JOB_OPTIONS, jobId: 'tried' });
    const failed = new Promise<void>((resolve) => worker.once('failed', () => resolve()));
    worker.run().catch(() => undefined);
    await failed;
    await worker.close();
    const pad = 'x'.repeat(400_000);
    await reader.queue.addBulk(Array.from({ length: 150 }, (_, k) => ({ name: 'batch', data: { share: 'docs', seq: k + 2, records: [rec(`f${k}`)], pad } })));
    assert.equal((await reader.queue.getJobCounts('waiting')).waiting, 150);
    const sent = async () => Number(/total_net_output_bytes:(\d+)/.exec(await conn.info('stats'))?.[1]);
    const before = await sent();
    const retrying = await reader.retrying();
    const bytes = (await sent()) - before;
    assert.deepEqual(retrying, [{ jobId: 'tried', share: 'docs', path: 'tried.txt', op: 'create', attempts: 1, error: 'site said no', site: sitesOf(cfg.replication)[0].name }]);
    // 150 x 400 KB queued: reading their data would send 60 MB; ids and two fields each are a few KB.
    assert.ok(bytes < 200_000, `the read took ${bytes} bytes from Redis`);
  } finally {
    await worker.close();
    await workerConn.quit();
    await conn.quit();
    await reader.close();
  }
});
