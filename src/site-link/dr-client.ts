/**
 * A client of the RestFS DR site (JSON-RPC 2.0 over WebSocket). Requests are
 * matched to replies by id; blocks travel in binary frames.
 * Reconnection and retries belong to the replicator that owns the client.
 */
import { createHash } from 'node:crypto';
import WebSocket from 'ws';
import { VfsxError } from '../errors/vfsx-error';
import { hashBlocks } from '../native/addon';
import { claimRoom } from '../protocol/frame-room';
import type { BlockScope, SiteClient } from './site-client';

export interface DrClientOptions {
  url: string;
  token: string;
  /** Trusted CA for wss with a private certificate. */
  ca?: Buffer;
  /** Paces what is sent (a bandwidth limit); requests then go one after another. */
  pace?: Pacer;
  /** Paces the blocks received (restore, verify --deep): block reads then go one after another. */
  receivePace?: Pacer;
}

/** Resolves when n more bytes may be sent; undefined when they may go at once. */
export interface Pacer {
  take(n: number): Promise<void> | undefined;
}

/**
 * Objects per page of a listing: about 5 MiB of JSON. A share of millions
 * of files listed in one reply would make a string larger than V8 can.
 */
const LIST_PAGE = 10_000;
const INVALID_PARAMS = -32602;

/** Fragment size of paced binary messages: small enough that a limited link sends smoothly. */
const PACED_FRAGMENT = 64 * 1024;

export class DrRpcError extends Error {
  readonly code: number;
  readonly data: unknown;

