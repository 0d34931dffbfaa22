/**
 * One accepted smbd connection: decodes frames in order, dispatches each,
 * writes replies. A frame that breaks the protocol closes this connection
 * (with a logged reason); nothing here can take the service down.
 */
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import { VfsxError } from '../errors/vfsx-error';
import type { BridgeSession, OpDispatcher } from '../ops/op-dispatcher';
import { FrameDecoder } from '../protocol/frame-decoder';
import { parseMessage } from '../protocol/message';
import { encodeAck } from '../protocol/reply';

export interface BridgeConnectionOptions {
  socket: Socket;
  dispatcher: OpDispatcher;
  maxFrameBytes: number;
  logger: Logger;
  onClose: (conn: BridgeConnection) => void;
  /** Seconds from a report's frame to its verdict being written (reports that wait for one). */
  observeVerdict?: (seconds: number) => void;
}

export class BridgeConnection {
  readonly session: BridgeSession = { source: 'live' };
  private readonly socket: Socket;
  private readonly dispatcher: OpDispatcher;
  private readonly decoder: FrameDecoder;
  private readonly log: Logger;
  private readonly observeVerdict?: (seconds: number) => void;
  private closed = false;
  /** Frames received (the hello is frame 1): what "ack:N" counts. */
  messages = 0;
  private ackDue = 0;
  private ackSent = 0;
  private ackScheduled = false;

  constructor(options: BridgeConnectionOptions) {
    this.socket = options.socket;
    this.dispatcher = options.dispatcher;
    this.decoder = new FrameDecoder({ maxFrameBytes: options.maxFrameBytes });
    this.log = options.logger;
    this.observeVerdict = options.observeVerdict;
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
    for (const frame of frames) this.handle(frame);
  }

  private handle(frame: Buffer): void {
    if (this.closed) return;
    this.messages++;
    let msg;
    try {
      msg = parseMessage(frame);
    } catch (err) {
      this.protocolError(err);
      return;
    }
    const index = this.messages;
    const t0 = this.observeVerdict && index > 1 ? performance.now() : 0;
    // Dispatch runs synchronously up to its first await, so records enter
    // the journal's batch in arrival order.
    this.dispatcher.dispatch(this.session, msg).then(
      ({ reply, durable }) => {
        if (reply && !this.closed) {
          this.socket.write(reply);
          if (t0 > 0) this.observeVerdict?.((performance.now() - t0) / 1000);
        }
        durable?.then(
          () => this.ack(index),
          (err) => {
            // Not durable: closing makes the module spool what it did not see acknowledged.
            this.log.warn({ err, index }, 'async report not recorded; closing so the module spools it');
            this.close('journal write failed');
          },
        );
      },
      (err) => this.protocolError(err),
    );
  }

  /** Acknowledges frames up to index, one ack per turn of the event loop. */
  private ack(index: number): void {
    if (index > this.ackDue) this.ackDue = index;
    if (this.ackScheduled) return;
    this.ackScheduled = true;
    setImmediate(() => {
      this.ackScheduled = false;
      if (this.closed || this.ackDue <= this.ackSent) return;
      this.ackSent = this.ackDue;
      this.socket.write(encodeAck(this.ackDue));
    });
  }

  private protocolError(err: unknown): void {
    const code = err instanceof VfsxError ? err.code : 'VFSX_ERR_PROTOCOL_MALFORMED';
    this.log.warn({ code, err, instance: this.session.instance }, 'protocol error; closing connection');
    this.close(code);
  }
}
