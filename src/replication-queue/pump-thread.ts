/**
 * Runs the JournalPump in a worker thread: parsing and batching stay off the
 * event loop that answers smbd's verdicts. (The replicator is its own
 * process, `vfsx replicate`, at a lower priority.)
 */
import { Worker } from 'node:worker_threads';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { stopWorker } from '../native/worker-threads';

export interface PumpThreadOptions {
  redis: VfsxConfig['redis'];
  journal: VfsxConfig['journal'];
  replication: VfsxConfig['replication'];
  logLevel: string;
  logger: Logger;
}

export interface PumpStats {
  entries: number;
  jobs: number;
  /** Records kept in the list of recent ones (replication off). */
  kept: number;
  failed: number;
  reconciled: number;
  pending: number;
}

export class PumpThread {
  private readonly opts: PumpThreadOptions;
  private worker: Worker | null = null;
  private closing: Promise<void> | null = null;
  stats: PumpStats = { entries: 0, jobs: 0, kept: 0, failed: 0, reconciled: 0, pending: 0 };

  constructor(options: PumpThreadOptions) {
    this.opts = options;
  }

  start(): void {
    if (this.worker) return;
    const w = new Worker(join(__dirname, 'pump-worker.js'), {
      workerData: { redis: this.opts.redis, journal: this.opts.journal, replication: this.opts.replication, logLevel: this.opts.logLevel },
    });
    w.on('message', (m: { stats?: PumpStats }) => {
      if (m.stats) this.stats = m.stats;
    });
    w.on('error', (err) => this.opts.logger.error({ err }, 'journal pump thread failed; restarting'));
    w.on('exit', (code) => {
      this.worker = null;
      if (!this.closing) {
        this.opts.logger.error({ code }, 'journal pump thread exited; restarting');
        setTimeout(() => this.start(), 1000).unref();
      }
    });
    this.worker = w;
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = stopWorker(this.worker, 'close');
    return this.closing;
  }
}
