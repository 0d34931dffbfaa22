/**
 * Failure modes with real parts: the service stopped, frozen (SIGSTOP) or
 * refusing; smbd must keep serving (fail-open) or fail cleanly (deny), never
 * hang, and no change may be lost.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { waitForRecords } from './helpers/journal-client';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness } from './helpers/service-harness';
import { SmbSession } from './helpers/smb-session';
import { SmbdHarness } from './helpers/smbd-harness';
import { waitFor } from './helpers/wait-for';

let redis: RedisHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;
const TIMEOUT_MS = 400;

before(async () => {
  redis = await RedisHarness.start();
  svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    // create is judged by policy, so it waits for verdicts; mkdir, close, ... are async.
    policy: [{ action: 'deny', ops: ['create'], extensions: ['.locked'] }],
    extra: { redis: { path: redis.socket, writeTimeoutMs: 200 } },
  });
  (svc.config.redis as Record<string, unknown>).prefix = svc.prefix;
  await svc.rewriteConfig();
  await svc.start();
  smbd = await SmbdHarness.start([
    { name: 'open', vfsx: { socket: svc.socket, spool: svc.spool, timeoutMs: TIMEOUT_MS, onFailure: 'allow' } },
    { name: 'closed', vfsx: { socket: svc.socket, spool: svc.spool, timeoutMs: TIMEOUT_MS, onFailure: 'deny' } },
  ]);
});

after(async () => {
  await smbd?.destroy();
  await svc?.destroy();
  await redis?.stop();
});

const spoolFiles = async () => (await readdir(svc.spool).catch(() => [] as string[])).filter((n) => n.endsWith('.spool'));

test('with the service stopped the same SMB session keeps working, the spool holds the ops, and after restart the journal has them all', async () => {
  const s = await SmbSession.open(smbd.port, 'open');
  try {
    assert.deepEqual((await s.run('mkdir before')).statuses, []);
    await waitForRecords(svc, 'mkdir before', (r) => r.some((x) => x.op === 'mkdir' && x.names.path === 'before'));
    await svc.stop();
    for (const cmd of ['mkdir during', 'put /etc/hostname during/f.txt', 'rename during/f.txt during/g.txt', 'mkdir during/sub', 'rmdir during/sub']) {
      assert.deepEqual((await s.run(cmd)).statuses, [], cmd);
    }
    assert.ok(existsSync(join(smbd.sharePath('open'), 'during/g.txt')));
    assert.equal((await spoolFiles()).length, 1, 'one spool file for the one smbd process');
    await svc.start();
    assert.deepEqual((await s.run('mkdir after')).statuses, []);
    const recs = await waitForRecords(svc, 'spooled and live records', (r) =>
      ['mkdir during', 'create during/f.txt', 'close during/f.txt', 'rename during/f.txt', 'mkdir during/sub', 'rmdir during/sub', 'mkdir after']
        .every((want) => r.some((x) => `${x.op} ${x.names.path}` === want)));
    const spooled = recs.filter((r) => r.source === 'spool');
    assert.ok(spooled.some((r) => r.op === 'rename' && r.names.to === 'during/g.txt' && r.outcome === 'confirmed'));
    await waitFor('spool ingested and removed', async () => (await spoolFiles()).length === 0);
  } finally {
    await s.close();
  }
});

test('with the service frozen (SIGSTOP) an operation that needs a verdict completes within the timeout and is not lost', async () => {
  const s = await SmbSession.open(smbd.port, 'open');
  try {
    await s.run('put /etc/hostname warm.txt');
    svc.signal('SIGSTOP');
    const r = await s.run('put /etc/hostname frozen.txt', 10000);
    assert.deepEqual(r.statuses, []);
    // create waits at most vfsx:timeout for its verdict, then proceeds.
    assert.ok(r.ms < TIMEOUT_MS * 5, `put took ${r.ms} ms with a ${TIMEOUT_MS} ms timeout`);
    const r2 = await s.run('mkdir frozen2', 10000);
    assert.deepEqual(r2.statuses, []);
    assert.ok(existsSync(join(smbd.sharePath('open'), 'frozen.txt')));
    svc.signal('SIGCONT');
    await waitForRecords(svc, 'records of the frozen period', (recs) =>
      recs.some((x) => x.op === 'create' && x.names.path === 'frozen.txt' && x.outcome === 'confirmed')
      && recs.some((x) => x.op === 'close' && x.names.path === 'frozen.txt')
      && recs.some((x) => x.op === 'mkdir' && x.names.path === 'frozen2' && x.outcome === 'confirmed'));
  } finally {
    svc.signal('SIGCONT');
    await s.close();
  }
});

test('reports sent without waiting to a service that dies before reading them come back through the spool', async () => {
  const s = await SmbSession.open(smbd.port, 'open');
  try {
    await s.run('mkdir ring');
    await waitForRecords(svc, 'mkdir ring', (r) => r.some((x) => x.names.path === 'ring'));
    svc.signal('SIGSTOP'); // it will never read what follows
    for (const d of ['ring/a', 'ring/b', 'ring/c']) assert.deepEqual((await s.run(`mkdir ${d}`)).statuses, []);
    assert.equal((await spoolFiles()).length, 0, 'async reports went to the socket, not the spool');
    await svc.stop('SIGKILL');
    // smbd sees the connection end, and spools the reports never acknowledged.
    await waitFor('unacknowledged reports spooled', async () => (await spoolFiles()).length === 1);
    await svc.start();
    await waitForRecords(svc, 'ring/a..c from the spool', (recs) =>
      ['ring/a', 'ring/b', 'ring/c'].every((p) => recs.some((x) => x.op === 'mkdir' && x.names.path === p && x.outcome === 'confirmed')));
  } finally {
    await s.close();
  }
});

test('with on_failure = deny and the service stopped, operations fail cleanly and nothing is changed', async () => {
  const s = await SmbSession.open(smbd.port, 'closed');
  try {
    assert.deepEqual((await s.run('mkdir ok1')).statuses, []);
    await svc.stop();
    const r = await s.run('mkdir refused');
    assert.ok(r.statuses.includes('NT_STATUS_ACCESS_DENIED'), r.output);
    assert.equal(existsSync(join(smbd.sharePath('closed'), 'refused')), false);
    const p = await s.run('put /etc/hostname refused.txt');
    assert.ok(p.statuses.includes('NT_STATUS_ACCESS_DENIED'), p.output);
    assert.equal(existsSync(join(smbd.sharePath('closed'), 'refused.txt')), false);
    await svc.start();
    await waitFor('link back up', async () => (await s.run('mkdir ok2')).statuses.length === 0, 15000, 200);
    await waitForRecords(svc, 'mkdir ok2', (recs) => recs.some((x) => x.op === 'mkdir' && x.names.path === 'ok2'));
  } finally {
    await s.close();
  }
});
