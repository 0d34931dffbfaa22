import assert from 'node:assert/strict';
import { isUtf8 } from 'node:buffer';
import { test } from 'node:test';
import { escapeBytes, unescapeBytes } from '../src/protocol/escape';
import { encodeFrame, FrameDecoder } from '../src/protocol/frame-decoder';
import { formatMessage, parseMessage } from '../src/protocol/message';
import { VfsxError } from '../src/errors/vfsx-error';
import { allocWithRoom, claimRoom } from '../src/protocol/frame-room';
import { msgDriver } from './helpers/c-driver';
import { Policy } from '../src/ops/policy';
import { checkObjectPath } from '../src/dr-site/object-path';
import { isUtf8Name, nameFromBytes, nameToBytes, sysName, withByteNames } from '../src/protocol/byte-names';

const ALL = Buffer.from(Array.from({ length: 256 }, (_, i) => i));

test('every byte value 0-255 round-trips through escape and unescape', () => {
  const esc = Buffer.from(escapeBytes(ALL), 'latin1');
  for (const c of esc) assert.ok(c > 0x20 && c < 0x7f && c !== 0x3a && c !== 0x2c && c !== 0x3d, `raw byte ${c}`);
  assert.deepEqual(unescapeBytes(esc, 0, esc.length), ALL);
});

test('every byte value in user, origpath and argument values survives a message', () => {
  const payload = Buffer.from(formatMessage(ALL, 'rename', ALL, [['seq', 7], ['path', ALL], ['to', Buffer.from('a:b,c=d%e\n')]]), 'latin1');
  const m = parseMessage(payload);
  assert.deepEqual(m.user, ALL);
  assert.deepEqual(m.origpath, ALL);
  assert.deepEqual(m.args.get('path'), ALL);
  assert.equal(m.args.get('to')?.toString(), 'a:b,c=d%e\n');
  assert.equal(m.args.get('seq')?.toString(), '7');
});

test('the C encoder of the module produces frames the service decodes byte for byte', () => {
  const frame = msgDriver(['bytes']);
  const frames = new FrameDecoder({ maxFrameBytes: 65536 }).push(frame);
  assert.equal(frames.length, 1);
  const m = parseMessage(frames[0]);
  assert.equal(m.user.toString(), 'us:er,%=\n');
  assert.equal(m.op, 'close');
  assert.equal(m.origpath.toString(), '/srv/sh:are');
  assert.deepEqual(m.args.get('path'), ALL);
  assert.deepEqual(m.args.get('stream'), Buffer.from(ALL).reverse());
  assert.equal(m.args.get('seq')?.toString(), '18446744073709551615');
  assert.equal(m.args.get('share')?.toString(), 'sh are');
  assert.equal(m.args.get('ranges')?.toString(), '0+4096;1048576+10');
});

test('the decoder yields the same messages when the stream is split at every byte boundary', () => {
  const stream = Buffer.concat([
    msgDriver(['bytes']),
    encodeFrame(formatMessage('root', 'hello', '', [['proto', 1], ['pid', 1], ['start', 2]])),
    encodeFrame(formatMessage('bob', 'mkdir', '/s', [['seq', 1], ['share', 's'], ['path', 'ä/ü 😀'], ['mode', '755']])),
  ]);
  const whole = new FrameDecoder({ maxFrameBytes: 65536 }).push(stream).map((f) => Buffer.from(f));
  assert.equal(whole.length, 3);
  for (let cut = 0; cut <= stream.length; cut++) {
    const d = new FrameDecoder({ maxFrameBytes: 65536 });
    const got = [...d.push(stream.subarray(0, cut)), ...d.push(stream.subarray(cut))];
    assert.deepEqual(got.map((f) => Buffer.from(f)), whole, `split at ${cut}`);
    assert.equal(d.pendingBytes, 0);
  }
  // and byte by byte
  const d = new FrameDecoder({ maxFrameBytes: 65536 });
  const got: Buffer[] = [];
  for (const b of stream) got.push(...d.push(Buffer.from([b])));
  assert.deepEqual(got.map((f) => Buffer.from(f)), whole);
});

