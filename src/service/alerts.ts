/**
 * Turns status into events and events into alerts: a share's RPO age
 * crossing alerts.rpoThresholdMs (and recovering), smbd falling back to
 * spooling (fail-open), and the configured hooks (a command, or a webhook
 * POST) run for the event types they name.
 */
import { execFile } from 'node:child_process';
import type { Logger } from 'pino';
import type { AlertHookConfig, VfsxConfig } from '../config/schema';
import { ALERT_EVENTS, EventBus, VfsxEvent } from '../journal/events';
import type { Status } from '../operator/status';

export interface AlertsOptions {
  config: VfsxConfig;
  bus: EventBus;
  logger: Logger;
}

export class Alerts {
  private readonly opts: AlertsOptions;
  private readonly log: Logger;
  private readonly crossed = new Set<string>();
  private unsubscribe: (() => Promise<void>) | null = null;
  private spooling = false;
  hooksRun = 0;
  hookFailures = 0;

  constructor(options: AlertsOptions) {
    this.opts = options;
    this.log = options.logger;
  }

  async start(): Promise<void> {
    const { alerts, redis } = this.opts.config;
    if (alerts.hooks.length === 0) return;
    this.unsubscribe = await EventBus.subscribe(redis, (ev) => this.onEvent(ev));
  }

  async close(): Promise<void> {
    await this.unsubscribe?.();
  }

  /** Spool scans report here: the first spool file seen is the fail-open event. */
  spoolSeen(found: number): void {
    if (found > 0 && !this.spooling) {
      void this.opts.bus.publish({ type: 'fail-open', at: Date.now(), files: found });
      this.log.warn({ files: found }, 'fail-open engaged: smbd spooled reports');
    }
    this.spooling = found > 0;
  }

  /** Compares each share's RPO age with the threshold; publishes crossings both ways. */
  async check(st: Status): Promise<void> {
    try {
      const thresholdMs = this.opts.config.alerts.rpoThresholdMs;
      // Per share and site: a site that falls behind alerts on its own (a single-site system names no site).
      const many = st.sites.length > 1;
      for (const { site, shares } of st.sites) {
        for (const s of shares) {
          const key = `${site.name}\0${s.share}`;
          const where = many ? { site: site.name } : {};
          const rpoAgeMs = Math.round(s.rpoAgeSeconds * 1000);
          if (rpoAgeMs >= thresholdMs && !this.crossed.has(key)) {
            this.crossed.add(key);
            await this.opts.bus.publish({ type: 'rpo-threshold-crossed', at: Date.now(), share: s.share, ...where, rpoAgeMs, thresholdMs, records: s.backlog.records });
          } else if (rpoAgeMs < thresholdMs && this.crossed.has(key)) {
            this.crossed.delete(key);
            await this.opts.bus.publish({ type: 'rpo-recovered', at: Date.now(), share: s.share, ...where, rpoAgeMs, thresholdMs });
          }
        }
      }
    } catch (err) {
      this.log.debug({ err }, 'rpo check failed');
    }
  }

  private onEvent(ev: VfsxEvent): void {
    for (const hook of this.opts.config.alerts.hooks) {
      const types = hook.events ?? ALERT_EVENTS;
      if (types.includes(ev.type)) void this.run(hook, ev);
    }
  }

  private async run(hook: AlertHookConfig, ev: VfsxEvent): Promise<void> {
    const json = JSON.stringify(ev);
    try {
      if (hook.command) {
        await new Promise<void>((resolve, reject) => {
          execFile('/bin/sh', ['-c', hook.command as string], {
            timeout: hook.timeoutMs,
            env: { ...process.env, VFSX_EVENT: json, VFSX_EVENT_TYPE: ev.type, VFSX_SHARE: ev.share ?? '' },
          }, (err, _out, stderr) => (err ? reject(new Error(`${err.message} ${stderr}`.trim())) : resolve()));
        });
      } else if (hook.url) {
        const res = await fetch(hook.url, {
          method: 'POST', headers: { 'content-type': 'application/json' }, body: json, signal: AbortSignal.timeout(hook.timeoutMs),
        });
        if (!res.ok) throw new Error(`webhook answered ${res.status}`);
      }
      this.hooksRun++;
      this.log.info({ event: ev.type, hook: hook.command ? 'command' : hook.url }, 'alert hook ran');
    } catch (err) {
      this.hookFailures++;
      this.log.warn({ err, event: ev.type }, 'alert hook failed');
    }
  }
}
