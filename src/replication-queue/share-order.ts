/**
 * Runs a share's batches one after another, in the order the pump made
 * them, whichever replicator process holds each: per-path order across
 * processes. Redis holds, per share, the sorted set of batches not yet
 * done (score = the batch's number, member "seq:addedAt"); a batch may run
 * when it is the lowest there. The pump adds the member before the job; if
 * it died in between, the member has no job: after a grace period the next
 * batch skips it.
 */
import type { ChainableCommander, Redis } from 'ioredis';

/** A member without a job for this long was left by a pump that died before adding it. */
const ORPHAN_GRACE_MS = 30_000;

export class ShareOrder {
  private readonly conn: Redis;
  private readonly prefix: string;

  private readonly graceMs: number;

  /** The site whose open batches these are ("default": the keys of a single-site system); numbers are shared by all sites. */
  private readonly at: string;

  constructor(conn: Redis, prefix: string, graceMs = ORPHAN_GRACE_MS, site = 'default') {
    this.conn = conn;
    this.prefix = prefix;
    this.graceMs = graceMs;
    this.at = site === 'default' ? '' : `@${site}`;
  }

  private key(share: string): string {
    return `${this.prefix}:order${this.at}:${share}`;
  }

  private seqKey(): string {
    return `${this.prefix}:order-seq`;
  }

  /** Numbers for the next n batches of a share (one round trip; the first is returned). */
  async allocate(share: string, n: number): Promise<number> {
    return (await this.conn.hincrby(this.seqKey(), share, n)) - n + 1;
  }

  /** Adds a batch to its share's open set (in the caller's pipeline, before its job is added). */
  open(p: ChainableCommander, share: string, seq: number, now = Date.now()): void {
    p.zadd(this.key(share), seq, `${seq}:${now}`);
  }

  /**
   * Whether batch seq of share may run now; if not, how many batches are
   * ahead of it. hasJob tells whether an earlier batch's job exists.
   */
  async turn(share: string, seq: number, hasJob: (seq: number) => Promise<boolean>): Promise<{ mine: boolean; ahead: number }> {
    const key = this.key(share);
    for (;;) {
      const [first] = await this.conn.zrange(key, 0, 0);
      if (first === undefined) return { mine: true, ahead: 0 };
      const [s, at] = first.split(':').map(Number);
      if (s >= seq) return { mine: true, ahead: 0 };
      if (Date.now() - at > this.graceMs && !(await hasJob(s))) {
        await this.conn.zrem(key, first);
        continue;
      }
      return { mine: false, ahead: await this.conn.zcount(key, '-inf', `(${seq}`) };
    }
  }

  /**
   * Whether batch seq of share may run now. If not, parks it: `park(ms)`
   * delays its job (the batch before it wakes it when done; ms is only a
   * fallback, longer the more batches are ahead), then looks once more,
   * since that batch may have finished between the first look and the park
   * and found this one not yet parked: then `wake()` (e.g. promote the job),
   * so that no batch sits out its fallback for nothing.
   */
  async waitTurn(share: string, seq: number, hasJob: (seq: number) => Promise<boolean>, park: (fallbackMs: number) => Promise<void>, wake: () => Promise<void>): Promise<boolean> {
    const turn = await this.turn(share, seq, hasJob);
    if (turn.mine) return true;
    await park(Math.min(30_000, 1000 + 100 * turn.ahead));
    if ((await this.turn(share, seq, hasJob)).mine) await wake();
    return false;
  }

  /** Marks batch seq done; returns the number of the share's next open batch, if any. */
  async done(share: string, seq: number): Promise<number | null> {
    const key = this.key(share);
    await this.conn.zremrangebyscore(key, seq, seq);
    const [next] = await this.conn.zrange(key, 0, 0);
    return next === undefined ? null : Number(next.split(':')[0]);
  }
}
