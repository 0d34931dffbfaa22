/**
 * The journal's read side (docs/journal.md): follows the stream in order,
 * pairs each operation with its outcome, and moves what really happened into
 * the BullMQ queue the replicator consumes, in large addBulk batches, off
 * the verdict path. A record whose outcome never arrives (its smbd died, or
 * the outcome was lost with a connection) is reconciled: it becomes a
 * delayed job with outcome 'unknown', and since the replicator re-reads the
 * source for every record, it converges.
 *
 * Records that happened are held per share for the settle window
 * (replication.settleMs) and then queued as one batch, or sooner when
 * replication.batchMax of them gather: a storm of small changes costs the
 * replicator a few large jobs, not one per pump round. While a share's
 * changes come in a burst (replication.yieldRate), they are held until it
 * ends, up to replication.yieldMs longer: the replicator works in the gap
 * after a burst, not beside it.
 *
 * Restart-safe: the cursor (last entry handled) and the low-water mark
 * (oldest entry still awaiting its outcome or held) live in Redis; a
 * restart re-reads from the low-water mark and holds again what was held
 * (records completed from `heldFrom` on; one of another share queued
 * meanwhile is queued twice, which converges all the same). Reconciled jobs
 * keep their job id, so BullMQ ignores repeats. The stream is trimmed below
 * the mark.
 */
