/**
 * The RestFS DR site: JSON-RPC 2.0 over WebSocket (wss when a certificate is
 * configured). Clients authenticate with a Bearer token at the upgrade.
 * Text frames carry JSON-RPC requests (single or batch); binary frames carry
 * one request whose blocks follow it: a 4-byte big-endian header length,
 * the JSON-RPC request, then the blocks' bytes back to back. Hostile input
 * gets a JSON-RPC error; nothing a client sends can stop the site.
 */
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { createServer as createHttp, IncomingMessage, Server } from 'node:http';
import { createServer as createHttps } from 'node:https';
import { join } from 'node:path';
import Ajv, { ValidateFunction } from 'ajv';
import type { Logger } from 'pino';
import { WebSocket, WebSocketServer } from 'ws';
import { VfsxError } from '../errors/vfsx-error';
import { authorize, Rights, rightsOf, ScopedToken } from './access';
import { PackStore } from './pack-store';
import { IndexSnapshots, recoverIndex } from './index-snapshots';
import type { PackRemote } from './s3-packs';
import { BinaryPart, DrSiteMethods } from './dr-site-methods';
import { MetaStore } from './meta-store';
import { RPC_ERRORS, RPC_PARAMS } from './rpc-schema';

export interface DrSiteServerOptions {
  host: string;
  port: number;
  /** The admin token: every method on every bucket. */
  token: string;
  /** Tokens limited to some buckets, read-only or read-write (src/dr-site/access.ts). */
  tokens?: ScopedToken[];
  dataDir: string;
  maxFrameBytes: number;
  tls?: { cert: string; key: string };
  retentionMs: number;
  gcIntervalMs: number;
  orphanGraceMs: number;
  /** Pack files are closed at this size. */
  packBytes?: number;
  compression?: 'zstd' | 'none';
  /** A pack whose live bytes fall below this fraction is rewritten by retention. */
  repackBelow?: number;
  /** Object storage for closed packs (drSite.storage.backend "s3"). */
  remote?: PackRemote;
  uploadIdleMs?: number;
  /** With `remote`: how often the index is copied into the bucket when it changed (index-snapshots.ts). */
  indexCopyMs?: number;
  logger: Logger;
}

type Id = string | number | null;
interface RpcError { code: number; message: string; data?: unknown }
interface Reply { jsonrpc: '2.0'; id: Id; result?: unknown; error?: RpcError }

const CODE_OF: Partial<Record<string, number>> = {
  VFSX_ERR_DR_MISSING_BLOCKS: RPC_ERRORS.MISSING_BLOCKS,
  VFSX_ERR_DR_INVALID_PATH: RPC_ERRORS.INVALID_PATH,
  VFSX_ERR_DR_NOT_FOUND: RPC_ERRORS.NOT_FOUND,
  VFSX_ERR_DR_HASH_MISMATCH: RPC_ERRORS.HASH_MISMATCH,
  VFSX_ERR_DR_NOT_A_DIRECTORY: RPC_ERRORS.NOT_A_DIRECTORY,
  VFSX_ERR_DR_FORBIDDEN: RPC_ERRORS.FORBIDDEN,
  VFSX_ERR_DR_DAMAGED: RPC_ERRORS.DAMAGED,
  VFSX_ERR_DR_REPO_STATE: RPC_ERRORS.REPO_STATE,
  VFSX_ERR_DR_STORAGE: RPC_ERRORS.STORAGE,
};

export class DrSiteServer {
  readonly methods: DrSiteMethods;
  private readonly opts: DrSiteServerOptions;
  private readonly log: Logger;
  private readonly validators = new Map<string, ValidateFunction>();
  private readonly rights = new WeakMap<IncomingMessage, Rights>();
  private http: Server | null = null;
  private wss: WebSocketServer | null = null;
  private gcTimer: NodeJS.Timeout | null = null;
  private gcRunning: Promise<number> | null = null;
  private migrating: Promise<void> = Promise.resolve();
  /** With object storage: copies of the index in the bucket. */
  readonly indexCopies: IndexSnapshots | null = null;
  private copyTimer: NodeJS.Timeout | null = null;
  port = 0;

