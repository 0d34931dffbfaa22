/**
 * The durable change journal (docs/journal.md), with group commit: every
 * record that arrives while a write is in flight goes out in the next single
 * Redis round trip.
 *
 * - stage(): an operation about to run -> HSET <prefix>:pending:<instance>.
 * - resolve(): its outcome -> confirmed records become BullMQ jobs (jobId =
 *   record id), failed ones go to a capped audit list; the pending entry goes.
 * - append(): close/fsync, which already happened -> a BullMQ job at once.
 * Records whose outcome never arrives are reconciled by JournalSweeper.
 */
import { Queue } from 'bullmq';
import IORedis, { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import type { ChangeRecord, ChangeSink } from '../ops/change-record';
import { journalKeys, redisOptions } from './redis-connection';

export interface JournalOptions {
  redis: VfsxConfig['redis'];
  journal: VfsxConfig['journal'];
  logger: Logger;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Batch {
  staged: ChangeRecord[];
  appended: ChangeRecord[];
  resolutions: Array<{ id: string; instance: string; seq: number; err: number }>;
  waiters: Waiter[];
}

const newBatch = (): Batch => ({ staged: [], appended: [], resolutions: [], waiters: [] });

export type JobEntry = { name: string; data: ChangeRecord; opts: { jobId: string; delay?: number } };

export function jobFor(rec: ChangeRecord, reconcileDelayMs?: number): JobEntry {
  if (reconcileDelayMs === undefined) return { name: rec.op, data: rec, opts: { jobId: rec.id } };
  return { name: rec.op, data: { ...rec, outcome: 'unknown' }, opts: { jobId: `${rec.id}-r`, delay: reconcileDelayMs } };
}

export class Journal implements ChangeSink {
  readonly client: Redis;
  readonly queue: Queue;
  private readonly queueConn: Redis;
  private readonly keys: ReturnType<typeof journalKeys>;
  private readonly log: Logger;
  private readonly writeTimeoutMs: number;
  private readonly keepFailed: number;
  /** Records staged by this process and not yet resolved, by id. */
  private readonly inMemory = new Map<string, ChangeRecord>();
  private batch = newBatch();
  private scheduled = false;
  private flushing: Promise<void> | null = null;
  private closed = false;
  /** Counters for status and metrics. */
  readonly stats = { batches: 0, records: 0, failures: 0 };

  constructor(options: JournalOptions) {
    this.log = options.logger;
    this.keys = journalKeys(options.redis.prefix);
    this.writeTimeoutMs = options.redis.writeTimeoutMs;
    this.keepFailed = options.journal.keepFailedOps;
    // Fail fast while Redis is away: the module then spools without waiting.
    this.client = new IORedis(redisOptions(options.redis, { enableOfflineQueue: false, maxRetriesPerRequest: 0 }));
    this.client.on('error', (err) => this.log.debug({ err }, 'journal redis error'));
    // BullMQ needs its offline queue to initialise; writes are bounded by writeTimeoutMs instead.
    this.queueConn = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: 1 }));
    this.queueConn.on('error', (err) => this.log.debug({ err }, 'journal queue redis error'));
    this.queue = new Queue(options.journal.queueName, {
      connection: this.queueConn,
      prefix: options.redis.prefix,
      defaultJobOptions: { removeOnComplete: { count: 1000 }, removeOnFail: { count: 5000 } },
      skipWaitingForReady: true,
    });
    this.queue.on('error', (err) => this.log.debug({ err }, 'journal queue error'));
  }

  async waitUntilReady(): Promise<void> {
    for (const c of [this.client, this.queueConn]) {
      if (c.status !== 'ready') await new Promise<void>((resolve) => c.once('ready', () => resolve()));
    }
    await this.queue.waitUntilReady();
  }

  stage(rec: ChangeRecord): Promise<void> {
    this.inMemory.set(rec.id, rec);
    this.batch.staged.push(rec);
    return this.wait();
  }

  append(rec: ChangeRecord): Promise<void> {
    this.batch.appended.push(rec);
    return this.wait();
  }

  resolve(instance: string, seq: number, err: number): void {
    this.batch.resolutions.push({ id: `${instance}-${seq}`, instance, seq, err });
    this.schedule();
  }

  /** Resolves when everything handed over so far is written (or has failed). */
  async drain(): Promise<void> {
    while (this.flushing || this.scheduled) {
      await (this.flushing ?? new Promise((r) => setImmediate(r)));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const steps = [
      () => this.drain(),
      () => this.queue.close(),
      () => this.queueConn.quit().then(() => undefined),
      () => this.client.quit().then(() => undefined),
    ];
    for (const step of steps) {
      try {
        await step();
      } catch (err) {
        this.log.warn({ err }, 'journal close step failed');
        this.client.disconnect();
        this.queueConn.disconnect();
      }
    }
  }

  private wait(): Promise<void> {
    if (this.closed) return Promise.reject(new VfsxError('VFSX_ERR_JOURNAL_UNAVAILABLE', 'journal closed'));
    return new Promise<void>((resolve, reject) => {
      this.batch.waiters.push({ resolve, reject });
      this.schedule();
    });
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => this.kick());
  }

  private kick(): void {
    if (this.flushing) return; // the flush in flight calls kick() again when done
    this.scheduled = false;
    const b = this.batch;
    this.batch = newBatch();
    if (b.staged.length + b.appended.length + b.resolutions.length === 0) return;
    this.flushing = this.flush(b).finally(() => {
      this.flushing = null;
      if (this.batch.waiters.length + this.batch.resolutions.length + this.batch.staged.length > 0) {
        this.scheduled = true;
        setImmediate(() => this.kick());
      }
    });
  }

  private async flush(b: Batch): Promise<void> {
    try {
      await withTimeout(this.write(b), this.writeTimeoutMs);
      this.stats.batches++;
      this.stats.records += b.staged.length + b.appended.length;
      for (const w of b.waiters) w.resolve();
    } catch (err) {
      this.stats.failures++;
      const e = err instanceof VfsxError ? err
        : new VfsxError('VFSX_ERR_JOURNAL_UNAVAILABLE', `journal write failed: ${(err as Error).message}`, { cause: err });
      this.log.warn({ err: e, records: b.staged.length + b.appended.length }, 'journal batch not written');
      for (const w of b.waiters) w.reject(e);
    }
  }

  private async write(b: Batch): Promise<void> {
    const stagedNow = new Set(b.staged.map((r) => r.id));
    const jobs: JobEntry[] = b.appended.map((r) => jobFor(r));
    const failed: ChangeRecord[] = [];
    const toDelete: ChangeRecord[] = [];
    const done = new Set<string>();
    const missing = b.resolutions.filter((r) => !this.inMemory.has(r.id));
    const fetched = await this.fetchPending(missing);
    for (const r of b.resolutions) {
      const rec = this.inMemory.get(r.id) ?? fetched.get(r.id);
      this.inMemory.delete(r.id);
      if (rec === undefined || done.has(r.id)) continue; // reconciled already, or a repeat
      done.add(r.id);
      if (r.err === 0) jobs.push(jobFor({ ...rec, outcome: 'confirmed' }));
      else failed.push({ ...rec, outcome: 'failed', errno: r.err });
      if (!stagedNow.has(r.id)) toDelete.push(rec);
    }
    const p = this.client.pipeline();
    for (const rec of b.staged) {
      if (done.has(rec.id)) continue; // resolved within this batch: straight to the queue
      p.hset(this.keys.pending(rec.instance), String(rec.seq), JSON.stringify(rec));
      p.sadd(this.keys.instances, rec.instance);
    }
    for (const rec of failed) p.lpush(this.keys.failed, JSON.stringify(rec));
    if (failed.length > 0) p.ltrim(this.keys.failed, 0, Math.max(0, this.keepFailed - 1));
    const [res] = await Promise.all([
      p.length > 0 ? p.exec() : Promise.resolve([]),
      jobs.length > 0 ? this.queue.addBulk(jobs) : Promise.resolve([]),
    ]);
    for (const [err] of res ?? []) if (err) throw err;
    if (toDelete.length > 0) {
      const d = this.client.pipeline();
      for (const rec of toDelete) d.hdel(this.keys.pending(rec.instance), String(rec.seq));
      await d.exec();
    }
  }

  private async fetchPending(list: Batch['resolutions']): Promise<Map<string, ChangeRecord>> {
    const out = new Map<string, ChangeRecord>();
    if (list.length === 0) return out;
    const p = this.client.pipeline();
    for (const r of list) p.hget(this.keys.pending(r.instance), String(r.seq));
    const res = (await p.exec()) ?? [];
    res.forEach(([err, v], i) => {
      if (!err && typeof v === 'string') out.set(list[i].id, JSON.parse(v) as ChangeRecord);
    });
    return out;
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new VfsxError('VFSX_ERR_JOURNAL_TIMEOUT', `journal write took longer than ${ms} ms`)),
      ms,
    );
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
