/**
 * A bandwidth limit as configured: a rate in bytes per second, or a
 * timetable of rates by time of day (optionally by weekday), written the
 * way rclone's --bwlimit is: "08:00,512k 18:00,off" or
 * "Mon-08:00,2M Sat-00:00,off". Pacing by it: src/site-link/bandwidth.ts.
 */
import { VfsxError } from '../errors/vfsx-error';

/** Bytes per second; 0 means no limit. */
export type Rate = number;

const UNITS: Record<string, number> = { '': 1, b: 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3 };
const DAYS = ['sun', 'mon', 'tue', 'wed', 'thu', 'fri', 'sat'];
const WEEK_MIN = 7 * 24 * 60;

/** "off", "0", "512k", "2.5M", "1G", "10MiB", "800KB/s" -> bytes per second (k, M, G are powers of 1024). */
export function parseRate(s: string): Rate {
  const t = s.trim().toLowerCase();
  if (t === 'off' || t === 'none' || t === 'unlimited') return 0;
  const m = /^(\d+(?:\.\d+)?)\s*([bkmg]?)(?:i?b)?(?:\/s)?$/.exec(t);
  if (!m) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `not a rate: "${s}" (use e.g. 512k, 5M, 1G or off)`);
  const v = Math.floor(Number(m[1]) * UNITS[m[2]]);
  if (!Number.isSafeInteger(v)) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `rate out of range: "${s}"`);
  if (v > 0 && v < 1024) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `rate below 1 KiB/s: "${s}"`);
  return v;
}

export function formatRate(r: Rate): string {
  if (r === 0) return 'off';
  for (const [u, n] of [['G', 1024 ** 3], ['M', 1024 ** 2], ['k', 1024]] as const) {
    if (r >= n) return `${+(r / n).toFixed(2)}${u}`;
  }
  return `${r}`;
}

interface Slot {
  /** Minute of the week (Sunday 00:00 = 0) from which the rate holds. */
  at: number;
  rate: Rate;
}

/** A limit: one rate, or a timetable. */
export class Schedule {
  private constructor(readonly text: string, private readonly slots: Slot[]) {}

  /** Parses "5M", "off", or a timetable "HH:MM,RATE [Day-]HH:MM,RATE ...". */
  static parse(text: string): Schedule {
    const t = text.trim();
    if (!t.includes(',')) return new Schedule(t, [{ at: 0, rate: parseRate(t) }]);
    const slots: Slot[] = [];
    for (const entry of t.split(/\s+/)) {
      const m = /^(?:([a-z]{3})-)?(\d{1,2}):(\d{2}),(.+)$/i.exec(entry);
      if (!m) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `not a timetable entry: "${entry}" (use HH:MM,RATE or Day-HH:MM,RATE)`);
      const [hh, mm] = [Number(m[2]), Number(m[3])];
      if (hh > 23 || mm > 59) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `not a time of day: "${entry}"`);
      const rate = parseRate(m[4]);
      if (m[1] === undefined) {
        for (let d = 0; d < 7; d++) slots.push({ at: d * 1440 + hh * 60 + mm, rate });
      } else {
        const d = DAYS.indexOf(m[1].toLowerCase());
        if (d < 0) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `not a weekday: "${m[1]}" (use Mon, Tue, ... Sun)`);
        slots.push({ at: d * 1440 + hh * 60 + mm, rate });
      }
    }
    // A day's entry wins over a daily one at the same minute; otherwise the later entry wins.
    slots.sort((a, b) => a.at - b.at);
    const uniq: Slot[] = [];
    for (const s of slots) {
      if (uniq.length > 0 && uniq[uniq.length - 1].at === s.at) uniq[uniq.length - 1] = s;
      else uniq.push(s);
    }
    return new Schedule(t, uniq);
  }

  get timetable(): boolean {
    return this.slots.length > 1 || this.text.includes(',');
  }

  /** The rate in force at `now` (local time): the last entry at or before it, wrapping round the week. */
  rateAt(now: Date): Rate {
    return this.slots[this.slotAt(now)].rate;
  }

  /** When the rate in force next changes (ms from `now`); null when it never does. */
  nextChangeIn(now: Date): number | null {
    if (this.slots.length < 2) return null;
    const i = this.slotAt(now);
    const next = this.slots[(i + 1) % this.slots.length].at;
    const cur = minuteOfWeek(now);
    const minutes = (next - cur + WEEK_MIN) % WEEK_MIN || WEEK_MIN;
    return minutes * 60_000 - (now.getSeconds() * 1000 + now.getMilliseconds());
  }

  private slotAt(now: Date): number {
    const m = minuteOfWeek(now);
    let i = this.slots.length - 1; // before the first entry of the week: the week's last one holds
    for (let k = 0; k < this.slots.length && this.slots[k].at <= m; k++) i = k;
    return i;
  }
}

const minuteOfWeek = (d: Date) => d.getDay() * 1440 + d.getHours() * 60 + d.getMinutes();
