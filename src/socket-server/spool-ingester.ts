/**
 * Ingests the spool files smbd processes write while the service is
 * unreachable. A writer holds an flock on its file while it may still append;
 * once the lock is free, the file is complete: its frames go through the
 * dispatcher like a recorded connection, and the file is deleted only after
 * the journal holds every record.
 */
import { open, readdir, unlink, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { isRetryable } from '../errors/vfsx-error';
import { tryLock } from '../native/addon';
import type { BridgeSession, OpDispatcher } from '../ops/op-dispatcher';
import { FrameDecoder } from '../protocol/frame-decoder';
import { parseMessage } from '../protocol/message';

export interface SpoolIngesterOptions {
  dir: string;
  intervalMs: number;
  maxFrameBytes: number;
  dispatcher: OpDispatcher;
  logger: Logger;
  /** After each scan: spool files found, and how many of them were ingested. */
  onScan?: (found: number, ingested: number) => void;
}

export class SpoolIngester {
  private readonly opts: SpoolIngesterOptions;
  private readonly log: Logger;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<number> | null = null;
  files = 0;
  records = 0;
  badFrames = 0;

  constructor(options: SpoolIngesterOptions) {
    this.opts = options;
    this.log = options.logger;
  }

  async start(): Promise<void> {
    await mkdir(this.opts.dir, { recursive: true, mode: 0o700 });
    this.timer = setInterval(() => void this.scan(), this.opts.intervalMs);
    this.timer.unref();
    void this.scan();
  }

  async close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.running;
  }

  /** One scan; returns the number of files ingested. Never throws. */
  scan(): Promise<number> {
    if (!this.running) {
      this.running = this.pass()
        .catch((err) => {
          this.log.warn({ err }, 'spool scan failed; will retry');
          return 0;
        })
        .finally(() => {
          this.running = null;
        });
    }
    return this.running;
  }

  /** Spool files present now (complete or still being written). */
  async list(): Promise<string[]> {
    try {
      return (await readdir(this.opts.dir)).filter((n) => n.endsWith('.spool'));
    } catch {
      return [];
    }
  }

  private async pass(): Promise<number> {
    let n = 0;
    const names = await this.list();
    for (const name of names) {
      if (await this.ingest(join(this.opts.dir, name))) n++;
    }
    this.opts.onScan?.(names.length, n);
    return n;
  }

  private async ingest(file: string): Promise<boolean> {
    const fh = await open(file, 'r').catch(() => null);
    if (!fh) return false;
    try {
      if (!tryLock(fh.fd)) return false; // its smbd still writes to it
      const session: BridgeSession = { source: 'spool' };
      const decoder = new FrameDecoder({ maxFrameBytes: this.opts.maxFrameBytes });
      const pending: Array<Promise<unknown>> = [];
      let count = 0;
      for await (const chunk of fh.createReadStream({ autoClose: false, highWaterMark: 1 << 20 })) {
        let frames: Buffer[];
        try {
          frames = decoder.push(chunk as Buffer);
        } catch (err) {
          this.badFrames++;
          this.log.error({ err, file }, 'corrupt spool file; ingesting what came before');
          break;
        }
        for (const frame of frames) {
          count++;
          pending.push(
            Promise.resolve()
              .then(() => this.opts.dispatcher.dispatch(session, parseMessage(frame)))
              .then((r) => r.durable)
              .catch((err) => {
                if (isRetryable(err)) throw err;
                this.badFrames++;
                this.log.warn({ err, file }, 'skipping bad spool frame');
              }),
          );
        }
        await Promise.all(pending.splice(0)); // bounded memory: one chunk's worth
      }
      if (decoder.pendingBytes > 0) {
        this.log.warn({ file, bytes: decoder.pendingBytes }, 'spool file ends in a partial frame (writer died mid-write)');
      }
      await Promise.all(pending);
      await unlink(file);
      this.files++;
      this.records += count;
      this.log.info({ file, frames: count }, 'ingested spool file');
      return true;
    } finally {
      await fh.close();
    }
  }
}
