/**
 * A client of the RestFS DR site (JSON-RPC 2.0 over WebSocket). Requests are
 * matched to replies by id; blocks travel in binary frames.
 * Reconnection and retries belong to the replicator that owns the client.
 */
import { createHash } from 'node:crypto';
import WebSocket from 'ws';

export interface DrClientOptions {
  url: string;
  token: string;
  /** Trusted CA for wss with a private certificate. */
  ca?: Buffer;
}

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

export class DrClient {
  private readonly ws: WebSocket;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  private constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('message', (data: Buffer, isBinary: boolean) => this.onMessage(data, isBinary));
    ws.on('close', () => {
      for (const p of this.pending.values()) p.reject(new Error('connection to the DR site closed'));
      this.pending.clear();
    });
    ws.on('error', () => undefined);
  }

  static connect(o: DrClientOptions): Promise<DrClient> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(o.url, { headers: { authorization: `Bearer ${o.token}` }, ca: o.ca, maxPayload: 1 << 30 });
      ws.once('open', () => resolve(new DrClient(ws)));
      ws.once('unexpected-response', (_req, res) => reject(new Error(`DR site refused the connection: HTTP ${res.statusCode}`)));
      ws.once('error', reject);
    });
  }

  private onMessage(data: Buffer, isBinary: boolean): void {
    let msg: { id?: number; result?: unknown; error?: { code: number; message: string; data?: unknown } };
    const binary: Buffer[] = [];
    if (isBinary) {
      const hlen = data.readUInt32BE(0);
      msg = JSON.parse(data.subarray(4, 4 + hlen).toString('utf8'));
      let off = 4 + hlen;
      for (const b of (msg.result as { blocks: Array<{ size: number }> }).blocks) {
        binary.push(data.subarray(off, off + b.size));
        off += b.size;
      }
    } else {
      msg = JSON.parse(data.toString('utf8'));
    }
    const p = typeof msg.id === 'number' ? this.pending.get(msg.id) : undefined;
    if (!p) return;
    this.pending.delete(msg.id as number);
    if (msg.error) p.reject(new DrRpcError(msg.error.code, msg.error.message, msg.error.data));
    else p.resolve({ result: msg.result, binary });
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
      const timer = setTimeout(() => {
        if (!this.pending.delete(id)) return;
        reject(new Error(`DR site did not answer ${method} within ${REQUEST_TIMEOUT_MS / 1000} s`));
        this.ws.terminate(); // the link is in an unknown state: start afresh
      }, REQUEST_TIMEOUT_MS);
      timer.unref();
      const settle = {
        resolve: (v: { result: unknown; binary: Buffer[] }) => { clearTimeout(timer); resolve(v); },
        reject: (e: Error) => { clearTimeout(timer); reject(e); },
      };
      this.pending.set(id, settle);
      const sent = (err?: Error) => {
        if (err && this.pending.delete(id)) settle.reject(new Error(`cannot send to the DR site: ${err.message}`));
      };
      if (blocks === undefined) {
        this.ws.send(JSON.stringify(req), sent);
        return;
      }
      const head = Buffer.from(JSON.stringify(req));
      const len = Buffer.alloc(4);
      len.writeUInt32BE(head.length);
      this.ws.send(Buffer.concat([len, head, ...blocks]), sent);
    });
  }

  async call<T = unknown>(method: string, params: unknown): Promise<T> {
    return (await this.send(method, params)).result as T;
  }

  /** Sends blocks (hash computed here); the site verifies every hash. */
  async putBlocks(blocks: Buffer[]): Promise<number> {
    const meta = blocks.map((b) => ({ hash: blockHash(b), size: b.length }));
    const r = await this.send('blocks.put', { blocks: meta }, blocks);
    return (r.result as { stored: number }).stored;
  }

  async getBlocks(hashes: string[]): Promise<Buffer[]> {
    return (await this.send('blocks.get', { hashes })).binary;
  }

  onClose(fn: () => void): void {
    this.ws.once('close', fn);
  }

  close(): void {
    this.ws.close();
  }
}
