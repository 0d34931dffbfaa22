/**
 * Turns one decoded bridge message into its answer: validate, apply policy,
 * answer, record durably. Protocol violations throw VfsxError; the caller
 * closes that one connection.
 *
 * A report that waits for a verdict gets it from the in-memory policy at
 * once; the record becomes durable the way async reports do, and the caller
 * acknowledges the frame ("ack:N") once it is (protocol 2: the module keeps
 * the frame until then). A report marked strict gets its verdict only once
 * its record is durable.
 */
import type { Logger } from 'pino';
import { VfsxError } from '../errors/vfsx-error';
import { BridgeMessage } from '../protocol/message';
import { withByteNames } from '../protocol/byte-names';
import { encodeHelloReply, encodeVerdict, PROTOCOL_FOLDS, PROTOCOL_META, PROTOCOL_VERSION, Verdict } from '../protocol/reply';
import { ChangeRecord, ChangeSink } from './change-record';
import { isFolded, OP_TABLE, parseArgs } from './op-table';
import { Policy } from './policy';

const EINVAL = 22;

/** One reporting smbd process, as seen on a connection or in a spool file. */
export interface BridgeSession {
  source: 'live' | 'spool';
  instance?: string;
  pid?: number;
}

export interface DispatchResult {
  /** The frame to send back now (hello answer, verdict), if any. */
  reply: Buffer | null;
  /** Settles when the message's record is durable (null: nothing to record); then the frame is acknowledged. */
  durable: Promise<void> | null;
  /** A strict report's verdict: sent once its record is durable ("unavailable" if it cannot be). */
  later: Promise<Buffer> | null;
}

export interface OpDispatcherOptions {
  policy: Policy;
  sink: ChangeSink;
  logger: Logger;
}

/** An unsigned decimal argument, or null when missing or not one. */
function uintValue(msg: BridgeMessage, key: string): number | null {
  const s = msg.args.get(key)?.toString('latin1') ?? '';
  return /^\d{1,20}$/.test(s) ? Number(s) : null;
}

function uintArg(msg: BridgeMessage, key: string): number {
  const v = uintValue(msg, key);
  if (v === null) throw new VfsxError('VFSX_ERR_PROTOCOL_MALFORMED', `${msg.op}: missing or bad ${key}`);
  return v;
}

const NONE: DispatchResult = { reply: null, durable: null, later: null };

/**
 * A report that waits for a verdict, decided before the frames that came
 * ahead of it in the same read are handled: its verdict, and its record
 * (null: nothing to record) to write when its turn comes.
 */
export interface Decided {
  reply: Buffer;
  rec: ChangeRecord | null;
}

export class OpDispatcher {
  private readonly policy: Policy;
  private readonly verdictOps: string[] | '*';
  private readonly localRules: string | null;
  private readonly sink: ChangeSink;
  private readonly log: Logger;

  constructor(options: OpDispatcherOptions) {
    this.policy = options.policy;
    this.verdictOps = options.policy.verdictOps();
    this.localRules = options.policy.localRules();
    this.sink = options.sink;
    this.log = options.logger;
  }