  constructor(code: number, message: string, data?: unknown) {
    super(message);
    this.name = 'DrRpcError';
    this.code = code;
    this.data = data;
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

/** Longest wait for one answer; a 4 MiB block frame needs far less even on a slow WAN link. */
const REQUEST_TIMEOUT_MS = 120_000;

type Pending = { resolve: (v: { result: unknown; binary: Buffer[] }) => void; reject: (e: Error) => void };

export const blockHash = (b: Buffer) => createHash('sha256').update(b).digest('hex');
/** hashBlocks' key for plain SHA-256. */
const SHA256 = Buffer.alloc(0);

export class DrClient implements SiteClient {
  readonly encrypted = false;
  private readonly ws: WebSocket;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private readonly pace: Pacer | undefined;
  /** The paced sends, one message after another (fragments of two messages must not interleave). */
  private sending: Promise<void> = Promise.resolve();
  private readonly receivePace: Pacer | undefined;
  /** The site lists only in one piece (a site from before paged listings). */
  private wholeLists = false;
  /** The site takes no span with blocks.get (a site from before spans). */
  private noSpans = false;
  /** Under a receive limit, the block reads, one after another. */
  private receiving: Promise<void> = Promise.resolve();

  private constructor(ws: WebSocket, pace?: Pacer, receivePace?: Pacer) {
    this.ws = ws;
    this.pace = pace;
    this.receivePace = receivePace;
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on('close', () => {
      for (const p of this.pending.values()) p.reject(new Error('connection to the DR site closed'));
      this.pending.clear();
    });
    ws.on('error', () => undefined);
  }

  static connect(o: DrClientOptions): Promise<DrClient> {
    return new Promise((resolve, reject) => {
      // A zero masking key: ws then neither masks here nor unmasks at the site (RFC 6455's
      // masking guards browsers' intermediaries; this client is no browser, and wss encrypts).
      // Measured: a quarter of both processes' CPU on an initial sync.
      const ws = new WebSocket(o.url, {
        headers: { authorization: `Bearer ${o.token}` }, ca: o.ca, maxPayload: 1 << 30, generateMask: (mask: Buffer) => { mask.fill(0); },
      });
      ws.once('open', () => resolve(new DrClient(ws, o.pace, o.receivePace)));
      ws.once('unexpected-response', (_req, res) => reject(new Error(`DR site refused the connection: HTTP ${res.statusCode}`)));
      ws.once('error', reject);
    });
  }

  /**
   * Nothing a site sends may throw out of here: a frame that cannot be
   * parsed ends the connection (every pending request fails with the
   * reason), it never takes the process down.
   */
  private onMessage(data: Buffer, isBinary: boolean): void {
    let reply: Reply | null;
    try {
      reply = parseReply(data, isBinary);
    } catch (err) {
      this.fail(new VfsxError('VFSX_ERR_DR_BAD_REPLY', `DR site sent a malformed frame: ${(err as Error).message}`));
      return;
    }
    const p = reply ? this.pending.get(reply.id) : undefined;
    if (!reply || !p) return;
    this.pending.delete(reply.id);
    if (reply.error) p.reject(new DrRpcError(reply.error.code, reply.error.message, reply.error.data));
    else p.resolve({ result: reply.result, binary: reply.binary });
  }

  private fail(err: Error): void {
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    this.ws.terminate();
  }

  private send(method: string, params: unknown, blocks?: Buffer[]): Promise<{ result: unknown; binary: Buffer[] }> {
    const id = this.nextId++;
    const req = { jsonrpc: '2.0', id, method, params };
    return new Promise((resolve, reject) => {
      // A request on a link that is closing or closed would never be answered: fail it now.
      if (this.ws.readyState !== WebSocket.OPEN) {
        reject(new Error('connection to the DR site closed'));
        return;
      }
      // A site that stops answering (frozen, network black hole) must not hold a record forever.
      // Armed once the request is on its way (under a bandwidth limit it may first wait its turn).
      let timer: NodeJS.Timeout | undefined;
      const arm = () => {
        timer = setTimeout(() => {
          if (!this.pending.delete(id)) return;
          reject(new Error(`DR site did not answer ${method} within ${REQUEST_TIMEOUT_MS / 1000} s`));
          this.ws.terminate(); // the link is in an unknown state: start afresh
        }, REQUEST_TIMEOUT_MS);
        timer.unref();
      };
      const settle = {
        resolve: (v: { result: unknown; binary: Buffer[] }) => { clearTimeout(timer); resolve(v); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      this.pending.set(id, settle);
      const sent = (err?: Error) => {
        if (err && this.pending.delete(id)) settle.reject(new Error(`cannot send to the DR site: ${err.message}`));
      };
      if (this.pace) {
        this.sending = this.sending.then(() => this.sendPaced(req, blocks, sent, arm)).catch((err: Error) => sent(err));
        return;
      }
      arm();
      if (blocks === undefined) {
        this.ws.send(JSON.stringify(req), sent);
        return;
      }
      // One binary message in one frame: the length and request, then the blocks. Copying the
      // blocks into it here costs less than the site reassembling a frame per block (ws then
      // copies every fragment and the whole message once more, measured 0.3 s of the site's
      // main thread per 256 MiB).
      const json = Buffer.from(JSON.stringify(req));
      // Blocks sealed with room in front of them (src/protocol/frame-room.ts) are framed where they are.
      let frame = claimRoom(blocks, 4 + json.length);
      if (frame === null) {
        let size = 4 + json.length;
        for (const b of blocks) size += b.length;
        frame = Buffer.allocUnsafe(size);
        let off = 4 + json.length;
        for (const b of blocks) off += b.copy(frame, off);
      }
      frame.writeUInt32BE(json.length, 0);
      json.copy(frame, 4);
      this.ws.send(frame, { binary: true }, sent);
    });
  }

  /** One request under a bandwidth limit: each piece waits for its bytes' tokens. */
  private async sendPaced(req: object, blocks: Buffer[] | undefined, sent: (err?: Error) => void, arm: () => void): Promise<void> {
    const pace = this.pace as Pacer;
    const open = () => this.ws.readyState === WebSocket.OPEN;
    if (blocks === undefined) {
      const text = JSON.stringify(req);
      await pace.take(Buffer.byteLength(text));
      if (!open()) {
        sent(new Error('connection closed'));
        return;
      }
      arm();
      this.ws.send(text, sent);
      return;
    }
    const json = Buffer.from(JSON.stringify(req));
    const head = Buffer.allocUnsafe(4 + json.length);
    head.writeUInt32BE(json.length, 0);
    json.copy(head, 4);
    const parts: Buffer[] = [head];
    for (const b of blocks) {
      for (let off = 0; off < b.length; off += PACED_FRAGMENT) parts.push(b.subarray(off, off + PACED_FRAGMENT));
    }
    for (let i = 0; i < parts.length; i++) {
      const w = pace.take(parts[i].length);
      if (w) await w;
      // A link that closed mid-message: the request fails (the 'close' handler rejects it).
      if (!open()) {
        sent(new Error('connection closed'));
        return;
      }
      const last = i === parts.length - 1;
      if (last) arm();
      this.ws.send(parts[i], { binary: true, fin: last }, last ? sent : (err) => { if (err) sent(err); });
    }
  }

  async call<T = unknown>(method: string, params: unknown): Promise<T> {
    if (method === 'object.list') {
      const all: unknown[] = [];
      await this.list(params as object, (objects) => {
        for (const o of objects) all.push(o);
      });
      return all as T;
    }
    return (await this.send(method, params)).result as T;
  }

  /**
   * object.list page by page (LIST_PAGE objects, each reply bounded at the
   * site), each handed to onPage before the next is asked for: a pass over
   * a share of millions holds a page, not the listing. A site from before
   * paging lists in one piece (one call of onPage).
   */
  async list(params: object, onPage: (objects: unknown[]) => void | Promise<void>): Promise<void> {
    if (this.wholeLists) {
      await onPage(this.wholeList((await this.send('object.list', params)).result));
      return;
    }
    let after: string | undefined;
    for (;;) {
      let page: { objects?: unknown; next?: unknown };
      try {
        page = (await this.send('object.list', { ...params, limit: LIST_PAGE, ...(after === undefined ? {} : { after }) })).result as typeof page;
      } catch (err) {
        if (after !== undefined || !(err instanceof DrRpcError && err.code === INVALID_PARAMS)) throw err;
        // A site from before paging refuses the parameters: it lists in one piece.
        const whole = (await this.send('object.list', params)).result;
        this.wholeLists = true;
        await onPage(this.wholeList(whole));
        return;
      }
      const { objects, next } = page ?? {};
      // Pages move forward in the site's order (SQLite's: of the UTF-8 bytes), so a site cannot keep us listing in circles.
      if (!Array.isArray(objects) || (next !== null && typeof next !== 'string') || (next !== null && after !== undefined && Buffer.compare(Buffer.from(next), Buffer.from(after)) <= 0)) {
        throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', 'object.list answered a page that is not a page after the last');
      }
      await onPage(objects);
      if (next === null) return;
      after = next;
    }
  }

  private wholeList(r: unknown): unknown[] {
    if (!Array.isArray(r)) throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', 'object.list did not answer a list');
    return r;
  }

  /** Sends blocks (hashes computed here unless given); the site verifies every hash. */
  async putBlocks(blocks: Buffer[], hashes?: string[]): Promise<number> {
    const meta = blocks.map((b, i) => ({ hash: hashes?.[i] ?? blockHash(b), size: b.length }));
    const r = await this.send('blocks.put', { blocks: meta }, blocks);
    return (r.result as { stored: number }).stored;
  }

  blockId(data: Buffer): string {
    return blockHash(data);
  }

  blockIds(run: Buffer, blockSize: number): Promise<string[]> {
    return hashBlocks(SHA256, run, blockSize);
  }

  /** Blocks as the site sends them, unchecked but for their count (a sealed site's client opens them). */
  async getRaw(hashes: string[], where?: BlockScope): Promise<Buffer[]> {
    let scope = where;
    if (scope?.span !== undefined && this.noSpans) {
      const { span: _, ...rest } = scope;
      scope = rest;
    }
    const params = scope ? { hashes, ...scope } : { hashes };
    let got: Buffer[];
    try {
      got = this.receivePace ? await this.getPaced(params, this.receivePace) : (await this.send('blocks.get', params)).binary;
    } catch (err) {
      // A site from before spans refuses the parameter: ask without it from now on.
      if (scope?.span === undefined || !(err instanceof DrRpcError && err.code === INVALID_PARAMS)) throw err;
      this.noSpans = true;
      return this.getRaw(hashes, scope);
    }
    if (got.length !== hashes.length) {
      throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `DR site answered ${got.length} blocks for ${hashes.length} asked`);
    }
    return got;
  }

  /**
   * A block read under a receive limit: it waits for the reads before it,
   * and the next waits until this one's bytes are paid for, so the link
   * carries at most the limit on average and one reply (64 blocks) at a time.
   */
  private getPaced(params: object, pace: Pacer): Promise<Buffer[]> {
    const turn = this.receiving.then(async () => {
      const got = (await this.send('blocks.get', params)).binary;
      await pace.take(got.reduce((n, b) => n + b.length, 0));
      return got;
    });
    this.receiving = turn.then(() => undefined, () => undefined);
    return turn;
  }

  /**
   * Fetches blocks and checks each against its id (sha256 of its bytes):
   * a block altered at the site (bit rot, a disk fault, an attacker) is
   * never handed on. `where` (bucket and path) lets a scoped token read.
   */
  async getBlocks(hashes: string[], where?: BlockScope): Promise<Buffer[]> {
    const got = await this.getRaw(hashes, where);
    got.forEach((b, i) => {
      const h = blockHash(b);
      if (h !== hashes[i]) throw new VfsxError('VFSX_ERR_DR_BAD_BLOCK', `block ${hashes[i]} from the DR site is damaged (its bytes hash to ${h})`);
    });
    return got;
  }

  takeUnreadable(): string[] {
    return [];
  }

  onClose(fn: () => void): void {
    this.ws.once('close', fn);
  }

  close(): void {
    this.ws.close();
  }
}

type Reply = { id: number; result?: unknown; error?: { code: number; message: string; data?: unknown }; binary: Buffer[] };

/** Parses one frame from the site; throws on anything malformed; null for a frame without a numeric id. */
function parseReply(data: Buffer, isBinary: boolean): Reply | null {
  const binary: Buffer[] = [];
  let msg: unknown;
  if (isBinary) {
    if (data.length < 4) throw new Error('binary frame shorter than its header');
    const hlen = data.readUInt32BE(0);
    if (hlen > data.length - 4) throw new Error('binary frame header longer than the frame');
    msg = JSON.parse(data.subarray(4, 4 + hlen).toString('utf8'));
    const blocks = (msg as { result?: { blocks?: unknown } } | null)?.result?.blocks;
    if (!Array.isArray(blocks)) throw new Error('binary frame without a block list');
    let off = 4 + hlen;
    for (const b of blocks) {
      const size = (b as { size?: unknown } | null)?.size;
      if (!Number.isSafeInteger(size) || (size as number) < 0 || off + (size as number) > data.length) throw new Error('block sizes do not match the frame');
      binary.push(data.subarray(off, off + (size as number)));
      off += size as number;
    }
  } else {
    msg = JSON.parse(data.toString('utf8'));
  }
  if (typeof msg !== 'object' || msg === null) throw new Error('not a JSON object');
  const m = msg as Reply;
  if (typeof m.id !== 'number') return null;
  if (m.error !== undefined && (typeof m.error !== 'object' || m.error === null || typeof m.error.code !== 'number')) throw new Error('malformed error object');
  return { id: m.id, result: m.result, error: m.error === undefined ? undefined : { code: m.error.code, message: String(m.error.message), data: m.error.data }, binary };
}
