/**
 * Fuzzers for the three places hostile bytes come in (docs/security.md):
 *  - bridge frames from smbd: the frame decoder, message parser and op
 *    table, in process, chunked at random;
 *  - JSON-RPC and binary frames into the real DR site over a real WebSocket;
 *  - hostile object lists and blocks into restore, from a hostile site.
 * Each returns what it did and every finding (an exception that is not a
 * clean refusal, a crash, a write outside its place). Seeded: a finding
 * can be replayed. Used by `npm run fuzz` (millions of inputs) and, with
 * small counts, by test/fuzz.test.ts.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { VfsxError } from '../../src/errors/vfsx-error';
import { OP_TABLE, parseArgs } from '../../src/ops/op-table';
import { encodeFrame, FrameDecoder } from '../../src/protocol/frame-decoder';
import { formatMessage, parseMessage } from '../../src/protocol/message';
import { PROTOCOL_VERSION } from '../../src/protocol/reply';
import { DrClient, DrRpcError } from '../../src/site-link/dr-client';
import { restoreShare } from '../../src/operator/restore';

export interface FuzzResult {
  inputs: number;
  /** Inputs cleanly refused (an error with a stable code, a JSON-RPC error). */
  refused: number;
  findings: string[];
  ms: number;
  /** Restore only: rounds whose restore ran through the whole listing (with or without refusals). */
  restored?: number;
}

/** A small fast seeded PRNG (mulberry32): runs are reproducible from the seed. */
export class Rng {
  private s: number;

  constructor(seed: number) {
    this.s = seed >>> 0;
  }

  next(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.int(256);
    return b;
  }
}

const NASTY = ['', '.', '..', '/', '//', '../..', 'a/../../b', '%', '%2', '%zz', ':', ',', '=', '\u0000', '\n', '\ud800', 'ü', '😀', 'x'.repeat(300), '/etc/passwd'];
const OPS = [...OP_TABLE.keys()];

function validMessage(r: Rng): string {
  const h = OP_TABLE.get(r.pick(OPS));
  const op = h ? h.op : 'mkdir';
  const args: Array<[string, string | number]> = [['seq', r.int(1e6)], ['share', r.pick(['docs', 'x', ''])], ['path', r.pick(NASTY) + r.pick(NASTY)]];
  for (const [k, kind] of Object.entries(h?.required ?? {})) {
    args.push([k, kind === 'name' || kind === 'text' ? r.pick(NASTY) : kind === 'ranges' ? `${r.int(100)}+${r.int(100)}` : kind === 'time' ? `${r.int(2e9)}.${r.int(1e9)}` : r.int(2 ** 32) - 1000]);
  }
  return formatMessage(r.pick(NASTY), op, `/srv/${r.pick(NASTY)}`, args);
}

function mutate(r: Rng, b: Buffer): Buffer {
  const out = Buffer.from(b);
  const n = 1 + r.int(4);
  for (let i = 0; i < n && out.length > 0; i++) {
    switch (r.int(5)) {
      case 0: out[r.int(out.length)] = r.int(256); break;
      case 1: out[r.int(out.length)] = r.pick([0x3a, 0x2c, 0x3d, 0x25, 0x00, 0x2f]); break;
      case 2: return Buffer.concat([out.subarray(0, r.int(out.length)), r.bytes(r.int(8)), out.subarray(r.int(out.length))]);
      case 3: return out.subarray(0, r.int(out.length));
      default: return Buffer.concat([out, out.subarray(0, r.int(out.length))]);
    }
  }
  return out;
}

