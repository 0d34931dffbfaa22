/**
 * Scheduled scrub: every share the replicator knows is compared with its DR
 * site bucket (`verifyTree`), metadata often (replication.scrub.intervalMs)
 * and content less often (contentIntervalMs: every source block's hash
 * against the site's ids). Each difference is repaired as ordinary
 * replication: a sync of that path under the same path locks as the
 * journal's records. This catches what no record described: files changed
 * directly on disk (not through smbd), records lost by hand or by a Redis
 * disaster, damage at the site's metadata. Throttled; progress goes to
 * Redis (`vfsx status`, /metrics, the dashboard) and to events.
 */
import { hostname } from 'node:os';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { ScrubConfig } from '../config/schema';
import type { Tree } from '../native/tree';
import type { SiteClient } from '../site-link/site-client';
import { EventBus } from '../journal/events';
import { PathLocks } from './path-locks';
import { StateKeys, stateKeys } from '../journal/redis-connection';
import { isPathFault, SiteSync, SyncStats } from './site-sync';
import { Difference, verifyTree } from './verify';
import { noteLeftOut, pruneLeftOut } from './left-out';

export interface ScrubberOptions {
  config: ScrubConfig;
  blockSize: number;
  conn: Redis;
  state: StateKeys;
  /** The Redis key prefix (for the state of a system from before several sites). */
  prefix: string;
  events: EventBus;
  locks: PathLocks;
  stats: SyncStats;
  site: () => Promise<SiteClient>;
  tree: (root: string) => Tree;
  logger: Logger;
}

export type ScrubKind = 'metadata' | 'content';

/** How often the schedule is looked at (a pass starts at most this late). */
const TICK_MS = 1000;

/** A new site's initial sync starts this long after its replicator (the pump takes the site up within a second or two). */
const INITIAL_SYNC_DELAY_MS = 3000;

/** A scrub lease lapses this long after its holder stopped renewing it (it renews as it goes). */
const LEASE_MS = 60_000;

export class Scrubber {
  private readonly o: ScrubberOptions;
  private timer: NodeJS.Timeout | null = null;
  private running: Promise<void> | null = null;
  private closed = false;
  private readonly startedAt = Date.now();
  /** This process, as the holder of a share's scrub lease. */
  private readonly id = `${hostname()}:${process.pid}`;

  constructor(o: ScrubberOptions) {
    this.o = o;
  }

  start(): void {
    // A new site's initial sync runs even with scheduled scrubs off.
    this.timer = setInterval(() => {
      if (this.running || this.closed) return;
      // Never an unhandled rejection (it would end the worker thread): log and try at the next tick.
      this.running = this.tick()
        .catch((err) => this.o.logger.warn({ err }, 'scrub could not run'))
        .finally(() => { this.running = null; });
    }, Math.min(TICK_MS, this.o.config.intervalMs));
    this.timer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    await this.running?.catch(() => undefined);
  }

  /** The share's root: from any site's commits, or (a system from before several sites) the default site's share state. */
  private async rootOf(share: string): Promise<string | null> {
    return (await this.o.conn.hget(this.o.state.roots, share))
      ?? (await this.o.conn.hget(this.o.state.share(share), 'root'))
      ?? (await this.o.conn.hget(stateKeys(this.o.prefix).share(share), 'root'));
  }

  /**
   * Runs the passes that are due, one share at a time. A new site (marked
   * by its replicator) first gets a metadata pass of every share at once:
   * its initial sync, whatever the schedule.
   */
  private async tick(): Promise<void> {
    const now = Date.now();
    // After a few seconds, so the journal pump feeds the new site's queue before the tree is compared.
    const initial = now - this.startedAt >= INITIAL_SYNC_DELAY_MS && (await this.o.conn.hget(this.o.state.site, 'initialSync')) === 'pending';
    if (!initial && (!this.o.config.enabled || now - this.startedAt < this.o.config.startDelayMs)) return;
    let left = 0;
    for (const share of (await this.o.conn.smembers(this.o.state.shares)).sort()) {
      if (this.closed) return;
      const h = await this.o.conn.hgetall(this.o.state.scrub(share));
      const root = await this.rootOf(share);
      if (!root) continue; // no record replicated yet: its root is not known
      if (now < Number(h.retryAt ?? 0)) {
        left++;
        continue; // the last pass failed: not before this
      }
      const neverPassed = h.lastMetadataAt === undefined && h.lastContentAt === undefined;
      const dueContent = !initial && now - Number(h.lastContentAt ?? 0) >= this.o.config.contentIntervalMs;
      const dueMeta = (initial && neverPassed) || (!initial && now - Number(h.lastMetadataAt ?? 0) >= this.o.config.intervalMs);
      if (!(dueContent || dueMeta)) continue;
      left++;
      // One pass of a share at a time, whichever replicator process runs it.
      const lease = `${this.o.state.scrub(share)}:lease`;
      if ((await this.o.conn.set(lease, this.id, 'PX', LEASE_MS, 'NX')) !== 'OK') continue;
      try {
        const r = await this.pass(share, root, dueContent ? 'content' : 'metadata', () => this.o.conn.set(lease, this.id, 'PX', LEASE_MS, 'XX').then(() => undefined));
        if (r.ok) left--;
      } finally {
        if ((await this.o.conn.get(lease)) === this.id) await this.o.conn.del(lease);
      }
    }
    if (initial && left === 0 && !this.closed) {
      await this.o.conn.hset(this.o.state.site, 'initialSync', 'done', 'initialSyncAt', Date.now());
      this.o.logger.info('initial sync of the new DR site finished');
    }
  }

