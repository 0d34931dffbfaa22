/**
 * One accepted smbd connection: decodes frames in order, dispatches each,
 * writes replies. A frame that breaks the protocol closes this connection
 * (with a logged reason); nothing here can take the service down.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { VfsxError } from '../errors/vfsx-error';
import type { BridgeSession, Decided, DispatchResult, OpDispatcher } from '../ops/op-dispatcher';
import { isFolded } from '../ops/op-table';
import { FrameDecoder } from '../protocol/frame-decoder';
import { BridgeMessage, parseMessage } from '../protocol/message';
import { encodeAck } from '../protocol/reply';

export interface BridgeConnectionOptions {
  socket: Socket;
  dispatcher: OpDispatcher;
  maxFrameBytes: number;
  logger: Logger;
  onClose: (conn: BridgeConnection) => void;
  /** Seconds from a report's frame to its verdict being written (reports that wait for one). */
  observeVerdict?: (seconds: number) => void;
  /** Frames received, by kind (shared by every connection of a server). */
  frames?: FrameCounts;
}

/** Frames received from smbd: reports (folded ones, which carry their outcome, also count as folded) and outcomes ("done"). */
export interface FrameCounts {
  reports: number;
  folded: number;
  outcomes: number;
}

/** The last frame of a read, parsed before the frames ahead of it are handled, and answered if it waits for a verdict. */
interface Ahead {
  msg: BridgeMessage;
  decided: Decided | null;
}

/** Acknowledgements go out at most this often per connection... */
const ACK_EVERY_MS = 10;
/** ...unless this many frames wait for one. */
const ACK_FRAMES = 128;

export class BridgeConnection {
  readonly session: BridgeSession = { source: 'live' };
  private readonly socket: Socket;
  private readonly dispatcher: OpDispatcher;
  private readonly decoder: FrameDecoder;
  private readonly log: Logger;
  private readonly observeVerdict?: (seconds: number) => void;
  private readonly frames?: FrameCounts;
  private closed = false;
  /** Frames received (the hello is frame 1): what "ack:N" counts. */
  messages = 0;
  private ackDue = 0;
  private ackSent = 0;
  private ackTimer: NodeJS.Timeout | null = null;
  /** Entries (a batch's frames, or frames with nothing to record) waiting to be acknowledged; tail settles after the last. */
  private unsettled = 0;
  /** The newest of them: a frame of the same batch joins it rather than chaining its own continuation. */
  private waiting: { durable: Promise<void> | null; index: number } | null = null;
  private tail: Promise<void> = Promise.resolve();

