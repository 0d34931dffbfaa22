/**
 * Unit tests of bandwidth limits: rates, timetables and the pacing of bytes
 * (the token bucket is the `limiter` package's; what is tested here is how
 * vfsx uses it: pieces, changes of rate while sending, no limit).
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { formatRate, parseRate, Schedule } from '../src/config/bwlimit';
import { createServer, type AddressInfo } from 'node:net';
import { Bandwidth, bwlimitOverride } from '../src/site-link/bandwidth';
import { redisHealth } from '../src/journal/redis-connection';
import { validateConfig } from '../src/config/load-config';
import IORedis from 'ioredis';
import { RedisHarness } from './helpers/redis-harness';

test('rates: units are powers of 1024, off is no limit, nonsense is refused', () => {
  assert.equal(parseRate('off'), 0);
  assert.equal(parseRate('0'), 0);
  assert.equal(parseRate('512k'), 512 * 1024);
  assert.equal(parseRate('5M'), 5 * 1024 * 1024);
  assert.equal(parseRate('2.5MiB/s'), 2.5 * 1024 * 1024);
  assert.equal(parseRate('1G'), 1024 ** 3);
  assert.equal(parseRate('800KB'), 800 * 1024);
  assert.equal(parseRate('65536'), 65536);
  for (const bad of ['', 'fast', '5 X', '-1M', '12', '1e9']) assert.throws(() => parseRate(bad), /rate/, bad);
  assert.equal(formatRate(5 * 1024 * 1024), '5M');
  assert.equal(formatRate(0), 'off');
});

test('timetable: the last entry at or before now holds, wrapping round the day and the week', () => {
  const at = (day: number, hh: number, mm: number) => new Date(2026, 10, 29 + day, hh, mm, 30); // 2026-11-29 is a Sunday
  const daily = Schedule.parse('08:00,512k 18:00,off');
  assert.equal(daily.rateAt(at(1, 7, 59)), 0, 'before 08:00 the previous evening\'s "off" holds');
  assert.equal(daily.rateAt(at(1, 8, 0)), 512 * 1024);
  assert.equal(daily.rateAt(at(1, 17, 59)), 512 * 1024);
  assert.equal(daily.rateAt(at(1, 18, 0)), 0);
  assert.equal(daily.nextChangeIn(at(1, 17, 59)), 30_000, 'the change is at 18:00:00');

  const workdays = Schedule.parse('Mon-08:00,2M Fri-18:00,off');
  assert.equal(workdays.rateAt(at(0, 10, 0)), 0, 'Sunday morning: Friday evening\'s "off" (wrapping round the week)');
  assert.equal(workdays.rateAt(at(3, 3, 0)), 2 * 1024 * 1024, 'Wednesday night: Monday\'s rate');
  const week = Schedule.parse('Mon-08:00,2M Fri-18:00,off 12:00,1M');
  assert.equal(week.rateAt(at(0, 10, 0)), 1024 * 1024, 'Sunday morning: Saturday\'s daily 12:00 entry');
  assert.equal(week.rateAt(at(1, 9, 0)), 2 * 1024 * 1024);
  assert.equal(week.rateAt(at(1, 12, 1)), 1024 * 1024, 'the daily 12:00 entry follows Monday\'s 08:00');
  assert.equal(week.rateAt(at(5, 19, 0)), 0);

  assert.equal(Schedule.parse('5M').nextChangeIn(new Date()), null);
  for (const bad of ['25:00,1M', '08:00', 'Xyz-08:00,1M', '08:00,fast', '8,1M']) assert.throws(() => Schedule.parse(bad), /timetable|time of day|weekday|rate/, bad);
});

test('config: replication.bwlimit is checked when the configuration loads', () => {
  assert.equal(validateConfig({}).replication.bwlimit, 'off');
  assert.equal(validateConfig({ replication: { bwlimit: '08:00,512k 18:00,off' } }).replication.bwlimit, '08:00,512k 18:00,off');
  assert.throws(() => validateConfig({ replication: { bwlimit: '08:00,quick' } }), /replication\/bwlimit.*not a rate/s);
});

test('no limit: take() hands back nothing to wait for', () => {
  const bw = new Bandwidth('off');
  assert.equal(bw.take(10 << 20), undefined);
  assert.equal(bw.sent, 10 << 20);
  assert.equal(bw.limit, 0);
  bw.close();
});

test('a limit paces bytes at its rate, follows an override while sending, and lets go when set off', async () => {
  const bw = new Bandwidth('1M');
  try {
    assert.equal(bw.limit, 1024 * 1024);
    let t0 = Date.now();
    // 512 KiB at 1 MiB/s, from an empty bucket: half a second (not at once, not much more).
    await bw.take(512 * 1024);
    let ms = Date.now() - t0;
    assert.ok(ms >= 420 && ms < 900, `512 KiB at 1 MiB/s took ${ms} ms`);

    bw.setOverride('4M');
    assert.equal(bw.source, 'override');
    t0 = Date.now();
    await bw.take(1024 * 1024);
    ms = Date.now() - t0;
    assert.ok(ms >= 180 && ms < 500, `1 MiB at 4 MiB/s took ${ms} ms`);

    // Set off while a large send waits: it goes at once.
    bw.setOverride('64k');
    const slow = bw.take(8 << 20) as Promise<void>;
    assert.ok(slow instanceof Promise);
    await new Promise((r) => setTimeout(r, 100));
    t0 = Date.now();
    bw.setOverride('off');
    await slow;
    assert.ok(Date.now() - t0 < 1500, 'a send waiting under a limit set off went on');
    assert.equal(bw.take(1), undefined);

    bw.setOverride(null);
    assert.equal(bw.source, 'config');
    assert.equal(bw.limit, 1024 * 1024);
    assert.throws(() => bw.setOverride('quick'));
    assert.equal(bw.limit, 1024 * 1024, 'an override that does not parse changes nothing');
  } finally {
    bw.close();
  }
});

test('a command that asks an unreachable Redis leaves no timer behind: it exits when its work is done', async () => {
  // A port nothing listens on.
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', () => r()));
  const port = (srv.address() as AddressInfo).port;
  await new Promise((r) => srv.close(r));
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timers();
  const cfg = validateConfig({ redis: { host: '127.0.0.1', port } });
  await assert.rejects(bwlimitOverride(cfg.redis));
  assert.equal((await redisHealth(cfg.redis)).reachable, false);
  // ioredis's disconnect() on a socket that had closed already left a 2 s timer holding the process.
  assert.equal(timers(), before, process.getActiveResourcesInfo().join(' '));
});

test('a limit shared through Redis holds for two processes\' buckets together (a real redis-server); without Redis each paces alone', async () => {
  const redis = await RedisHarness.start();
  // As `vfsx replicate` makes its connection for the shared bucket: a take never queues behind a Redis that is away.
  const conns = [0, 1].map(() => new IORedis({ path: redis.socket, maxRetriesPerRequest: 1, enableOfflineQueue: false, lazyConnect: true }));
  const bws = [new Bandwidth('2M'), new Bandwidth('2M')];
  try {
    for (const c of conns) {
      c.on('error', () => undefined);
      await c.connect();
    }
    bws.forEach((bw, i) => bw.shareThrough(conns[i], 'vfsx-test:bwlimit-bucket'));
    // 1 MiB through each at once: 2 MiB at 2 MiB/s together (less the full bucket's 204 KiB), not 1 MiB each at 2 MiB/s (0.5 s).
    let t0 = Date.now();
    await Promise.all(bws.map((bw) => bw.take(1024 * 1024)));
    let ms = Date.now() - t0;
    assert.ok(ms >= 800 && ms < 1600, `2 x 1 MiB through a shared 2 MiB/s took ${ms} ms`);
    assert.equal(bws[0].sharedFailing, false);
    // Redis gone: each paces alone with its own bucket, and says so.
    await redis.stop();
    t0 = Date.now();
    await bws[0].take(512 * 1024);
    ms = Date.now() - t0;
    assert.ok(ms >= 150 && ms < 900, `512 KiB at 2 MiB/s without Redis took ${ms} ms`);
    assert.equal(bws[0].sharedFailing, true);
  } finally {
    for (const bw of bws) bw.close();
    for (const c of conns) c.disconnect();
    await redis.stop().catch(() => undefined);
  }
});
