/**
 * What an operator needs at a glance, read from Redis (and the spool
 * directory): per share backlog and RPO age, throughput, records that keep
 * failing and why; the DR site link; the journal; fail-open spooling.
 * `vfsx status`, `/metrics`, the dashboard and the RPO alert all read this.
 */
import { Queue } from 'bullmq';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import IORedis, { Redis } from 'ioredis';
import type { VfsxConfig } from '../config/schema';
import type { ChangeRecord } from '../ops/change-record';
import { closeConnection, journalKeys, queueNameOf, redisOptions, stateKeys } from '../journal/redis-connection';
import { sitesOf } from '../config/schema';
import { Schedule } from '../config/bwlimit';
import { parseRpoMember, recordsOf } from '../replication-queue/batch';
import { LeftOutPath, readLeftOut } from '../replication/left-out';
import { entryPairs, heldSummary, nextId, recordField } from '../journal/stream-ids';

/** Backlog details (files, bytes) come from this many oldest records; counts are always exact. */
const SAMPLE = 1000;
/** The replicator writes its state every second; older than this, it is not running. */
const STALE_MS = 5000;

export interface ReplicatorStatus {
  id: string;
  pid: number;
  host: string;
  /** Records and commits of this process since it started. */
  records: number;
  commits: number;
  at: number;
}

export interface ReplicationTotals {
  records: number;
  commits: number;
  coalesced: number;
  blocksSent: number;
  bytesSent: number;
  failures: number;
}
/** A record in an RPO set without a job this long after its change is a leftover of a crash. */
const ORPHAN_MS = 60_000;

export interface RetryingRecord {
  jobId: string;
  share: string;
  path: string;
  op: string;
  attempts: number;
  error: string;
  /** The site it is retried for. */
  site?: string;
}

export interface ShareStatus {
  share: string;
  backlog: { records: number; files: number; bytes: number; exact: boolean };
  /** Age of the oldest change not yet committed at the site; 0 when none. */
  rpoAgeSeconds: number;
  oldestChangeAt: number | null;
  lastCommitAt: number | null;
  lastCommitPath: string | null;
  commits: number;
  bytesSent: number;
  throughput: { opsPerSec: number; bytesPerSec: number };
  retrying: RetryingRecord[];
  /** Paths the site cannot take (src/replication/left-out.ts): how many, and the first 20 by path. */
  leftOut: { count: number; paths: LeftOutPath[] };
  scrub: ScrubStatus;
}

/** The scheduled scrub of a share (src/replication/scrubber.ts). */
export interface ScrubStatus {
  state: 'running' | 'idle' | 'never';
  /** The pass running now, or the last one. */
  kind: 'metadata' | 'content' | null;
  startedAt: number | null;
  finishedAt: number | null;
  /** Entries checked so far (running) or in the last pass. */
  checked: number;
  differences: number;
  repaired: number;
  /** Differences the last pass found that the site cannot take (left out). */
  leftOut: number;
  lastMetadataAt: number | null;
  lastContentAt: number | null;
  error: string | null;
}

interface JournalInfo {
  unpumped: number;
  awaiting: number;
  oldestUnpumped: Map<string, number>;
}

/** One DR site and every share's state there. */
export interface SiteView {
  site: SiteStatus;
  shares: ShareStatus[];
}

export interface SiteStatus {
  /** "default" on a single-site system. */
  name: string;
  /** Whether replication.sites (or siteUrl) names it; a site left over after its removal is not. */
  configured: boolean;
  /** A site added to a system with history: its initial sync (a scrub of every share) is pending or done; null otherwise. */
  initialSync: 'pending' | 'done' | null;
  url: string;
  state: 'up' | 'down' | 'connecting' | 'unknown';
  since: number | null;
  lastError: string | null;
  lastErrorAt: number | null;
  replicatorRunning: boolean;
  /** The replicator processes that reported within the last 5 s. */
  replicators: ReplicatorStatus[];
  /** Replication totals since the journal began, over every replicator process. */
  totals: ReplicationTotals;
  /** The bandwidth limit in force and what goes to the site now. */
  bandwidth: BandwidthStatus;
}