  constructor(options: DrSiteServerOptions) {
    this.opts = options;
    this.log = options.logger;
    const ajv = new Ajv({ allErrors: true, strict: true });
    for (const [m, schema] of Object.entries(RPC_PARAMS)) this.validators.set(m, ajv.compile(schema));
    const meta = new MetaStore(join(options.dataDir, 'meta.sqlite'));
    const log = (msg: string, o: object) => this.log.warn(o, msg);
    const blocks = new PackStore({
      dir: options.dataDir, meta, packBytes: options.packBytes ?? 16 * 1024 * 1024, compression: options.compression ?? 'zstd',
      remote: options.remote, uploadIdleMs: options.uploadIdleMs, log,
      beforeRemoteDelete: async () => { await this.indexCopies?.take(true); },
    });
    this.methods = new DrSiteMethods(blocks, meta);
    if (options.remote) this.indexCopies = new IndexSnapshots({ dataDir: options.dataDir, meta, blocks, remote: options.remote, log, info: (msg, o) => this.log.info(o, msg) });
  }

  static async create(options: DrSiteServerOptions): Promise<DrSiteServer> {
    await mkdir(options.dataDir, { recursive: true, mode: 0o700 });
    // A site whose index is gone comes back from the copy in the bucket (before anything could take its packs for leftovers).
    const from = options.remote ? await recoverIndex(join(options.dataDir, 'meta.sqlite'), options.remote, (msg, o) => options.logger.warn(o, msg)) : null;
    const s = new DrSiteServer(options);
    if (from) {
      // Replicators learn of it (repo.info) and sync every share in full: what changed after the copy is not here.
      s.methods.meta.setRepoValue('recoveredAt', String(Date.now()));
      s.methods.meta.setRepoValue('recoveredFrom', from);
      options.logger.warn({ copy: from }, 'the index was lost and is recovered from its newest copy in object storage; replicators sync every share in full');
    }
    await s.methods.blocks.init();
    return s;
  }

  async listen(): Promise<void> {
    const { tls } = this.opts;
    this.http = tls ? createHttps({ cert: readFileSync(tls.cert), key: readFileSync(tls.key) }) : createHttp();
    this.wss = new WebSocketServer({
      server: this.http,
      maxPayload: this.opts.maxFrameBytes,
      verifyClient: (info: { req: IncomingMessage }, cb: (ok: boolean, code?: number, msg?: string) => void) =>
        this.authorized(info.req) ? cb(true) : cb(false, 401, 'Unauthorized'),
    });
    this.wss.on('connection', (ws, req) => this.accept(ws, this.rights.get(req) as Rights));
    // ws re-emits the HTTP server's errors (EADDRINUSE at listen): the listen promise reports them.
    this.wss.on('error', (err) => this.log.debug({ err }, 'websocket server error'));
    await new Promise<void>((resolve, reject) => {
      this.http?.once('error', reject);
      this.http?.listen(this.opts.port, this.opts.host, () => resolve());
    });
    this.port = (this.http.address() as { port: number }).port;
    this.gcTimer = setInterval(() => void this.gc(), this.opts.gcIntervalMs);
    this.gcTimer.unref();
    if (this.indexCopies) {
      const copy = () => void this.indexCopies?.take().catch((err: Error) => this.log.warn({ err: err.message }, 'no copy of the index in object storage this time'));
      this.copyTimer = setInterval(copy, this.opts.indexCopyMs ?? 300_000);
      this.copyTimer.unref();
    }
    this.migrating = this.migrateLoose();
    this.log.info({ host: this.opts.host, port: this.port, tls: Boolean(tls) }, 'dr site listening');
  }

  private authorized(req: IncomingMessage): boolean {
    const r = rightsOf(String(req.headers.authorization ?? ''), this.opts.token, this.opts.tokens ?? []);
    if (!r) {
      this.log.warn({ remote: req.socket.remoteAddress }, 'refused client: bad token');
      return false;
    }
    this.rights.set(req, r);
    return true;
  }

