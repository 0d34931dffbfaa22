/**
 * The replicator: consumes the journal (BullMQ) and makes the DR site match
 * the source's *current* state for each path a record names. Records are
 * hints: duplicate, reordered or unknown-outcome records all converge.
 * - a path gone from the source is deleted at the site;
 * - a rename the source shows as done becomes a server-side move;
 * - a file sends only the blocks covering its dirty ranges (all of them when
 *   the record has none), and of those only what the site lacks;
 * - a file that changes while it is read is retried, never committed torn.
 */
import { DelayedError, Job, Queue, Worker } from 'bullmq';
import { statSync } from 'node:fs';
import { hostname } from 'node:os';
import IORedis, { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { withByteNames } from '../protocol/byte-names';
import { VfsxError } from '../errors/vfsx-error';
import type { ChangeRecord } from '../ops/change-record';
import { Tree, TreeEntry } from '../native/tree';
import { BATCH, BatchJob, batchJobId, coalesce, LONE, rangesOf, REPLICATION_JOB_OPTIONS, rpoMember, WorkItem } from '../replication-queue/batch';
import type { SiteClient } from '../site-link/site-client';
import { SiteOpener } from '../site-link/site-opener';
import { Bandwidth, SitePace } from '../site-link/bandwidth';
import { DEFAULT_SITE, SiteConfig, sitesOf } from '../config/schema';
import { EventBus } from '../journal/events';
import { PathLocks } from './path-locks';
import { COMMIT_LATENCY_BUCKETS, closeConnection, queueNameOf, redisOptions, StateKeys, stateKeys } from '../journal/redis-connection';
import { RateWindow } from './rate-window';
import { Scrubber } from './scrubber';
import { ShareOrder } from '../replication-queue/share-order';
import { markForFullSync } from '../replication-queue/site-state';
import { isPathFault, SiteSync, SMALL_FILE } from './site-sync';
import { BatchResult, LEFT_OUT, leaveOut, leftOutField } from './left-out';

export interface ReplicatorOptions {
  redis: VfsxConfig['redis'];
  /** The journal's queue name (each site's queue is named after it: queueNameOf). */
  queueName: string;
  replication: VfsxConfig['replication'];
  logger: Logger;
  /** The site this replicator feeds (default: the first configured). */
  site?: SiteConfig;
  /** The limit on all sites together, shared by the replicators of one process (default: its own, of replication.bwlimit). */
  allSites?: Bandwidth;
}


/** Attempts after which a batch whose records fail while the site answers splits them off. */
const SPLIT_AFTER_ATTEMPTS = 5;
/** A lone record failing on its path alone (isPathFault) this many times while the site answers is left out. */
const LEAVE_OUT_AFTER_ATTEMPTS = 5;
/** How often the replicator looks whether a share's root directory was replaced (it then opens the new one). */
const TREE_CHECK_MS = 1000;

export class Replicator {
  private readonly opts: ReplicatorOptions;
  private readonly log: Logger;
  private readonly conn: Redis;
  private worker: Worker | null = null;
  /** The queue itself: to check for and promote a share's next batch, and to add records split off a batch. */
  private readonly queue: Queue;
  private readonly order: ShareOrder;
  private client: SiteClient | null = null;
  private connecting: Promise<SiteClient> | null = null;
  private readonly buckets = new Set<string>();
  /** Each share's source tree, opened once by its root (the path smbd reports for the share). */
  private readonly trees = new Map<string, Tree>();
  private readonly treeChecked = new Map<string, number>();
  private scrubber: Scrubber | null = null;
  private readonly locks = new PathLocks();
  /** Opens the site's repository (unlocks an encrypted one's key once, for every reconnection). */
  private readonly opener: SiteOpener;
  /** Per share+path: when the last sync of it started (any / one that read every block). */
  private readonly synced = new Map<string, number>();
  private readonly syncedWhole = new Map<string, number>();
  readonly stats = { records: 0, commits: 0, coalesced: 0, blocksSent: 0, bytesSent: 0, failures: 0, lastError: '' };
  private readonly state: StateKeys;
  /** This process among the replicators ("host:pid"). */
  private readonly id = `${hostname()}:${process.pid}`;
  private readonly events: EventBus;
  private readonly rates = new Map<string, RateWindow>();
  /** The bandwidth limits on what goes to the site: its own and all sites' (configured, or set while running by `vfsx bwlimit`). */
  readonly pace: SitePace;
  /** The DR site this replicator feeds. */
  readonly siteCfg: SiteConfig;
  /** Bytes sent to the site per second, over the last seconds (everything: blocks and metadata). */
  private readonly sentWindow = new RateWindow(10);
  private sentCounted = 0;
  private badBwlimit: string | null = null;
  private link: 'connecting' | 'up' | 'down' = 'connecting';
  private linkSince = Date.now();
  private lastError = '';
  private lastErrorAt = 0;
  private heartbeat: NodeJS.Timeout | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectDelay = 200;
  private closed = false;
  /** change -> committed latencies (s) not yet added to the shared histogram in Redis. */
  private latencies: number[] = [];
  /** Stats already added to the shared totals in Redis. */
  private readonly reported = { records: 0, commits: 0, coalesced: 0, blocksSent: 0, bytesSent: 0, failures: 0 };

  constructor(options: ReplicatorOptions) {
    this.opts = options;
    this.log = options.logger;
    this.conn = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: null }));
    this.conn.on('error', (err) => this.log.debug({ err }, 'replicator redis error'));
    this.siteCfg = options.site ?? sitesOf(options.replication)[0];
    this.state = stateKeys(options.redis.prefix, this.siteCfg.name);
    this.events = new EventBus(options.redis, this.conn.duplicate());
    this.queue = new Queue(queueNameOf(options.queueName, this.siteCfg.name), { connection: this.conn, prefix: options.redis.prefix, defaultJobOptions: REPLICATION_JOB_OPTIONS });
    this.queue.on('error', (err) => this.log.debug({ err }, 'replicator queue error'));
    this.order = new ShareOrder(this.conn, options.redis.prefix, undefined, this.siteCfg.name);
    this.pace = new SitePace(new Bandwidth(this.siteCfg.bwlimit), options.allSites ?? new Bandwidth(options.replication.bwlimit));
    // Several replicator processes of one site keep to its limit together.
    this.pace.site.shareThrough(this.conn, this.state.siteBwBucket);
    this.opener = new SiteOpener({
      url: this.siteCfg.url, token: this.siteCfg.token, passphraseFile: this.siteCfg.passphraseFile, encryptNew: this.siteCfg.encryption === 'on',
      log: (msg, o) => this.log.warn(o, msg), pace: this.pace,
    });
  }


  private setLink(to: 'up' | 'down', error?: string): void {
    if (error) {
      this.lastError = error;
      this.lastErrorAt = Date.now();
    }
    if (this.link === to) return;
    const was = this.link;
    this.link = to;
    this.linkSince = Date.now();
    // The first failure to connect is news too; a first success after start is not.
    if (to === 'down' || was === 'down') void this.events.publish({ type: to === 'up' ? 'site-up' : 'site-down', at: Date.now(), site: this.siteLabel, error });
    void this.writeState();
  }

  /**
   * Writes the link state and per-share rates for `vfsx status` (every
   * second, and on changes), and adds this process's counters and commit
   * latencies since the last write to the totals every replicator shares.
   */
  private async writeState(): Promise<void> {
    const now = Date.now();
    await this.followBwlimit();
    this.sentWindow.add(now, 0, this.pace.sent - this.sentCounted);
    this.sentCounted = this.pace.sent;
    const bound = this.pace.binding;
    const p = this.conn.pipeline().hset(this.state.site, {
      name: this.siteCfg.name, url: this.siteCfg.url, state: this.link, since: this.linkSince, lastError: this.lastError, lastErrorAt: this.lastErrorAt,
      limit: this.pace.limit, limitText: bound.text, limitSource: bound.source, limitScope: bound === this.pace.site ? 'site' : 'all',
      sentPerSec: this.sentWindow.perSecond(now).bytes, updatedAt: now,
    }).hset(this.state.replicators, this.id, JSON.stringify({ pid: process.pid, host: hostname(), records: this.stats.records, commits: this.stats.commits, at: now }));
    for (const [share, w] of this.rates) {
      const r = w.perSecond(now);
      p.hset(this.state.share(share), { opsPerSec: r.ops, bytesPerSec: r.bytes, ratesAt: now });
    }
    const sent = { ...this.reported };
    for (const k of Object.keys(this.reported) as Array<keyof typeof this.reported>) {
      const d = this.stats[k] - this.reported[k];
      if (d > 0) p.hincrby(this.state.totals, k, d);
      this.reported[k] = this.stats[k];
    }
    const lat = this.latencies;
    this.latencies = [];
    if (lat.length > 0) {
      const counts = new Map<string, number>();
      let sum = 0;
      for (const s of lat) {
        const i = COMMIT_LATENCY_BUCKETS.findIndex((b) => s <= b);
        const f = i < 0 ? 'inf' : `b${i}`;
        counts.set(f, (counts.get(f) ?? 0) + 1);
        sum += s;
      }
      for (const [f, n] of counts) p.hincrby(this.state.latency, f, n);
      p.hincrbyfloat(this.state.latency, 'sum', sum).hincrby(this.state.latency, 'count', lat.length);
    }
    try {
      for (const [err] of (await p.exec()) ?? []) if (err) throw err;
    } catch {
      // Not written: count it next time.
      Object.assign(this.reported, sent);
      if (this.latencies.length < 100_000) this.latencies.push(...lat);
    }
  }

  /** Takes up a limit set (or cleared) by `vfsx bwlimit` since the last look; one that does not parse is logged and ignored. */
  private async followBwlimit(): Promise<void> {
    let texts: Array<string | null>;
    try {
      texts = await this.conn.mget(this.state.bwlimit, this.state.siteBwlimit);
    } catch {
      return; // Redis away: keep the limits in force
    }
    ([[this.pace.all, texts[0], 'all sites'], [this.pace.site, texts[1], `site ${this.siteCfg.name}`]] as const).forEach(([bw, text, scope]) => {
      try {
        const was = `${bw.text} (${bw.source})`;
        bw.setOverride(text);
        const is = `${bw.text} (${bw.source})`;
        if (is !== was) this.log.info({ scope, from: was, to: is }, 'bandwidth limit changed');
      } catch (err) {
        if (text !== this.badBwlimit) this.log.warn({ err, scope, bwlimit: text }, 'ignoring a bandwidth limit that does not parse');
        this.badBwlimit = text;
      }
    });
  }

  /** How events name the site: its URL on a single-site system, else its name. */
  private get siteLabel(): string {
    return this.siteCfg.name === DEFAULT_SITE ? this.siteCfg.url : this.siteCfg.name;
  }

  /**
   * A site this system has never fed, added while shares already have
   * history (a second site, a replacement): it is marked for its initial
   * sync (a scrub pass of every share at once, see Scrubber), before any
   * state of it is written.
   */
  private async markIfNew(): Promise<void> {
    try {
      await this.conn.sadd(this.state.sites, this.siteCfg.name); // the pump feeds it from now on
      if ((await this.conn.exists(this.state.site)) !== 0) return;
      if ((await this.conn.hsetnx(this.state.site, 'createdAt', Date.now())) !== 1) return; // another process did
      if ((await this.conn.scard(this.state.shares)) === 0) return; // nothing happened yet: the journal brings everything
      await this.conn.hset(this.state.site, 'initialSync', 'pending');
      this.log.info({ site: this.siteCfg.name }, 'a new DR site: every share is synced to it in full');
    } catch (err) {
      this.log.warn({ err }, 'could not tell whether the DR site is new');
    }
  }

  async start(): Promise<void> {
    await this.markIfNew();
    this.heartbeat = setInterval(() => void this.writeState(), 1000);
    this.heartbeat.unref();
    this.worker = new Worker(queueNameOf(this.opts.queueName, this.siteCfg.name), (job: Job, token?: string) => this.runJob(job, token), {
      connection: this.conn,
      prefix: this.opts.redis.prefix,
      // Batches of a share run one at a time, in order, across processes (ShareOrder); other shares' meanwhile.
      concurrency: this.opts.replication.concurrency,
      // A job whose worker died is picked up again within seconds, and never dropped.
      lockDuration: 10000,
      stalledInterval: 5000,
      maxStalledCount: 1_000_000,
      settings: {
        backoffStrategy: (attempts: number) =>
          Math.min(this.opts.replication.maxBackoffMs, 200 * 2 ** Math.min(attempts, 10)) * (0.5 + Math.random() / 2),
      },
    });
    this.worker.on('failed', (job, err) => {
      this.stats.failures++;
      this.stats.lastError = err.message;
      this.lastError = err.message;
      this.lastErrorAt = Date.now();
      if (err instanceof DelayedError) return; // not its turn yet: not a failure
      const rec = (job?.name === BATCH ? (job.data as BatchJob).records[0] : job?.data) as ChangeRecord | undefined;
      // One event per job, at its first failure: a site outage would otherwise repeat them at every retry.
      if (rec && job?.attemptsMade === 1) void this.events.publish({ type: 'failed', at: Date.now(), share: rec.share, path: rec.names.path, op: rec.op, error: err.message });
      this.log.warn({ err, id: job?.id, attempts: job?.attemptsMade }, 'replication of a record failed; will retry');
    });
    this.worker.on('error', (err) => this.log.debug({ err }, 'replicator worker error'));
    this.scrubber = new Scrubber({
      config: this.opts.replication.scrub, blockSize: this.opts.replication.blockSize, conn: this.conn, state: this.state, prefix: this.opts.redis.prefix,
      events: this.events, locks: this.locks, stats: this.stats, site: () => this.site(), tree: (root) => this.tree(root, true),
      logger: this.log.child({ c: 'scrub' }),
    });
    this.scrubber.start();
  }

  /** While the link is down, reconnect by itself (capped, jittered backoff), not only when a record needs the site. */
  private scheduleReconnect(): void {
    if (this.reconnectTimer || this.closed) return;
    const delay = this.reconnectDelay * (0.5 + Math.random() / 2);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      this.site().then(
        () => {
          this.reconnectDelay = 200;
        },
        () => {
          this.reconnectDelay = Math.min(this.opts.replication.maxBackoffMs, this.reconnectDelay * 2);
          this.scheduleReconnect();
        },
      );
    }, delay);
    this.reconnectTimer.unref();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.pace.site.close();
    if (!this.opts.allSites) this.pace.all.close();
    await this.scrubber?.close();
    await this.worker?.close().catch(() => undefined);
    await this.queue.close().catch(() => undefined);
    await this.writeState();
    await this.conn.hdel(this.state.replicators, this.id).catch(() => undefined);
    await this.events.close();
    this.client?.close();
    for (const t of this.trees.values()) t.close();
    this.trees.clear();
    await closeConnection(this.conn);
  }

  /**
   * A site that lost its index and recovered it from its copy in object
   * storage lacks what changed after that copy: the first replicator to
   * see it marks the site for a full sync (a scrub pass of every share, as
   * for a new site).
   */
  private async noticeRecovery(): Promise<void> {
    const at = this.opener.lastInfo?.recoveredAt;
    if (!at) return;
    try {
      if ((await this.conn.hsetnx(this.state.site, `recovered:${at}`, Date.now())) !== 1) return;
      await markForFullSync(this.conn, this.opts.redis.prefix, this.siteCfg.name);
      this.log.warn({ site: this.siteCfg.name, recoveredAt: at }, 'the DR site recovered its index from a copy: every share is synced to it in full');
    } catch (err) {
      this.log.warn({ err }, 'could not mark the recovered DR site for a full sync');
    }
  }

  private async site(): Promise<SiteClient> {
    if (this.client) return this.client;
    if (!this.connecting) {
      const siteUrl = this.siteCfg.url;
      this.connecting = this.opener.open().then(
        (c) => {
          this.client = c;
          c.onClose(() => {
            this.client = null;
            this.buckets.clear();
            this.log.warn('DR site link down');
            this.setLink('down', 'connection closed');
            this.scheduleReconnect();
          });
          this.log.info({ url: siteUrl }, 'DR site link up');
          this.setLink('up');
          void this.noticeRecovery();
          return c;
        },
        (err) => {
          this.setLink('down', (err as Error).message);
          this.scheduleReconnect();
          throw new VfsxError('VFSX_ERR_REPL_SITE_DOWN', `DR site unreachable: ${(err as Error).message}`, { cause: err });
        },
      ).finally(() => {
        this.connecting = null;
      });
    }
    return this.connecting;
  }

  private async runJob(job: Job, token?: string): Promise<void | typeof LEFT_OUT | BatchResult> {
    if (job.name === BATCH) return this.runBatch(job, token);
    // A lone record: reconciled (outcome unknown), or split off a batch that kept failing.
    // withByteNames: a job queued by a version that passed base64 names on.
    const rec = withByteNames(job.data as ChangeRecord);
    const bytesBefore = this.stats.bytesSent;
    const items = coalesce([rec]);
    if (this.stillWritten(items[0])) {
      await this.requeue([rec], 'd', this.opts.replication.settleMs || 500);
      await this.conn.zrem(this.state.rpo(rec.share), String(job.id));
      return;
    }
    const failed = await this.runItems(rec.share, items);
    if (failed.length > 0) {
      const { err } = failed[0];
      // A path the site cannot take, whatever is tried: left out (status, event) rather than retried forever.
      if (!isPathFault(err) || job.attemptsMade + 1 < LEAVE_OUT_AFTER_ATTEMPTS || this.link !== 'up') throw err;
      await this.leaveOut(rec, err, String(job.id));
      return LEFT_OUT; // the job's return value: `vfsx why` tells it from a commit
    }
    await this.committed(rec.share, items, [String(job.id)], this.stats.bytesSent - bytesBefore);
  }

  /** A lone record that keeps failing on its path alone: named as left out, out of the RPO; its job completes. */
  private async leaveOut(rec: ChangeRecord, err: Error, jobId: string): Promise<void> {
    const now = Date.now();
    const path = rec.op === 'rename' && rec.names.to !== undefined ? rec.names.to : rec.names.path;
    const p = leaveOut(this.conn.pipeline(), this.state.leftOut(rec.share), { path, op: rec.op, error: err.message, since: rec.ts, at: now });
    const [[, added]] = ((await p.zrem(this.state.rpo(rec.share), jobId).exec()) ?? [[null, 0]]) as Array<[unknown, number]>;
    // Once per path (a file's create, writes and close each leave it out): the first says it.
    if (added === 1) {
      await this.events.publish({ type: 'left-out', at: now, share: rec.share, path, op: rec.op, error: err.message, ...(this.siteCfg.name === DEFAULT_SITE ? {} : { site: this.siteCfg.name }) });
      this.log.error({ share: rec.share, path, op: rec.op, err }, 'the site cannot take this path: left out (retried at its next change and at every scrub)');
    }
  }

  /**
   * One batch, when it is its share's turn: coalesced into work items that
   * run concurrently where their paths are unrelated, in journal order where
   * they are related. A batch that keeps failing while the site answers
   * (a path the site refuses) splits its failing records off as lone jobs,
   * retried on their own, so they cannot hold up the share.
   */
  private async runBatch(job: Job, token?: string): Promise<void | BatchResult> {
    const b = job.data as BatchJob;
    const hasJob = async (seq: number) => (await this.queue.getJob(batchJobId(b.share, seq))) != null;
    const mine = await this.order.waitTurn(b.share, b.seq, hasJob,
      (ms) => job.moveToDelayed(Date.now() + ms, token),
      () => job.promote().catch(() => undefined)); // raced with the batch before: it runs anyway
    if (!mine) throw new DelayedError();
    const bytesBefore = this.stats.bytesSent;
    const all = coalesce(b.records.map(withByteNames));
    // A file created (or truncated) and still being written: its close will
    // bring it; reading it now would race the writer. Look again later.
    const later = all.filter((it) => this.stillWritten(it));
    const items = all.filter((it) => !later.includes(it));
    const failed = await this.runSegments(b.share, items);
    let result: BatchResult | undefined;
    if (failed.length > 0) {
      if (job.attemptsMade + 1 < SPLIT_AFTER_ATTEMPTS || this.link !== 'up') throw failed[0].err;
      await this.splitOff(b, failed.map((f) => f.item));
      result = { splitOff: failed.map((f) => f.item.rec.names.path) };
    }
    if (later.length > 0) await this.requeue(later.map((it) => it.rec), 'd', this.opts.replication.settleMs || 500);
    this.stats.coalesced += b.records.length - all.length;
    const jobId = String(job.id);
    const done = items.filter((i) => !failed.some((f) => f.item === i));
    await this.committed(b.share, done, b.records.map((_, i) => rpoMember(jobId, i)), this.stats.bytesSent - bytesBefore);
    const next = await this.order.done(b.share, b.seq);
    if (next !== null) {
      const j = await this.queue.getJob(batchJobId(b.share, next));
      if (j && (await j.isDelayed())) await j.promote().catch(() => undefined); // raced: it runs anyway
    }
    return result;
  }

  /** Records of items that keep failing become lone jobs (each keeps its RPO time). */
  private async splitOff(b: BatchJob, items: WorkItem[]): Promise<void> {
    const recs = items.map((i) => i.rec);
    this.log.warn({ share: b.share, seq: b.seq, paths: recs.map((r) => r.names.path) }, 'records keep failing: retrying them on their own');
    await this.requeue(recs, 'x', 0);
  }

  /** Queues records again as lone jobs (kind x: split off, d: deferred), each keeping its RPO time. */
  private async requeue(recs: ChangeRecord[], kind: 'x' | 'd', delay: number): Promise<void> {
    const now = Date.now();
    const id = (r: ChangeRecord) => (kind === 'x' ? `x-${r.id}` : `d-${r.id}-${now}`);
    const p = this.conn.pipeline();
    for (const r of recs) p.zadd(this.state.rpo(r.share), 'NX', r.ts, id(r));
    await p.exec();
    await this.queue.addBulk(recs.map((r) => ({ name: LONE, data: r, opts: { jobId: id(r), ...(delay > 0 ? { delay } : {}) } })));
  }

  /**
   * Whether an item is a file created or truncated whose data is still
   * changing (modified within the settle window, its record younger than
   * 30 s): its close reports the data; until then it is not read.
   */
  private stillWritten(it: WorkItem): boolean {
    const { rec } = it;
    if ((rec.op !== 'create' && rec.op !== 'truncate') || Date.now() - rec.ts > 30_000) return false;
    try {
      const e = this.tree(rec.origpath).stat(rec.names.path, true);
      return e !== null && e.kind === 'file' && Date.now() - Number(BigInt(e.mtimeNs) / 1_000_000n) < Math.max(this.opts.replication.settleMs, 200);
    } catch {
      return false;
    }
  }

  /**
   * Runs a batch's items segment by segment (renames and links divide
   * them): in each, what the site can take many at a time (deletes,
   * directories, symlinks, small regular files) goes together, a few calls
   * for the whole segment, after the segment's other items. A rename both
   * of whose names are gone from the source now divides nothing: it is two
   * deletes (a file renamed and then deleted costs no move). A share's
   * batches never overlap, so nothing else of the share runs meanwhile.
   */
  private async runSegments(share: string, items: WorkItem[]): Promise<Array<{ item: WorkItem; err: Error }>> {
    const failed: Array<{ item: WorkItem; err: Error }> = [];
    let segment: WorkItem[] = [];
    const flush = async () => {
      // Before the source is looked at: a record received earlier is covered by what is read now.
      const started = Date.now();
      const bulk = new Map<string, TreeEntry | null>();
      const bulkItems = new Set<WorkItem>();
      const rest: WorkItem[] = [];
      for (const it of segment) {
        if (it.rec.op === 'rename') {
          // Both names were gone; as they are now (read after `started`), or the rename's own way.
          const names = [it.rec.names.path, it.rec.names.to as string];
          const entries = names.map((rel) => (bulk.has(rel) ? bulk.get(rel) : this.bulkStat(it.rec.origpath, rel)));
          if (entries.includes(undefined)) {
            rest.push(it);
          } else {
            names.forEach((rel, i) => bulk.set(rel, entries[i] as TreeEntry | null));
            bulkItems.add(it);
          }
          continue;
        }
        const e = bulk.has(it.rec.names.path) ? bulk.get(it.rec.names.path) : this.bulkEntry(it);
        if (e === undefined) {
          rest.push(it);
        } else {
          bulk.set(it.rec.names.path, e);
          bulkItems.add(it);
        }
      }
      failed.push(...(await this.runItems(share, rest)));
      if (bulk.size > 0) {
        try {
          await this.syncMany(share, bulk, bulkItems, started);
        } catch {
          failed.push(...(await this.runItems(share, [...bulkItems]))); // one by one: each reports its own error
        }
      }
      segment = [];
    };
    for (const it of items) {
      if ((it.rec.op === 'rename' && !this.bothGone(it.rec)) || it.rec.op === 'link') {
        await flush();
        failed.push(...(await this.runItems(share, [it])));
      } else {
        segment.push(it);
      }
    }
    await flush();
    return failed;
  }

  /** Whether a rename's both names are gone from the source now (then it is two deletes). */
  private bothGone(rec: ChangeRecord): boolean {
    const { path, to, stream } = rec.names;
    if (to === undefined || stream !== undefined) return false;
    try {
      const tree = this.tree(rec.origpath, true);
      return tree.stat(path) === null && tree.stat(to) === null;
    } catch {
      return false;
    }
  }

  /**
   * What the source has now at an item's path when the site can take it in
   * bulk (null: nothing, a delete); undefined when the item goes its own
   * way: a larger file (its dirty ranges), or an item covered already
   * (those cost nothing anyway).
   */
  private bulkEntry(it: WorkItem): TreeEntry | null | undefined {
    const { rec } = it;
    const key = `${rec.share}\u0000${rec.names.path}`;
    if (this.covered(key, it.ts, it.whole || (it.ranges !== undefined && it.ranges.length > 0))) return undefined;
    return this.bulkStat(rec.origpath, rec.names.path);
  }

  /** The entry at rel when the site can take it in bulk (null: gone); undefined otherwise. */
  private bulkStat(root: string, rel: string): TreeEntry | null | undefined {
    try {
      let e = this.tree(root).stat(rel, true);
      if (e === null) e = this.tree(root, true).stat(rel, true); // gone, or the root was replaced?
      return e === null || e.kind === 'dir' || e.kind === 'symlink' || (e.kind === 'file' && e.size <= SMALL_FILE) ? e : undefined;
    } catch {
      return undefined;
    }
  }

  /** A segment's bulk paths, as read from the source after `started`: a few site calls for all of them (SiteSync.syncMany). */
  private async syncMany(share: string, bulk: Map<string, TreeEntry | null>, items: Set<WorkItem>, started: number): Promise<void> {
    const first = items.values().next().value as WorkItem;
    const site = await this.site();
    if (!this.buckets.has(share)) {
      await site.call('bucket.ensure', { bucket: share });
      this.buckets.add(share);
    }
    const sync = new SiteSync({ site, bucket: share, tree: this.tree(first.rec.origpath), blockSize: this.opts.replication.blockSize, stats: this.stats });
    await sync.syncMany([...bulk]);
    for (const item of items) this.stats.records += item.merged;
    for (const rel of bulk.keys()) this.remember(`${share}\u0000${rel}`, started, true);
  }

  /** Runs work items, at most replication.concurrency at once, each after every earlier item of a related path. */
  private async runItems(share: string, items: WorkItem[]): Promise<Array<{ item: WorkItem; err: Error }>> {
    const failed: Array<{ item: WorkItem; err: Error }> = [];
    let next = 0;
    const lane = async () => {
      while (next < items.length) {
        const item = items[next++];
        const { rec } = item;
        const paths = [rec.names.path, rec.names.to, rec.names.from].filter((x): x is string => typeof x === 'string');
        try {
          await this.locks.run(share, paths, () => this.process(rec, item));
        } catch (err) {
          failed.push({ item, err: err as Error });
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.opts.replication.concurrency, items.length) }, lane));
    return failed;
  }

  /** Bookkeeping once the site holds a job's changes: RPO set, per-share state, one `committed` event per item. */
  private async committed(share: string, items: WorkItem[], rpoMembers: string[], bytes: number): Promise<void> {
    const now = Date.now();
    let w = this.rates.get(share);
    if (!w) this.rates.set(share, (w = new RateWindow(60)));
    w.add(now, items.length, bytes);
    const p = this.conn.pipeline();
    if (rpoMembers.length > 0) p.zrem(this.state.rpo(share), ...rpoMembers);
    const last = items[items.length - 1];
    if (last) p.hset(this.state.roots, share, last.rec.origpath);
    // A path left out before is at the site now (or gone from it, as from the source).
    if (items.length > 0) p.hdel(this.state.leftOut(share), ...items.flatMap(({ rec }) => (rec.names.to === undefined ? [rec.names.path] : [rec.names.path, rec.names.to])).map(leftOutField));
    p.hset(this.state.share(share), { lastCommitAt: now, ...(last ? { lastCommitPath: last.rec.names.path ?? '', root: last.rec.origpath } : {}) })
      .hincrby(this.state.share(share), 'commits', items.length)
      .hincrby(this.state.share(share), 'bytesSent', bytes);
    for (const { rec, ts } of items) {
      const latencyMs = now - ts;
      if (this.latencies.length < 100_000) this.latencies.push(latencyMs / 1000);
      this.events.addTo(p, { type: 'committed', at: now, share, path: rec.names.path, op: rec.op, latencyMs, ...(this.siteCfg.name === DEFAULT_SITE ? {} : { site: this.siteCfg.name }) });
    }
    await p.exec();
  }

  /** Replicates one record (or the item it stands for, when records were coalesced). */
  async process(rec: ChangeRecord, item?: WorkItem): Promise<void> {
    this.stats.records += item?.merged ?? 1;
    const site = await this.site();
    if (!this.buckets.has(rec.share)) {
      await site.call('bucket.ensure', { bucket: rec.share });
      this.buckets.add(rec.share);
    }
    const sync = new SiteSync({ site, bucket: rec.share, tree: this.tree(rec.origpath, true), blockSize: this.opts.replication.blockSize, stats: this.stats });
    if (rec.op === 'rename' && rec.names.to !== undefined && rec.names.stream === undefined) {
      await sync.rename(rec.names.path, rec.names.to);
      return;
    }
    // A stream's ranges are not the base file's: a stream change is a metadata (xattr) change of the file.
    const ranges = item ? item.ranges : (rec.op === 'close' || rec.op === 'fsync') && rec.names.stream === undefined ? rec.ranges : undefined;
    const key = `${rec.share}\u0000${rec.names.path}`;
    // Content changed without ranges (create, truncate): only a sync that read every block covers it, and this one reads every block.
    const all = item ? item.whole : rec.names.stream === undefined && rangesOf(rec) === undefined;
    if (rec.op !== 'link' && this.covered(key, item?.ts ?? rec.ts, all || (ranges !== undefined && ranges.length > 0))) {
      this.stats.coalesced++;
      return;
    }
    const started = Date.now();
    const ino = item ? item.ino : typeof rec.args.ino === 'string' ? rec.args.ino : undefined;
    const whole = await sync.syncPath(rec.names.path, ranges, all && ranges === undefined, ino);
    this.remember(key, started, whole);
    if (rec.op === 'link' && rec.names.from) await sync.syncPath(rec.names.from);
  }

  /**
   * The share's tree, opened once; opened again when the root directory was
   * replaced since (looked at once per TREE_CHECK_MS, or now with `check`:
   * before anything is deleted at the site because it is gone here).
   */
  private tree(root: string, check = false): Tree {
    let t = this.trees.get(root);
    const now = Date.now();
    if (t && !check && now - (this.treeChecked.get(root) ?? 0) < TREE_CHECK_MS) return t;
    const st = statSync(root);
    this.treeChecked.set(root, now);
    if (t && (t.dev !== st.dev || t.ino !== st.ino)) {
      t.close();
      t = undefined;
    }
    if (!t) {
      t = Tree.open(root);
      this.trees.set(root, t);
    }
    return t;
  }

  /**
   * Coalescing: a record of a path is already replicated when a sync of that
   * path started after the service received it (records are hints; that sync
   * read the source after the change). Dirty ranges need a sync that read
   * every block; a record without ranges is covered by any sync (it would
   * only re-read metadata itself). Keeps the per-op journal intact: the
   * record's job completes, without a call to the site.
   */
  private covered(key: string, ts: number, ranged: boolean): boolean {
    const since = (ranged ? this.syncedWhole : this.synced).get(key);
    return since !== undefined && ts < since;
  }

  private remember(key: string, started: number, whole: boolean): void {
    for (const [m, ok] of [[this.synced, true], [this.syncedWhole, whole]] as const) {
      if (!ok) continue;
      if (m.size >= 100_000) m.clear(); // bounded: forgetting only costs a re-sync
      m.delete(key);
      m.set(key, started);
    }
  }
}
