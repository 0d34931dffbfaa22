/**
 * Builds and wires every long-lived object of `vfsx serve`, and tears them
 * down again. close() is safe to call twice and runs every step even when
 * one fails.
 */
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { OpDispatcher } from '../ops/op-dispatcher';
import { Policy } from '../ops/policy';
import { Journal } from '../replication-queue/journal';
import { PumpThread } from '../replication-queue/pump-thread';
import { SocketServer } from '../socket-server/socket-server';
import { SpoolIngester } from '../socket-server/spool-ingester';

export class VfsxService {
  readonly journal: Journal;
  readonly pump: PumpThread;
  readonly server: SocketServer;
  readonly spool: SpoolIngester;
  readonly dispatcher: OpDispatcher;
  private readonly log: Logger;
  private closing: Promise<void> | null = null;

  constructor(config: VfsxConfig, logger: Logger) {
    this.log = logger;
    this.journal = new Journal({ redis: config.redis, logger: logger.child({ c: 'journal' }) });
    this.pump = new PumpThread({
      redis: config.redis, journal: config.journal, replication: config.replication, logLevel: config.log.level, logger: logger.child({ c: 'pump' }),
    });
    this.dispatcher = new OpDispatcher({
      policy: new Policy(config.policy.rules),
      sink: this.journal,
      logger: logger.child({ c: 'ops' }),
    });
    this.server = new SocketServer({
      ...config.socket,
      dispatcher: this.dispatcher,
      logger: logger.child({ c: 'socket' }),
    });
    this.spool = new SpoolIngester({
      dir: config.spool.dir,
      intervalMs: config.spool.scanIntervalMs,
      maxFrameBytes: config.socket.maxFrameBytes,
      dispatcher: this.dispatcher,
      logger: logger.child({ c: 'spool' }),
    });
  }

  /** Starts listening at once; Redis may come later (ops spool meanwhile). */
  async start(): Promise<void> {
    await this.server.listen();
    await this.spool.start();
    this.pump.start();
    this.journal.waitUntilReady().then(
      () => this.log.info('journal ready'),
      (err) => this.log.warn({ err }, 'journal not ready yet'),
    );
  }

  close(): Promise<void> {
    if (!this.closing) this.closing = this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const steps: Array<[string, () => Promise<void>]> = [
      ['socket server', () => this.server.close()],
      ['spool ingester', () => this.spool.close()],
      ['journal', () => this.journal.close()],
      ['journal pump', () => this.pump.close()],
    ];
    for (const [name, step] of steps) {
      try {
        await step();
      } catch (err) {
        this.log.error({ err, step: name }, 'shutdown step failed');
      }
    }
    this.log.info('stopped');
  }
}