  private accept(ws: WebSocket, rights: Rights): void {
    ws.on('error', (err) => this.log.debug({ err }, 'client connection error'));
    ws.on('message', (data: Buffer, isBinary: boolean) => {
      this.onMessage(data, isBinary, rights).then(
        (out) => {
          if (out !== null && ws.readyState === WebSocket.OPEN) ws.send(out);
        },
        (err) => this.log.error({ err }, 'unexpected failure answering a request'),
      );
    });
  }

  private async onMessage(data: Buffer, isBinary: boolean, rights: Rights): Promise<string | Buffer | null> {
    if (isBinary) return this.onBinary(data, rights);
    let msg: unknown;
    try {
      msg = JSON.parse(data.toString('utf8'));
    } catch {
      return JSON.stringify(this.error(null, RPC_ERRORS.PARSE_ERROR, 'parse error'));
    }
    if (Array.isArray(msg)) {
      if (msg.length === 0) return JSON.stringify(this.error(null, RPC_ERRORS.INVALID_REQUEST, 'empty batch'));
      const replies = (await Promise.all(msg.map((m) => this.handle(m, [], rights))))
        .filter((r): r is Reply & { binary?: BinaryPart[] } => r !== null)
        .map((r) => (r.binary ? this.error(r.id, RPC_ERRORS.INVALID_REQUEST, 'blocks.get cannot be batched') : r));
      return replies.length > 0 ? JSON.stringify(replies) : null;
    }
    const r = await this.handle(msg, [], rights);
    return r ? this.encodeReply(r) : null;
  }

  private async onBinary(data: Buffer, rights: Rights): Promise<string | Buffer | null> {
    if (data.length < 4 || data.readUInt32BE(0) > data.length - 4) {
      return JSON.stringify(this.error(null, RPC_ERRORS.INVALID_REQUEST, 'binary frame without a whole header'));
    }
    const hlen = data.readUInt32BE(0);
    let req: { params?: { blocks?: Array<{ hash: string; size: number }> } } & Record<string, unknown>;
    try {
      req = JSON.parse(data.subarray(4, 4 + hlen).toString('utf8'));
    } catch {
      return JSON.stringify(this.error(null, RPC_ERRORS.PARSE_ERROR, 'parse error in binary header'));
    }
    const parts: BinaryPart[] = [];
    const list = Array.isArray(req?.params?.blocks) ? req.params.blocks : [];
    let off = 4 + hlen;
    for (const b of list) {
      const size = typeof b?.size === 'number' && Number.isInteger(b.size) && b.size >= 0 ? b.size : -1;
      if (size < 0 || off + size > data.length) {
        return JSON.stringify(this.error((req.id as Id) ?? null, RPC_ERRORS.INVALID_PARAMS, 'block sizes do not match the frame'));
      }
      parts.push({ hash: String(b.hash), data: data.subarray(off, off + size) });
      off += size;
    }
    if (off !== data.length) {
      return JSON.stringify(this.error((req.id as Id) ?? null, RPC_ERRORS.INVALID_PARAMS, 'trailing bytes after the blocks'));
    }
    const r = await this.handle(req, parts, rights);
    return r ? this.encodeReply(r) : null;
  }

  /** A reply with binary blocks goes back as a binary frame, like a request. */
  private encodeReply(r: Reply & { binary?: BinaryPart[] }): string | Buffer {
    if (!r.binary) return JSON.stringify(r);
    const { binary, ...json } = r;
    const head = Buffer.from(JSON.stringify(json));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(head.length);
    return Buffer.concat([len, head, ...binary.map((b) => b.data)]);
  }

  private error(id: Id, code: number, message: string, data?: unknown): Reply {
    return { jsonrpc: '2.0', id, error: data === undefined ? { code, message } : { code, message, data } };
  }

