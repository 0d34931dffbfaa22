/**
 * Bandwidth limits on what goes to a DR site (the limit and its timetable:
 * src/config/bwlimit.ts). The rate in force can be overridden while the
 * system runs (`vfsx bwlimit`, kept in Redis). The pacing itself is the
 * `limiter` package's token bucket.
 */
import IORedis, { type Redis } from 'ioredis';
import { TokenBucket } from 'limiter';
import { Rate, Schedule } from '../config/bwlimit';
import { siteNamed, type VfsxConfig } from '../config/schema';
import { dropConnection, redisOptions, stateKeys, withRedisOnce } from '../journal/redis-connection';

const PIECE = 64 * 1024;

/**
 * A token bucket in Redis, for a limit several processes share (every
 * replicator process takes from the limit on all sites together). Each take
 * reserves its bytes at once, going into debt when the bucket is short, and
 * answers how long to wait before sending: one round trip per piece, taken
 * in turn by whichever process asks, on Redis's clock.
 */
const TAKE = `local rate = tonumber(ARGV[1])
local size = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(v[1]) or size
local at = tonumber(v[2]) or now
tokens = math.min(size, tokens + math.max(0, now - at) * rate / 1000) - want
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 600000)
if tokens >= 0 then return 0 end
return math.ceil(-tokens * 1000 / rate)`;

/**
 * Paces bytes sent to one site. `take(n)` resolves when n bytes may go
 * (at once when no limit is in force: it then returns undefined, so the
 * unlimited path costs no await). The bucket holds a tenth of a second's
 * worth (at least one piece), so a limited link never bursts far above its
 * rate; sends are taken in pieces of at most PIECE bytes.
 */
export class Bandwidth {
  private schedule: Schedule;
  private override: Schedule | null = null;
  private rate: Rate = 0;
  private bucket: TokenBucket | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** Bytes paced through here (limited or not), for rates shown to operators. */
  sent = 0;
  /** The bucket in Redis, when this limit is shared with other processes. */
  private shared: { conn: Redis; key: string; failing: boolean } | null = null;
  private ownConn: Redis | null = null;

  constructor(configured: string, private readonly now: () => Date = () => new Date()) {
    this.schedule = Schedule.parse(configured);
    this.apply();
  }

  /** The rate in force now (bytes per second, 0 = none). */
  get limit(): Rate {
    return this.rate;
  }

  /** What sets the rate: the configuration, or an override made while running. */
  get source(): 'config' | 'override' {
    return this.override ? 'override' : 'config';
  }

  /** The text of the limit in force (a rate or a timetable). */
  get text(): string {
    return (this.override ?? this.schedule).text;
  }

  /** Replaces the configured limit (a config reload). */
  configure(text: string): void {
    this.schedule = Schedule.parse(text);
    this.apply();
  }

  /** Sets (or, with null, clears) the override; an unparsable one is refused. */
  setOverride(text: string | null): void {
    const next = text === null ? null : Schedule.parse(text);
    if ((next?.text ?? null) === (this.override?.text ?? null)) return;
    this.override = next;
    this.apply();
  }

  /**
   * Keeps the bucket in Redis at `key`, shared by every process that does
   * the same (the limit on all sites together, one replicator process per
   * site). While Redis does not answer, the bucket of this process paces
   * alone.
   */
  shareThrough(conn: Redis, key: string): void {
    this.shared = { conn, key, failing: false };
  }

  /** As shareThrough, on a connection of its own (close() ends it) that never queues a take while Redis is away. */
  shareThroughRedis(redis: VfsxConfig['redis'], key: string): void {
    const conn = new IORedis(redisOptions(redis, { maxRetriesPerRequest: 1, enableOfflineQueue: false }));
    conn.on('error', () => undefined);
    this.ownConn = conn;
    this.shareThrough(conn, key);
  }

  take(n: number): Promise<void> | undefined {
    this.sent += n;
    if (this.bucket === null || n <= 0) return undefined;
    return this.drain(n);
  }

  private async drain(n: number): Promise<void> {
    for (let left = n; left > 0;) {
      // The limit may change (or go) while this waits: follow it.
      const b = this.bucket;
      if (b === null) return;
      const piece = Math.min(left, PIECE);
      if (!(await this.takeShared(piece, b.bucketSize))) await b.removeTokens(piece);
      left -= piece;
    }
  }

  /** Takes a piece from the shared bucket (waiting its turn); false when there is none or Redis does not answer. */
  private async takeShared(piece: number, size: number): Promise<boolean> {
    const sh = this.shared;
    if (sh === null) return false;
    let wait: number;
    try {
      wait = Number(await sh.conn.eval(TAKE, 1, sh.key, this.rate, size, piece));
      sh.failing = false;
    } catch {
      sh.failing = true;
      return false;
    }
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    return true;
  }