/** Bridge frames: decoder + parser + op table; only VfsxErrors may come out, and the decoder must never hold more than a frame. */
export function fuzzBridgeFrames(count: number, seed: number): FuzzResult {
  const r = new Rng(seed);
  const t0 = Date.now();
  const res: FuzzResult = { inputs: 0, refused: 0, findings: [], ms: 0 };
  let dec = new FrameDecoder({ maxFrameBytes: 65536 });
  while (res.inputs < count) {
    const payload = r.int(4) === 0 ? r.bytes(r.int(64)) : mutate(r, Buffer.from(validMessage(r)));
    let wire = r.int(50) === 0 ? r.bytes(r.int(16)) : encodeFrame(payload.length > 0 ? payload : Buffer.from('x'));
    if (r.int(20) === 0) wire = mutate(r, wire);
    // Split the stream at random points, as a socket may.
    for (let off = 0; off < wire.length && res.inputs < count;) {
      const len = r.int(3) === 0 ? wire.length - off : 1 + r.int(wire.length - off);
      const chunk = wire.subarray(off, off + len);
      off += len;
      try {
        for (const frame of dec.push(chunk)) {
          res.inputs++;
          try {
            const m = parseMessage(frame);
            const h = OP_TABLE.get(m.op);
            if (!h) throw new VfsxError('VFSX_ERR_OPS_UNKNOWN_OP', m.op);
            parseArgs(h, m.args);
          } catch (err) {
            if (!(err instanceof VfsxError)) res.findings.push(`seed ${seed}: ${(err as Error).stack} on ${frame.toString('hex').slice(0, 200)}`);
            else res.refused++;
          }
        }
        if (dec.pendingBytes > 65536 + 4) res.findings.push(`seed ${seed}: decoder holds ${dec.pendingBytes} bytes`);
      } catch (err) {
        res.inputs++;
        if (!(err instanceof VfsxError)) res.findings.push(`seed ${seed}: decoder: ${(err as Error).stack}`);
        else res.refused++;
        dec = new FrameDecoder({ maxFrameBytes: 65536 }); // the connection would be closed: a fresh one
        break;
      }
    }
  }
  res.ms = Date.now() - t0;
  return res;
}

const METHODS = ['bucket.ensure', 'blocks.missing', 'blocks.put', 'blocks.get', 'object.commit', 'object.commitMany', 'object.delete', 'object.deleteMany', 'object.move', 'object.stat', 'object.list', 'object.versions', 'no.such', '__proto__', 'constructor'];
const H = createHash('sha256').update('x').digest('hex');

function hostileValue(r: Rng, depth = 0): unknown {
  switch (r.int(depth > 2 ? 6 : 9)) {
    case 0: return r.pick(NASTY);
    case 1: return r.int(2) ? r.int(2 ** 31) : -r.int(1e9);
    case 2: return r.pick([null, true, false, 1e308, -0, 0.5]);
    case 3: return H;
    case 4: return r.pick(['fuzz', 'docs']);
    case 5: return '9'.repeat(r.int(40));
    case 6: return Array.from({ length: r.int(5) }, () => hostileValue(r, depth + 1));
    case 7: return { __proto__: { polluted: true }, constructor: { prototype: { x: 1 } } };
    default: {
      const o: Record<string, unknown> = {};
      for (const k of ['bucket', 'path', 'from', 'to', 'hashes', 'kind', 'meta', 'size', 'blockSize', 'blocks', 'target', 'at', 'prefix', 'objects', 'x'].filter(() => r.int(2))) {
        o[k] = hostileValue(r, depth + 1);
      }
      return o;
    }
  }
}

function hostileRequest(r: Rng, id: number): { data: string | Buffer; binary: boolean } {
  const req: Record<string, unknown> = { jsonrpc: r.int(10) ? '2.0' : r.pick(['1.0', 2, null]), id: r.int(10) ? id : hostileValue(r), method: r.pick(METHODS), params: hostileValue(r) };
  if (r.int(10) === 0) delete req.id;
  if (r.int(4) === 0) {
    const head = Buffer.from(r.int(8) ? JSON.stringify(req) : r.bytes(r.int(40)).toString('latin1'));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(r.int(6) ? head.length : r.int(2 ** 32));
    return { data: Buffer.concat([len, head, r.bytes(r.int(300))]), binary: true };
  }
  const text = r.int(6) === 0 ? mutate(r, Buffer.from(JSON.stringify(req))).toString('latin1') : JSON.stringify(r.int(12) === 0 ? [req, req] : req);
  return { data: text, binary: false };
}

/**
 * Hostile JSON-RPC and binary frames into a running DR site; every so often
 * a valid call must still be answered. The site must answer each request
 * that has an id (or close only that connection) and stay up.
 */
