/**
 * The replicator: consumes the journal (BullMQ) and makes the DR site match
 * the source's *current* state for each path a record names. Records are
 * hints: duplicate, reordered or unknown-outcome records all converge.
 * - a path gone from the source is deleted at the site;
 * - a rename the source shows as done becomes a server-side move;
 * - a file sends only the blocks covering its dirty ranges (all of them when
 *   the record has none), and of those only what the site lacks;
 * - a file that changes while it is read is retried, never committed torn.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { Job, Worker } from 'bullmq';
import IORedis, { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import type { ChangeRecord } from '../ops/change-record';
import { DrClient, DrRpcError } from './dr-client';
import { redisOptions } from './redis-connection';
import { lstatOrNull, metaOf, readBlocks, readTarget } from './source-tree';

export interface ReplicatorOptions {
  redis: VfsxConfig['redis'];
  queueName: string;
  replication: VfsxConfig['replication'];
  logger: Logger;
}

interface Head {
  kind: string;
  size: number;
  blockSize: number;
  meta: { mode?: number; uid?: number; gid?: number; mtimeNs?: string };
  blocks?: string[];
}

/** Blocks per binary frame stay under this; the site must accept frames of 8 MiB or more. */
const MAX_PUT_BYTES = 4 << 20;
const NOT_FOUND = -32003;

export class Replicator {
  private readonly opts: ReplicatorOptions;
  private readonly log: Logger;
  private readonly conn: Redis;
  private worker: Worker | null = null;
  private client: DrClient | null = null;
  private connecting: Promise<DrClient> | null = null;
  private readonly buckets = new Set<string>();
  readonly stats = { records: 0, commits: 0, blocksSent: 0, bytesSent: 0, failures: 0, lastError: '' };

