/**
 * Reads of packs in object storage, with read-ahead for sequential access.
 * A restore asks for one small file's blocks at a time, and files were
 * packed side by side, so one ranged GET per block would pay a round trip
 * per 4 KiB. As the kernel does for files, a read that continues where the
 * last one in that pack ended doubles the pack's read-ahead window (up to
 * MAX_WINDOW); a read elsewhere fetches just what was asked. Windows are
 * kept, least recently used first out, within a byte budget; a window still
 * arriving is shared by every read it covers.
 */
import type { PackRemote } from './s3-packs';

const FIRST_WINDOW = 256 * 1024;
const MAX_WINDOW = 8 * 1024 * 1024;
/** A read this close after the last one's end still counts as sequential (concurrent readers interleave). */
const SEQUENTIAL_GAP = 2 * 1024 * 1024;

interface Window {
  pack: string;
  start: number;
  end: number;
  data: Promise<Buffer>;
}

export class PackReader {
  /** Insertion order is recency: a hit moves a window to the end. */
  private readonly windows = new Map<string, Window>();
  private readonly streams = new Map<string, { end: number; window: number }>();
  private bytes = 0;

  constructor(
    private readonly remote: PackRemote,
    /** A pack's length (null: unknown, e.g. dropped meanwhile). */
    private readonly packLength: (id: string) => number | null,
    private readonly budget = 64 * 1024 * 1024,
  ) {}

  async read(pack: string, offset: number, length: number): Promise<Buffer> {
    const end = offset + length;
    for (const [key, w] of this.windows) {
      if (w.pack === pack && w.start <= offset && end <= w.end) {
        this.windows.delete(key);
        this.windows.set(key, w);
        this.advance(pack, end);
        const data = await w.data;
        return data.subarray(offset - w.start, end - w.start);
      }
    }
    const s = this.streams.get(pack);
    const sequential = s !== undefined && offset >= s.end - MAX_WINDOW && offset <= s.end + SEQUENTIAL_GAP;
    const window = sequential ? Math.min(MAX_WINDOW, s.window * 2) : FIRST_WINDOW / 2;
    this.streams.set(pack, { end: Math.max(end, s?.end ?? 0), window });
    if (this.streams.size > 256) this.streams.delete(this.streams.keys().next().value as string);
    if (!sequential) return this.remote.getRange(pack, offset, length);
    const packEnd = this.packLength(pack) ?? end;
    const wEnd = Math.max(end, Math.min(packEnd, offset + window));
    const w: Window = { pack, start: offset, end: wEnd, data: this.remote.getRange(pack, offset, wEnd - offset) };
    const key = `${pack}:${offset}`;
    this.windows.set(key, w);
    this.bytes += wEnd - offset;
    w.data.catch(() => this.drop(key, w));
    this.evict();
    const data = await w.data;
    return data.subarray(0, length);
  }

  private advance(pack: string, end: number): void {
    const s = this.streams.get(pack);
    if (s && end > s.end) s.end = end;
  }

  private drop(key: string, w: Window): void {
    if (this.windows.get(key) === w) {
      this.windows.delete(key);
      this.bytes -= w.end - w.start;
    }
  }

  private evict(): void {
    for (const [key, w] of this.windows) {
      if (this.bytes <= this.budget) break;
      this.drop(key, w);
    }
  }

  /** Forgets a pack (repacked away: its object is gone). */
  forget(pack: string): void {
    for (const [key, w] of this.windows) if (w.pack === pack) this.drop(key, w);
    this.streams.delete(pack);
  }
}