export async function fuzzDrSite(url: string, token: string, count: number, seed: number, alive: () => boolean): Promise<FuzzResult> {
  const r = new Rng(seed);
  const t0 = Date.now();
  const res: FuzzResult = { inputs: 0, refused: 0, findings: [], ms: 0 };
  const WINDOW = 256;
  while (res.inputs < count) {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` }, maxPayload: 1 << 30 });
    await new Promise<void>((ok, fail) => { ws.once('open', () => ok()); ws.once('error', fail); });
    let answered = 0;
    ws.on('message', () => { answered++; });
    let closed = false;
    ws.on('close', () => { closed = true; });
    // A connection carries up to 20,000 hostile frames, WINDOW in flight.
    for (let n = 0; n < 20000 && res.inputs < count && !closed; n += WINDOW) {
      const before = answered;
      let expect = 0;
      for (let i = 0; i < WINDOW && res.inputs < count; i++, res.inputs++) {
        const q = hostileRequest(r, res.inputs);
        ws.send(q.data, { binary: q.binary });
        expect++;
      }
      // Notifications get no answer: wait until the answers stop coming, then go on.
      let last = -1;
      for (let k = 0; k < 200 && answered - before < expect && answered !== last; k++) {
        last = answered;
        await new Promise((ok) => setTimeout(ok, answered - before === 0 ? 20 : 2));
      }
      res.refused += answered - before;
    }
    ws.terminate();
    if (!alive()) {
      res.findings.push(`seed ${seed}: the DR site exited after ${res.inputs} inputs`);
      break;
    }
    // A well-behaved client still gets answers.
    const c = await DrClient.connect({ url, token });
    try {
      await c.call('bucket.ensure', { bucket: 'fuzz' });
      const blk = Buffer.from(`fuzz ${seed} ${res.inputs}`);
      await c.putBlocks([blk]);
      const got = await c.getBlocks([createHash('sha256').update(blk).digest('hex')]);
      if (!got[0].equals(blk)) res.findings.push(`seed ${seed}: wrong block back after ${res.inputs} inputs`);
    } catch (err) {
      res.findings.push(`seed ${seed}: a valid client failed after ${res.inputs} inputs: ${(err as Error).message}`);
    } finally {
      c.close();
    }
  }
  res.ms = Date.now() - t0;
  return res;
}

/** A hostile DR site: answers object.list / object.stat / blocks.get with what the generator makes up. */
async function hostileSite(r: Rng): Promise<{ url: string; close: () => Promise<void>; setRound: (objs: unknown[], blocks: Map<string, Buffer>) => void }> {
  let objects: unknown[] = [];
  let blocks = new Map<string, Buffer>();
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  wss.on('connection', (ws) => ws.on('message', (raw: Buffer) => {
    let req: { id: number; method: string; params: { path?: string; hashes?: string[] } };
    try {
      req = JSON.parse(raw.toString());
    } catch {
      return;
    }
    const send = (result: unknown) => ws.send(JSON.stringify({ jsonrpc: '2.0', id: req.id, result }));
    if (r.int(40) === 0) return ws.send(r.bytes(r.int(50)), { binary: r.int(2) === 0 }); // garbage instead of an answer
    if (req.method === 'object.list') {
      const q = req.params as { limit?: unknown; after?: unknown };
      if (typeof q.limit !== 'number') return send(objects);
      // Paged: the hostile objects in one or two pages, or now and then a page that is no page.
      const half = Math.ceil(objects.length / 2);
      if (q.after === 'page-2') return send({ objects: objects.slice(half), next: null });
      switch (r.int(12)) {
        case 0: return send(objects); // a list where a page was asked
        case 1: return send({ objects: objects.slice(0, half), next: typeof q.after === 'string' ? q.after : '' }); // a page that does not move on
        case 2: case 3: case 4: return send({ objects: objects.slice(0, half), next: 'page-2' });
        default: return send({ objects, next: null });
      }
    }
    if (req.method === 'object.stat') {
      const o = objects.find((x) => (x as { path?: unknown })?.path === req.params.path) as { size?: number; blocks?: string[] } | undefined;
      return send(o ? { ...o, blocks: o.blocks ?? [...blocks.keys()].slice(0, 1 + r.int(3)) } : null);
    }
    if (req.method === 'blocks.get') {
      const parts = (req.params.hashes ?? []).map((h) => (r.int(8) === 0 ? r.bytes(r.int(100)) : blocks.get(h) ?? r.bytes(10)));
      const head = Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: req.id, result: { blocks: parts.map((p) => ({ size: r.int(10) === 0 ? p.length + r.int(5) : p.length })) } }));
      const len = Buffer.alloc(4);
      len.writeUInt32BE(head.length);
      return ws.send(Buffer.concat([len, head, ...parts]));
    }
    return ws.send(JSON.stringify({ jsonrpc: '2.0', id: req.id, error: { code: -32601, message: 'no' } }));
  }));
  await new Promise<void>((ok) => wss.once('listening', () => ok()));
  const port = (wss.address() as { port: number }).port;
  return {
    url: `ws://127.0.0.1:${port}/`,
    close: () => new Promise<void>((ok) => { for (const c of wss.clients) c.terminate(); wss.close(() => ok()); }),
    setRound: (o, b) => { objects = o; blocks = b; },
  };
}

