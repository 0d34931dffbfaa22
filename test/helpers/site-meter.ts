/**
 * What a DR site in a network namespace received, sampled from its own
 * /proc/PID/net/dev every 250 ms: rates over windows, measured at the site.
 */
import { receivedBytes } from './remote-host';

/** Samples what the site received every 250 ms until stopped. */
export class SiteMeter {
  readonly samples: Array<{ t: number; bytes: number }> = [];
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pid: number, private readonly iface: string) {
    this.sample();
    this.timer = setInterval(() => this.sample(), 250);
  }

  private sample(): void {
    this.samples.push({ t: Date.now(), bytes: receivedBytes(this.pid, this.iface) });
  }

  stop(): void {
    clearInterval(this.timer);
    this.sample();
  }

  /** Bytes since the first sample. */
  get total(): number {
    return this.samples[this.samples.length - 1].bytes - this.samples[0].bytes;
  }

  /**
   * The rate (bytes/s) of what arrived from `from` until arrivals ended
   * (the last sample that added more than 256 KiB): how fast the rest went.
   */
  rateAfter(from: number): number {
    const s = this.samples;
    const i = s.findIndex((x) => x.t >= from);
    if (i < 1) return 0;
    const start = s[i - 1];
    const last = s[s.length - 1].bytes;
    const done = s.find((x) => x.t >= start.t && x.bytes >= last - 256 * 1024) ?? s[s.length - 1];
    return (done.bytes - start.bytes) / (Math.max(250, done.t - start.t) / 1000);
  }

  /** What arrived per second from `from` on (KiB per 1 s step), for a failure message to show how the rest went. */
  perSecondAfter(from: number): string {
    const s = this.samples.filter((x) => x.t >= from - 250);
    const out: number[] = [];
    for (let i = 0; i + 4 < s.length && out.length < 60; i += 4) out.push(Math.round((s[i + 4].bytes - s[i].bytes) / 1024));
    return out.join(' ');
  }

  /** Bytes received by time t (linear between samples). */
  bytesAt(t: number): number {
    const s = this.samples;
    if (t <= s[0].t) return s[0].bytes;
    for (let i = 1; i < s.length; i++) {
      if (s[i].t >= t) return s[i - 1].bytes + ((s[i].bytes - s[i - 1].bytes) * (t - s[i - 1].t)) / Math.max(1, s[i].t - s[i - 1].t);
    }
    return s[s.length - 1].bytes;
  }

  /** The highest rate (bytes/s) of several sites together over any window of `ms` (their samples taken at their own times). */
  static maxCombinedRate(meters: SiteMeter[], ms: number): number {
    const starts = meters.flatMap((m) => m.samples.map((x) => x.t)).sort((a, b) => a - b);
    const end = Math.min(...meters.map((m) => m.samples[m.samples.length - 1].t));
    let best = 0;
    for (const t of starts) {
      if (t + ms > end) break;
      const bytes = meters.reduce((a, m) => a + m.bytesAt(t + ms) - m.bytesAt(t), 0);
      best = Math.max(best, bytes / (ms / 1000));
    }
    return best;
  }

  /** The highest rate (bytes/s) over any window of `ms` between `from` and `to` (ms timestamps). */
  maxRate(ms: number, from = 0, to = Infinity): number {
    const s = this.samples.filter((x) => x.t >= from && x.t <= to);
    let best = 0;
    for (let i = 0, j = 0; i < s.length; i++) {
      while (j < s.length && s[j].t - s[i].t < ms) j++;
      if (j >= s.length) break;
      best = Math.max(best, (s[j].bytes - s[i].bytes) / ((s[j].t - s[i].t) / 1000));
    }
    return best;
  }
}