export interface BandwidthStatus {
  /** Bytes per second in force now; 0: no limit. */
  limit: number;
  /** The limit as written (a rate or a timetable). */
  text: string;
  /** config: replication.bwlimit; override: set by `vfsx bwlimit` while running. */
  source: 'config' | 'override';
  /** Which limit binds: this site's own, or the one on all sites together. */
  scope: 'site' | 'all';
  /** Bytes sent to the site per second (blocks and metadata), over the last 10 s. */
  sentPerSec: number;
}

export interface Status {
  at: number;
  redis: 'up';
  replicationEnabled: boolean;
  /** The first site (the only one on a single-site system); `sites` has them all. */
  site: SiteStatus;
  sites: SiteView[];
  journal: { unpumped: number; awaitingOutcome: number; queued: Record<string, number> };
  /** Every share at the first site; `sites` has them at each. */
  shares: ShareStatus[];
  spool: { dir: string; files: number; bytes: number; failOpenEngaged: boolean; ingestedFiles: number; lastIngestAt: number | null };
}

/** The configured limit's rate at `now` (no replicator says what is in force). */
function configuredRate(text: string, now: number): number {
  try {
    return Schedule.parse(text).rateAt(new Date(now));
  } catch {
    return 0;
  }
}

const num = (s: string | undefined): number | null => (s === undefined || s === '' || s === '0' ? null : Number(s));

export class StatusReader {
  private readonly cfg: Pick<VfsxConfig, 'redis' | 'journal' | 'replication' | 'spool'>;
  private readonly conn: Redis;
  private readonly queueConn: Redis;
  /** The first site's queue (the journal's own on a single-site system). */
  readonly queue: Queue;
  private readonly queues = new Map<string, Queue>();

  constructor(cfg: Pick<VfsxConfig, 'redis' | 'journal' | 'replication' | 'spool'>) {
    this.cfg = cfg;
    this.conn = new IORedis(redisOptions(cfg.redis, { maxRetriesPerRequest: 1, connectTimeout: 3000 }));
    this.queueConn = new IORedis(redisOptions(cfg.redis, { maxRetriesPerRequest: 1, connectTimeout: 3000 }));
    for (const c of [this.conn, this.queueConn]) c.on('error', () => undefined);
    this.queue = this.queueOf(sitesOf(cfg.replication)[0].name);
  }

  /** A site's queue (opened once). */
  /** The connection status reads with (for `vfsx why`). */
  get redis(): Redis {
    return this.conn;
  }

  queueOf(site: string): Queue {
    let q = this.queues.get(site);
    if (!q) {
      q = new Queue(queueNameOf(this.cfg.journal.queueName, site), { connection: this.queueConn, prefix: this.cfg.redis.prefix });
      q.on('error', () => undefined);
      this.queues.set(site, q);
    }
    return q;
  }

  async close(): Promise<void> {
    for (const q of this.queues.values()) await q.close().catch(() => undefined);
    for (const c of [this.conn, this.queueConn]) await closeConnection(c);
  }

  private jobKey(site: string, id: string): string {
    return `${this.cfg.redis.prefix}:${queueNameOf(this.cfg.journal.queueName, site)}:${id}`;
  }

  /** The configured sites, then any other whose replicator registered (added while running, or removed from the configuration). */
  async siteNames(): Promise<string[]> {
    const configured = sitesOf(this.cfg.replication).map((x) => x.name);
    const seen = await this.conn.smembers(stateKeys(this.cfg.redis.prefix).sites);
    return [...configured, ...seen.filter((x) => !configured.includes(x)).sort()];
  }

  /** The change -> commit histogram every replicator of a site adds to (StateKeys.latency). */
  async commitLatency(site = sitesOf(this.cfg.replication)[0].name): Promise<Record<string, string>> {
    return this.conn.hgetall(stateKeys(this.cfg.redis.prefix, site).latency);
  }

  /** Every configured site's commit-latency histogram (site -> its hash). */
  async commitLatencies(): Promise<Record<string, Record<string, string>>> {
    const names = sitesOf(this.cfg.replication).map((x) => x.name);
    const hashes = await Promise.all(names.map((n) => this.commitLatency(n)));
    return Object.fromEntries(names.map((n, i) => [n, hashes[i]]));
  }