function hostileObjects(r: Rng, blocks: Map<string, Buffer>, sandbox: string): unknown[] {
  const names = ['a', 'b', 'evil', 'up', 'x y', 'ü', '..', '.', '', 'a/..', 'a/../..', '/abs', 'a//b', 'a\u0000b', '.vfsx-restore.1.0'];
  const out: unknown[] = [];
  for (let i = 0, n = 1 + r.int(12); i < n; i++) {
    const depth = 1 + r.int(3);
    const path = Array.from({ length: depth }, () => r.pick(names)).join('/');
    const kind = r.pick(['file', 'dir', 'symlink', 'tombstone', 7]);
    const data = r.bytes(r.int(3000));
    const h = createHash('sha256').update(data).digest('hex');
    blocks.set(h, data);
    out.push(r.int(30) === 0 ? hostileValue(r) : {
      path: r.int(30) === 0 ? hostileValue(r) : path,
      kind,
      size: r.int(6) === 0 ? r.int(5000) : data.length,
      // Targets point into the sandbox, never at the real system: a broken restore must not harm the machine running the fuzzer.
      target: r.pick([sandbox, join(sandbox, 'outside'), '..', '../..', '../../..', 'a', '', null, 5]),
      meta: r.int(8) === 0 ? hostileValue(r) : { mode: r.pick([0o644, 0o4755, 0o777, -1, 1e10]), uid: r.pick([0, 65534, -5]), gid: 0, mtimeNs: r.pick(['1700000000000000000', 'x', '-1', '99999999999999999999']), xattrs: r.int(3) === 0 ? { 'user.x': 'eA==', 'trusted.y': '!!' } : undefined },
      // The listing may carry a file's blocks (restore then skips its stat): sometimes hostile ones.
      blocks: r.pick([[h], [h], [h, h], [], hostileValue(r), ['zz'], undefined]),
    });
  }
  return out;
}

/**
 * Hostile object lists and blocks into restore: nothing may appear outside
 * DEST (checked against a sandbox whose only entry is DEST), and restore may
 * only refuse, fail files or throw a VfsxError, never crash otherwise.
 */
export async function fuzzRestore(sandbox: string, rounds: number, seed: number): Promise<FuzzResult> {
  const r = new Rng(seed);
  const t0 = Date.now();
  const res: FuzzResult = { inputs: 0, refused: 0, findings: [], ms: 0 };
  const site = await hostileSite(r);
  try {
    for (; res.inputs < rounds; res.inputs++) {
      const blocks = new Map<string, Buffer>();
      site.setRound(hostileObjects(r, blocks, sandbox), blocks);
      rmSync(sandbox, { recursive: true, force: true });
      const dest = join(sandbox, 'dest');
      mkdirSync(dest, { recursive: true });
      let c: DrClient | null = null;
      try {
        c = await DrClient.connect({ url: site.url, token: 'fuzz' });
        const p = await restoreShare(c, 'fuzz', dest, {});
        res.restored = (res.restored ?? 0) + 1;
        if (p.refused.length + p.failed.length > 0) res.refused++;
      } catch (err) {
        const m = (err as Error).message;
        if (err instanceof VfsxError || err instanceof DrRpcError || /connection to the DR site closed/.test(m)) res.refused++;
        else res.findings.push(`seed ${seed} round ${res.inputs}: ${(err as Error).stack}`);
      } finally {
        c?.close();
      }
      const outside = readdirSync(sandbox).filter((n) => n !== 'dest');
      if (outside.length > 0) res.findings.push(`seed ${seed} round ${res.inputs}: written outside DEST: ${outside.join(', ')}`);
    }
  } finally {
    await site.close();
  }
  res.ms = Date.now() - t0;
  return res;
}

