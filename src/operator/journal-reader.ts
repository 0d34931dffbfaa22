/**
 * Read access to the journal for operators: queued records, records still
 * awaiting their outcome, and live follow of new ones.
 */
import { JobType, Queue, QueueEvents } from 'bullmq';
import IORedis, { Redis } from 'ioredis';
import type { VfsxConfig } from '../config/schema';
import type { ChangeRecord } from '../ops/change-record';
import { closeConnection, journalKeys, queueNameOf, redisOptions } from '../journal/redis-connection';
import { DEFAULT_SITE } from '../config/schema';
import { recordsOf } from '../replication-queue/batch';
import { entryPairs, heldSummary, nextId } from '../journal/stream-ids';

export interface JournalReaderOptions {
  redis: VfsxConfig['redis'];
  queueName: string;
  /** The DR sites whose queues count in the backlog (default: the journal's own queue, the site "default"). */
  sites?: string[];
}

export class JournalReader {
  private readonly opts: JournalReaderOptions;
  private readonly queue: Queue;
  /** Every site's queue (the first is `queue`). */
  private readonly queues: Queue[];
  private readonly queueConn: Redis;
  private readonly client: Redis;
  private eventsConn: Redis | null = null;
  private events: QueueEvents | null = null;

  constructor(options: JournalReaderOptions) {
    this.opts = options;
    this.queueConn = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: 1 }));
    this.queues = (options.sites ?? [DEFAULT_SITE]).map((site) => new Queue(queueNameOf(options.queueName, site), {
      connection: this.queueConn,
      prefix: options.redis.prefix,
    }));
    this.queue = this.queues[0];
    this.client = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: 1 }));
  }

  /**
   * Queued records (not yet taken by the replicator), oldest first; with
   * `done`, also the recently replicated ones. With replication off nothing
   * is queued: the newest journal.keepRecords records instead.
   */
  async queued(done = false): Promise<ChangeRecord[]> {
    const states: JobType[] = ['waiting', 'delayed', 'prioritized', 'active'];
    if (done) states.push('completed');
    const jobs = await this.queue.getJobs(states, 0, -1, true);
    const kept = (await this.client.lrange(journalKeys(this.opts.redis.prefix).recent, 0, -1)).map((x) => JSON.parse(x) as ChangeRecord);
    return [...jobs.flatMap((j) => recordsOf(j.data)), ...kept].sort((a, b) => a.ts - b.ts || a.seq - b.seq);
  }

  /** Operations smbd attempted that failed (or a share refused), oldest first: the newest journal.keepFailedOps, never replicated. */
  async failed(): Promise<ChangeRecord[]> {
    const list = await this.client.lrange(journalKeys(this.opts.redis.prefix).failed, 0, -1);
    return list.map((x) => JSON.parse(x) as ChangeRecord).reverse();
  }

  /** Records whose outcome has not arrived yet, computed from the stream as the pump does. */
  async pending(): Promise<ChangeRecord[]> {
    const keys = journalKeys(this.opts.redis.prefix);
    const saved = await this.client.hgetall(keys.cursor);
    const awaiting = new Map<string, ChangeRecord>();
    let from = saved.low || (saved.cursor ? nextId(saved.cursor) : '-');
    for (;;) {
      const entries = (await this.client.xrange(keys.stream, from, '+', 'COUNT', 5000)) as Array<[string, string[]]>;
      if (entries.length === 0) break;
      for (const [, fields] of entries) {
        for (const [kind, value] of entryPairs(fields)) {
          if (kind === 'r') {
            const rec = JSON.parse(value) as ChangeRecord;
            if (rec.outcome === 'pending') awaiting.set(rec.id, rec);
          } else if (kind === 'o') {
            awaiting.delete(value.split(' ')[0]);
          }
        }
      }
      from = nextId(entries[entries.length - 1][0]);
    }
    return [...awaiting.values()].sort((a, b) => a.ts - b.ts || a.seq - b.seq);
  }

  /** What is not replicated yet: queued jobs, records awaiting outcomes, stream entries not pumped. */
  async backlog(): Promise<{ queued: number; pending: number; unpumped: number }> {
    const keys = journalKeys(this.opts.redis.prefix);
    let queued = 0;
    for (const q of this.queues) queued += Object.values(await q.getJobCounts('waiting', 'active', 'delayed', 'prioritized')).reduce((a, b) => a + b, 0);
    const saved = await this.client.hgetall(keys.cursor);
    const from = saved.cursor ? nextId(saved.cursor) : '-';
    let unpumped = ((await this.client.xrange(keys.stream, from, '+', 'COUNT', 1000)) as unknown[]).length;
    for (const [n] of Object.values(heldSummary(saved.held))) unpumped += n; // held for their settle window
    return {
      queued,
      pending: (await this.pending()).length,
      unpumped,
    };
  }

  /** Calls onRecord for every record added from now on. */
  async follow(onRecord: (rec: ChangeRecord) => void): Promise<void> {
    this.eventsConn = new IORedis(redisOptions(this.opts.redis, { maxRetriesPerRequest: null }));
    this.events = new QueueEvents(this.opts.queueName, {
      connection: this.eventsConn,
      prefix: this.opts.redis.prefix,
    });
    this.events.on('added', async ({ jobId }) => {
      const job = await this.queue.getJob(jobId);
      if (job) for (const rec of recordsOf(job.data)) onRecord(rec);
    });
    await this.events.waitUntilReady();
  }

  async close(): Promise<void> {
    const conns = [this.eventsConn, this.queueConn, this.client];
    for (const step of [() => this.events?.close(), ...this.queues.map((q) => () => q.close())]) {
      await Promise.resolve().then(step).catch(() => undefined);
    }
    for (const c of conns) if (c) await closeConnection(c);
  }
}