test('oversized and empty frames are refused with stable error codes', () => {
  const big = Buffer.alloc(4);
  big.writeUInt32BE(65537);
  assert.throws(() => new FrameDecoder({ maxFrameBytes: 65536 }).push(big),
    (e: unknown) => e instanceof VfsxError && e.code === 'VFSX_ERR_PROTOCOL_FRAME_TOO_LARGE');
  assert.throws(() => new FrameDecoder({ maxFrameBytes: 65536 }).push(Buffer.alloc(4)),
    (e: unknown) => e instanceof VfsxError && e.code === 'VFSX_ERR_PROTOCOL_EMPTY_FRAME');
});

test('malformed payloads are rejected, never mis-split', () => {
  const bad = [
    'a:b:c', 'a:b:c:d:e', 'u:op:p:seq', 'u:op:p:=1', 'u:op:p:k=1,', 'u:op:p:K=1', 'u:op:p:k=%4', 'u:op:p:k=%zz',
    'u:OP:p:', 'u:op:p:k=1,k=2', 'u:op:p:k=a b', 'u:op:p:k=\x01',
  ];
  for (const s of bad) {
    assert.throws(() => parseMessage(Buffer.from(s, 'latin1')),
      (e: unknown) => e instanceof VfsxError && e.code === 'VFSX_ERR_PROTOCOL_MALFORMED', s);
  }
});

test('the module coalesces dirty ranges: sequential, overlapping, adjacent, out of order', () => {
  const r = (...n: number[]) => msgDriver(['ranges', ...n.map(String)]).toString().trim();
  assert.equal(r(0, 4096, 4096, 4096, 8192, 100), '0+8292');
  assert.equal(r(8192, 10, 0, 10, 4096, 10), '0+10;4096+10;8192+10');
  assert.equal(r(0, 10, 100, 10, 5, 100), '0+110');
  assert.equal(r(100, 10, 0, 1000), '0+1000');
  // more than 32 ranges: the two closest neighbours merge, nothing is dropped
  const many: number[] = [];
  for (let i = 0; i < 33; i++) many.push(i * 1000 + (i === 20 ? 500 : 0), 10);
  const out = r(...many).split(';');
  assert.equal(out.length, 32);
  assert.ok(out.includes('20500+510'), out.join(';')); // gap 490 to 21000 is the smallest
  assert.ok(out[0] === '0+10' && out[31] === '32000+10');
});

test('the module parses replies strictly', () => {
  const p = (s: string) => msgDriver(['reply', s]).toString().trim();
  assert.equal(p('transparent:42'), 'T 42 0');
  assert.equal(p('fail:42:13'), 'F 42 13');
  assert.equal(p('unavailable:7'), 'U 7 0');
  assert.equal(p('hello:1'), 'H 1 0 7ffff'); // no list: every op waits for a verdict
  assert.equal(p('hello:1:*'), 'H 1 0 7ffff');
  assert.equal(p('hello:1:create,rename'), 'H 1 0 81'); // bits of create (0) and rename (7)
  assert.equal(p('hello:1:'), 'H 1 0 0');
  assert.equal(p('ack:12'), 'A 12 0');
  assert.equal(p('hello:2:create,rename:13/create,rename/.locked,.crypt'), 'H 2 0 81', 'rules after the ops keep the mask');
  assert.equal(p('hello:2:create:13/create/.LOCKED'), 'error', 'rules are lowercase');
  for (const s of ['fail:42', 'fail:42:0', 'transparent:', 'transparent:4x', 'ok:1', 'fail:1:99999', 'hello:1:Create', 'ack:']) {
    assert.equal(p(s), 'error', s);
  }
});

