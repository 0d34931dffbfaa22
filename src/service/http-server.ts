/**
 * The operator listener of `vfsx serve` (loopback by default): Prometheus
 * /metrics, the dashboard page and its JSON API (status, history, events,
 * why, retry). With http.token set, every request must carry it (Bearer
 * header or ?token=); without one, the listener must be on loopback.
 */
import { createServer, IncomingMessage, Server, ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import type { EventBus } from '../journal/events';
import type { Status, StatusReader } from '../operator/status';
import { why } from '../operator/why';
import { DASHBOARD_HTML } from './dashboard-page';
import type { Metrics } from './metrics';

type SharePoint = Record<string, { records: number; rpoAgeSeconds: number; opsPerSec: number }>;

export interface HistoryPoint {
  at: number;
  siteUp: boolean;
  /** Every share at the first site. */
  shares: SharePoint;
  /** Every share at each other site (several sites only). */
  sites?: Record<string, SharePoint>;
}

export interface HttpServerOptions {
  config: VfsxConfig;
  metrics: Metrics;
  status: StatusReader;
  /** The service's (briefly cached) status; null while Redis cannot be read. */
  readStatus: () => Promise<Status | null>;
  bus: EventBus;
  history: () => HistoryPoint[];
  logger: Logger;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

export class HttpServer {
  private readonly opts: HttpServerOptions;
  private readonly log: Logger;
  private server: Server | null = null;
  port = 0;

  constructor(options: HttpServerOptions) {
    this.opts = options;
    this.log = options.logger;
    const { host, token } = options.config.http;
    if (!token && !LOOPBACK.has(host)) {
      throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `http.host ${host} is not loopback: set http.token to expose the dashboard and /metrics`);
    }
  }

  async listen(): Promise<void> {
    const { host, port } = this.opts.config.http;
    const server = createServer((req, res) => {
      this.route(req, res).catch((err) => {
        this.log.warn({ err, url: req.url }, 'http request failed');
        if (!res.headersSent) send(res, 500, { error: (err as Error).message });
        else res.end();
      });
    });
    server.on('error', (err) => this.log.error({ err }, 'http server error'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.server = server;
    const addr = server.address();
    this.port = typeof addr === 'object' && addr ? addr.port : port;
    this.log.info({ url: `http://${host}:${this.port}/` }, 'dashboard and /metrics listening');
  }

  async close(): Promise<void> {
    const s = this.server;
    this.server = null;
    if (s) await new Promise<void>((resolve) => {
      s.close(() => resolve());
      s.closeAllConnections();
    });
  }

  private authorized(req: IncomingMessage, url: URL): boolean {
    const token = this.opts.config.http.token;
    if (!token) return true;
    const given = (req.headers.authorization ?? '').replace(/^Bearer\s+/i, '') || url.searchParams.get('token') || '';
    const a = Buffer.from(given);
    const b = Buffer.from(token);
    return a.length === b.length && timingSafeEqual(a, b);
  }

  private async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://vfsx.invalid');
    if (!this.authorized(req, url)) return send(res, 401, { error: 'token required' });
    const { metrics, status, bus } = this.opts;
    const route = `${req.method} ${url.pathname}`;
    switch (route) {
      case 'GET /metrics':
        res.writeHead(200, { 'content-type': metrics.registry.contentType });
        res.end(await metrics.render());
        return;
      case 'GET /':
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        res.end(DASHBOARD_HTML);
        return;
      case 'GET /api/status': {
        const st = await this.opts.readStatus();
        return st ? send(res, 200, st) : send(res, 503, { error: 'status unavailable: Redis cannot be read' });
      }
      case 'GET /api/history':
        return send(res, 200, this.opts.history());
      case 'GET /api/events':
        return send(res, 200, await bus.recent(Math.min(200, Math.max(1, Number.parseInt(url.searchParams.get('n') ?? '', 10) || 50))));
      case 'GET /api/why': {
        const share = url.searchParams.get('share');
        const path = url.searchParams.get('path');
        if (!share || path === null) return send(res, 400, { error: 'share and path are required' });
        try {
          return send(res, 200, await why(status.queue, status.redis, this.opts.config, share, path));
        } catch (err) {
          if (err instanceof VfsxError && err.code === 'VFSX_ERR_DR_INVALID_PATH') return send(res, 400, { error: err.message });
          throw err;
        }
      }
      case 'POST /api/retry': {
        const id = url.searchParams.get('job');
        if (!id) return send(res, 400, { error: 'job is required' });
        const site = url.searchParams.get('site');
        const job = await (site ? status.queueOf(site) : status.queue).getJob(id);
        if (!job) return send(res, 404, { error: `no job ${id}` });
        const state = await job.getState();
        if (state === 'delayed') await job.promote();
        else if (state === 'failed') await job.retry();
        else return send(res, 409, { error: `job ${id} is ${state}, not waiting to retry` });
        this.log.info({ job: id }, 'retry requested from the dashboard');
        return send(res, 200, { retried: id, was: state });
      }
      default:
        return send(res, 404, { error: `no route ${route}` });
    }
  }
}

function send(res: ServerResponse, code: number, body: unknown): void {
  res.writeHead(code, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(body));
}

/** One history point from a status (what the charts plot). */
export function historyPoint(st: Status): HistoryPoint {
  const point = (shares: Status['shares']): SharePoint => {
    const out: SharePoint = {};
    for (const s of shares) out[s.share] = { records: s.backlog.records, rpoAgeSeconds: s.rpoAgeSeconds, opsPerSec: s.throughput.opsPerSec };
    return out;
  };
  const others = st.sites.slice(1);
  return {
    at: st.at, siteUp: st.site.state === 'up', shares: point(st.shares),
    ...(others.length > 0 ? { sites: Object.fromEntries(others.map((v) => [v.site.name, point(v.shares)])) } : {}),
  };
}