  /** Whether the shared bucket could not be reached at the last take (this process then paces alone). */
  get sharedFailing(): boolean {
    return this.shared?.failing ?? false;
  }

  close(): void {
    this.disarm();
    if (this.ownConn) dropConnection(this.ownConn);
    this.ownConn = null;
  }

  private disarm(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Puts the rate of the schedule in force and arms a timer for its next change. */
  private apply(): void {
    const s = this.override ?? this.schedule;
    const now = this.now();
    const rate = s.rateAt(now);
    if (rate !== this.rate || (rate > 0) !== (this.bucket !== null)) {
      this.rate = rate;
      if (rate === 0) {
        this.bucket = null;
      } else {
        const size = Math.max(PIECE, Math.floor(rate / 10));
        if (this.bucket) {
          // Same bucket, new rate: waiters keep their place.
          this.bucket.tokensPerInterval = rate;
          this.bucket.bucketSize = size;
          this.bucket.content = Math.min(this.bucket.content, size);
        } else {
          this.bucket = new TokenBucket({ bucketSize: size, tokensPerInterval: rate, interval: 1000 });
        }
      }
    }
    this.disarm();
    const next = s.nextChangeIn(now);
    if (next !== null) {
      // At most a minute at a time: the wall clock may jump (NTP, DST).
      this.timer = setTimeout(() => this.apply(), Math.min(next + 50, 60_000));
      this.timer.unref();
    }
  }
}

/**
 * The limit `vfsx bwlimit` set while running (null: none, the configured one
 * holds). With `set`, first sets it (a string) or clears it (null). Kept in
 * Redis, where every replicator looks for it each second.
 */
export async function bwlimitOverride(redis: VfsxConfig['redis'], set?: string | null, site?: string): Promise<string | null> {
  const keys = stateKeys(redis.prefix, site);
  const key = site === undefined ? keys.bwlimit : keys.siteBwlimit;
  return withRedisOnce(redis, async (conn) => {
    if (set === null) await conn.del(key);
    else if (set !== undefined) await conn.set(key, set);
    return conn.get(key);
  });
}

/**
 * A pacer for a command that sends to a site (resync): the site's and all
 * sites' limits, configured or set while running, taken from the same
 * buckets in Redis as the running replicators' (a resync beside them keeps
 * to the limit together with them); close() when done. Without Redis (a
 * resync in a disaster) each limit is kept alone.
 */
export async function bandwidthOf(config: Pick<VfsxConfig, 'redis' | 'replication'>, site?: string): Promise<SitePace> {
  const s = siteNamed(config.replication, site);
  const pace = new SitePace(new Bandwidth(s.bwlimit), new Bandwidth(config.replication.bwlimit));
  try {
    pace.all.setOverride(await bwlimitOverride(config.redis));
    pace.site.setOverride(await bwlimitOverride(config.redis, undefined, s.name));
  } catch {
    // no Redis here, or an override that does not parse: the configured limits
  }
  pace.all.shareThroughRedis(config.redis, stateKeys(config.redis.prefix).bwBucket);
  pace.site.shareThroughRedis(config.redis, stateKeys(config.redis.prefix, s.name).siteBwBucket);
  return pace;
}

/**
 * What one site's sends obey: its own limit and the limit on all sites
 * together (both Bandwidth objects; the global one is shared by every
 * site's replicator in the process).
 */
export class SitePace {
  constructor(readonly site: Bandwidth, readonly all: Bandwidth) {}

  take(n: number): Promise<void> | undefined {
    const a = this.site.take(n);
    const b = this.all.take(n);
    if (a === undefined) return b;
    if (b === undefined) return a;
    return Promise.all([a, b]).then(() => undefined);
  }

  /** Ends both limits' own connections to Redis, if they have them. */
  close(): void {
    this.site.close();
    this.all.close();
  }

  /** The rate in force for this site (the lower of the two; 0 = none). */
  get limit(): number {
    const xs = [this.site.limit, this.all.limit].filter((x) => x > 0);
    return xs.length === 0 ? 0 : Math.min(...xs);
  }

  /** Bytes this site's sends took (counted by its own Bandwidth). */
  get sent(): number {
    return this.site.sent;
  }

  /** The limit in force as written: the one that binds, and what set it. */
  get binding(): Bandwidth {
    if (this.site.limit > 0 && (this.all.limit === 0 || this.site.limit <= this.all.limit)) return this.site;
    return this.all;
  }
}
