/**
 * The durable change journal, write side (docs/journal.md): every report is
 * appended to a Redis Stream; the module keeps its frame until then. Group
 * commit: whatever arrives within journal.groupCommitMs (or the same turn of
 * the event loop, when someone waits for it) goes out as ONE stream entry,
 * one command and one write; batches are not serialised: one connection
 * keeps their order.
 *
 * JournalPump (the read side) turns the stream into BullMQ jobs.
 */
import IORedis, { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import type { ChangeRecord, ChangeSink } from '../ops/change-record';
import { logLinkStatus } from './link-status';
import { dropConnection, journalKeys, JournalKeys, redisOptions } from './redis-connection';
import { BATCH_FIELD, packBatch } from './stream-ids';

export interface JournalOptions {
  redis: VfsxConfig['redis'];
  /** journal.groupCommitMs (0: every turn of the event loop). */
  groupCommitMs?: number;
  logger: Logger;
}

interface Waiter {
  resolve: () => void;
  reject: (err: Error) => void;
}

interface Batch {
  lines: string[]; // 'r' + JSON, or 'o' + "id err" (journal/stream-ids.ts: packBatch)
  waiters: Waiter[]; // at most one: everyone in the batch shares `done`
  done?: Promise<void>;
}

export class Journal implements ChangeSink {
  readonly client: Redis;
  private readonly keys: JournalKeys;
  private readonly log: Logger;
  private readonly writeTimeoutMs: number;
  private readonly groupCommitMs: number;
  private timer: NodeJS.Timeout | null = null;
  private batch: Batch = { lines: [], waiters: [] };
  private scheduled = false;
  private readonly inFlight = new Set<Promise<void>>();
  private closed = false;
  /** Counters for status and metrics. */
  readonly stats = { batches: 0, entries: 0, failures: 0 };

  constructor(options: JournalOptions) {
    this.log = options.logger;
    this.keys = journalKeys(options.redis.prefix);
    this.writeTimeoutMs = options.redis.writeTimeoutMs;
    this.groupCommitMs = options.groupCommitMs ?? 0;
    // No offline queue: while Redis is away a write fails at once, the
    // verdict says "unavailable" and the module spools without waiting.
    this.client = new IORedis(redisOptions(options.redis, { enableOfflineQueue: false, maxRetriesPerRequest: 0 }));
    this.client.on('error', (err) => this.log.debug({ err }, 'journal redis error'));
    logLinkStatus(this.client, 'journal', this.log);
  }

  async waitUntilReady(): Promise<void> {
    if (this.client.status !== 'ready') {
      await new Promise<void>((resolve) => this.client.once('ready', () => resolve()));
    }
  }

  writable(): boolean {
    return !this.closed && this.client.status === 'ready';
  }

  /** Both kinds of record go to the stream alike; the pump tells them apart by outcome. */
  stage(rec: ChangeRecord, urgent = false): Promise<void> {
    return this.add('r', JSON.stringify(rec), urgent);
  }

  append(rec: ChangeRecord, urgent = false): Promise<void> {
    return this.stage(rec, urgent);
  }

  resolve(instance: string, seq: number, err: number): Promise<void> {
    return this.add('o', `${instance}-${seq} ${err}`, false);
  }

  /** Resolves when everything handed over so far is written (or failed). */
  async drain(): Promise<void> {
    while (this.scheduled || this.inFlight.size > 0) {
      if (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
      else await new Promise((r) => setImmediate(r));
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    try {
      await this.drain();
      await this.client.quit();
    } catch (err) {
      this.log.warn({ err }, 'journal close');
      dropConnection(this.client);
    }
  }

  private add(field: string, value: string, urgent: boolean): Promise<void> {
    if (this.closed) return Promise.reject(new VfsxError('VFSX_ERR_JOURNAL_UNAVAILABLE', 'journal closed'));
    const b = this.batch;
    b.lines.push(field + value);
    if (!b.done) b.done = new Promise<void>((resolve, reject) => b.waiters.push({ resolve, reject }));
    if (urgent && this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
      this.scheduled = false;
    }
    if (!this.scheduled) {
      this.scheduled = true;
      if (urgent || this.groupCommitMs === 0) setImmediate(() => this.flush());
      else this.timer = setTimeout(() => this.flush(), this.groupCommitMs);
    }
    return b.done;
  }

  private flush(): void {
    this.scheduled = false;
    this.timer = null;
    const b = this.batch;
    this.batch = { lines: [], waiters: [] };
    if (b.lines.length === 0) return;
    const p = this.write(b).finally(() => this.inFlight.delete(p));
    this.inFlight.add(p);
  }

  private async write(b: Batch): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        // One field for the whole batch: one argument to encode and parse, whatever the batch's size.
        this.client.xadd(this.keys.stream, '*', BATCH_FIELD, packBatch(b.lines)),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => reject(new VfsxError('VFSX_ERR_JOURNAL_TIMEOUT',
            `journal write took longer than ${this.writeTimeoutMs} ms`)), this.writeTimeoutMs);
        }),
      ]);
      this.stats.batches++;
      this.stats.entries += b.lines.length;
      for (const w of b.waiters) w.resolve();
    } catch (err) {
      this.stats.failures++;
      const e = err instanceof VfsxError ? err
        : new VfsxError('VFSX_ERR_JOURNAL_UNAVAILABLE', `journal write failed: ${(err as Error).message}`, { cause: err });
      this.log.warn({ err: e, entries: b.lines.length }, 'journal batch not written');
      for (const w of b.waiters) w.reject(e);
    } finally {
      clearTimeout(timer);
    }
  }
}