  constructor(options: BridgeConnectionOptions) {
    this.socket = options.socket;
    this.dispatcher = options.dispatcher;
    this.decoder = new FrameDecoder({ maxFrameBytes: options.maxFrameBytes });
    this.log = options.logger;
    this.observeVerdict = options.observeVerdict;
    this.frames = options.frames;
    this.socket.on('data', (chunk: Buffer) => this.onData(chunk));
    this.socket.on('error', (err) => this.log.debug({ err }, 'connection error'));
    this.socket.on('close', () => {
      this.closed = true;
      options.onClose(this);
    });
  }

  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.log.info({ reason, instance: this.session.instance }, 'closing bridge connection');
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let frames: Buffer[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.protocolError(err);
      return;
    }
    const last = frames.length - 1;
    const ahead = last >= 0 ? this.answerAhead(frames[last]) : null;
    for (let i = 0; i <= last; i++) this.handle(frames[i], i === last ? ahead : null);
  }

  /**
   * The module sends what it gathered (outcomes, reports nobody waits for)
   * in one write with the report it then waits on, always last. That
   * report's verdict goes back first, before the frames ahead of it are
   * handled and before its own record is encoded: smbd waits for it, the
   * journal does not (it still gets every record in frame order).
   */
  private answerAhead(frame: Buffer): Ahead | null {
    if (this.closed) return null;
    const t0 = this.observeVerdict ? performance.now() : 0;
    let msg: BridgeMessage;
    let decided: Decided | null;
    try {
      msg = parseMessage(frame);
      decided = this.dispatcher.decide(this.session, msg);
    } catch {
      return null; // refused in its turn
    }
    if (decided !== null) {
      this.socket.write(decided.reply);
      if (t0 > 0) this.observeVerdict?.((performance.now() - t0) / 1000);
    }
    return { msg, decided };
  }

  private handle(frame: Buffer, ahead: Ahead | null = null): void {
    if (this.closed) return;
    this.messages++;
    let msg;
    try {
      msg = ahead?.msg ?? parseMessage(frame);
    } catch (err) {
      this.protocolError(err);
      return;
    }
    const index = this.messages;
    if (this.frames && index > 1) {
      if (msg.op === 'done') this.frames.outcomes++;
      else {
        this.frames.reports++;
        if (isFolded(msg.op, msg.args)) this.frames.folded++;
      }
    }
    const t0 = this.observeVerdict && index > 1 ? performance.now() : 0;
    let r: DispatchResult;
    try {
      r = ahead?.decided ? this.dispatcher.recordDecided(ahead.decided) : this.dispatcher.dispatch(this.session, msg);
    } catch (err) {
      this.protocolError(err);
      return;
    }
    if (r.reply) {
      this.socket.write(r.reply);
      if (t0 > 0) this.observeVerdict?.((performance.now() - t0) / 1000);
    }
    r.later?.then((reply) => {
      if (this.closed) return;
      this.socket.write(reply);
      if (t0 > 0) this.observeVerdict?.((performance.now() - t0) / 1000);
    });
    if (index > 1) this.settle(index, r.durable);
  }

  /**
   * Acknowledges frame `index` once it and every frame before it are
   * durable: journal batches settle in order, but a frame with nothing to
   * record (a denied report) must not be acknowledged ahead of them.
   * Frames of one journal batch share its promise: they wait as one entry
   * (one continuation per batch, not per frame, when the batch is written).
   */
  private settle(index: number, durable: Promise<void> | null): void {
    if (durable === null && this.unsettled === 0) {
      this.ack(index);
      return;
    }
    const last = this.waiting;
    if (last !== null && last.durable === durable) {
      // Same batch as the frame before (or nothing to record after it): settles with it.
      last.index = index;
      return;
    }
    const w = { durable, index };
    this.waiting = w;
    this.unsettled++;
    // Handled at once (never an unhandled rejection), acted on in frame order.
    const outcome = durable === null ? null : durable.then(() => null, (err: unknown) => err ?? new Error('not recorded'));
    this.tail = this.tail.then(() => outcome).then((err) => {
      this.unsettled--;
      // Frames handled from here on wait for their own entry (this one is acted on now).
      if (this.waiting === w) this.waiting = null;
      if (err === null) {
        this.ack(w.index);
        return;
      }
      // Not durable: closing makes the module spool what it did not see acknowledged.
      if (!this.closed) this.log.warn({ err, index: w.index }, 'report not recorded; closing so the module spools it');
      this.close('journal write failed');
    });
  }

  /**
   * Acknowledges frames up to index: at most one ack per ACK_EVERY_MS, or at
   * once when ACK_FRAMES frames wait for one (the module keeps at most 512).
   * Every ack is a write here and a wake-up of smbd there.
   */
  private ack(index: number): void {
    if (index > this.ackDue) this.ackDue = index;
    if (this.ackDue - this.ackSent >= ACK_FRAMES) {
      this.sendAck();
      return;
    }
    if (this.ackTimer) return;
    this.ackTimer = setTimeout(() => this.sendAck(), ACK_EVERY_MS);
  }

  private sendAck(): void {
    if (this.ackTimer) clearTimeout(this.ackTimer);
    this.ackTimer = null;
    if (this.closed || this.ackDue <= this.ackSent) return;
    this.ackSent = this.ackDue;
    this.socket.write(encodeAck(this.ackDue));
  }

  private protocolError(err: unknown): void {
    const code = err instanceof VfsxError ? err.code : 'VFSX_ERR_PROTOCOL_MALFORMED';
    this.log.warn({ code, err, instance: this.session.instance }, 'protocol error; closing connection');
    this.close(code);
  }
}
