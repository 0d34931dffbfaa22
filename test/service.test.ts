/**
 * The service against raw protocol clients, a real redis-server and the real
 * `vfsx serve` process: peer credentials, reconciliation of lost outcomes,
 * Redis outages, and hostile input.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import pino from 'pino';
import { validateConfig } from '../src/config/load-config';
import { VfsxError } from '../src/errors/vfsx-error';
import { OpDispatcher } from '../src/ops/op-dispatcher';
import { Policy } from '../src/ops/policy';
import { FrameDecoder } from '../src/protocol/frame-decoder';
import { formatMessage, parseMessage } from '../src/protocol/message';
import { Journal } from '../src/journal/journal';
import { waitForRecords } from './helpers/journal-client';
import { RawClient } from './helpers/raw-client';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness } from './helpers/service-harness';
import { waitFor } from './helpers/wait-for';

let redis: RedisHarness;
let svc: ServiceHarness;

async function startTime(pid: number): Promise<number> {
  const stat = await readFile(`/proc/${pid}/stat`, 'latin1');
  return Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
}

before(async () => {
  redis = await RedisHarness.start();
  svc = await ServiceHarness.create({ redisSocket: redis.socket });
  Object.assign(svc.config.socket as object, { dirMode: '0755', socketMode: '0666' });
  await svc.rewriteConfig();
  await svc.start();
});

after(async () => {
  await svc?.destroy();
  await redis?.stop();
});

test('a peer whose uid is not allowed is refused before it can send anything', async () => {
  const script = `const s=require('net').connect(${JSON.stringify(svc.socket)});let got=0;` +
    `s.on('connect',()=>s.write(Buffer.from([0,0,0,5,104,101,108,108,111])));` +
    `s.on('data',()=>got++);s.on('close',()=>{console.log('closed '+got);process.exit(0)});` +
    `s.on('error',e=>{console.log('error '+got);process.exit(0)});setTimeout(()=>{console.log('open');process.exit(0)},5000)`;
  const out = await new Promise<string>((resolve, reject) =>
    execFile(process.execPath, ['-e', script], { uid: 65534, gid: 65534 }, (err, stdout) => (err ? reject(err) : resolve(stdout.trim()))));
  assert.match(out, /^(closed|error) 0$/, 'the connection ends and no byte comes back');
  await waitFor('refusal logged', () => svc.logs.some((l) => l.msg === 'refused peer: uid not allowed'
    && (l.peer as { uid: number }).uid === 65534));
});

test('a record whose outcome never arrives (its smbd died) is reconciled as unknown', async () => {
  const child = spawn('sleep', ['30']);
  const pid = child.pid as number;
  const start = await startTime(pid);
  const c = await RawClient.connect(svc.socket);
  assert.equal(await c.hello(pid, start), 'hello:2:');
  assert.equal(await c.ask('alice', 'mkdir', [['seq', 1], ['share', 'sh'], ['path', 'lost-dir'], ['mode', '755']]), 'transparent:1');
  assert.equal(await c.ask('alice', 'mkdir', [['seq', 2], ['share', 'sh'], ['path', 'done-dir'], ['mode', '755']]), 'transparent:2');
  c.send(formatMessage('alice', 'done', '/srv/share', [['seq', 2], ['err', 0]]));
  await waitForRecords(svc, 'confirmed done-dir', (r) => r.some((x) => x.names.path === 'done-dir' && x.outcome === 'confirmed'));
  child.kill('SIGKILL'); // smbd dies between verdict and outcome of seq 1
  c.close();
  const recs = await waitForRecords(svc, 'reconciled lost-dir', (r) => r.some((x) => x.names.path === 'lost-dir'));
  const lost = recs.find((x) => x.names.path === 'lost-dir')!;
  assert.equal(lost.outcome, 'unknown');
  assert.equal(recs.filter((x) => x.names.path === 'done-dir').length, 1);
});

test('after a SIGKILL the service resumes the journal: an outcome sent after restart confirms the record once', async () => {
  const start = await startTime(process.pid);
  const c = await RawClient.connect(svc.socket);
  await c.hello(process.pid, start);
  assert.equal(await c.ask('carol', 'mkdir', [['seq', 500], ['share', 'sh'], ['path', 'across-crash'], ['mode', '755']]), 'transparent:500');
  assert.equal(await c.ask('carol', 'close', [['seq', 501], ['share', 'sh'], ['path', 'f'], ['flags', 'c'], ['ranges', '0+1'], ['err', 0]]), 'transparent:501');
  await c.waitAcked(3); // what the module waits for before it lets go of its copies
  await svc.stop('SIGKILL');
  c.close();
  await svc.start();
  const c2 = await RawClient.connect(svc.socket);
  await c2.hello(process.pid, start);
  c2.send(formatMessage('carol', 'done', '/srv/share', [['seq', 500], ['err', 0]]));
  const recs = await waitForRecords(svc, 'across-crash confirmed', (r) => r.some((x) => x.names.path === 'across-crash'));
  const mine = recs.filter((x) => x.names.path === 'across-crash');
  assert.equal(mine.length, 1);
  assert.equal(mine[0].outcome, 'confirmed');
  assert.equal(recs.filter((x) => x.id === `${process.pid}-${start}-501`).length, 1, 'the close is queued once');
  c2.close();
});

test('a failed outcome is not queued for replication', async () => {
  const c = await RawClient.connect(svc.socket);
  await c.hello(process.pid, await startTime(process.pid));
  assert.equal(await c.ask('bob', 'rmdir', [['seq', 1], ['share', 'sh'], ['path', 'not-empty']]), 'transparent:1');
  c.send(formatMessage('bob', 'done', '/srv/share', [['seq', 1], ['err', 39]]));
  assert.equal(await c.ask('bob', 'mkdir', [['seq', 2], ['share', 'sh'], ['path', 'after-fail'], ['mode', '700']]), 'transparent:2');
  c.send(formatMessage('bob', 'done', '/srv/share', [['seq', 2], ['err', 0]]));
  const recs = await waitForRecords(svc, 'after-fail', (r) => r.some((x) => x.names.path === 'after-fail'));
  assert.equal(recs.some((x) => x.names.path === 'not-empty'), false);
  c.close();
});

test('folded reports carry their own outcome: confirmed or failed at once, never paired with a done; only async ones may', async () => {
  const c = await RawClient.connect(svc.socket);
  // A module that offers folding is told the service takes it (hello 3); one that does not gets hello 2 (next test).
  const start = await startTime(process.pid);
  assert.equal(await c.hello(process.pid, start, [['fold', 1]]), 'hello:3:');
  c.send(formatMessage('gil', 'mkdir', '/srv/share', [['seq', 1], ['share', 'sh'], ['path', 'folded-ok'], ['mode', '755'], ['async', 1], ['err', 0]]));
  c.send(formatMessage('gil', 'unlink', '/srv/share', [['seq', 2], ['share', 'sh'], ['path', 'folded-failed'], ['async', 1], ['err', 2]]));
  // Waiting for a verdict means the operation has not run: an outcome there is malformed (EINVAL), nothing recorded.
  assert.equal(await c.ask('gil', 'rename', [['seq', 3], ['share', 'sh'], ['path', 'folded-bad'], ['to', 'x'], ['err', 0]]), 'fail:3:22');
  c.send(formatMessage('gil', 'mkdir', '/srv/share', [['seq', 4], ['share', 'sh'], ['path', 'folded-last'], ['mode', '755'], ['async', 1], ['err', 0]]));
  await c.waitAcked(5);
  const recs = await waitForRecords(svc, 'folded-last', (r) => r.some((x) => x.names.path === 'folded-last'));
  const ok = recs.find((x) => x.names.path === 'folded-ok');
  assert.equal(ok?.outcome, 'confirmed');
  assert.equal(ok?.errno, undefined);
  // Queued for replication at once (confirmed), not after an outcome or a reconcile; the failed and the malformed never.
  assert.equal(recs.some((x) => x.names.path === 'folded-failed' || x.names.path === 'folded-bad'), false);
  assert.equal(svc.logs.some((l) => l.msg === 'reconciling a record without outcome' && l.id === `${process.pid}-${start}-1`), false);
  c.close();
});

test('metadata set through a handle rides on its close (hello 4): recorded as the close\'s arguments, checked like any', async () => {
  const c = await RawClient.connect(svc.socket);
  const start = await startTime(process.pid);
  // A module that offers folding and metadata on content reports is told both are taken.
  assert.equal(await c.hello(process.pid, start, [['fold', 1], ['meta', 1]]), 'hello:4:');
  c.send(formatMessage('hal', 'create', '/srv/share', [['seq', 1], ['share', 'sh'], ['path', 'rides.txt'], ['flags', 'cx'], ['mode', '744'], ['async', 1], ['err', 0]]));
  c.send(formatMessage('hal', 'close', '/srv/share', [['seq', 2], ['share', 'sh'], ['path', 'rides.txt'], ['flags', 'c'], ['ranges', '0+4096'],
    ['err', 0], ['ino', '1f'], ['attrs', '20'], ['mtime', '1700000000.123456789'], ['btime', '1690000000.000000001'], ['async', 1]]));
  // Malformed metadata refuses the frame like any bad argument.
  c.send(formatMessage('hal', 'close', '/srv/share', [['seq', 3], ['share', 'sh'], ['path', 'rides-bad.txt'], ['flags', 'c'], ['ranges', ''],
    ['err', 0], ['attrs', 'zz'], ['async', 1]]));
  c.send(formatMessage('hal', 'mkdir', '/srv/share', [['seq', 4], ['share', 'sh'], ['path', 'rides-last'], ['mode', '755'], ['async', 1], ['err', 0]]));
  const recs = await waitForRecords(svc, 'rides-last', (r) => r.some((x) => x.names.path === 'rides-last'));
  const close = recs.find((x) => x.names.path === 'rides.txt' && x.op === 'close');
  assert.deepEqual(close?.args, { flags: 'c', ino: '1f', attrs: '20', mtime: '1700000000.123456789', btime: '1690000000.000000001' });
  assert.deepEqual(close?.ranges, [[0, 4096]]);
  assert.equal(recs.some((x) => x.names.path === 'rides-bad.txt'), false);
  assert.ok(svc.logs.some((l) => l.msg === 'rejected malformed report' && JSON.stringify(l.err).includes('bad attrs')), 'the bad frame was logged');
  c.close();
});

test('while Redis is down the service answers unavailable at once, and records again after Redis returns', async () => {
  const c = await RawClient.connect(svc.socket);
  await c.hello(process.pid, await startTime(process.pid));
  await redis.stopServer();
  try {
    // Once the service has seen its Redis connection go (the socket's close, an event
    // like any other: a report already on its way may still be answered transparent,
    // and is then kept by the module until acknowledged), it answers unavailable
    // without trying a write first.
    await waitFor('the journal link state change logged', () =>
      svc.logs.some((l) => l.link === 'journal' && l.from === 'ready' && typeof l.to === 'string' && l.to !== 'ready'));
    const t0 = Date.now();
    assert.equal(await c.ask('eve', 'unlink', [['seq', 10], ['share', 'sh'], ['path', 'x']]), 'unavailable:10');
    assert.ok(Date.now() - t0 < 400, `answered in ${Date.now() - t0} ms, not at once`);
  } finally {
    await redis.startServer();
  }
  await waitFor('journal writes again', async () =>
    (await c.ask('eve', 'unlink', [['seq', 11], ['share', 'sh'], ['path', 'back']])) === 'transparent:11', 20000, 200);
  c.close();
});

test('a verdict comes from the policy at once and the frame is acknowledged once durable; a strict report waits until then', async () => {
  const writeTimeoutMs = 800; // the default redis.writeTimeoutMs
  const start = await startTime(process.pid);
  const c = await RawClient.connect(svc.socket);
  assert.equal(await c.hello(process.pid, start), 'hello:2:');
  assert.equal(await c.ask('fay', 'mkdir', [['seq', 1], ['share', 'sh'], ['path', 'v1'], ['mode', '755']]), 'transparent:1');
  c.send(formatMessage('fay', 'done', '/srv/share', [['seq', 1], ['err', 0]]));
  await c.waitAcked(3);
  redis.signal('SIGSTOP'); // writes now hang until they time out
  try {
    let t0 = Date.now();
    assert.equal(await c.ask('fay', 'mkdir', [['seq', 2], ['share', 'sh'], ['path', 'v2'], ['mode', '755']]), 'transparent:2');
    assert.ok(Date.now() - t0 < writeTimeoutMs / 2, `the verdict did not wait for the journal (${Date.now() - t0} ms)`);
    // Not durable in time: the service closes, so the module would spool its unacknowledged copy.
    assert.equal(await c.next(), null);
    assert.ok(c.acked < 4, 'frame 4 was never acknowledged');
    const s = await RawClient.connect(svc.socket);
    await s.hello(process.pid, start);
    t0 = Date.now();
    assert.equal(await s.ask('fay', 'mkdir', [['seq', 3], ['share', 'sh'], ['path', 'v3'], ['mode', '755'], ['strict', 1]]), 'unavailable:3');
    assert.ok(Date.now() - t0 >= writeTimeoutMs * 0.9, `a strict verdict waits for the write (${Date.now() - t0} ms)`);
    redis.signal('SIGCONT');
    assert.equal(await s.ask('fay', 'mkdir', [['seq', 4], ['share', 'sh'], ['path', 'v4'], ['mode', '755'], ['strict', 1]]), 'transparent:4');
    await s.waitAcked(3); // hello, the unavailable frame 2 (the module spools that one), frame 3
    s.send(formatMessage('fay', 'done', '/srv/share', [['seq', 4], ['err', 0]]));
    await waitForRecords(svc, 'v1 and v4 confirmed', (r) => ['v1', 'v4'].every((p) => r.some((x) => x.names.path === p && x.outcome === 'confirmed')));
    s.close();
  } finally {
    redis.signal('SIGCONT');
    c.close();
  }
});

test('malformed frames close only their own connection; the service keeps serving', async () => {
  const bad: Buffer[] = [
    Buffer.from([0xff, 0xff, 0xff, 0xff]), // oversized length
    Buffer.from([0, 0, 0, 0]), // empty frame
    Buffer.concat([Buffer.from([0, 0, 0, 3]), Buffer.from('a:b')]),
    Buffer.concat([Buffer.from([0, 0, 0, 9]), Buffer.from('u:mkdir::')]), // op before hello
  ];
  for (const b of bad) {
    const c = await RawClient.connect(svc.socket);
    c.sendRaw(b);
    assert.equal(await c.next(), null, `connection closed after ${b.toString('hex')}`);
  }
  const c = await RawClient.connect(svc.socket);
  await c.hello(1, 1);
  assert.equal(await c.ask('u', 'mkdir', [['seq', 1], ['share', 's'], ['path', 'p']]), 'fail:1:22', 'missing mode: EINVAL, connection kept');
  assert.equal(await c.ask('u', 'mkdir', [['seq', 2], ['share', 's'], ['path', 'p'], ['mode', '755']]), 'transparent:2');
  c.close();
});

function mutate(frame: Buffer): Buffer {
  const b = Buffer.from(frame);
  const n = 1 + Math.floor(Math.random() * 3);
  for (let i = 0; i < n; i++) {
    const kind = Math.random();
    const at = 4 + Math.floor(Math.random() * (b.length - 4));
    if (kind < 0.6) b[at] = Math.floor(Math.random() * 256);
    else if (kind < 0.8) b[at] = [0x3a, 0x2c, 0x3d, 0x25][Math.floor(Math.random() * 4)];
    else return Buffer.concat([b.subarray(0, 4), randomBytes(b.length - 4)]);
  }
  return b;
}

test('a fuzz run of 100,000 random and mutated frames never crashes or hangs the service', async () => {
  const valid = [
    formatMessage('u', 'mkdir', '/s', [['seq', 1], ['share', 's'], ['path', 'a/b'], ['mode', '755']]),
    formatMessage('u', 'rename', '/s', [['seq', 2], ['share', 's'], ['path', 'a'], ['to', 'b:c,d']]),
    formatMessage('u', 'close', '/s', [['seq', 3], ['share', 's'], ['path', 'f'], ['flags', 'c'], ['ranges', '0+10;20+5'], ['err', 0]]),
    formatMessage('u', 'done', '/s', [['seq', 1], ['err', 0]]),
  ].map((p) => Buffer.concat([Buffer.from([0, 0, 0, 0]), Buffer.from(p, 'latin1')]));
  for (const v of valid) v.writeUInt32BE(v.length - 4, 0);
  let sent = 0;
  let connections = 0;
  const TOTAL = 100_000;
  while (sent < TOTAL) {
    const c = await RawClient.connect(svc.socket);
    connections++;
    await c.hello(process.pid, 1);
    const chunk: Buffer[] = [];
    for (let i = 0; i < 2000 && sent < TOTAL; i++, sent++) {
      chunk.push(Math.random() < 0.05 ? randomBytes(1 + Math.floor(Math.random() * 64)) : mutate(valid[i % valid.length]));
    }
    c.sendRaw(Buffer.concat(chunk));
    c.socket.end();
    await waitFor('fuzz connection to end', () => c.closed, 30000, 10);
  }
  assert.ok(connections >= 50);
  const probe = await RawClient.connect(svc.socket);
  assert.equal(await probe.hello(process.pid, 2), 'hello:2:');
  assert.equal(await probe.ask('u', 'mkdir', [['seq', 1], ['share', 's'], ['path', 'alive'], ['mode', '755']]), 'transparent:1');
  probe.close();
  assert.ok(svc.logs.some((l) => l.msg === 'protocol error; closing connection'));
});

test('100,000 mutated frames through decoder, parser and dispatcher each end in a reply or a VfsxError', async () => {
  const cfg = validateConfig({ redis: { path: redis.socket, prefix: `${svc.prefix}f` } });
  const journal = new Journal({ redis: cfg.redis, logger: pino({ level: 'silent' }) });
  await journal.waitUntilReady();
  const d = new OpDispatcher({ policy: new Policy([]), sink: journal, logger: pino({ level: 'silent' }) });
  const base = Buffer.from(formatMessage('u', 'rename', '/s', [['seq', 5], ['share', 's'], ['path', 'a b'], ['to', 'c:d']]), 'latin1');
  const frame = Buffer.concat([Buffer.alloc(4), base]);
  frame.writeUInt32BE(base.length, 0);
  const counts = { reply: 0, error: 0 };
  try {
    for (let i = 0; i < 100_000; i++) {
      const session = { source: 'live' as const, instance: '1-1', pid: 1 };
      const decoder = new FrameDecoder({ maxFrameBytes: 65536 });
      try {
        for (const f of decoder.push(mutate(frame))) {
          const r = await d.dispatch(session, parseMessage(f));
          await r.durable;
          if (r.reply !== null || r.durable !== null) counts.reply++;
        }
      } catch (err) {
        assert.ok(err instanceof VfsxError, String(err));
        counts.error++;
      }
    }
  } finally {
    await journal.close();
  }
  assert.ok(counts.reply > 1000 && counts.error > 1000, JSON.stringify(counts));
});