  async read(now = Date.now()): Promise<Status> {
    const sk = stateKeys(this.cfg.redis.prefix);
    const [shareNames, failOpen] = await Promise.all([this.conn.smembers(sk.shares), this.conn.hgetall(sk.failOpen)]);
    const journal = await this.journal();
    const sites: Array<SiteView & { queued: Record<string, number> }> = [];
    for (const name of await this.siteNames()) sites.push(await this.siteView(name, shareNames.sort(), journal, now));
    const queued: Record<string, number> = {};
    for (const v of sites) for (const [k, n] of Object.entries(v.queued)) queued[k] = (queued[k] ?? 0) + n;
    return {
      at: now,
      redis: 'up',
      replicationEnabled: this.cfg.replication.enabled,
      site: sites[0].site,
      sites: sites.map(({ site, shares }) => ({ site, shares })),
      journal: { unpumped: journal.unpumped, awaitingOutcome: journal.awaiting, queued },
      shares: sites[0].shares,
      spool: { ...(await this.spool()), ingestedFiles: Number(failOpen.files ?? 0), lastIngestAt: num(failOpen.lastAt) },
    };
  }

  /** One site: its link, replicators, totals, limit, and every share's backlog and RPO there. */
  private async siteView(name: string, shareNames: string[], journal: JournalInfo, now: number): Promise<SiteView & { queued: Record<string, number> }> {
    const sk = stateKeys(this.cfg.redis.prefix, name);
    const cfgSite = sitesOf(this.cfg.replication).find((x) => x.name === name);
    const [siteHash, totals, procs] = await Promise.all([this.conn.hgetall(sk.site), this.conn.hgetall(sk.totals), this.conn.hgetall(sk.replicators)]);
    const replicators: ReplicatorStatus[] = [];
    for (const [id, json] of Object.entries(procs)) {
      try {
        const r = JSON.parse(json) as ReplicatorStatus;
        if (now - r.at < STALE_MS) replicators.push({ ...r, id });
        else if (now - r.at > 60_000) void this.conn.hdel(sk.replicators, id).catch(() => undefined); // gone for good
      } catch {
        // not ours
      }
    }
    const retrying = await this.retrying(200, name);
    const shares: ShareStatus[] = [];
    for (const share of shareNames) {
      shares.push(await this.share(name, share, now, journal.oldestUnpumped.get(share) ?? null, retrying.filter((r) => r.share === share)));
    }
    const running = now - Number(siteHash.updatedAt ?? 0) < STALE_MS;
    const configuredLimit = cfgSite && cfgSite.bwlimit !== 'off' ? cfgSite.bwlimit : this.cfg.replication.bwlimit;
    const queued = await this.queueOf(name).getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
    return {
      queued,
      shares,
      site: {
        name,
        configured: cfgSite !== undefined,
        url: siteHash.url ?? cfgSite?.url ?? this.cfg.replication.siteUrl,
        state: running ? ((siteHash.state as SiteStatus['state']) ?? 'unknown') : 'unknown',
        since: num(siteHash.since),
        lastError: siteHash.lastError || null,
        lastErrorAt: num(siteHash.lastErrorAt),
        replicatorRunning: running,
        replicators: replicators.sort((a, b) => a.id.localeCompare(b.id)),
        initialSync: siteHash.initialSync === 'pending' ? 'pending' : siteHash.initialSync === 'done' ? 'done' : null,
        totals: {
          records: Number(totals.records ?? 0), commits: Number(totals.commits ?? 0), coalesced: Number(totals.coalesced ?? 0),
          blocksSent: Number(totals.blocksSent ?? 0), bytesSent: Number(totals.bytesSent ?? 0), failures: Number(totals.failures ?? 0),
        },
        bandwidth: running && siteHash.limitText !== undefined
          ? { limit: Number(siteHash.limit ?? 0), text: siteHash.limitText, source: siteHash.limitSource === 'override' ? 'override' : 'config', scope: siteHash.limitScope === 'site' ? 'site' : 'all', sentPerSec: Number(siteHash.sentPerSec ?? 0) }
          : { limit: configuredRate(configuredLimit, now), text: configuredLimit, source: 'config', scope: configuredLimit === this.cfg.replication.bwlimit ? 'all' : 'site', sentPerSec: 0 },
      },
    };
  }