test('the module applies a simple policy itself exactly as the service would (extension, case, operation, errno)', () => {
  const rules = new Policy([
    { action: 'deny', ops: ['create', 'rename'], extensions: ['.locked', 'crypt'], errno: 'EACCES' },
    { action: 'deny', ops: ['mkdir'], extensions: ['.tmp'], errno: 'EPERM' },
  ] as never).localRules();
  assert.equal(rules, '13/create,rename/.locked,.crypt;1/mkdir/.tmp');
  const local = (op: string, name: string) => msgDriver(['rules', `create,mkdir,rename:${rules}`, op, name]).toString().trim();
  const policy = new Policy([
    { action: 'deny', ops: ['create', 'rename'], extensions: ['.locked', 'crypt'], errno: 'EACCES' },
    { action: 'deny', ops: ['mkdir'], extensions: ['.tmp'], errno: 'EPERM' },
  ] as never);
  const cases: Array<[string, string]> = [
    ['create', 'a/b/report.locked'], ['create', 'REPORT.LoCkEd'], ['create', 'x.crypt'], ['create', 'x.locked.txt'], ['create', '.locked'],
    ['create', 'dir.locked/file.txt'], ['rename', 'a.crypt'], ['mkdir', 'new.TMP'], ['mkdir', 'x.locked'], ['unlink', 'x.locked'], ['create', 'noext'],
  ];
  for (const [op, name] of cases) {
    const d = policy.evaluate({ share: 's', user: 'u', op, paths: [name] });
    assert.equal(local(op, name), String(d?.errno ?? 0), `${op} ${name}`);
  }
  assert.equal(local('create', 'x.loc\u212Aed'), '-1', 'beyond ASCII the service decides (Kelvin sign folds to k there)');
  assert.equal(msgDriver(['rules', 'create', 'create', 'x.locked']).toString().trim(), 'none');
  assert.equal(msgDriver(['rules', 'create:13/create', 'create', 'x.locked']).toString().trim(), 'error');
  // Anything but deny-by-extension stays with the service.
  for (const r of [
    { action: 'deny', ops: ['create'], extensions: ['.locked'], users: ['bob'], errno: 'EACCES' },
    { action: 'deny', ops: ['create'], paths: ['secret/**'], errno: 'EACCES' },
    { action: 'allow', ops: ['create'], extensions: ['.ok'], errno: 'EACCES' },
    { action: 'deny', extensions: ['.locked'], errno: 'EACCES' },
    { action: 'deny', ops: ['create'], extensions: ['.tar.gz'], errno: 'EACCES' },
  ]) assert.equal(new Policy([r] as never).localRules(), null, JSON.stringify(r));
});

test('frame room: a head goes in front of blocks only when they lie back to back right behind enough reserved room, once', () => {
  const buf = allocWithRoom(300, 64);
  const a = buf.subarray(0, 100);
  const b = buf.subarray(100, 300);
  assert.equal(claimRoom([], 8), null, 'no blocks');
  assert.equal(claimRoom([b], 8), null, 'not right behind the room');
  assert.equal(claimRoom([b, a], 8), null, 'not in order');
  assert.equal(claimRoom([a, buf.subarray(101, 300)], 8), null, 'a gap between blocks');
  assert.equal(claimRoom([a, Buffer.alloc(200)], 8), null, 'a block elsewhere');
  assert.equal(claimRoom([a, b], 65), null, 'a head larger than the room');
  assert.equal(claimRoom([Buffer.alloc(100)], 8), null, 'no room reserved at all');
  const frame = claimRoom([a, b], 64);
  assert.ok(frame);
  assert.equal(frame.length, 64 + 300);
  assert.equal(frame.buffer, buf.buffer);
  assert.equal(frame.byteOffset, 0, 'the head fills the room from its start');
  const blocks = Buffer.from(buf);
  frame.fill(7, 0, 64);
  assert.deepEqual(buf, blocks, 'writing the head leaves the blocks as they were');
  assert.equal(claimRoom([a, b], 8), null, 'the room is used once');
  const plain = allocWithRoom(10, 0);
  assert.equal(claimRoom([plain], 0), null, 'no room asked for: none reserved');
});

