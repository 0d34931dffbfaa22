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
import { StatusReader } from '../src/operator/status';
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
    // A backlog of big queued jobs: a read parses 200 of them (the records that may be retrying).
    const pad = 'x'.repeat(400_000);
    for (let i = 0; i < 4; i++) {
      await reader.queue.addBulk(Array.from({ length: 75 }, (_, k) => ({ name: 'batch', data: { n: i * 75 + k, pad } })));
    }
    thread.start();
    await thread.read(); // started and warm, as in a running service
    await reader.read();
    const direct = await longestStall(() => reader.read());
    const off = await longestStall(() => thread.read());
    assert.equal(direct.value.journal.queued.waiting, 300);
    assert.deepEqual(off.value.journal.queued, direct.value.journal.queued);
    assert.deepEqual(off.value.shares, direct.value.shares);
    assert.equal(off.value.site.name, direct.value.site.name);
    assert.ok(direct.stallMs > 20, `a direct read holds the loop (${direct.stallMs.toFixed(1)} ms): the backlog is big enough to tell`);
    assert.ok(off.stallMs < direct.stallMs / 4, `the thread's read held the caller's loop ${off.stallMs.toFixed(1)} ms, a direct one ${direct.stallMs.toFixed(1)} ms`);
  } finally {
    await thread.close();
    await reader.close();
  }
  await assert.rejects(thread.read(), /status thread not running/);
});
