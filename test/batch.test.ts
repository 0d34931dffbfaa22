/**
 * Batches: coalescing keeps what order matters (renames, parents before
 * children) and merges the rest; ShareOrder runs a share's batches one at a
 * time across processes, against a real redis-server.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import IORedis from 'ioredis';
import type { ChangeRecord } from '../src/ops/change-record';
import { coalesce } from '../src/replication-queue/batch';
import { ShareOrder } from '../src/replication-queue/share-order';
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
