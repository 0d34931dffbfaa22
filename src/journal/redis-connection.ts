/**
 * ioredis connection options and the journal's own keys.
 */
import IORedis, { type RedisOptions } from 'ioredis';
import { DEFAULT_SITE, type VfsxConfig } from '../config/schema';

export function redisOptions(cfg: VfsxConfig['redis'], extra: RedisOptions = {}): RedisOptions {
  const base: RedisOptions = cfg.path
    ? { path: cfg.path, db: cfg.db }
    : { host: cfg.host, port: cfg.port, db: cfg.db };
  if (cfg.password) base.password = cfg.password;
  return {
    ...base,
    // Capped exponential backoff with jitter; ioredis reconnects by itself.
    retryStrategy: (times: number) => Math.min(2000, 50 * 2 ** Math.min(times, 6)) * (0.5 + Math.random() / 2),
    ...extra,
  };
}

/** The BullMQ queue of a site's jobs: the journal's queue itself for the site "default". */
export function queueNameOf(queueName: string, site: string): string {
  return site === DEFAULT_SITE ? queueName : `${queueName}@${site}`;
}

export interface JournalKeys {
  /** The Redis Stream every report is appended to, in arrival order. */
  stream: string;
  /** Hash: cursor (last stream id handled) and low (oldest id still needed). */
  cursor: string;
  /** Capped list of records whose operation failed (audit). */
  failed: string;
  /** With replication off: capped list of the newest records, newest first (journal.keepRecords). */
  recent: string;
}

export function journalKeys(prefix: string): JournalKeys {
  return { stream: `${prefix}:journal`, cursor: `${prefix}:journal:cursor`, failed: `${prefix}:failed-ops`, recent: `${prefix}:recent-ops` };
}

/**
 * Keys of the operator surface: replication state, per-share RPO sets,
 * events. Those of one site's progress (link, per-share state, RPO sets,
 * scrub, totals, latency, its replicators, its limit) carry the site's name,
 * but for the site "default", whose keys are those of a single-site system.
 */
export interface StateKeys {
  /** The site these keys are of. */
  siteName: string;
  /** Hash: share -> its root (the path smbd reports), shared by every site. */
  roots: string;
  /** Set of the DR sites whose replicators ran (the pump feeds each, configured or not). */
  sites: string;
  /** String: this site's bandwidth limit set while running (`vfsx bwlimit --site`). */
  siteBwlimit: string;
  /** Hash: the DR site link (url, state, since, lastError, lastErrorAt, updatedAt, counters). */
  site: string;
  /** Set of share names seen by the journal pump. */
  shares: string;
  /** Hash per share: root, lastCommitAt, lastCommitPath, commits, bytesSent, opsPerSec, bytesPerSec. */
  share: (name: string) => string;
  /** Hash per share: the scrub's state, progress and last passes (src/replication/scrubber.ts). */
  scrub: (name: string) => string;
  /**
   * Hash per share: path -> JSON {op, error, since, at} of a path replication
   * cannot carry to the site (too large, a name it cannot hold, unreadable):
   * left out of the RPO, retried at its next change and at every scrub.
   */
  leftOut: (name: string) => string;
  /** Sorted set per share: job id -> ms of the change; the oldest member gives the RPO age. */
  rpo: (name: string) => string;
  /** Hash: fail-open engagement (spool files ingested, lastAt). */
  failOpen: string;
  /** Hash: replication totals since the journal began (records, commits, coalesced, blocksSent, bytesSent, failures), summed over replicator processes. */
  totals: string;
  /** Hash: replicator process ("host:pid") -> JSON { pid, host, records, commits, at }, written every second by each. */
  replicators: string;
  /** Hash: change -> commit latency histogram (b<i> counts per COMMIT_LATENCY_BUCKETS, inf, sum in seconds, count). */
  latency: string;
  /** String: the bandwidth limit set while running (`vfsx bwlimit`), overriding replication.bwlimit; absent: the configured one. */
  bwlimit: string;
  /** Hash: the token bucket of the limit on all sites together, shared by every replicator process (tokens, at). */
  bwBucket: string;
  /** Hash: the token bucket of this site's own limit, shared by every replicator process of the site. */
  siteBwBucket: string;
  /** Pub/sub channel of events, and a capped list of recent ones (commits are published only). */
  events: string;
  recent: string;
}

/** Upper bounds (seconds) of the change -> commit latency histogram. */
export const COMMIT_LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 2.5, 5, 10, 30, 60, 300];

export function stateKeys(prefix: string, site = DEFAULT_SITE): StateKeys {
  const at = site === DEFAULT_SITE ? '' : `@${site}`;
  return {
    siteName: site,
    roots: `${prefix}:state:roots`,
    sites: `${prefix}:state:sites`,
    siteBwlimit: `${prefix}:config:bwlimit@${site}`,
    site: `${prefix}:state:site${at}`,
    shares: `${prefix}:state:shares`,
    share: (name) => `${prefix}:state:share${at}:${name}`,
    scrub: (name) => `${prefix}:state:scrub${at}:${name}`,
    leftOut: (name) => `${prefix}:state:left-out${at}:${name}`,
    rpo: (name) => `${prefix}:rpo${at}:${name}`,
    failOpen: `${prefix}:state:fail-open`,
    totals: `${prefix}:state:replication${at}`,
    replicators: `${prefix}:state:replicators${at}`,
    latency: `${prefix}:state:commit-latency${at}`,
    bwlimit: `${prefix}:config:bwlimit`,
    bwBucket: `${prefix}:state:bwlimit-bucket`,
    siteBwBucket: `${prefix}:state:bwlimit-bucket@${site}`,
    events: `${prefix}:events`,
    recent: `${prefix}:events:recent`,
  };
}

/**
 * Closes a client at once. ioredis's disconnect() arms a 2 s timer
 * (disconnectTimeout) that only its socket's 'close' event clears, and a
 * socket that closed already (Redis refused or went away) never sends it
 * again: `vfsx resync` and `vfsx doctor` without a reachable Redis then
 * lingered 2 s after their work was done.
 */
export function dropConnection(c: IORedis): void {
  if (c.status !== 'end') c.disconnect();
}

/** Closes a client politely (QUIT, so Redis sees its commands through), or at once when that fails. */
export async function closeConnection(c: IORedis): Promise<void> {
  await c.quit().catch(() => dropConnection(c));
}

/**
 * One short piece of work with Redis for a command (doctor, bwlimit, a
 * resync's bookkeeping): a connection that does not retry, gone when `f`
 * is done; rejects when Redis does not answer within `connectTimeoutMs`.
 */
export async function withRedisOnce<T>(cfg: VfsxConfig['redis'], f: (c: IORedis) => Promise<T>, connectTimeoutMs = 3000): Promise<T> {
  const c = new IORedis(redisOptions(cfg, { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, connectTimeout: connectTimeoutMs }));
  c.on('error', () => undefined);
  try {
    await c.connect();
    return await f(c);
  } finally {
    dropConnection(c);
  }
}

/** What `vfsx doctor` needs to know about Redis: reachable, AOF on, noeviction. */
export async function redisHealth(cfg: VfsxConfig['redis']): Promise<{ reachable: boolean; error?: string; appendonly?: string; policy?: string }> {
  try {
    return await withRedisOnce(cfg, async (c) => {
      await c.ping();
      const aof = (await c.config('GET', 'appendonly')) as string[];
      const pol = (await c.config('GET', 'maxmemory-policy')) as string[];
      return { reachable: true, appendonly: aof[1], policy: pol[1] };
    });
  } catch (err) {
    return { reachable: false, error: (err as Error).message };
  }
}
