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
import { Job, Worker } from 'bullmq';
import IORedis, { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import type { ChangeRecord } from '../ops/change-record';
import { DrClient } from './dr-client';
import { redisOptions } from './redis-connection';
import { SiteSync } from './site-sync';

export interface ReplicatorOptions {
  redis: VfsxConfig['redis'];
  queueName: string;
  replication: VfsxConfig['replication'];
  logger: Logger;
}


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
      // A job whose worker died is picked up again within seconds, and never dropped.
      lockDuration: 10000,
      stalledInterval: 5000,
      maxStalledCount: 1_000_000,
      settings: {
        backoffStrategy: (attempts: number) =>
          Math.min(this.opts.replication.maxBackoffMs, 200 * 2 ** Math.min(attempts, 10)) * (0.5 + Math.random() / 2),
      },
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
    const sync = new SiteSync({ site, bucket: rec.share, root: rec.origpath, blockSize: this.opts.replication.blockSize, stats: this.stats });
    if (rec.op === 'rename' && rec.names.to !== undefined && rec.names.stream === undefined) {
      await sync.rename(rec.names.path, rec.names.to);
      return;
    }
    const ranges = rec.op === 'close' || rec.op === 'fsync' ? rec.ranges : undefined;
    await sync.syncPath(rec.names.path, ranges);
    if (rec.op === 'link' && rec.names.from) await sync.syncPath(rec.names.from);
  }
}
