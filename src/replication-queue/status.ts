/**
 * What an operator needs at a glance, read from Redis (and the spool
 * directory): per share backlog and RPO age, throughput, records that keep
 * failing and why; the DR site link; the journal; fail-open spooling.
 * `vfsx status`, `/metrics`, the dashboard and the RPO alert all read this.
 */
import { Job, Queue } from 'bullmq';
import { readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import IORedis, { Redis } from 'ioredis';
import type { VfsxConfig } from '../config/schema';
import type { ChangeRecord } from '../ops/change-record';
import { journalKeys, redisOptions, stateKeys } from './redis-connection';
import { Schedule } from '../config/bwlimit';
import { parseRpoMember, recordsOf } from './batch';
import { entryPairs, heldSummary, nextId } from './stream-ids';

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
  scrub: ScrubStatus;
}

/** The scheduled scrub of a share (src/replication-queue/scrubber.ts). */
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
  lastMetadataAt: number | null;
  lastContentAt: number | null;
  error: string | null;
}

export interface SiteStatus {
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
  /** Bytes sent to the site per second (blocks and metadata), over the last 10 s. */
  sentPerSec: number;
}

export interface Status {
  at: number;
  redis: 'up';
  replicationEnabled: boolean;
  site: SiteStatus;
  journal: { unpumped: number; awaitingOutcome: number; queued: Record<string, number> };
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
  readonly queue: Queue;

  constructor(cfg: Pick<VfsxConfig, 'redis' | 'journal' | 'replication' | 'spool'>) {
    this.cfg = cfg;
    this.conn = new IORedis(redisOptions(cfg.redis, { maxRetriesPerRequest: 1, connectTimeout: 3000 }));
    this.queueConn = new IORedis(redisOptions(cfg.redis, { maxRetriesPerRequest: 1, connectTimeout: 3000 }));
    for (const c of [this.conn, this.queueConn]) c.on('error', () => undefined);
    this.queue = new Queue(cfg.journal.queueName, { connection: this.queueConn, prefix: cfg.redis.prefix });
    this.queue.on('error', () => undefined);
  }

  async close(): Promise<void> {
    await this.queue.close().catch(() => undefined);
    for (const c of [this.conn, this.queueConn]) await c.quit().catch(() => c.disconnect());
  }

  private jobKey(id: string): string {
    return `${this.cfg.redis.prefix}:${this.cfg.journal.queueName}:${id}`;
  }

  /** The change -> commit histogram every replicator adds to (StateKeys.latency). */
  async commitLatency(): Promise<Record<string, string>> {
    return this.conn.hgetall(stateKeys(this.cfg.redis.prefix).latency);
  }

  async read(now = Date.now()): Promise<Status> {
    const sk = stateKeys(this.cfg.redis.prefix);
    const [siteHash, shareNames, failOpen, totals, procs] = await Promise.all([
      this.conn.hgetall(sk.site), this.conn.smembers(sk.shares), this.conn.hgetall(sk.failOpen), this.conn.hgetall(sk.totals),
      this.conn.hgetall(sk.replicators),
    ]);
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
    const journal = await this.journal();
    const retrying = await this.retrying();
    const shares: ShareStatus[] = [];
    for (const share of shareNames.sort()) {
      shares.push(await this.share(share, now, journal.oldestUnpumped.get(share) ?? null, retrying.filter((r) => r.share === share)));
    }
    const updatedAt = Number(siteHash.updatedAt ?? 0);
    const running = now - updatedAt < STALE_MS;
    return {
      at: now,
      redis: 'up',
      replicationEnabled: this.cfg.replication.enabled,
      site: {
        url: siteHash.url ?? this.cfg.replication.siteUrl,
        state: running ? ((siteHash.state as SiteStatus['state']) ?? 'unknown') : 'unknown',
        since: num(siteHash.since),
        lastError: siteHash.lastError || null,
        lastErrorAt: num(siteHash.lastErrorAt),
        replicatorRunning: running,
        replicators: replicators.sort((a, b) => a.id.localeCompare(b.id)),
        totals: {
          records: Number(totals.records ?? 0), commits: Number(totals.commits ?? 0), coalesced: Number(totals.coalesced ?? 0),
          blocksSent: Number(totals.blocksSent ?? 0), bytesSent: Number(totals.bytesSent ?? 0), failures: Number(totals.failures ?? 0),
        },
        bandwidth: running && siteHash.limitText !== undefined
          ? { limit: Number(siteHash.limit ?? 0), text: siteHash.limitText, source: siteHash.limitSource === 'override' ? 'override' : 'config', sentPerSec: Number(siteHash.sentPerSec ?? 0) }
          : { limit: configuredRate(this.cfg.replication.bwlimit, now), text: this.cfg.replication.bwlimit, source: 'config', sentPerSec: 0 },
      },
      journal: { unpumped: journal.unpumped, awaitingOutcome: journal.awaiting, queued: journal.queued },
      shares,
      spool: { ...(await this.spool()), ingestedFiles: Number(failOpen.files ?? 0), lastIngestAt: num(failOpen.lastAt) },
    };
  }