export const randomSeed = () => randomBytes(4).readUInt32BE(0);

/**
 * Hostile frames into the real service's bridge socket, as a broken or
 * hostile smbd process could send them: each connection says hello, then
 * sends mutated and valid-but-odd reports until the service closes it for
 * a protocol error; then the next. The service must stay up, and a
 * well-behaved client must still get its verdict afterwards.
 */
export async function fuzzBridgeSocket(socketPath: string, count: number, seed: number, alive: () => boolean): Promise<FuzzResult> {
  const { connect } = await import('node:net');
  const r = new Rng(seed);
  const t0 = Date.now();
  const res: FuzzResult = { inputs: 0, refused: 0, findings: [], ms: 0 };
  let conns = 0;
  while (res.inputs < count) {
    const s = connect(socketPath);
    await new Promise<void>((ok, fail) => { s.once('connect', () => ok()); s.once('error', fail); });
    conns++;
    let closed = false;
    s.on('close', () => { closed = true; });
    s.on('error', () => undefined);
    s.on('data', () => undefined);
    s.write(encodeFrame(`root:hello::proto=${PROTOCOL_VERSION},pid=${900000 + (conns % 50000)},start=${conns}`));
    const frames: Buffer[] = [];
    for (let i = 0, n = 1 + r.int(64); i < n; i++) {
      const payload = r.int(3) === 0 ? Buffer.from(validMessage(r)) : mutate(r, Buffer.from(validMessage(r)));
      frames.push(r.int(40) === 0 ? mutate(r, encodeFrame(payload.length > 0 ? payload : Buffer.from('x'))) : encodeFrame(payload.length > 0 ? payload : Buffer.from('x')));
    }
    res.inputs += frames.length;
    s.write(Buffer.concat(frames));
    for (let k = 0; k < 50 && !closed; k++) await new Promise((ok) => setTimeout(ok, 1));
    if (closed) res.refused++;
    s.destroy();
    if (conns % 200 === 0 && !alive()) {
      res.findings.push(`seed ${seed}: the service exited after ${res.inputs} frames`);
      break;
    }
  }
  // A well-behaved client still gets its verdict.
  const s = connect(socketPath);
  const dec = new FrameDecoder({ maxFrameBytes: 4096 });
  const replies: string[] = [];
  s.on('data', (c: Buffer) => { for (const f of dec.push(c)) replies.push(f.toString('latin1')); });
  await new Promise<void>((ok, fail) => { s.once('connect', () => ok()); s.once('error', fail); });
  s.write(encodeFrame(`root:hello::proto=${PROTOCOL_VERSION},pid=1,start=1`));
  s.write(encodeFrame('fuzz:create:/srv:seq=1,share=fuzz,path=after-the-fuzz,flags=cx,mode=644'));
  const until = Date.now() + 10000;
  while (!replies.some((x) => x.startsWith('transparent:1') || x.startsWith('fail:1')) && Date.now() < until) await new Promise((ok) => setTimeout(ok, 10));
  if (!replies.some((x) => x.startsWith('transparent:1'))) res.findings.push(`seed ${seed}: no verdict for a valid client after the fuzz: ${replies.join(' | ')}`);
  s.destroy();
  if (!alive()) res.findings.push(`seed ${seed}: the service is not running after the fuzz`);
  res.ms = Date.now() - t0;
  return res;
}