  private async handle(m: unknown, binary: BinaryPart[], rights: Rights): Promise<(Reply & { binary?: BinaryPart[] }) | null> {
    const req = m as { jsonrpc?: unknown; id?: unknown; method?: unknown; params?: unknown };
    const idOk = req && (req.id === undefined || req.id === null || typeof req.id === 'string' || typeof req.id === 'number');
    const id = (idOk && req.id !== undefined ? req.id : null) as Id;
    if (!req || typeof req !== 'object' || req.jsonrpc !== '2.0' || typeof req.method !== 'string' || !idOk) {
      return this.error(id, RPC_ERRORS.INVALID_REQUEST, 'not a JSON-RPC 2.0 request');
    }
    const notification = req.id === undefined;
    const validate = this.validators.get(req.method);
    if (!validate) return notification ? null : this.error(id, RPC_ERRORS.METHOD_NOT_FOUND, `no method ${req.method}`);
    const params = req.params ?? {};
    if (!validate(params)) return notification ? null : this.error(id, RPC_ERRORS.INVALID_PARAMS, 'invalid params', validate.errors);
    if (req.method === 'blocks.put') {
      const declared = (params as { blocks: Array<{ hash: string }> }).blocks.map((b) => b.hash).join();
      if (declared !== binary.map((b) => b.hash).join()) {
        return this.error(id, RPC_ERRORS.INVALID_PARAMS, 'blocks.put must come in a binary frame with its blocks');
      }
    }
    try {
      authorize(rights, req.method, params as Record<string, unknown>);
      const out = await this.methods.call(req.method, params as Record<string, unknown>, binary);
      return notification ? null : { jsonrpc: '2.0', id, result: out.result, ...(out.binary ? { binary: out.binary } : {}) };
    } catch (err) {
      const code = err instanceof VfsxError ? CODE_OF[err.code] : undefined;
      if (code === undefined) this.log.error({ err, method: req.method }, 'method failed');
      const data = err instanceof VfsxError && Array.isArray(err.cause) ? { missing: err.cause } : undefined;
      return notification ? null : this.error(id, code ?? RPC_ERRORS.INTERNAL, code ? (err as Error).message : 'internal error', data);
    }
  }

  /**
   * Retention: drops versions no restore within retentionMs needs, then
   * deletes the blocks nothing references any more. Returns blocks freed.
   */
  gc(): Promise<number> {
    if (!this.gcRunning) {
      this.gcRunning = (async () => {
        const now = Date.now();
        const free = this.methods.meta.collect(now - this.opts.retentionMs, now - this.opts.orphanGraceMs);
        await this.methods.free(free);
        if (free.length > 0) this.log.info({ blocks: free.length }, 'retention freed blocks');
        const reclaimed = await this.methods.blocks.repack(this.opts.repackBelow ?? 0.5, (msg, o) => this.log.info(o, msg));
        if (reclaimed > 0) this.log.info({ bytes: reclaimed }, 'repack reclaimed space');
        return free.length;
      })()
        .catch((err) => {
          this.log.error({ err }, 'retention run failed');
          return 0;
        })
        .finally(() => {
          this.gcRunning = null;
        });
    }
    return this.gcRunning;
  }

  /** A v1 site's blocks move into packs in the background, serving all the while. */
  private async migrateLoose(): Promise<void> {
    const total = this.methods.meta.looseCount();
    if (total === 0) return;
    this.log.info({ blocks: total }, 'moving v1 blocks into packs');
    let last = Date.now();
    try {
      const moved = await this.methods.blocks.migrateLoose((done) => {
        if (Date.now() - last < 5000) return;
        last = Date.now();
        this.log.info({ done, total }, 'moving v1 blocks into packs');
      });
      this.log.info({ moved, left: this.methods.meta.looseCount() }, 'v1 blocks moved into packs');
    } catch (err) {
      this.log.error({ err }, 'moving v1 blocks into packs failed (they stay readable where they are)');
    }
  }

  async close(): Promise<void> {
    if (this.gcTimer) clearInterval(this.gcTimer);
    if (this.copyTimer) clearInterval(this.copyTimer);
    await this.gcRunning;
    await this.migrating;
    // A last copy on the way out, when the index moved since the last one (a stop must not lose the bucket's view of it).
    await this.indexCopies?.take().catch((err: Error) => this.log.warn({ err: err.message }, 'no copy of the index in object storage at stop'));
    await this.methods.blocks.close();
    for (const c of this.wss?.clients ?? []) c.terminate();
    await new Promise<void>((r) => (this.wss ? this.wss.close(() => r()) : r()));
    await new Promise<void>((r) => (this.http ? this.http.close(() => r()) : r()));
    this.methods.meta.close();
  }
}