test('names as bytes: any name (every byte but / and NUL) round-trips through its string; a UTF-8 name is its own string; only escapes are lone surrogates', () => {
  // Every byte value in every position, UTF-8 mixed in, sequences cut short, overlongs, surrogates, past U+10FFFF.
  const cases = [
    Buffer.from('plain ascii'), Buffer.from('café ünïcödé 日本 🐨'), Buffer.from([0x61, 0xff, 0xfe]),
    Buffer.from('caf\xe9', 'latin1'), Buffer.from([0xc3]), Buffer.from([0xe6, 0x97]), Buffer.from([0xc0, 0xaf]),
    Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xed, 0xb2, 0x80]), Buffer.from([0xf4, 0x90, 0x80, 0x80]),
    Buffer.from([0xf0, 0x9f, 0x90, 0xa8, 0x80]), Buffer.concat([Buffer.from('🐨'), Buffer.from([0xdc])]),
    Buffer.from(ALL.filter((c) => c !== 0 && c !== 0x2f)),
  ];
  let seed = 7;
  const rnd = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff);
  for (let i = 0; i < 2000; i++) {
    const b = Buffer.from(Array.from({ length: 1 + (rnd() % 12) }, () => [0x61, 0xc3, 0xa9, 0xe6, 0x97, 0xa5, 0xf0, 0x9f, 0x90, 0xa8, 0x80, 0xff, 0xed][rnd() % 13]));
    cases.push(b);
  }
  const seen = new Map<string, string>();
  for (const b of cases) {
    const s = nameFromBytes(b);
    assert.deepEqual(nameToBytes(s), b, `${b.toString('hex')} -> ${JSON.stringify(s)}`);
    assert.equal(isUtf8Name(s), isUtf8(b), b.toString('hex'));
    if (isUtf8(b)) assert.equal(s, b.toString('utf8'));
    else assert.ok(/^(?:[^\ud800-\udfff]|[\ud800-\udbff][\udc00-\udfff]|[\udc80-\udcff])*$/.test(s), JSON.stringify(s));
    assert.ok(!s.includes('/') && !s.includes('\0') || b.includes(0x2f) || b.includes(0));
    const other = seen.get(s);
    assert.ok(other === undefined || other === b.toString('hex'), `two names, one string: ${other} and ${b.toString('hex')}`);
    seen.set(s, b.toString('hex'));
    // Through JSON (queue jobs, JSON-RPC) the escapes survive.
    assert.equal(JSON.parse(JSON.stringify({ s })).s, s);
  }
  assert.equal(nameFromBytes(Buffer.from('caf\xe9', 'latin1')), 'caf\udce9');
  assert.deepEqual(sysName('café'), 'café');
  assert.deepEqual(sysName('caf\udce9'), Buffer.from('caf\xe9', 'latin1'));
});

test('names as bytes: a lone surrogate that stands for no byte is refused; journal names in base64 become escaped strings', () => {
  for (const s of ['a\ud800', 'a\udc41', 'a\udd00', '\udbff']) {
    assert.throws(() => nameToBytes(s), (e: unknown) => e instanceof VfsxError && e.code === 'VFSX_ERR_BAD_NAME', JSON.stringify(s));
  }
  const rec = { names: { pathB64: Buffer.from([0x61, 0xff]).toString('base64'), to: 'b' }, op: 'rename' };
  assert.deepEqual(withByteNames(rec), { names: { path: 'a\udcff', to: 'b' }, op: 'rename' });
  const plain = { names: { path: 'x' } };
  assert.equal(withByteNames(plain), plain);
  // A restore takes escaped names (from an encrypted repository) but never one that stands for no byte; the site takes neither.
  assert.equal(checkObjectPath('d/caf\udce9', { anyName: true }), 'd/caf\udce9');
  assert.throws(() => checkObjectPath('d/caf\udce9'), /not UTF-8/);
  assert.throws(() => checkObjectPath('d/a\ud800', { anyName: true }), /stands for no byte/);
  assert.throws(() => checkObjectPath('d/\udcff/..', { anyName: true }), /component/);
});