import { readFile } from 'node:fs/promises';
import { Queue } from 'bullmq';
import IORedis, { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { VfsxConfig } from '../config/schema';
import { withByteNames } from '../protocol/byte-names';
import type { ChangeRecord } from '../ops/change-record';
import { logLinkStatus } from '../journal/link-status';
import { closeConnection, journalKeys, JournalKeys, queueNameOf, redisOptions, StateKeys, stateKeys } from '../journal/redis-connection';
import { BATCH, BatchJob, batchJobId, LONE, REPLICATION_JOB_OPTIONS, rpoMember } from './batch';
import { ShareOrder } from './share-order';
import { markForFullSync } from './site-state';
import { sitesOf } from '../config/schema';
import { compareIds, entryPairs, nextId } from '../journal/stream-ids';

export interface JournalPumpOptions {
  redis: VfsxConfig['redis'];
  journal: VfsxConfig['journal'];
  replication?: VfsxConfig['replication'];
  logger: Logger;
}

export type JobEntry = { name: string; data: ChangeRecord; opts: { jobId: string; delay?: number } };

export function jobFor(rec: ChangeRecord, reconcileDelayMs?: number): JobEntry {
  if (reconcileDelayMs === undefined) return { name: LONE, data: rec, opts: { jobId: rec.id } };
  return { name: LONE, data: { ...rec, outcome: 'unknown' }, opts: { jobId: `${rec.id}-r`, delay: reconcileDelayMs } };
}

/** Whether the smbd process instance `${pid}-${start}` still runs. */
export async function instanceAlive(instance: string): Promise<boolean> {
  const [pid, start] = instance.split('-');
  try {
    const stat = await readFile(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] === start; // field 22
  } catch {
    return false;
  }
}

type StreamEntry = [string, string[]];
/** A burst of a share's changes is judged over this window (replication.yieldRate)... */
const BURST_WINDOW_MS = 200;
/** ...and held back at most this many full batches (memory stays bounded). */
const BURST_CAP = 8;
/**
 * A record that happened, held for its share's settle window: its entry,
 * where it was completed (`<entry id>/<pair index>`: an entry holds many
 * records), when it was held.
 */
type Held = { rec: ChangeRecord; sid: string; done: string; at: number };

/** Lowers a share's held summary (oldest entry, oldest time) to include h. */
function lower(low: { sid: string; ts: number }, h: Held): void {
  if (compareIds(h.sid, low.sid) < 0) low.sid = h.sid;
  if (h.rec.ts < low.ts) low.ts = h.rec.ts;
}

/** Orders positions `<entry id>/<pair index>`. */
function comparePositions(a: string, b: string): number {
  const [ea, ia] = a.split('/');
  const [eb, ib] = b.split('/');
  return compareIds(ea, eb) || Number(ia) - Number(ib);
}

const READ_COUNT = 500;
/**
 * A dead smbd's last outcome may still be on its way (in the service's
 * current batch, or further down the stream): its records count as lost
 * only once they are this old.
 */
const DEAD_GRACE_MS = 2000;
const yieldToVerdicts = () => new Promise<void>((resolve) => setImmediate(resolve));

/** What the pump feeds for one DR site: its queue, its order of batches and its RPO sets. */
interface SiteLane {
  name: string;
  queue: Queue;
  order: ShareOrder;
  state: StateKeys;
}

export class JournalPump {
  private readonly opts: JournalPumpOptions;
  private readonly keys: JournalKeys;
  private readonly state: StateKeys;
  private readonly log: Logger;
  private readonly client: Redis;
  private readonly reader: Redis;
  private readonly queueConn: Redis;
  private readonly order: ShareOrder;
  /**
   * Every site gets every batch (each its own queue, order and RPO sets):
   * one down or slow never holds back another. The configured sites, and
   * any site whose replicator registered itself since (a site added while
   * the service runs).
   */
  private readonly lanes = new Map<string, SiteLane>();
  private lanesAt = 0;
  private readonly awaiting = new Map<string, { rec: ChangeRecord; sid: string }>();
  /** Per share, in journal order. */
  private readonly held = new Map<string, Held[]>();
  /** Per share, the held records' oldest entry and oldest time (kept as records come and go: checkpoints read them). */
  private readonly heldLow = new Map<string, { sid: string; ts: number }>();
  /** Ids of the held records: a record journaled twice (a write that timed out and landed late, and its spooled copy) is held once. */
  private readonly heldIds = new Set<string>();
  /** After a restart: records completed from this position on were held, not queued (from the checkpoint). */
  private heldFrom = '';
  private cursor = '0-0';
  private loop: Promise<void> | null = null;
  private closed = false;
  private lastSweep = 0;
  readonly stats = { entries: 0, jobs: 0, kept: 0, failed: 0, reconciled: 0 };

  constructor(options: JournalPumpOptions) {
    this.opts = options;
    this.log = options.logger;
    this.keys = journalKeys(options.redis.prefix);
    this.state = stateKeys(options.redis.prefix);
    this.client = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: 1 }));
    this.reader = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: 1 }));
    this.queueConn = new IORedis(redisOptions(options.redis, { maxRetriesPerRequest: 1 }));
    for (const c of [this.client, this.reader, this.queueConn]) c.on('error', (err) => this.log.debug({ err }, 'pump redis error'));
    logLinkStatus(this.client, 'pump', this.log);
    this.order = new ShareOrder(this.client, options.redis.prefix);
    for (const name of this.configuredSites()) this.addLane(name);
  }

  /**
   * The sites this host replicates to: none with replication off. Then
   * the pump queues nothing (no replicator would take it: Redis would
   * grow with every change) and keeps the newest journal.keepRecords
   * records for `vfsx journal` instead.
   */
  private configuredSites(): string[] {
    const r = this.opts.replication;
    return r?.enabled ? sitesOf(r).map((x) => x.name) : [];
  }

  /** Whether records go to the capped list of recent ones rather than to any queue. */
  get journalOnly(): boolean {
    return this.configuredSites().length === 0;
  }

  private addLane(name: string): void {
    if (this.lanes.has(name)) return;
    const queue = new Queue(queueNameOf(this.opts.journal.queueName, name), {
      connection: this.queueConn,
      prefix: this.opts.redis.prefix,
      defaultJobOptions: REPLICATION_JOB_OPTIONS,
    });
    queue.on('error', (err) => this.log.debug({ err, site: name }, 'pump queue error'));
    this.lanes.set(name, { name, queue, order: new ShareOrder(this.client, this.opts.redis.prefix, undefined, name), state: stateKeys(this.opts.redis.prefix, name) });
    if (this.lanesAt > 0) this.log.info({ site: name }, 'a DR site joined: its queue gets every change from now on');
  }

  /**
   * Takes up sites registered since the last look, and lets go of one
   * `vfsx site remove` dropped (neither configured nor registered); at most
   * once a second.
   */
  private async refreshLanes(): Promise<void> {
    if (this.journalOnly || Date.now() - this.lanesAt < 1000) return;
    const registered = await this.client.smembers(this.state.sites);
    this.lanesAt = Date.now();
    for (const n of registered) this.addLane(n);
    const configured = this.configuredSites();
    for (const [name, lane] of this.lanes) {
      if (configured.includes(name) || registered.includes(name)) continue;
      this.lanes.delete(name);
      await lane.queue.close().catch(() => undefined);
      this.log.info({ site: name }, 'a DR site was removed: its queue gets nothing more');
    }
  }

  /** Records still waiting for their outcome (for status and `vfsx journal --pending`). */
  get pending(): ChangeRecord[] {
    return [...this.awaiting.values()].map((a) => a.rec);
  }

  start(): void {
    if (!this.loop) this.loop = this.run();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.reader.disconnect(); // breaks a blocking XREAD
    await this.loop?.catch(() => undefined);
    for (const l of this.lanes.values()) await l.queue.close().catch(() => undefined);
    for (const c of [this.client, this.queueConn]) await closeConnection(c);
  }

  private async run(): Promise<void> {
    let backoff = 100;
    let started = false;
    while (!this.closed) {
      try {
        if (!started) {
          await this.resume();
          started = true;
        }
        const res = (await this.reader.xread('COUNT', READ_COUNT, 'BLOCK', this.untilDue(), 'STREAMS', this.keys.stream, this.cursor)) as
          | Array<[string, StreamEntry[]]> | null;
        const entries = res?.[0]?.[1] ?? [];
        await this.handle(entries);
        backoff = 100;
        // Off the verdict path: let small trickles gather into one batch.
        if (entries.length > 0 && entries.length < READ_COUNT && this.opts.journal.pumpIntervalMs > 0) {
          await new Promise((r) => setTimeout(r, this.opts.journal.pumpIntervalMs));
        }
      } catch (err) {
        if (this.closed) break;
        // A batch may have failed half-way, its records already taken from
        // the awaiting map: start again from the persisted checkpoint (it
        // only moves after a batch is fully emitted).
        started = false;
        this.log.warn({ err }, 'journal pump: retrying from its checkpoint');
        await new Promise((r) => setTimeout(r, backoff));
        backoff = Math.min(5000, backoff * 2);
      }
    }
  }

  /** After a (re)start: re-read from the oldest entry that may still matter. */
  private async resume(): Promise<void> {
    const saved = await this.client.hgetall(this.keys.cursor);
    if (this.journalOnly) await this.markSitesBehind();
    // Kept while replication was off: history, not backlog (the sites' full sync covers what changed then).
    else await this.client.del(this.keys.recent);
    this.awaiting.clear();
    this.held.clear();
    this.heldLow.clear();
    this.heldIds.clear();
    this.cursor = saved.cursor ?? '0-0';
    this.heldFrom = saved.heldFrom ?? '';
    if (saved.low) {
      let from = saved.low;
      for (;;) {
        const entries = (await this.client.xrange(this.keys.stream, from, this.cursor, 'COUNT', 2000)) as StreamEntry[];
        if (entries.length === 0) break;
        await this.handle(entries, false);
        from = nextId(entries[entries.length - 1][0]);
      }
    }
    this.heldFrom = '';
    this.log.info({ cursor: this.cursor, awaiting: this.awaiting.size, held: this.heldCount() }, 'journal pump resumed');
  }

  /**
   * Replication off, yet sites were fed before: from now on they miss
   * changes, so each is marked for a full sync (a scrub pass of every share,
   * as for a new site) when its replicator runs again.
   */
  private async markSitesBehind(): Promise<void> {
    const sites = await this.client.smembers(this.state.sites);
    if (sites.length === 0) return;
    for (const name of sites) await markForFullSync(this.client, this.opts.redis.prefix, name);
    this.log.warn({ sites }, 'replication is off: changes reach no DR site now; each will be synced in full when replication is on again');
  }

  private async handle(entries: StreamEntry[], advance = true): Promise<void> {
    const failed: ChangeRecord[] = [];
    const now = Date.now();
    // Replaying after a restart, whatever was completed before heldFrom was queued already.
    const hold = (rec: ChangeRecord, sid: string, done: string) => {
      if (!advance && (this.heldFrom === '' || comparePositions(done, this.heldFrom) < 0)) return;
      if (this.heldIds.has(rec.id)) return;
      this.heldIds.add(rec.id);
      let l = this.held.get(rec.share);
      if (!l) this.held.set(rec.share, (l = []));
      const h = { rec, sid, done, at: now };
      l.push(h);
      const low = this.heldLow.get(rec.share);
      if (low) lower(low, h);
      else this.heldLow.set(rec.share, { sid, ts: rec.ts });
    };
    let n = 0;
    for (const [sid, fields] of entries) {
      let k = 0;
      for (const [kind, value] of entryPairs(fields)) {
        // Off the verdict path (a worker thread), but never hold the loop for long.
        if (++n % 500 === 0) await yieldToVerdicts();
        this.stats.entries++;
        const at = `${sid}/${k++}`;
        if (kind === 'r') {
          // Names the journal keeps in base64 (not UTF-8) become escaped strings (src/protocol/byte-names.ts).
          const rec = withByteNames(JSON.parse(value) as ChangeRecord);
          if (rec.outcome === 'pending') this.awaiting.set(rec.id, { rec, sid });
          else if (rec.outcome === 'failed') failed.push(rec);
          else hold(rec, sid, at);
        } else if (kind === 'o') {
          const [id, err] = value.split(' ');
          const a = this.awaiting.get(id);
          if (!a) continue; // reconciled already, or a repeat
          this.awaiting.delete(id);
          if (err === '0') hold({ ...a.rec, outcome: 'confirmed' }, a.sid, at);
          else failed.push({ ...a.rec, outcome: 'failed', errno: Number(err) });
        }
      }
    }
    if (!advance) return;
    const lone: JobEntry[] = [];
    // Only when caught up with the stream: an outcome may be in the part not read yet.
    if (entries.length < READ_COUNT && Date.now() - this.lastSweep >= this.opts.journal.sweepIntervalMs) {
      this.lastSweep = Date.now();
      lone.push(...(await this.reconcile()));
    }
    const due = this.takeDue(Date.now());
    await this.emit(due, lone, failed);
    if (entries.length > 0) this.cursor = entries[entries.length - 1][0];
    if (entries.length + lone.length + due.size > 0) await this.checkpoint();
  }

  private heldCount(): number {
    let n = 0;
    for (const l of this.held.values()) n += l.length;
    return n;
  }

  /** Milliseconds until a share's held records may be due (the XREAD's block time): 1 to 500. */
  private untilDue(): number {
    const settle = this.opts.replication?.settleMs ?? 0;
    const now = Date.now();
    let t = 500;
    for (const l of this.held.values()) {
      if (l.length === 0) continue;
      // Yielding to a burst, the next look is when it may have ended (or when the hold is over).
      const at = this.yielding(l, now) ? Math.min(now + BURST_WINDOW_MS / 4, l[0].at + settle + this.yieldMs()) : l[0].at + settle;
      t = Math.min(t, at - now);
    }
    return Math.max(1, Math.ceil(t));
  }

  private yieldMs(): number {
    return this.opts.replication?.yieldMs ?? 0;
  }

  /**
   * Whether a share's held records wait for its burst to end: it goes on,
   * the oldest has not waited yieldMs beyond the settle window, and fewer
   * than BURST_CAP full batches are held.
   */
  private yielding(l: Held[], now: number): boolean {
    const max = this.opts.replication?.batchMax ?? 500;
    const settle = this.opts.replication?.settleMs ?? 0;
    return l.length > 0 && l.length < max * BURST_CAP && now - l[0].at < settle + this.yieldMs() && this.inBurst(l, now);
  }

  /**
   * Whether a share's changes are coming in a burst of user work: more than
   * replication.yieldRate a second over the last BURST_WINDOW_MS, counted
   * from the newest held records.
   */
  private inBurst(l: Held[], now: number): boolean {
    const rate = this.opts.replication?.yieldRate ?? Infinity;
    const need = Math.ceil((rate * BURST_WINDOW_MS) / 1000);
    if (this.yieldMs() === 0 || l.length < need) return false;
    return now - l[l.length - need].at < BURST_WINDOW_MS;
  }

  /**
   * Takes what is due from the held records: a share's whole list once its
   * oldest waited the settle window, else its full batches (batchMax). While
   * the share's changes come in a burst, it takes nothing until the burst
   * ends or the oldest waited replication.yieldMs beyond the settle window
   * (or BURST_CAP batches gathered): replication catches up in the gap after
   * the burst instead of taking the cores from it, and the hold stays bounded.
   */
  private takeDue(now: number): Map<string, ChangeRecord[]> {
    const max = this.opts.replication?.batchMax ?? 500;
    const settle = this.opts.replication?.settleMs ?? 0;
    const due = new Map<string, ChangeRecord[]>();
    for (const [share, l] of this.held) {
      if (this.yielding(l, now)) continue;
      const take = l.length > 0 && now - l[0].at >= settle ? l.length : l.length - (l.length % max);
      if (take === 0) continue;
      const recs = l.splice(0, take).map((h) => h.rec);
      for (const r of recs) this.heldIds.delete(r.id);
      due.set(share, recs);
      if (l.length === 0) {
        this.held.delete(share);
        this.heldLow.delete(share);
        continue;
      }
      const low = { sid: l[0].sid, ts: l[0].rec.ts };
      for (const h of l) lower(low, h);
      this.heldLow.set(share, low);
    }
    return due;
  }

  private async reconcile(): Promise<JobEntry[]> {
    const now = Date.now();
    const alive = new Map<string, boolean>();
    const out: JobEntry[] = [];
    for (const [id, { rec }] of this.awaiting) {
      const age = now - rec.ts;
      if (age < DEAD_GRACE_MS) continue;
      if (!alive.has(rec.instance)) alive.set(rec.instance, await instanceAlive(rec.instance));
      if (!alive.get(rec.instance) || age >= this.opts.journal.reconcileAfterMs) {
        out.push(jobFor(rec, this.opts.journal.reconcileDelayMs));
        this.awaiting.delete(id);
        this.log.info({ id, op: rec.op, alive: alive.get(rec.instance) }, 'reconciling a record without outcome');
      }
    }
    this.stats.reconciled += out.length;
    return out;
  }

  /**
   * Queues records: each share's in order, in batches of up to
   * replication.batchMax numbered by ShareOrder (settled already, in the
   * pump); reconciled records (outcome unknown, delayed) go alone.
   */
  private async emit(byShare: Map<string, ChangeRecord[]>, lone: JobEntry[], failed: ChangeRecord[]): Promise<void> {
    if (this.journalOnly) await this.keep(byShare, lone);
    else await this.queue(byShare, lone);
    if (failed.length > 0) {
      await this.client.pipeline()
        .lpush(this.keys.failed, ...failed.map((r) => JSON.stringify(r)))
        .ltrim(this.keys.failed, 0, Math.max(0, this.opts.journal.keepFailedOps - 1))
        .exec();
      this.stats.failed += failed.length;
    }
  }

  /** Replication off: the records join the capped list of recent ones (in journal order, newest first), and nothing else. */
  private async keep(byShare: Map<string, ChangeRecord[]>, lone: JobEntry[]): Promise<void> {
    const recs = [...[...byShare.values()].flat(), ...lone.map((j) => j.data)];
    if (recs.length === 0) return;
    const p = this.client.pipeline();
    for (const share of byShare.keys()) p.sadd(this.state.shares, share);
    p.lpush(this.keys.recent, ...recs.map((r) => JSON.stringify(r)));
    p.ltrim(this.keys.recent, 0, Math.max(0, this.opts.journal.keepRecords - 1));
    for (const [err] of (await p.exec()) ?? []) if (err) throw err;
    this.stats.kept += recs.length;
  }

  private async queue(byShare: Map<string, ChangeRecord[]>, lone: JobEntry[]): Promise<void> {
    const max = this.opts.replication?.batchMax ?? 500;
    const batches: Array<{ name: string; data: BatchJob; opts: { jobId: string } }> = [];
    for (const [share, recs] of byShare) {
      const n = Math.ceil(recs.length / max);
      const first = await this.order.allocate(share, n);
      for (let k = 0; k < n; k++) {
        const seq = first + k;
        batches.push({ name: BATCH, data: { share, seq, records: recs.slice(k * max, (k + 1) * max) }, opts: { jobId: batchJobId(share, seq) } });
      }
    }
    // A record's time joins its share's RPO set, and a batch its share's
    // order, before its job exists (NX: a re-emitted record keeps its first
    // time); the replicator removes both once the site has the changes.
    if (batches.length + lone.length > 0) await this.refreshLanes();
    const p = this.client.pipeline();
    for (const lane of this.lanes.values()) {
      for (const b of batches) {
        lane.order.open(p, b.data.share, b.data.seq);
        const rpo = lane.state.rpo(b.data.share);
        // One command per batch: a command per record (ioredis builds each) was about a tenth of the pump's profile in the journal bench.
        const pairs: Array<string | number> = [];
        b.data.records.forEach((r, i) => pairs.push(r.ts, rpoMember(b.opts.jobId, i)));
        if (pairs.length > 0) p.zadd(rpo, 'NX', ...pairs);
      }
      for (const j of lone) p.zadd(lane.state.rpo(j.data.share), 'NX', j.data.ts, j.opts.jobId);
    }
    for (const share of new Set([...batches.map((b) => b.data.share), ...lone.map((j) => j.data.share)])) p.sadd(this.state.shares, share);
    if (batches.length + lone.length > 0) {
      for (const [err] of (await p.exec()) ?? []) if (err) throw err;
      // Every site's queue; a crash between two re-emits to all after the restart (the same job ids: converges).
      for (const lane of this.lanes.values()) await lane.queue.addBulk([...batches, ...lone]);
    }
    this.stats.jobs += batches.length + lone.length;
  }

  /**
   * Saves the cursor, the low-water mark (oldest entry of a record awaiting
   * its outcome or held), heldFrom (the first position that completed a
   * held record) and per share the held records' count and oldest time (status
   * counts them as not pumped yet), then trims the stream below the mark.
   */
  private async checkpoint(): Promise<void> {
    let low = '';
    let heldFrom = '';
    const min = (a: string, b: string, cmp: (x: string, y: string) => number) => (a === '' || cmp(b, a) < 0 ? b : a);
    for (const { sid } of this.awaiting.values()) low = min(low, sid, compareIds);
    // A share's held records were completed in order: its first is its earliest.
    const summary: Record<string, [number, number]> = {};
    for (const [share, l] of this.held) {
      const h = this.heldLow.get(share) as { sid: string; ts: number };
      low = min(low, h.sid, compareIds);
      heldFrom = min(heldFrom, l[0].done, comparePositions);
      summary[share] = [l.length, h.ts];
    }
    await this.client.pipeline()
      .hset(this.keys.cursor, 'cursor', this.cursor, 'low', low, 'heldFrom', heldFrom, 'held', JSON.stringify(summary))
      .xtrim(this.keys.stream, 'MINID', '~', low || nextId(this.cursor))
      .exec();
  }
}