  /** Stream entries the pump has not handled yet (with the oldest change per share among them), and queue counts. */
  private async journal(): Promise<{ unpumped: number; awaiting: number; queued: Record<string, number>; oldestUnpumped: Map<string, number> }> {
    const jk = journalKeys(this.cfg.redis.prefix);
    const saved = await this.conn.hgetall(jk.cursor);
    const from = saved.cursor ? nextId(saved.cursor) : '-';
    const entries = (await this.conn.xrange(jk.stream, from, '+', 'COUNT', SAMPLE)) as Array<[string, string[]]>;
    const oldestUnpumped = new Map<string, number>();
    let awaiting = 0;
    let unpumped = 0;
    for (const [, fields] of entries) {
      for (const [kind, value] of entryPairs(fields)) {
        if (kind !== 'r') continue;
        unpumped++;
        const rec = JSON.parse(value) as ChangeRecord;
        if (!oldestUnpumped.has(rec.share)) oldestUnpumped.set(rec.share, rec.ts);
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
          if (kind === 'r' && value.includes('"outcome":"pending"')) open.add((JSON.parse(value) as ChangeRecord).id);
          else if (kind === 'o') open.delete(value.split(' ')[0]);
        }
      }
      awaiting = open.size;
    }
    const queued = await this.queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
    return { unpumped, awaiting, queued, oldestUnpumped };
  }

  /** Records that failed at least once and wait for their next attempt (the site's error). */
  async retrying(limit = 200): Promise<RetryingRecord[]> {
    const jobs = await this.queue.getJobs(['delayed', 'active', 'waiting'], 0, limit - 1, true);
    return jobs.filter((j) => j && j.attemptsMade > 0).map((j) => toRetrying(j));
  }

  private async share(share: string, now: number, unpumpedAt: number | null, retrying: RetryingRecord[]): Promise<ShareStatus> {
    const sk = stateKeys(this.cfg.redis.prefix);
    const [records, hash, scrub] = await Promise.all([this.conn.zcard(sk.rpo(share)), this.conn.hgetall(sk.share(share)), this.conn.hgetall(sk.scrub(share))]);
    let oldest = await this.oldest(share, now);
    if (unpumpedAt !== null && (oldest === null || unpumpedAt < oldest)) oldest = unpumpedAt;
    // Files and bytes of the oldest SAMPLE records (dirty bytes of closes; 0 for namespace changes).
    const members = (await this.conn.zrange(sk.rpo(share), 0, SAMPLE - 1)).map(parseRpoMember);
    const jobIds = [...new Set(members.map((m) => m.jobId))];
    const p = this.conn.pipeline();
    for (const id of jobIds) p.hget(this.jobKey(id), 'data');
    const data = new Map<string, ChangeRecord[]>();
    ((await p.exec()) ?? []).forEach(([, d], i) => {
      if (typeof d === 'string') data.set(jobIds[i], recordsOf(JSON.parse(d)));
    });
    const paths = new Set<string>();
    let bytes = 0;
    for (const m of members) {
      const rec = data.get(m.jobId)?.[m.index];
      if (!rec) continue;
      paths.add(rec.names.path ?? '');
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
      scrub: {
        state: scrub.state === 'running' || scrub.state === 'idle' ? scrub.state : 'never',
        kind: scrub.kind === 'metadata' || scrub.kind === 'content' ? scrub.kind : null,
        startedAt: num(scrub.startedAt),
        finishedAt: num(scrub.finishedAt),
        checked: Number(scrub.checked ?? 0),
        differences: Number(scrub.differences ?? 0),
        repaired: Number(scrub.repaired ?? 0),
        lastMetadataAt: num(scrub.lastMetadataAt),
        lastContentAt: num(scrub.lastContentAt),
        error: scrub.error || null,
      },
    };
  }

  /** The oldest uncommitted change of a share; drops leftovers whose job finished or never came. */
  private async oldest(share: string, now: number): Promise<number | null> {
    const key = stateKeys(this.cfg.redis.prefix).rpo(share);
    for (let i = 0; i < 50; i++) {
      const [id, score] = await this.conn.zrange(key, 0, 0, 'WITHSCORES');
      if (id === undefined) return null;
      const [finishedOn, data] = await this.conn.hmget(this.jobKey(parseRpoMember(id).jobId), 'finishedOn', 'data');
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

function toRetrying(j: Job): RetryingRecord {
  const rec = recordsOf(j.data)[0];
  return {
    jobId: String(j.id),
    share: rec.share,
    path: rec.names.path ?? '',
    op: rec.op,
    attempts: j.attemptsMade,
    error: j.failedReason ?? '',
  };
}