  /** One pass over one share: compare, then repair every difference. */
  async pass(share: string, root: string, kind: ScrubKind, renew: () => Promise<void> = async () => undefined): Promise<{ checked: number; differences: number; repaired: number; leftOut: number; ok: boolean }> {
    const { conn, state, config, log } = { ...this.o, log: this.o.logger.child({ share, kind }) };
    const key = state.scrub(share);
    const t0 = Date.now();
    await conn.hset(key, { state: 'running', kind, startedAt: t0, checked: 0, bytesRead: 0 });
    log.info('scrub started');
    let checked = 0;
    const pace = async (n: number, bytes: number) => {
      checked = n;
      // Never faster than the configured rates: sleep until the elapsed time covers what was done.
      const due = Math.max(n / config.maxFilesPerSecond, bytes / config.maxBytesPerSecond) * 1000 - (Date.now() - t0);
      if (due > 0) await new Promise((r) => setTimeout(r, due));
      await conn.hset(key, { checked: n, bytesRead: bytes });
      await renew();
    };
    let diffs: Difference[] = [];
    let repaired = 0;
    let error = '';
    const leftOut = new Set<string>();
    try {
      const site = await this.o.site();
      const tree = this.o.tree(root);
      const found = await verifyTree(site, share, tree, { content: kind === 'content', pace });
      // Being written now: its record syncs it; a path left out before keeps its entry until a pass judges it.
      const busy = new Set(found.filter((d) => d.what === 'changed while verified').map((d) => d.path));
      diffs = found.filter((d) => !busy.has(d.path));
      const sync = new SiteSync({ site, bucket: share, tree, blockSize: this.o.blockSize, stats: this.o.stats });
      for (const d of diffs) {
        if (this.closed) break;
        try {
          await this.o.locks.run(share, [d.path], () => (d.what === 'content differs' ? sync.resyncPath(d.path) : sync.syncPath(d.path)).then(() => undefined));
        } catch (err) {
          // One path the site cannot take (too large, a name it cannot hold) must not keep the rest unrepaired: it is left out.
          if (!isPathFault(err)) throw err;
          leftOut.add(d.path);
          if (await noteLeftOut(conn, state.leftOut(share), d.path, 'scrub', (err as Error).message)) {
            await this.o.events.publish({ type: 'left-out', at: Date.now(), share, path: d.path, op: 'scrub', error: (err as Error).message });
          }
          log.error({ path: d.path, what: d.what, err }, 'scrub could not repair a difference: the site cannot take it; left out');
          continue;
        }
        repaired++;
        await renew();
        log.warn({ path: d.path, what: d.what }, 'scrub repaired a difference');
        await this.o.events.publish({ type: 'scrub-repaired', at: Date.now(), share, path: d.path, what: d.what });
      }
      // A whole pass: what it did not find again is at the site now, or gone from the share.
      if (!this.closed) await pruneLeftOut(conn, state.leftOut(share), t0, leftOut, busy);
      if (leftOut.size > 0) log.error({ leftOut: leftOut.size }, 'scrub finished with differences the site cannot take (left out)');
    } catch (err) {
      error = (err as Error).message;
      log.error({ err }, 'scrub failed');
    }
    const finishedAt = Date.now();
    const done = { checked, differences: diffs.length, repaired, leftOut: leftOut.size };
    await conn.hset(key, {
      state: 'idle', kind, finishedAt, durationMs: finishedAt - t0, ...done, error,
      ...(error ? {} : { [kind === 'content' ? 'lastContentAt' : 'lastMetadataAt']: t0 }),
      // A content pass checks metadata too.
      ...(error || kind !== 'content' ? {} : { lastMetadataAt: t0 }),
      retryAt: error ? finishedAt + Math.min(config.intervalMs, 60_000) : 0,
    });
    await this.o.events.publish({ type: 'scrub-finished', at: finishedAt, share, scrub: kind, files: checked, differences: diffs.length, repaired, leftOut: leftOut.size, ...(error ? { error } : {}) });
    log.info({ ...done, ms: finishedAt - t0, error: error || undefined }, 'scrub finished');
    return { ...done, ok: error === '' && !this.closed };
  }
}