  /** Handles one message, synchronously: records enter the journal's batch in call order. */
  dispatch(session: BridgeSession, msg: BridgeMessage): DispatchResult {
    if (msg.op === 'hello') return { reply: this.hello(session, msg), durable: null, later: null };
    if (session.instance === undefined) {
      throw new VfsxError('VFSX_ERR_PROTOCOL_NO_HELLO', `${msg.op} before hello`);
    }
    if (msg.op === 'done') {
      return { reply: null, durable: this.sink.resolve(session.instance, uintArg(msg, 'seq'), uintArg(msg, 'err')), later: null };
    }
    const early = this.decide(session, msg);
    if (early !== null) return this.recordDecided(early, early.reply);
    const seq = uintArg(msg, 'seq');
    const live = session.source === 'live';
    const rec = this.record(session, msg, seq);
    if (rec === null) return live ? { reply: encodeVerdict(seq, { kind: 'fail', errno: EINVAL }), durable: null, later: null } : NONE;
    if (msg.args.has('denied')) {
      // The module applied the policy itself and denied it: audit it, record nothing.
      if (this.deny(rec) === null) {
        this.log.error({ op: rec.op, names: rec.names, errno: uintArg(msg, 'denied') }, 'the module denied an operation the policy allows');
      }
      return NONE;
    }
    if (msg.args.has('async') || !live) {
      this.checkAsync(session, rec, msg);
      return { reply: null, durable: this.write(rec), later: null };
    }
    // A strict report (decide() answered every other live one that waits): its verdict waits until it is durable.
    const refused = this.refusal(rec, seq);
    if (refused !== null) return { reply: refused, durable: null, later: null };
    const written = this.write(rec, true);
    const later = written.then(
      () => encodeVerdict(seq, { kind: 'transparent' }),
      (err) => {
        this.log.warn({ err, op: rec.op, id: rec.id }, 'journal unavailable; module falls back to its spool');
        return encodeVerdict(seq, { kind: 'unavailable' });
      },
    );
    // The module spools an "unavailable" report itself: acknowledging past it loses nothing.
    return { reply: null, durable: written.catch(() => undefined), later };
  }

  /**
   * The verdict of a live report that waits for one and is not strict,
   * decided now, with nothing written: the policy looks at the report alone,
   * so its verdict may go back before the frames that came ahead of it are
   * handled (gathered outcomes and async reports travel in one send with
   * it). Null for anything else (a hello, an outcome, a report nobody
   * waits for, a strict one, one from a spool file, one dispatch() must
   * refuse). The record is written by recordDecided, in frame order.
   */
  decide(session: BridgeSession, msg: BridgeMessage): Decided | null {
    if (session.source !== 'live' || session.instance === undefined || msg.op === 'hello' || msg.op === 'done'
      || msg.args.has('async') || msg.args.has('denied') || msg.args.has('strict')) return null;
    const seq = uintValue(msg, 'seq');
    if (seq === null) return null; // dispatch() refuses it, in its turn
    const rec = this.record(session, msg, seq);
    if (rec === null) return { reply: encodeVerdict(seq, { kind: 'fail', errno: EINVAL }), rec: null };
    const refused = this.refusal(rec, seq);
    return refused !== null ? { reply: refused, rec: null } : { reply: encodeVerdict(seq, { kind: 'transparent' }), rec };
  }

  /** The verdict that ends a report waiting for one here (the policy denies it, or the journal is known down), else null. */
  private refusal(rec: ChangeRecord, seq: number): Buffer | null {
    const denied = this.deny(rec);
    if (denied !== null) return encodeVerdict(seq, denied);
    // Known down: the module spools the report and goes on, without churning the link.
    return this.sink.writable() ? null : encodeVerdict(seq, { kind: 'unavailable' });
  }

  /** Writes the record of a report decide() answered; `reply` is its verdict if not sent yet. */
  recordDecided(d: Decided, reply: Buffer | null = null): DispatchResult {
    return { reply, durable: d.rec === null ? null : this.write(d.rec), later: null };
  }

  private hello(session: BridgeSession, msg: BridgeMessage): Buffer {
    const proto = uintArg(msg, 'proto');
    if (proto !== PROTOCOL_VERSION) {
      throw new VfsxError('VFSX_ERR_PROTOCOL_VERSION', `module speaks protocol ${proto}, service ${PROTOCOL_VERSION}`);
    }
    const pid = uintArg(msg, 'pid');
    session.pid = pid;
    session.instance = `${pid}-${uintArg(msg, 'start')}`;
    const offers = (key: string) => msg.args.get(key)?.toString('latin1') === '1';
    const version = !offers('fold') ? PROTOCOL_VERSION : offers('meta') ? PROTOCOL_META : PROTOCOL_FOLDS;
    return encodeHelloReply(version, this.verdictOps, this.localRules);
  }

