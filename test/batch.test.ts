/**
 * Batches: coalescing keeps what order matters (renames, parents before
 * children) and merges the rest; the pump holds records for the settle
 * window and queues them as batches; ShareOrder runs a share's batches one
 * at a time across processes; against a real redis-server.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import pino from 'pino';
import { validateConfig } from '../src/config/load-config';
import type { VfsxConfig } from '../src/config/schema';
import type { ChangeRecord } from '../src/ops/change-record';
import { BATCH, BatchJob, coalesce } from '../src/replication-queue/batch';
import { JournalPump } from '../src/replication-queue/journal-pump';
import { JournalReader } from '../src/operator/journal-reader';
import { ShareOrder } from '../src/replication-queue/share-order';
import { BATCH_FIELD, compareIds, entryPairs, packBatch, recordField } from '../src/journal/stream-ids';
import { RedisHarness } from './helpers/redis-harness';

let seq = 0;
function rec(op: string, path: string, extra: Partial<ChangeRecord> = {}): ChangeRecord {
  seq++;
  return {
    id: `1-1-${seq}`, v: 1, instance: '1-1', pid: 1, seq, share: 's', user: 'u', origpath: '/srv/s', op,
    names: { path }, args: {}, ts: 1000 + seq, outcome: 'confirmed', source: 'live', ...extra,
  };
}

test('records of one path merge into one item at the place of the first; ranges are unioned', () => {
  const items = coalesce([
    rec('mkdir', 'd'), rec('create', 'd/f'), rec('close', 'd/f', { ranges: [[0, 10]] }), rec('setdosattr', 'd'),
    rec('close', 'd/g', { ranges: [[0, 5]] }), rec('utimes', 'd/g'), rec('close', 'd/g', { ranges: [[100, 5]] }),
  ]);
  assert.deepEqual(items.map((i) => [i.rec.names.path, i.merged]), [['d', 2], ['d/f', 2], ['d/g', 3]]);
  assert.equal(items[0].rec.op, 'setdosattr', 'the latest record stands for the item');
  assert.equal(items[1].ranges, undefined, 'a create needs the whole file');
  assert.deepEqual(items[2].ranges, [[0, 5], [100, 5]], 'a metadata change does not widen the ranges');
  assert.equal(items[2].ts, 1000 + seq, 'the item covers its latest record');
  assert.equal(items[0].ranges, undefined, 'metadata only: the sync decides from the file');
});

test('an item is read whole when a merged record changed content without ranges (create, truncate), not for metadata or ranged writes', () => {
  const r = rec;
  const items = coalesce([
    r('create', 'new.txt'), r('close', 'new.txt', { ranges: [[0, 10]] }),
    r('chmod', 'meta.txt'), r('utimes', 'meta.txt'),
    r('close', 'ranged.bin', { ranges: [[4096, 1]] }),
    r('close', 'cut.bin', { ranges: [[0, 5]] }), r('truncate', 'cut.bin'),
  ]);
  assert.deepEqual(items.map((i) => [i.rec.names.path, i.whole, i.ranges]), [
    ['new.txt', true, undefined], ['meta.txt', false, undefined], ['ranged.bin', false, [[4096, 1]]], ['cut.bin', true, undefined],
  ]);
});

test('an item keeps the inode its ranges were written to; ranges written to two files at one name make it whole', () => {
  const items = coalesce([
    rec('close', 'a', { ranges: [[0, 10]], args: { flags: '', ino: '1f' } }), rec('setdosattr', 'a'), rec('close', 'a', { ranges: [[20, 5]], args: { flags: '', ino: '1f' } }),
    rec('close', 'b', { ranges: [[0, 10]], args: { flags: '', ino: '2a' } }), rec('close', 'b', { ranges: [[50, 10]], args: { flags: '', ino: '2b' } }),
    rec('close', 'c', { ranges: [[0, 10]] }),
  ]);
  assert.deepEqual(items.map((i) => [i.rec.names.path, i.ino, i.whole, i.ranges]), [
    ['a', '1f', false, [[0, 10], [20, 5]]],
    ['b', '2b', true, undefined],
    ['c', undefined, false, [[0, 10]]],
  ]);
});

test('renames and links stay in place and are never merged across', () => {
  const items = coalesce([
    rec('close', 'a', { ranges: [[0, 1]] }), rec('rename', 'a', { names: { path: 'a', to: 'b' } }),
    rec('close', 'a', { ranges: [[0, 1]] }), rec('link', 'c', { names: { path: 'c', from: 'a' } }), rec('unlink', 'a'),
  ]);
  assert.deepEqual(items.map((i) => `${i.rec.op} ${i.rec.names.path}`), ['close a', 'rename a', 'close a', 'link c', 'unlink a']);
});

test('a file created, written, renamed and deleted in one batch: one item per name between the rename', () => {
  const items = coalesce([
    rec('create', 'tmp'), rec('close', 'tmp', { ranges: [[0, 4096]] }), rec('rename', 'tmp', { names: { path: 'tmp', to: 'doc' } }),
    rec('close', 'doc', { ranges: [[0, 1]] }), rec('unlink', 'doc'),
  ]);
  assert.deepEqual(items.map((i) => `${i.rec.op} ${i.rec.names.path}`), ['close tmp', 'rename tmp', 'unlink doc']);
  assert.equal(items[2].ranges, undefined);
});

let redis: RedisHarness;
let conn: IORedis;
before(async () => {
  redis = await RedisHarness.start();
  conn = new IORedis({ path: redis.socket });
});
after(async () => {
  conn?.disconnect();
  await redis?.stop();
});

test('a packed group commit reads back as its reports in order; entries of the older field/value form read as before', () => {
  const rec = JSON.stringify({ id: 'i-1', path: 'a\nb', note: 'line\r\nbreak' });
  const lines = [`r${rec}`, 'oi-1 0', 'r{}', 'oi-2 13'];
  assert.deepEqual([...entryPairs([BATCH_FIELD, packBatch(lines)])], [['r', rec], ['o', 'i-1 0'], ['r', '{}'], ['o', 'i-2 13']]);
  assert.deepEqual([...entryPairs(['r', rec, 'o', 'i-1 0'])], [['r', rec], ['o', 'i-1 0']]);
  assert.deepEqual([...entryPairs([BATCH_FIELD, ''])], []);
});

test('status picks id, share and ts out of a record without parsing it, whatever the names and arguments hold', () => {
  for (const r of [
    rec('create', 'plain.txt'),
    rec('rename', 'a"share":"x".txt', { names: { path: 'a"share":"x".txt', to: '"ts":1,"id":"y"' } }),
    { ...rec('mkdir', 'd'), share: 'sh"are\\\\', id: 'i\\"d' },
    { ...rec('create', 'f'), args: { ts: 7, id: 'q', share: 'z' } },
  ]) {
    const json = JSON.stringify(r);
    assert.equal(recordField(json, 'id'), r.id, json);
    assert.equal(recordField(json, 'share'), r.share, json);
    assert.equal(recordField(json, 'ts'), r.ts, json);
  }
  assert.equal(recordField('not json', 'id'), undefined);
});

test('ShareOrder: a batch runs only when every earlier batch of its share is done; shares are independent', async () => {
  const order = new ShareOrder(conn, 'o1');
  const first = await order.allocate('s', 3);
  assert.equal(first, 1);
  assert.equal(await order.allocate('t', 1), 1, 'numbers are per share');
  const p = conn.pipeline();
  for (const n of [1, 2, 3]) order.open(p, 's', n);
  order.open(p, 't', 1);
  await p.exec();
  const exists = async () => true;
  assert.deepEqual(await order.turn('s', 2, exists), { mine: false, ahead: 1 });
  assert.deepEqual(await order.turn('s', 3, exists), { mine: false, ahead: 2 });
  assert.equal((await order.turn('t', 1, exists)).mine, true);
  assert.equal((await order.turn('s', 1, exists)).mine, true);
  assert.equal(await order.done('s', 1), 2, 'done names the next batch');
  assert.equal((await order.turn('s', 2, exists)).mine, true);
  assert.equal((await order.turn('s', 3, exists)).mine, false);
  assert.equal(await order.done('s', 2), 3);
  assert.equal(await order.done('s', 3), null);
});

test('ShareOrder: a batch whose job never came (the pump died in between) is skipped after the grace period, not before', async () => {
  const order = new ShareOrder(conn, 'o2', 300);
  const p = conn.pipeline();
  order.open(p, 's', 1);
  order.open(p, 's', 2);
  await p.exec();
  const onlyTwo = async (n: number) => n === 2;
  assert.equal((await order.turn('s', 2, onlyTwo)).mine, false, 'within the grace period the job may still be on its way');
  await new Promise((r) => setTimeout(r, 400));
  assert.equal((await order.turn('s', 2, onlyTwo)).mine, true);
  const withJob = new ShareOrder(conn, 'o3', 0);
  const q = conn.pipeline();
  withJob.open(q, 's', 1);
  withJob.open(q, 's', 2);
  await q.exec();
  assert.equal((await withJob.turn('s', 2, async () => true)).mine, false, 'an existing earlier job is never skipped');
});

test('ShareOrder: a batch parked just as the batch before it finished is woken at once, not after its fallback delay', async () => {
  const order = new ShareOrder(conn, 'o4');
  const p = conn.pipeline();
  for (const n of [1, 2, 3]) order.open(p, 's', n);
  await p.exec();
  const exists = async () => true;
  const parked: number[] = [];
  let woken = 0;
  // Batch 1 finishes while batch 2 is being parked (it looked too early to find 2 parked).
  const racing = async (ms: number) => { parked.push(ms); await order.done('s', 1); };
  assert.equal(await order.waitTurn('s', 2, exists, racing, async () => { woken++; }), false);
  assert.deepEqual(parked, [1100], 'parked with a fallback of 1 s + 100 ms per batch ahead');
  assert.equal(woken, 1, 'it looked again after parking and woke itself');
  // Batch 3, two ahead... now one (2): parked, and nothing finishes meanwhile: not woken.
  assert.equal(await order.waitTurn('s', 3, exists, async (ms) => { parked.push(ms); }, async () => { woken++; }), false);
  assert.deepEqual(parked, [1100, 1100]);
  assert.equal(woken, 1);
  assert.equal(await order.waitTurn('s', 2, exists, async () => assert.fail('its turn: never parked'), async () => assert.fail('never woken')), true);
});

/** A pump over its own prefix, with the given settle window and batch size. */
function pumpFor(prefix: string, settleMs: number, batchMax: number, more: { enabled?: boolean; keepRecords?: number; yieldMs?: number; yieldRate?: number } = {}): { pump: JournalPump; cfg: VfsxConfig } {
  const cfg = validateConfig({
    redis: { path: redis.socket, prefix },
    journal: { pumpIntervalMs: 0, sweepIntervalMs: 60_000, ...(more.keepRecords === undefined ? {} : { keepRecords: more.keepRecords }) },
    replication: { enabled: more.enabled ?? true, settleMs, batchMax, yieldMs: more.yieldMs ?? 0, yieldRate: more.yieldRate ?? 250 },
  });
  const pump = new JournalPump({ redis: cfg.redis, journal: cfg.journal, replication: cfg.replication, logger: pino({ level: 'silent' }) });
  return { pump, cfg };
}

