/** Counts per second over a sliding window (ops and bytes over the last minute). */
export class RateWindow {
  private readonly ops: number[];
  private readonly bytes: number[];
  private readonly secs: number[];

  constructor(private readonly seconds: number) {
    this.ops = new Array<number>(seconds).fill(0);
    this.bytes = new Array<number>(seconds).fill(0);
    this.secs = new Array<number>(seconds).fill(-1);
  }

  add(nowMs: number, ops: number, bytes: number): void {
    const sec = Math.floor(nowMs / 1000);
    const i = sec % this.seconds;
    if (this.secs[i] !== sec) {
      this.secs[i] = sec;
      this.ops[i] = 0;
      this.bytes[i] = 0;
    }
    this.ops[i] += ops;
    this.bytes[i] += bytes;
  }

  /** Average per second over the window ending at nowMs. */
  perSecond(nowMs: number): { ops: number; bytes: number } {
    const sec = Math.floor(nowMs / 1000);
    let ops = 0;
    let bytes = 0;
    for (let i = 0; i < this.seconds; i++) {
      if (this.secs[i] > sec - this.seconds && this.secs[i] <= sec) {
        ops += this.ops[i];
        bytes += this.bytes[i];
      }
    }
    return { ops: ops / this.seconds, bytes: bytes / this.seconds };
  }
}