  /** Stream entries the pump has not handled yet (with the oldest change per share among them), and queue counts. */
  private async journal(): Promise<JournalInfo> {
    const jk = journalKeys(this.cfg.redis.prefix);
    const saved = await this.conn.hgetall(jk.cursor);
    const from = saved.cursor ? nextId(saved.cursor) : '-';
    const entries = (await this.conn.xrange(jk.stream, from, '+', 'COUNT', SAMPLE)) as Array<[string, string[]]>;
    const oldestUnpumped = new Map<string, number>();
    let awaiting = 0;
    let unpumped = 0;
    // The service's main thread answers verdicts between these reads: fields are picked, records not parsed.
    for (const [, fields] of entries) {
      for (const [kind, value] of entryPairs(fields)) {
        if (kind !== 'r') continue;
        unpumped++;
        const share = recordField(value, 'share');
        if (typeof share === 'string' && !oldestUnpumped.has(share)) oldestUnpumped.set(share, Number(recordField(value, 'ts')));
      }
    }
    // Records the pump holds for their settle window count as not pumped yet.
    for (const [share, [n, ts]] of Object.entries(heldSummary(saved.held))) {
      unpumped += n;
      const o = oldestUnpumped.get(share);
      if (o === undefined || ts < o) oldestUnpumped.set(share, ts);
    }
    // Records awaiting their outcome are between the low-water mark and the cursor.
    if (saved.low) {
      const held = (await this.conn.xrange(jk.stream, saved.low, saved.cursor ?? '+', 'COUNT', SAMPLE)) as Array<[string, string[]]>;
      const open = new Set<string>();
      for (const [, fields] of held) {
        for (const [kind, value] of entryPairs(fields)) {
          if (kind === 'r' && value.includes('"outcome":"pending"')) open.add(String(recordField(value, 'id')));
          else if (kind === 'o') open.delete(value.split(' ')[0]);
        }
      }
      awaiting = open.size;
    }
    return { unpumped, awaiting, oldestUnpumped };
  }

  /** Records that failed at least once and wait for their next attempt at a site (the site's error). */
  async retrying(limit = 200, site = sitesOf(this.cfg.replication)[0].name): Promise<RetryingRecord[]> {
    // The jobs' ids, then each one's attempts and error; only a job that was tried gets its
    // data read. A queued batch holds up to batchMax records: parsing 200 of them on every
    // read kept the status thread busy about 500 ms every 2 s in the journal bench.
    const ids = await this.queueOf(site).getRanges(['delayed', 'active', 'waiting'], 0, limit - 1, true);
    if (ids.length === 0) return [];
    const p = this.conn.pipeline();
    for (const id of ids) p.hmget(this.jobKey(site, id), 'atm', 'attemptsMade', 'failedReason');
    const tried: Array<{ jobId: string; attempts: number; error: string }> = [];
    ((await p.exec()) ?? []).forEach(([err, v], i) => {
      const [atm, legacy, reason] = err ? [] : (v as Array<string | null>);
      const attempts = Number(atm ?? legacy ?? 0);
      if (attempts > 0) tried.push({ jobId: ids[i], attempts, error: reason ?? '' });
    });
    if (tried.length === 0) return [];
    const data = await this.jobRecords(site, tried.map((t) => t.jobId));
    const out: RetryingRecord[] = [];
    for (const t of tried) {
      const rec = data.get(t.jobId)?.[0];
      if (rec) out.push({ jobId: t.jobId, share: rec.share, path: rec.names?.path ?? '', op: rec.op, attempts: t.attempts, error: t.error, site });
    }
    return out;
  }

  /**
   * The records of the given jobs of a site's queue, in one round trip. A job
   * finished in between is absent, and so is one whose data does not parse
   * (not a job of ours): the status still reads.
   */
  private async jobRecords(site: string, ids: string[]): Promise<Map<string, ChangeRecord[]>> {
    const p = this.conn.pipeline();
    for (const id of ids) p.hget(this.jobKey(site, id), 'data');
    const data = new Map<string, ChangeRecord[]>();
    ((await p.exec()) ?? []).forEach(([err, d], i) => {
      if (err || typeof d !== 'string') return;
      try {
        data.set(ids[i], recordsOf(JSON.parse(d)));
      } catch {
        // left out
      }
    });
    return data;
  }

