/**
 * Turns one decoded bridge message into a verdict: validate, apply policy,
 * record durably, answer. Protocol violations throw VfsxError; the caller
 * closes that one connection.
 */
import type { Logger } from 'pino';
import { VfsxError } from '../errors/vfsx-error';
import { BridgeMessage } from '../protocol/message';
import { encodeHelloReply, encodeVerdict, PROTOCOL_VERSION, Verdict } from '../protocol/reply';
import { ChangeRecord, ChangeSink } from './change-record';
import { OP_TABLE, parseArgs } from './op-table';
import { Policy } from './policy';

const EINVAL = 22;

/** One reporting smbd process, as seen on a connection or in a spool file. */
export interface BridgeSession {
  source: 'live' | 'spool';
  instance?: string;
  pid?: number;
}

export interface OpDispatcherOptions {
  policy: Policy;
  sink: ChangeSink;
  logger: Logger;
  /** Called once per verdict with its latency in seconds (metrics). */
  onVerdict?: (op: string, verdict: Verdict['kind'], seconds: number) => void;
}

function uintArg(msg: BridgeMessage, key: string): number {
  const v = msg.args.get(key);
  const s = v?.toString('latin1') ?? '';
  if (!/^\d{1,20}$/.test(s)) {
    throw new VfsxError('VFSX_ERR_PROTOCOL_MALFORMED', `${msg.op}: missing or bad ${key}`);
  }
  return Number(s);
}

export class OpDispatcher {
  private readonly policy: Policy;
  private readonly sink: ChangeSink;
  private readonly log: Logger;
  private readonly onVerdict?: OpDispatcherOptions['onVerdict'];

  constructor(options: OpDispatcherOptions) {
    this.policy = options.policy;
    this.sink = options.sink;
    this.log = options.logger;
    this.onVerdict = options.onVerdict;
  }

  /** Handles one message; returns the reply frame, or null when none is due. */
  async dispatch(session: BridgeSession, msg: BridgeMessage): Promise<Buffer | null> {
    if (msg.op === 'hello') return this.hello(session, msg);
    if (session.instance === undefined) {
      throw new VfsxError('VFSX_ERR_PROTOCOL_NO_HELLO', `${msg.op} before hello`);
    }
    if (msg.op === 'done') {
      this.sink.resolve(session.instance, uintArg(msg, 'seq'), uintArg(msg, 'err'));
      return null;
    }
    const started = process.hrtime.bigint();
    const seq = uintArg(msg, 'seq');
    const verdict = await this.decide(session, msg, seq);
    this.onVerdict?.(msg.op, verdict.kind, Number(process.hrtime.bigint() - started) / 1e9);
    return session.source === 'live' ? encodeVerdict(seq, verdict) : null;
  }

  private hello(session: BridgeSession, msg: BridgeMessage): Buffer {
    const proto = uintArg(msg, 'proto');
    if (proto !== PROTOCOL_VERSION) {
      throw new VfsxError('VFSX_ERR_PROTOCOL_VERSION', `module speaks protocol ${proto}, service ${PROTOCOL_VERSION}`);
    }
    const pid = uintArg(msg, 'pid');
    session.pid = pid;
    session.instance = `${pid}-${uintArg(msg, 'start')}`;
    return encodeHelloReply(PROTOCOL_VERSION);
  }

  private async decide(session: BridgeSession, msg: BridgeMessage, seq: number): Promise<Verdict> {
    const h = OP_TABLE.get(msg.op);
    let rec: ChangeRecord;
    try {
      if (h === undefined) throw new VfsxError('VFSX_ERR_OPS_UNKNOWN_OP', `unknown operation ${msg.op}`);
      rec = this.record(session, msg, seq, h.phase, parseArgs(h, msg.args));
    } catch (err) {
      this.log.warn({ err, op: msg.op, seq, instance: session.instance }, 'rejected malformed report');
      return { kind: 'fail', errno: EINVAL };
    }
    if (h.phase === 'pre' && session.source === 'live' && !this.policy.empty) {
      const paths = [rec.names.path, rec.names.to, rec.names.from].filter((p): p is string => p !== undefined);
      const d = this.policy.evaluate({ share: rec.share, user: rec.user, op: rec.op, paths });
      if (d !== null) {
        this.log.info({ audit: 'denied', rule: d.rule, op: rec.op, share: rec.share, user: rec.user, names: rec.names },
          'operation denied by policy');
        return { kind: 'fail', errno: d.errno };
      }
    }
    try {
      await (h.phase === 'pre' ? this.sink.stage(rec) : this.sink.append(rec));
      return { kind: 'transparent' };
    } catch (err) {
      if (session.source === 'spool') throw err; // keep the spool file; retry later
      this.log.warn({ err, op: rec.op, id: rec.id }, 'journal unavailable; module falls back to its spool');
      return { kind: 'unavailable' };
    }
  }

  private record(
    session: BridgeSession,
    msg: BridgeMessage,
    seq: number,
    phase: 'pre' | 'post',
    parsed: ReturnType<typeof parseArgs>,
  ): ChangeRecord {
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
      outcome: phase === 'pre' ? 'pending' : 'confirmed',
      source: session.source,
    };
    if (parsed.ranges) rec.ranges = parsed.ranges;
    if (parsed.err) {
      rec.errno = parsed.err;
      rec.outcome = 'failed';
    }
    return rec;
  }
}
