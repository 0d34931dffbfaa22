/**
 * Unit tests of one bridge connection: the real decoder, parser, dispatcher
 * and policy, with a stand-in socket and a stand-in journal that record what
 * happens in which order.
 */
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import pino from 'pino';
import type { ChangeRecord, ChangeSink } from '../src/ops/change-record';
import { OpDispatcher } from '../src/ops/op-dispatcher';
import { Policy } from '../src/ops/policy';
import { encodeFrame, FrameDecoder } from '../src/protocol/frame-decoder';
import { formatMessage } from '../src/protocol/message';
import { BridgeConnection } from '../src/socket-server/bridge-connection';

/** Every socket write and journal call, in the order they happened. */
type Event = { sent: string } | { journal: string };

class FakeSocket extends EventEmitter {
  private readonly decoder = new FrameDecoder({ maxFrameBytes: 1 << 16 });
  destroyed = false;
  constructor(private readonly events: Event[]) {
    super();
  }
  write(b: Buffer): boolean {
    for (const f of this.decoder.push(b)) this.events.push({ sent: f.toString('latin1') });
    return true;
  }
  destroy(): void {
    this.destroyed = true;
  }
}

/** A journal whose writes settle when `settle()` is called (all at once), or at once with `auto`. */
class FakeSink implements ChangeSink {
  private waiting: Array<() => void> = [];
  constructor(private readonly events: Event[], private readonly auto = true) {}
  private add(what: string): Promise<void> {
    this.events.push({ journal: what });
    return this.auto ? Promise.resolve() : new Promise((resolve) => this.waiting.push(resolve));
  }
  stage(rec: ChangeRecord): Promise<void> {
    return this.add(`${rec.op} ${rec.names.path} ${rec.outcome}`);
  }
  append(rec: ChangeRecord): Promise<void> {
    return this.add(`${rec.op} ${rec.names.path} ${rec.outcome}`);
  }
  resolve(_instance: string, seq: number, err: number): Promise<void> {
    return this.add(`outcome ${seq} ${err}`);
  }
  writable(): boolean {
    return true;
  }
  settle(): void {
    for (const r of this.waiting.splice(0)) r();
  }
}

const frame = (user: string, op: string, args: Array<[string, string | number]>) =>
  encodeFrame(formatMessage(user, op, '/srv/docs', args));

function connection(events: Event[], sink: ChangeSink) {
  const socket = new FakeSocket(events);
  const dispatcher = new OpDispatcher({
    // A path glob: the module cannot apply this policy itself, so it asks for every create and rename.
    policy: new Policy([{ action: 'deny', errno: 'EACCES', ops: ['create', 'rename'], paths: ['**'], extensions: ['.locked'] }]),
    sink,
    logger: pino({ level: 'silent' }),
  });
  new BridgeConnection({ socket: socket as unknown as Socket, dispatcher, maxFrameBytes: 1 << 16, logger: pino({ level: 'silent' }), onClose: () => undefined });
  socket.emit('data', frame('root', 'hello', [['proto', 2], ['pid', 4242], ['start', 1]]));
  return socket;
}

/** What the module sends in one write: the frames it gathered, then the report it waits on. */
const gathered = () => [
  frame('ann', 'mkdir', [['seq', 1], ['share', 'docs'], ['path', 'd'], ['mode', '755'], ['async', 1]]),
  frame('ann', 'done', [['seq', 1], ['err', 0]]),
];

test('a report sent after gathered frames gets its verdict before they are handled; the journal keeps frame order', async () => {
  const events: Event[] = [];
  connection(events, new FakeSink(events)).emit('data', Buffer.concat([
    ...gathered(),
    frame('ann', 'create', [['seq', 2], ['share', 'docs'], ['path', 'd/a.txt'], ['flags', 'cx'], ['mode', '644']]),
  ]));
  assert.deepEqual(events, [
    { sent: 'hello:2:create,rename' },
    { sent: 'transparent:2' },
    { journal: 'mkdir d pending' },
    { journal: 'outcome 1 0' },
    { journal: 'create d/a.txt pending' },
  ]);
});

test('a denied report after gathered frames is refused first and recorded nowhere', () => {
  const events: Event[] = [];
  connection(events, new FakeSink(events)).emit('data', Buffer.concat([
    ...gathered(),
    frame('ann', 'rename', [['seq', 2], ['share', 'docs'], ['path', 'd/a.txt'], ['to', 'd/a.txt.locked']]),
  ]));
  assert.deepEqual(events, [
    { sent: 'hello:2:create,rename' },
    { sent: 'fail:2:13' },
    { journal: 'mkdir d pending' },
    { journal: 'outcome 1 0' },
  ]);
});

test('a strict report after gathered frames waits its turn and for its record to be durable', async () => {
  const events: Event[] = [];
  const sink = new FakeSink(events, false);
  connection(events, sink).emit('data', Buffer.concat([
    ...gathered(),
    frame('ann', 'create', [['seq', 2], ['share', 'docs'], ['path', 'd/s.txt'], ['flags', 'cx'], ['mode', '644'], ['strict', 1]]),
  ]));
  assert.deepEqual(events.slice(1), [
    { journal: 'mkdir d pending' },
    { journal: 'outcome 1 0' },
    { journal: 'create d/s.txt pending' },
  ]);
  sink.settle();
  await new Promise((r) => setImmediate(r));
  // The verdict is the first thing sent once the record is durable. The acknowledgement
  // timer (10 ms) may also have fired on a loaded machine: then the frames it covers
  // (hello, mkdir, done, create) follow the verdict, never precede it.
  const after = events.slice(4);
  assert.deepEqual(after[0], { sent: 'transparent:2' });
  assert.ok(after.slice(1).every((e) => 'sent' in e && e.sent === 'ack:4'), JSON.stringify(after));
});

test('a malformed frame ahead of an answered report closes the connection before the report is recorded or acknowledged', async () => {
  const events: Event[] = [];
  const socket = connection(events, new FakeSink(events));
  socket.emit('data', Buffer.concat([
    encodeFrame('ann:mkdir'), // not user:operation:origpath:args
    frame('ann', 'create', [['seq', 2], ['share', 'docs'], ['path', 'b.txt'], ['flags', 'cx'], ['mode', '644']]),
  ]));
  await new Promise((r) => setTimeout(r, 30)); // past the acknowledgement timer
  // The module got its verdict and spools every frame no ack covered when the connection ends.
  assert.deepEqual(events, [{ sent: 'hello:2:create,rename' }, { sent: 'transparent:2' }]);
  assert.equal(socket.destroyed, true);
});

test('a report read alone is answered before its record is written; frames read one at a time are recorded in order', async () => {
  const events: Event[] = [];
  const socket = connection(events, new FakeSink(events));
  socket.emit('data', frame('ann', 'create', [['seq', 1], ['share', 'docs'], ['path', 'c.txt'], ['flags', 'cx'], ['mode', '644']]));
  socket.emit('data', frame('ann', 'done', [['seq', 1], ['err', 0]]));
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(events, [
    { sent: 'hello:2:create,rename' },
    { sent: 'transparent:1' },
    { journal: 'create c.txt pending' },
    { journal: 'outcome 1 0' },
    { sent: 'ack:3' },
  ]);
});
