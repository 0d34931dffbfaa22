/** A bridge client speaking the wire protocol directly, as the module does. */
import { connect, Socket } from 'node:net';
import { encodeFrame, FrameDecoder } from '../../src/protocol/frame-decoder';
import { formatMessage } from '../../src/protocol/message';
import { PROTOCOL_VERSION } from '../../src/protocol/reply';

export class RawClient {
  readonly socket: Socket;
  private readonly decoder = new FrameDecoder({ maxFrameBytes: 4096 });
  private readonly replies: string[] = [];
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      for (const f of this.decoder.push(c)) this.replies.push(f.toString('latin1'));
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  send(payload: string | Buffer): void {
    this.socket.write(encodeFrame(payload));
  }

  sendRaw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  /** extra: more hello arguments, e.g. [['fold', 1]] (the module offers folded reports). */
  hello(pid: number, start: number, extra: Array<[string, string | number]> = []): Promise<string | null> {
    this.send(formatMessage('root', 'hello', '', [['proto', PROTOCOL_VERSION], ['pid', pid], ['start', start], ...extra]));
    return this.next();
  }

  /** Highest "ack:N" seen. */
  acked = 0;

  /** Sends a request and waits for its verdict (null when the server closed). */
  ask(user: string, op: string, args: Array<[string, string | number | Buffer]>): Promise<string | null> {
    this.send(formatMessage(user, op, '/srv/share', args));
    return this.next();
  }

  /** Waits until frames 1..n are acknowledged as durable (a verdict alone does not say so). */
  async waitAcked(n: number, timeoutMs = 10000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.acked < n) {
      for (const r of this.replies.splice(0)) {
        if (r.startsWith('ack:')) this.acked = Math.max(this.acked, Number(r.slice(4)));
        else throw new Error(`unexpected reply ${r} while waiting for ack ${n}`);
      }
      if (this.acked >= n) break;
      if (this.closed) throw new Error(`closed before ack ${n}`);
      if (Date.now() > deadline) throw new Error(`no ack ${n} (have ${this.acked})`);
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  /** The next reply other than an ack, or null if the connection closes first. */
  async next(timeoutMs = 10000): Promise<string | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.replies.length > 0) {
        const r = this.replies.shift() as string;
        if (!r.startsWith('ack:')) return r;
        this.acked = Math.max(this.acked, Number(r.slice(4)));
      }
      if (this.closed) return null;
      if (Date.now() > deadline) throw new Error('no reply');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
