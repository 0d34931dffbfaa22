/**
 * A lean bridge client for measuring the service, not itself: frames are
 * built with plain string templates (names need no escaping here) and
 * replies resolve directly from the data event.
 */
import { connect, Socket } from 'node:net';
import { encodeFrame, FrameDecoder } from '../src/protocol/frame-decoder';
import { PROTOCOL_VERSION } from '../src/protocol/reply';

export class BenchClient {
  private readonly socket: Socket;
  private readonly decoder = new FrameDecoder({ maxFrameBytes: 4096 });
  private want: ((reply: string) => void) | null = null;
  private ackWaiter: { n: number; resolve: () => void } | null = null;
  acked = 0;
  sent = 0;

  private constructor(socket: Socket) {
    this.socket = socket;
    socket.on('data', (c: Buffer) => {
      for (const f of this.decoder.push(c)) {
        const r = f.toString('latin1');
        if (r.startsWith('ack:')) {
          this.acked = Number(r.slice(4));
          if (this.ackWaiter && this.acked >= this.ackWaiter.n) {
            const w = this.ackWaiter;
            this.ackWaiter = null;
            w.resolve();
          }
        } else if (this.want) {
          const w = this.want;
          this.want = null;
          w(r);
        }
      }
    });
  }

  static connect(path: string): Promise<BenchClient> {
    return new Promise((resolve, reject) => {
      const s = connect(path);
      s.once('connect', () => resolve(new BenchClient(s)));
      s.once('error', reject);
    });
  }

  private write(payload: string): void {
    this.sent++;
    this.socket.write(encodeFrame(payload));
  }

  request(payload: string): Promise<string> {
    return new Promise((resolve) => {
      this.want = resolve;
      this.write(payload);
    });
  }

  hello(pid: number): Promise<string> {
    return this.request(`root:hello::proto=${PROTOCOL_VERSION},pid=${pid},start=1`);
  }

  create(seq: number, path: string, strict = false): Promise<string> {
    return this.request(`bench:create:/srv:seq=${seq},share=b,path=${path},flags=cx,mode=644${strict ? ',strict=1' : ''}`);
  }

  /** An async mkdir report and its outcome, not waited for. */
  postMkdir(seq: number, path: string): void {
    this.write(`bench:mkdir:/srv:seq=${seq},share=b,path=${path},mode=755,async=1`);
    this.write(`bench:done:/srv:seq=${seq},err=0`);
  }

  done(seq: number): void {
    this.write(`bench:done:/srv:seq=${seq},err=0`);
  }

  /** Resolves once every frame sent so far is acknowledged. */
  allAcked(): Promise<void> {
    if (this.acked >= this.sent) return Promise.resolve();
    return new Promise((resolve) => {
      this.ackWaiter = { n: this.sent, resolve };
    });
  }

  close(): void {
    this.socket.destroy();
  }
}
