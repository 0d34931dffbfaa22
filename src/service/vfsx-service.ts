/**
 * Builds and wires every long-lived object of `vfsx serve`, and tears them
 * down again. close() is safe to call twice and runs every step even when
 * one fails.
 */
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { OpDispatcher } from '../ops/op-dispatcher';
import { Policy } from '../ops/policy';
import { Journal } from '../journal/journal';
import { EventBus } from '../journal/events';
import { PumpThread } from '../replication-queue/pump-thread';
import { Status, StatusReader } from '../operator/status';
import { SocketServer } from '../socket-server/socket-server';
import { SpoolIngester } from '../socket-server/spool-ingester';
import { Alerts } from './alerts';
import { HistoryPoint, historyPoint, HttpServer } from './http-server';
import { Metrics } from './metrics';
import { StatusThread } from './status-thread';

export class VfsxService {
  readonly journal: Journal;
  readonly pump: PumpThread;
  readonly server: SocketServer;
  readonly spool: SpoolIngester;
  readonly dispatcher: OpDispatcher;
  readonly status: StatusReader;
  /** The periodic and HTTP status reads, off the verdict thread. */
  readonly statusThread: StatusThread;
  readonly bus: EventBus;
  readonly metrics: Metrics;
  readonly alerts: Alerts;
  readonly http: HttpServer | null;
  private readonly config: VfsxConfig;
  private readonly log: Logger;
  private readonly history: HistoryPoint[] = [];
  private monitor: NodeJS.Timeout | null = null;
  private latest: Status | null = null;
  private sampling = false;
  private closing: Promise<void> | null = null;

  constructor(config: VfsxConfig, logger: Logger) {
    this.config = config;
    this.log = logger;
    this.journal = new Journal({ redis: config.redis, groupCommitMs: config.journal.groupCommitMs, logger: logger.child({ c: 'journal' }) });
    this.pump = new PumpThread({
      redis: config.redis, journal: config.journal, replication: config.replication, logLevel: config.log.level, logger: logger.child({ c: 'pump' }),
    });
    this.dispatcher = new OpDispatcher({
      policy: new Policy(config.policy.rules),
      sink: this.journal,
      logger: logger.child({ c: 'ops' }),
    });
    this.status = new StatusReader(config);
    this.statusThread = new StatusThread({ config, logger: logger.child({ c: 'status' }) });
    this.bus = new EventBus(config.redis);
    // Scrapes are rare and must be exact: a fresh read each.
    this.metrics = new Metrics(() => this.freshStatus(), {
      connectionsAccepted: () => this.server.accepted,
      frames: () => this.server.frames,
      connections: () => this.server.connections.size,
      spoolFilesIngested: () => this.spool.files,
      commitLatency: () => this.status.commitLatencies().catch(() => null),
    });
    this.alerts = new Alerts({ config, bus: this.bus, logger: logger.child({ c: 'alerts' }) });
    this.server = new SocketServer({
      ...config.socket,
      dispatcher: this.dispatcher,
      logger: logger.child({ c: 'socket' }),
      observeVerdict: (s) => this.metrics.verdictLatency.observe(s),
    });
    this.spool = new SpoolIngester({
      dir: config.spool.dir,
      intervalMs: config.spool.scanIntervalMs,
      maxFrameBytes: config.socket.maxFrameBytes,
      dispatcher: this.dispatcher,
      logger: logger.child({ c: 'spool' }),
      onScan: (found, ingested) => {
        this.alerts.spoolSeen(found);
        if (ingested > 0) void this.bus.spoolIngested(ingested);
      },
    });
    this.http = config.http.enabled
      ? new HttpServer({
        config, metrics: this.metrics, status: this.status, readStatus: () => this.readStatus(), bus: this.bus,
        history: () => this.history, logger: logger.child({ c: 'http' }),
      })
      : null;
  }

  /**
   * The status, or null while Redis cannot be read. Dashboard polls (every
   * 2 s per open page) within one check interval share the last read.
   */
  async readStatus(): Promise<Status | null> {
    if (this.latest && Date.now() - this.latest.at < this.config.alerts.checkIntervalMs) return this.latest;
    return this.freshStatus();
  }

  private async freshStatus(): Promise<Status | null> {
    try {
      this.latest = await this.statusThread.read();
      return this.latest;
    } catch (err) {
      this.log.debug({ err }, 'status read failed');
      return null;
    }
  }

  /** Every alerts.checkIntervalMs: one status read feeds the charts' history and the RPO alert. */
  private async sample(): Promise<void> {
    if (this.sampling) return;
    this.sampling = true;
    try {
      const st = await this.freshStatus();
      if (!st) return;
      this.history.push(historyPoint(st));
      const keep = Math.ceil((this.config.http.historySeconds * 1000) / this.config.alerts.checkIntervalMs);
      if (this.history.length > keep) this.history.splice(0, this.history.length - keep);
      await this.alerts.check(st);
    } finally {
      this.sampling = false;
    }
  }

  /** Starts listening at once; Redis may come later (ops spool meanwhile). */
  async start(): Promise<void> {
    await this.server.listen();
    // Hooks listen before the first spool scan, so its fail-open event reaches them (Redis may be down: don't wait long).
    const subscribed = this.alerts.start().catch((err) => this.log.warn({ err }, 'alert hooks not subscribed'));
    await Promise.race([subscribed, new Promise((r) => setTimeout(r, 1000).unref())]);
    await this.spool.start();
    this.pump.start();
    this.statusThread.start();
    // The operator listener is not worth losing the journal for: a busy port is logged, not fatal.
    await this.http?.listen().catch((err) => this.log.error({ err, port: this.config.http.port }, 'dashboard and /metrics not served'));
    this.monitor = setInterval(() => void this.sample(), this.config.alerts.checkIntervalMs);
    this.monitor.unref();
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
    if (this.monitor) clearInterval(this.monitor);
    const steps: Array<[string, () => Promise<void>]> = [
      ['http', async () => this.http?.close()],
      ['alerts', () => this.alerts.close()],
      ['socket server', () => this.server.close()],
      ['spool ingester', () => this.spool.close()],
      ['journal', () => this.journal.close()],
      ['journal pump', () => this.pump.close()],
      ['status', () => this.status.close()],
      ['status thread', () => this.statusThread.close()],
      ['events', () => this.bus.close()],
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