  private async share(site: string, share: string, now: number, unpumpedAt: number | null, retrying: RetryingRecord[]): Promise<ShareStatus> {
    const sk = stateKeys(this.cfg.redis.prefix, site);
    const [hash, scrub, leftOut] = await Promise.all([this.conn.hgetall(sk.share(share)), this.conn.hgetall(sk.scrub(share)), readLeftOut(this.conn, sk.leftOut(share))]);
    let oldest = await this.oldest(site, share, now);
    if (unpumpedAt !== null && Number.isFinite(unpumpedAt) && (oldest === null || unpumpedAt < oldest)) oldest = unpumpedAt;
    // The count and the oldest SAMPLE members are read in one transaction: replication adds and
    // removes members all the time, and files must never exceed records.
    const [[, count], [, sample]] = ((await this.conn.multi().zcard(sk.rpo(share)).zrange(sk.rpo(share), 0, SAMPLE - 1).exec()) ?? [[null, 0], [null, []]]) as [[unknown, number], [unknown, string[]]];
    const records = Number(count);
    // Files and bytes of the oldest SAMPLE records (dirty bytes of closes; 0 for namespace changes).
    const members = sample.map(parseRpoMember);
    const data = await this.jobRecords(site, [...new Set(members.map((m) => m.jobId))]);
    const paths = new Set<string>();
    let bytes = 0;
    for (const m of members) {
      const rec = data.get(m.jobId)?.[m.index];
      if (!rec) continue;
      paths.add(rec.names?.path ?? '');
      for (const [, len] of rec.ranges ?? []) bytes += len;
    }
    const fresh = now - Number(hash.ratesAt ?? 0) < STALE_MS;
    return {
      share,
      backlog: { records, files: paths.size, bytes, exact: records <= SAMPLE },
      rpoAgeSeconds: oldest === null ? 0 : Math.max(0, (now - oldest) / 1000),
      oldestChangeAt: oldest,
      lastCommitAt: num(hash.lastCommitAt),
      lastCommitPath: hash.lastCommitPath ?? null,
      commits: Number(hash.commits ?? 0),
      bytesSent: Number(hash.bytesSent ?? 0),
      throughput: fresh ? { opsPerSec: Number(hash.opsPerSec ?? 0), bytesPerSec: Number(hash.bytesPerSec ?? 0) } : { opsPerSec: 0, bytesPerSec: 0 },
      retrying,
      leftOut,
      scrub: {
        state: scrub.state === 'running' || scrub.state === 'idle' ? scrub.state : 'never',
        kind: scrub.kind === 'metadata' || scrub.kind === 'content' ? scrub.kind : null,
        startedAt: num(scrub.startedAt),
        finishedAt: num(scrub.finishedAt),
        checked: Number(scrub.checked ?? 0),
        differences: Number(scrub.differences ?? 0),
        repaired: Number(scrub.repaired ?? 0),
        leftOut: Number(scrub.leftOut ?? 0),
        lastMetadataAt: num(scrub.lastMetadataAt),
        lastContentAt: num(scrub.lastContentAt),
        error: scrub.error || null,
      },
    };
  }

  /** The oldest uncommitted change of a share; drops leftovers whose job finished or never came. */
  private async oldest(site: string, share: string, now: number): Promise<number | null> {
    const key = stateKeys(this.cfg.redis.prefix, site).rpo(share);
    for (let i = 0; i < 50; i++) {
      const [id, score] = await this.conn.zrange(key, 0, 0, 'WITHSCORES');
      if (id === undefined) return null;
      const [finishedOn, data] = await this.conn.hmget(this.jobKey(site, parseRpoMember(id).jobId), 'finishedOn', 'data');
      if (finishedOn || (!data && now - Number(score) > ORPHAN_MS)) {
        await this.conn.zrem(key, id);
        continue;
      }
      return Number(score);
    }
    return null;
  }

  private async spool(): Promise<{ dir: string; files: number; bytes: number; failOpenEngaged: boolean }> {
    const dir = this.cfg.spool.dir;
    let files = 0;
    let bytes = 0;
    try {
      for (const n of await readdir(dir)) {
        if (!n.endsWith('.spool')) continue;
        files++;
        bytes += (await stat(join(dir, n)).catch(() => ({ size: 0 }))).size;
      }
    } catch {
      // no spool directory: nothing spooled
    }
    return { dir, files, bytes, failOpenEngaged: files > 0 };
  }
}