  constructor(options: ReplicatorOptions) {
    this.opts = options;
    this.log = options.logger;
    this.conn = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: null }));
    this.conn.on('error', (err) => this.log.debug({ err }, 'replicator redis error'));
  }

  start(): void {
    this.worker = new Worker(this.opts.queueName, (job: Job) => this.process(job.data as ChangeRecord), {
      connection: this.conn,
      prefix: this.opts.redis.prefix,
      concurrency: 1, // per-path order matters; records are processed as they were journaled
      settings: { backoffStrategy: (attempts: number) => Math.min(30000, 200 * 2 ** Math.min(attempts, 8)) * (0.5 + Math.random() / 2) },
    });
    this.worker.on('failed', (job, err) => {
      this.stats.failures++;
      this.stats.lastError = err.message;
      this.log.warn({ err, id: job?.id, attempts: job?.attemptsMade }, 'replication of a record failed; will retry');
    });
    this.worker.on('error', (err) => this.log.debug({ err }, 'replicator worker error'));
  }

  async close(): Promise<void> {
    await this.worker?.close().catch(() => undefined);
    this.client?.close();
    await this.conn.quit().catch(() => this.conn.disconnect());
  }

  private async site(): Promise<DrClient> {
    if (this.client) return this.client;
    if (!this.connecting) {
      const { siteUrl, token } = this.opts.replication;
      this.connecting = DrClient.connect({ url: siteUrl, token: token ?? '' }).then(
        (c) => {
          this.client = c;
          c.onClose(() => {
            this.client = null;
            this.buckets.clear();
            this.log.warn('DR site link down');
          });
          this.log.info({ url: siteUrl }, 'DR site link up');
          return c;
        },
        (err) => {
          throw new VfsxError('VFSX_ERR_REPL_SITE_DOWN', `DR site unreachable: ${(err as Error).message}`, { cause: err });
        },
      ).finally(() => {
        this.connecting = null;
      });
    }
    return this.connecting;
  }

  async process(rec: ChangeRecord): Promise<void> {
    this.stats.records++;
    if (Object.keys(rec.names).some((k) => k.endsWith('B64'))) {
      this.log.warn({ id: rec.id }, 'names that are not UTF-8 are not replicated yet');
      return;
    }
    const site = await this.site();
    if (!this.buckets.has(rec.share)) {
      await site.call('bucket.ensure', { bucket: rec.share });
      this.buckets.add(rec.share);
    }
    const ctx = { site, bucket: rec.share, root: rec.origpath };
    if (rec.op === 'rename' && rec.names.to !== undefined && rec.names.stream === undefined) {
      await this.rename(ctx, rec.names.path, rec.names.to);
      return;
    }
    const ranges = rec.op === 'close' || rec.op === 'fsync' ? rec.ranges : undefined;
    await this.syncPath(ctx, rec.names.path, ranges);
    if (rec.op === 'link' && rec.names.from) await this.syncPath(ctx, rec.names.from);
  }

  private async rename(ctx: Ctx, from: string, to: string): Promise<void> {
    const src = await lstatOrNull(join(ctx.root, from));
    const dst = await lstatOrNull(join(ctx.root, to));
    if (!src && dst) {
      try {
        await ctx.site.call('object.move', { bucket: ctx.bucket, from, to });
      } catch (err) {
        if (!(err instanceof DrRpcError && err.code === NOT_FOUND)) throw err;
      }
    }
    await this.syncPath(ctx, from);
    await this.syncPath(ctx, to);
    // Records of paths below a renamed directory may have been handled after
    // the rename (their old names were gone): reconcile the subtree. Files
    // the site already has cost a stat (size and mtime match).
    if (dst?.isDirectory()) await this.syncTree(ctx, to);
  }

  private async syncTree(ctx: Ctx, rel: string): Promise<void> {
    let entries;
    try {
      entries = await readdir(join(ctx.root, rel), { withFileTypes: true });
    } catch {
      return; // gone meanwhile: a later record deletes it
    }
    for (const e of entries) {
      const child = `${rel}/${e.name}`;
      await this.syncPath(ctx, child);
      if (e.isDirectory()) await this.syncTree(ctx, child);
    }
  }

  private async syncPath(ctx: Ctx, rel: string, ranges?: Array<[number, number]>): Promise<void> {
    const abs = join(ctx.root, rel);
    const st = await lstatOrNull(abs);
    const { site, bucket } = ctx;
    if (!st) {
      await site.call('object.delete', { bucket, path: rel });
    } else if (st.isDirectory()) {
      await site.call('object.commit', { bucket, path: rel, kind: 'dir', meta: metaOf(st) });
    } else if (st.isSymbolicLink()) {
      await site.call('object.commit', { bucket, path: rel, kind: 'symlink', meta: metaOf(st), target: await readTarget(abs) });
    } else if (st.isFile()) {
      await this.syncFile(ctx, abs, rel, ranges);
    }
    this.stats.commits++;
  }

  private async syncFile(ctx: Ctx, abs: string, rel: string, ranges?: Array<[number, number]>, full = false): Promise<void> {
    const { site, bucket } = ctx;
    const head = await site.call<Head | null>('object.stat', { bucket, path: rel, blocks: true });
    const bs = head?.kind === 'file' && head.blockSize > 0 ? head.blockSize : this.opts.replication.blockSize;
    let which: Set<number> | null = null;
    if (!full && head?.kind === 'file' && head.blocks && ranges) {
      which = new Set();
      for (const [off, len] of ranges) {
        if (len === 0) continue;
        for (let i = Math.floor(off / bs); i <= Math.floor((off + len - 1) / bs); i++) which.add(i);
      }
    } else if (!full && head?.kind === 'file' && head.blocks && !ranges) {
      // Metadata-only change when size and mtime still match what the site has.
      const st = await lstatOrNull(abs);
      if (st && Number(st.size) === head.size && st.mtimeNs.toString() === head.meta.mtimeNs) which = new Set();
    }
    const fb = await readBlocks(abs, bs, which);
    const hashes: string[] = [];
    for (let i = 0; i < fb.count; i++) {
      const h = fb.read.get(i)?.[0] ?? head?.blocks?.[i];
      if (h === undefined) return this.syncFile(ctx, abs, rel, undefined, true); // grew outside the ranges
      hashes.push(h);
    }
    const fresh = [...fb.read.values()];
    const missing = new Set((await site.call<{ missing: string[] }>('blocks.missing', { hashes: fresh.map(([h]) => h) })).missing);
    let batch: Buffer[] = [];
    let bytes = 0;
    const flush = async () => {
      if (batch.length === 0) return;
      await site.putBlocks(batch);
      this.stats.blocksSent += batch.length;
      this.stats.bytesSent += bytes;
      batch = [];
      bytes = 0;
    };
    for (const [h, data] of fresh) {
      if (!missing.delete(h)) continue; // not missing, or already queued (same block twice)
      if (bytes + data.length > MAX_PUT_BYTES) await flush();
      batch.push(data);
      bytes += data.length;
    }
    await flush();
    try {
      await site.call('object.commit', {
        bucket, path: rel, kind: 'file', meta: metaOf(fb.stat), size: Number(fb.stat.size), blockSize: bs, blocks: hashes,
      });
    } catch (err) {
      // A block the head had is gone (retention raced us): send everything.
      if (err instanceof DrRpcError && err.code === -32001 && !full) return this.syncFile(ctx, abs, rel, undefined, true);
      throw err;
    }
  }
}

interface Ctx {
  site: DrClient;
  bucket: string;
  root: string;
}
