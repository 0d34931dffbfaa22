/**
 * Reconciliation: a staged record whose outcome never arrives (smbd died
 * between verdict and operation, or the outcome was lost with a connection)
 * becomes a delayed job with outcome 'unknown'. The replicator treats every
 * record as a hint and re-reads the source, so an unknown record converges.
 */
import { readFile } from 'node:fs/promises';
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { ChangeRecord } from '../ops/change-record';
import { jobFor } from './journal';
import { journalKeys } from './redis-connection';

export interface JournalSweeperOptions {
  client: Redis;
  queue: Queue;
  prefix: string;
  reconcileAfterMs: number;
  reconcileDelayMs: number;
  intervalMs: number;
  logger: Logger;
}

/** Whether the smbd process instance `${pid}-${start}` still runs. */
export async function instanceAlive(instance: string): Promise<boolean> {
  const [pid, start] = instance.split('-');
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'latin1');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[19] === start; // field 22 of the whole line
  } catch {
    return false;
  }
}

export class JournalSweeper {
  private readonly opts: JournalSweeperOptions;
  private readonly keys: ReturnType<typeof journalKeys>;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<number> | null = null;
  reconciled = 0;

  constructor(options: JournalSweeperOptions) {
    this.opts = options;
    this.keys = journalKeys(options.prefix);
  }

  start(): void {
    if (this.timer) return;
    this.timer = setInterval(() => void this.sweep(), this.opts.intervalMs);
    this.timer.unref();
    void this.sweep();
  }

  /** One pass; returns how many records it reconciled. Never throws. */
  sweep(): Promise<number> {
    if (!this.running) {
      this.running = this.pass()
        .catch((err) => {
          this.opts.logger.debug({ err }, 'journal sweep failed; will retry');
          return 0;
        })
        .finally(() => {
          this.running = null;
        });
    }
    return this.running;
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  private async pass(): Promise<number> {
    const { client, queue } = this.opts;
    const now = Date.now();
    let count = 0;
    for (const instance of await client.smembers(this.keys.instances)) {
      const key = this.keys.pending(instance);
      const entries = await client.hgetall(key);
      const alive = await instanceAlive(instance);
      const stale: ChangeRecord[] = [];
      for (const json of Object.values(entries)) {
        const rec = JSON.parse(json) as ChangeRecord;
        if (!alive || now - rec.ts >= this.opts.reconcileAfterMs) stale.push(rec);
      }
      if (stale.length > 0) {
        await queue.addBulk(stale.map((r) => jobFor(r, this.opts.reconcileDelayMs)));
        await client.hdel(key, ...stale.map((r) => String(r.seq)));
        count += stale.length;
        this.opts.logger.info({ instance, records: stale.length, alive }, 'reconciling records without outcome');
      }
      if (stale.length === Object.keys(entries).length) {
        // Remove the instance only if nothing was staged meanwhile.
        await client.eval(
          "if redis.call('hlen', KEYS[1]) == 0 then return redis.call('srem', KEYS[2], ARGV[1]) end return 0",
          2, key, this.keys.instances, instance,
        );
      }
    }
    this.reconciled += count;
    return count;
  }
}