/** Appends records (complete, or pending with their outcome in a later entry) as the service's group commits do. */
async function append(prefix: string, recs: ChangeRecord[]): Promise<void> {
  await conn.xadd(`${prefix}:journal`, '*', BATCH_FIELD, packBatch(recs.map((r) => `r${JSON.stringify(r)}`)));
}

async function batchJobs(prefix: string): Promise<Array<{ seq: number; paths: string[] }>> {
  const q = new Queue('journal', { connection: conn, prefix });
  const jobs = await q.getJobs(['waiting', 'delayed', 'prioritized'], 0, -1, true);
  return jobs.filter((j) => j.name === BATCH).map((j) => ({ seq: (j.data as BatchJob).seq, paths: (j.data as BatchJob).records.map((r) => r.names.path) }))
    .sort((a, b) => a.seq - b.seq);
}

const until = async (what: string, cond: () => Promise<boolean>, ms = 5000) => {
  for (const end = Date.now() + ms; Date.now() < end;) {
    if (await cond()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
};

test('the pump holds a share\'s records for the settle window and queues them as one batch; status counts them meanwhile', async () => {
  const { pump, cfg } = pumpFor('p1', 600, 500);
  const reader = new JournalReader({ redis: cfg.redis, queueName: cfg.journal.queueName });
  pump.start();
  try {
    const t0 = Date.now();
    for (let round = 0; round < 4; round++) {
      await append('p1', [rec('mkdir', `d${round}`), rec('create', `d${round}/f`)]);
      await new Promise((r) => setTimeout(r, 50));
    }
    await until('the pump to read the stream', async () => (await reader.backlog()).unpumped === 8);
    assert.deepEqual(await batchJobs('p1'), [], 'nothing queued within the settle window');
    await until('the batch', async () => (await batchJobs('p1')).length > 0);
    assert.ok(Date.now() - t0 >= 600, 'not before the settle window');
    assert.deepEqual(await batchJobs('p1'), [{ seq: 1, paths: ['d0', 'd0/f', 'd1', 'd1/f', 'd2', 'd2/f', 'd3', 'd3/f'] }]);
    assert.equal((await reader.backlog()).unpumped, 0);
  } finally {
    await pump.close();
    await reader.close();
  }
});

test('the pump queues full batches at once; records it held when it stopped are queued after a restart, none twice', async () => {
  const a = pumpFor('p2', 500, 3);
  a.pump.start();
  await append('p2', [rec('mkdir', 'a1'), rec('mkdir', 'a2'), rec('mkdir', 'a3'), rec('mkdir', 'a4')]);
  await until('the full batch', async () => (await batchJobs('p2')).length === 1);
  assert.deepEqual(await batchJobs('p2'), [{ seq: 1, paths: ['a1', 'a2', 'a3'] }], 'batchMax records go at once, the rest waits');
  // A pending record whose outcome comes in a later entry; the pump stops while holding it and a4.
  const pending = rec('rename', 'a5', { outcome: 'pending', names: { path: 'a5', to: 'a6' } });
  await append('p2', [pending]);
  // An outcome in the field/value form of entries written before batches were packed: still read.
  await conn.xadd('p2:journal', '*', 'o', `${pending.id} 0`);
  const held = async () => (JSON.parse((await conn.hget('p2:journal:cursor', 'held')) ?? '{}') as Record<string, [number, number]>).s?.[0] ?? 0;
  await until('the checkpoint of two held records', async () => (await held()) === 2);
  await a.pump.close();
  const b = pumpFor('p2', 100, 3);
  b.pump.start();
  try {
    await until('the held records after the restart', async () => (await batchJobs('p2')).length === 2);
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(await batchJobs('p2'), [{ seq: 1, paths: ['a1', 'a2', 'a3'] }, { seq: 2, paths: ['a4', 'a5'] }]);
    assert.equal(await held(), 0);
  } finally {
    await b.pump.close();
  }
});

test('during a burst of a share\'s changes the pump holds them past the settle window until the burst ends, and no longer than yieldMs beyond it', async () => {
  // settle 200 ms, yield 800 ms; a burst is more than 50 changes/s (10 within 200 ms: one append below).
  const { pump } = pumpFor('p5', 200, 500, { yieldMs: 800, yieldRate: 50 });
  pump.start();
  const burst = async (ms: number, tag: string) => {
    let n = 0;
    for (const end = Date.now() + ms; Date.now() < end;) {
      await append('p5', Array.from({ length: 10 }, () => rec('mkdir', `${tag}${n++}`)));
      await new Promise((r) => setTimeout(r, 25)); // about 400 changes/s
    }
    return n;
  };
  try {
    // A burst of 600 ms: past the settle window, nothing is queued while it goes on...
    const n1 = await burst(600, 'a');
    assert.deepEqual(await batchJobs('p5'), [], 'nothing queued during the burst, though its first changes settled 400 ms ago');
    // ...and all of it together once it has ended.
    const ended = Date.now();
    await until('the batch after the burst', async () => (await batchJobs('p5')).length === 1, 2000);
    assert.ok(Date.now() - ended < 900, `queued soon after the burst ended (${Date.now() - ended} ms), not at the end of the yield`);
    assert.equal((await batchJobs('p5'))[0].paths.length, n1, 'the whole burst in one batch');
    // A burst longer than settle + yield: its first changes go while it still goes on.
    let during = 0;
    const t0 = Date.now();
    const long = burst(2200, 'b');
    await until('a batch during the long burst', async () => (await batchJobs('p5')).length === 2, 3000);
    during = Date.now() - t0;
    await long;
    assert.ok(during >= 900 && during < 2100, `the hold ends at settle + yield (${during} ms after the burst began), before the burst does`);
    await until('the rest after the long burst', async () => (await batchJobs('p5')).length === 3, 3000);
    const jobs = await batchJobs('p5');
    assert.deepEqual(jobs.map((j) => j.seq), [1, 2, 3]);
    assert.ok(jobs.slice(1).every((j) => j.paths.every((p) => p.startsWith('b'))), 'journal order kept');
  } finally {
    await pump.close();
  }
});

test('with replication off the pump queues nothing, keeps only the newest journal.keepRecords records, and marks sites fed before for a full sync', async () => {
  // A site fed before replication was turned off.
  await conn.sadd('p3:state:sites', 'default');
  await conn.hset('p3:state:site', 'createdAt', Date.now());
  await conn.sadd('p3:state:shares', 's');
  await conn.hset('p3:state:scrub:s', 'lastMetadataAt', 1, 'lastContentAt', 1);
  const { pump, cfg } = pumpFor('p3', 0, 500, { enabled: false, keepRecords: 5 });
  const reader = new JournalReader({ redis: cfg.redis, queueName: cfg.journal.queueName });
  pump.start();
  try {
    await until('the site marked for a full sync', async () => (await conn.hget('p3:state:site', 'initialSync')) === 'pending');
    assert.deepEqual(await conn.hgetall('p3:state:scrub:s'), {}, 'its scrub history voided: every share gets the full pass');
    const recs = Array.from({ length: 8 }, (_, i) => rec('mkdir', `k${i}`));
    await append('p3', recs.slice(0, 3));
    await until('the first records kept', async () => (await reader.queued()).length === 3);
    await append('p3', recs.slice(3));
    await until('the cap', async () => (await reader.queued()).at(-1)?.names.path === 'k7');
    assert.deepEqual((await reader.queued()).map((r) => r.names.path), ['k3', 'k4', 'k5', 'k6', 'k7'], 'the newest five, oldest first');
    assert.equal(await conn.llen('p3:recent-ops'), 5);
    assert.deepEqual(await batchJobs('p3'), [], 'no job: no replicator would ever take it');
    const left = await conn.keys('p3:*');
    // (p3:journal:meta comes from the probes' own Queue objects.)
    assert.deepEqual(left.filter((k) => /:(rpo|order)/.test(k) || k.startsWith('p3:journal:') && !/:(cursor|meta)$/.test(k)), [], 'no RPO, order or queue keys');
    assert.equal((await reader.backlog()).queued, 0, 'nothing counts as backlog');
  } finally {
    await pump.close();
    await reader.close();
  }
  // Turned on: changes are queued again, and what was kept while off is history, not backlog.
  const on = pumpFor('p3', 0, 500);
  on.pump.start();
  try {
    await append('p3', [rec('mkdir', 'after')]);
    await until('a batch', async () => (await batchJobs('p3')).length === 1);
    assert.deepEqual(await batchJobs('p3'), [{ seq: 1, paths: ['after'] }]);
    assert.equal(await conn.exists('p3:recent-ops'), 0);
  } finally {
    await on.pump.close();
  }
});

test('stream ids order as numbers (ms, then seq) without BigInts, edge cases included', () => {
  const big = (id: string) => { const [m, s] = id.split('-'); return [BigInt(m), BigInt(s ?? '0')] as const; };
  const ref = (a: string, b: string) => { const [am, as] = big(a); const [bm, bs] = big(b); return am !== bm ? (am < bm ? -1 : 1) : as === bs ? 0 : as < bs ? -1 : 1; };
  const ids = ['0-0', '0-1', '0', '1-0', '9-9', '10-0', '9-10', '99-0', '100-0', '1733560000000-0', '1733560000000-1', '1733560000000-10',
    '1733560000000-9', '1733560000001-0', '999999999999-5', '18446744073709551615-18446744073709551615', '1733560000000'];
  for (let i = 0; i < 2000; i++) ids.push(`${Math.floor(Math.random() * 10 ** (1 + (i % 14)))}-${Math.floor(Math.random() * 10 ** (i % 5))}`);
  for (const a of ids) for (const b of ids.slice(0, 60)) {
    assert.equal(compareIds(a, b), ref(a, b), `${a} vs ${b}`);
    assert.equal(compareIds(b, a), ref(b, a), `${b} vs ${a}`);
  }
});