  private write(rec: ChangeRecord, urgent = false): Promise<void> {
    return rec.outcome === 'pending' ? this.sink.stage(rec, urgent) : this.sink.append(rec, urgent);
  }

  /** An async report the policy would deny means module and service disagree: say so loudly. */
  private checkAsync(session: BridgeSession, rec: ChangeRecord, msg: BridgeMessage): void {
    // A folded report (pre-phase op with its outcome) is checked like a pending one; it did not fail.
    const asked = rec.outcome === 'pending' || (rec.outcome === 'confirmed' && isFolded(msg.op, msg.args));
    if (session.source !== 'live' || this.policy.empty || !asked) return;
    const d = this.policy.evaluate(this.policyInput(rec));
    if (d !== null) {
      this.log.error({ rule: d.rule, op: rec.op, names: rec.names }, 'async report of an operation the policy denies');
    }
  }

  private policyInput(rec: ChangeRecord) {
    // A name that is not UTF-8 (kept as pathB64) is matched too, escaped: `x\xff.locked` ends in .locked.
    const { names } = withByteNames(rec);
    const paths = [names.path, names.to, names.from].filter((p): p is string => p !== undefined);
    return { share: rec.share, user: rec.user, op: rec.op, paths };
  }

  /** The policy's verdict when it denies the operation, else null. */
  private deny(rec: ChangeRecord): Verdict | null {
    if (rec.outcome !== 'pending' || this.policy.empty) return null;
    const d = this.policy.evaluate(this.policyInput(rec));
    if (d === null) return null;
    this.log.info({ audit: 'denied', rule: d.rule, op: rec.op, share: rec.share, user: rec.user, names: rec.names },
      'operation denied by policy');
    return { kind: 'fail', errno: d.errno };
  }

  /** Builds the record, or null (logged) when the report's arguments are invalid. */
  private record(session: BridgeSession, msg: BridgeMessage, seq: number): ChangeRecord | null {
    try {
      const h = OP_TABLE.get(msg.op);
      if (h === undefined) throw new VfsxError('VFSX_ERR_OPS_UNKNOWN_OP', `unknown operation ${msg.op}`);
      const parsed = parseArgs(h, msg.args);
      if (isFolded(msg.op, msg.args) && !msg.args.has('async')) {
        // Only a report nobody waits for may carry its outcome: a verdict is asked before the operation runs.
        throw new VfsxError('VFSX_ERR_OPS_BAD_ARGS', `${msg.op}: err on a report that waits for a verdict`);
      }
      const share = msg.args.get('share');
      if (share === undefined || share.length === 0) {
        throw new VfsxError('VFSX_ERR_OPS_BAD_ARGS', `${msg.op}: missing share`);
      }
      const rec: ChangeRecord = {
        id: `${session.instance}-${seq}`,
        v: 1,
        instance: session.instance as string,
        pid: session.pid as number,
        seq,
        share: share.toString('utf8'),
        user: msg.user.toString('utf8'),
        origpath: msg.origpath.toString('utf8'),
        op: msg.op,
        names: parsed.names,
        args: parsed.args,
        ts: Date.now(),
        outcome: h.phase === 'pre' ? 'pending' : 'confirmed',
        source: session.source,
      };
      if (parsed.ranges) rec.ranges = parsed.ranges;
      // A folded report carries its own outcome (err=): nothing to pair it with later.
      if (parsed.err !== undefined) rec.outcome = 'confirmed';
      if (parsed.err) {
        rec.errno = parsed.err;
        rec.outcome = 'failed';
      }
      return rec;
    } catch (err) {
      this.log.warn({ err, op: msg.op, seq, instance: session.instance }, 'rejected malformed report');
      return null;
    }
  }
}
