/**
 * Reads the status (backlog, RPO, retrying records, queue counts) in a
 * worker thread. A read parses up to a thousand queued jobs and journal
 * entries; measured on the service's main thread during a backlog it held
 * the event loop, and with it every verdict, for 10-90 ms every check
 * interval. Here it costs the verdict path one structured clone of the result.
 */
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { stopWorker } from '../native/worker-threads';
import type { Status } from '../operator/status';

export interface StatusThreadOptions {
  config: Pick<VfsxConfig, 'redis' | 'journal' | 'replication' | 'spool'>;
  logger: Logger;
  /** A read that takes longer fails (the caller answers "status unavailable"). */
  timeoutMs?: number;
}

interface Waiter {
  resolve: (s: Status) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
}

export type StatusReply = { id: number; status: Status } | { id: number; error: string };

export class StatusThread {
  private readonly opts: StatusThreadOptions;
  private worker: Worker | null = null;
  private readonly waiting = new Map<number, Waiter>();
  private nextId = 1;
  private closing: Promise<void> | null = null;

  constructor(options: StatusThreadOptions) {
    this.opts = options;
  }

  start(): void {
    if (this.worker || this.closing) return;
    const { redis, journal, replication, spool } = this.opts.config;
    const w = new Worker(join(__dirname, 'status-worker.js'), { workerData: { config: { redis, journal, replication, spool } } });
    w.on('message', (m: StatusReply) => {
      const waiter = this.waiting.get(m.id);
      if (!waiter) return; // timed out already
      this.waiting.delete(m.id);
      clearTimeout(waiter.timer);
      if ('status' in m) waiter.resolve(m.status);
      else waiter.reject(new Error(m.error));
    });
    w.on('error', (err) => this.opts.logger.error({ err }, 'status thread failed; restarting'));
    w.on('exit', (code) => {
      this.worker = null;
      this.failAll(new Error('status thread exited'));
      if (!this.closing) {
        this.opts.logger.error({ code }, 'status thread exited; restarting');
        setTimeout(() => this.start(), 1000).unref();
      }
    });
    w.unref();
    this.worker = w;
  }

  /** One fresh read of the status. */
  read(): Promise<Status> {
    const w = this.worker;
    if (!w) return Promise.reject(new Error('status thread not running'));
    const id = this.nextId++;
    return new Promise<Status>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting.delete(id);
        reject(new Error(`status read took longer than ${this.opts.timeoutMs ?? 30000} ms`));
      }, this.opts.timeoutMs ?? 30000);
      timer.unref();
      this.waiting.set(id, { resolve, reject, timer });
      w.postMessage({ id });
    });
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = stopWorker(this.worker, { close: true });
    return this.closing;
  }

  private failAll(err: Error): void {
    for (const [id, waiter] of this.waiting) {
      clearTimeout(waiter.timer);
      waiter.reject(err);
      this.waiting.delete(id);
    }
  }
}
