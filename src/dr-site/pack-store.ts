/**
 * Block storage in pack files (repository v2). Blocks are appended to the
 * open pack, each behind a 44-byte header (magic, flags, stored length,
 * block id), compressed with zstd when that saves at least 1/16. Writers
 * are grouped: every blocks.put waiting while a write is in flight joins
 * the next one, so one writev and one fdatasync serve them all, and only
 * then does one transaction index them (block id -> pack, offset, length).
 * One batch is written while the one before it is flushed and indexed
 * (drain()).
 * A crash therefore leaves at most an unindexed tail, which start-up cuts
 * off, and never an index entry without its bytes.
 *
 * Packs never change once closed. Retention forgets blocks in the index;
 * repack() copies the live blocks of packs mostly dead into the open pack,
 * re-points the index in one transaction, then deletes the old pack.
 * Blocks of a v1 site (one file each under blocks/) stay readable and are
 * moved into packs by migrateLoose() with no moment where neither copy is
 * indexed.
 *
 * With object storage (`remote`), the local disk only stages the open pack:
 * blocks are durable there before they are acknowledged, exactly as
 * without it; a pack that closes (full, or idle for `uploadIdleMs`) is
 * uploaded whole, then marked remote in the index, then its local file is
 * deleted. Reads of a remote pack are byte ranges. A crash at any step
 * leaves either a local pack start-up uploads again or an object nothing
 * indexes, which start-up deletes.
 */
import { createHash, randomBytes } from 'node:crypto';
import { open, mkdir, readdir, readFile, rm, stat, truncate, unlink, writeFile, FileHandle } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import { crc32s } from '../native/addon';
import { compress, decompress } from 'zstd-napi';
import { VfsxError } from '../errors/vfsx-error';
import { BlockLocation, MetaStore, NewBlock, PACK_ENTRY_HEADER } from './meta-store';
import { PackReader } from './pack-reader';
import type { PackRemote } from './s3-packs';

const HASH_RE = /^[0-9a-f]{64}$/;
const MAGIC = 0x76786231; // "vxb1"
const ENTRY_HEADER = PACK_ENTRY_HEADER;
const FLAG_ZSTD = 1;
/**
 * An encrypted repository's block: its id is a keyed hash the site cannot
 * check, so the header holds sha256 of the stored bytes instead, checked on
 * every read. Never compressed here (sealed bytes do not shrink).
 */
const FLAG_SEALED = 2;
/**
 * With FLAG_SEALED: the checksum is CRC-32 of the stored bytes (zlib's, in
 * the field's first 4 bytes, the other 28 zero) rather than sha256. It is
 * there to find damage at rest, which CRC-32 finds as surely (every burst
 * up to 32 bits, any other error but one in 2^32), at a quarter of the
 * site's CPU: sha256 of 256 MiB took 175-280 ms of the main thread that
 * receives blocks, CRC-32 47 ms. Tampering is the replicator's to find: a
 * sealed block is authenticated (AES-GCM) when it is opened. Entries
 * written before it keep sha256 and are read as before.
 */
const FLAG_CRC32 = 4;
/** Blocks below this are stored as they are: a header costs more than zstd could save. */
const MIN_COMPRESS = 512;
/** Reads from this size have their CRC-32s computed on the thread pool. */
const ASYNC_CRC_BYTES = 256 << 10;
/** One write gathers at most this many bytes (then the next write takes the rest). */
const MAX_WRITE = 32 * 1024 * 1024;

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function isBlockHash(h: unknown): h is string {
  return typeof h === 'string' && HASH_RE.test(h);
}

export interface PackStoreOptions {
  dir: string;
  meta: MetaStore;
  /** A pack is closed once it reaches this size. */
  packBytes: number;
  compression: 'zstd' | 'none';
  zstdLevel?: number;
  /** Object storage for closed packs; without it packs stay in `dir`. */
  remote?: PackRemote;
  /**
   * With `remote`: runs before any pack object is deleted (repack, the
   * start-up sweep), so the index copy in the bucket no longer needs it
   * (index-snapshots.ts). A failure keeps the objects.
   */
  beforeRemoteDelete?: () => Promise<void>;
  /** With `remote`: an open pack nothing was written to for this long is closed and uploaded. */
  uploadIdleMs?: number;
  /** Opens a new pack for writing (unit tests put faults between the store and its disk). */
  openPackFile?: (path: string) => Promise<FileHandle>;
  log?: (msg: string, o: object) => void;
}

/** Ranges of one remote pack closer than this are read in one request. */
const COALESCE_GAP = 256 * 1024;
const COALESCE_MAX = 16 * 1024 * 1024;

interface Pending {
  hash: string;
  size: number;
  flags: number;
  data: Buffer;
  /** A block moved by repack or migration: only re-pointed if still at `from`. */
  from?: string | null;
  done: (err?: Error) => void;
}

/** The pack blocks are appended to, or one still finishing its last write. */
interface OpenPack {
  id: string;
  fh: FileHandle;
  /** Bytes written: where the next write goes. */
  written: number;
  /** Bytes durable and indexed. */
  bytes: number;
  /** Writes to it whose flush and indexing are not finished. */
  pending: number;
  /** Nothing more is written to it; it is closed once `pending` is 0. */
  retired: boolean;
  closed: boolean;
  /** A flush or an index transaction of it failed: nothing written to it after that is indexed. */
  failed: Error | null;
}

/** A batch written to its pack, its flush started, not yet indexed or acknowledged. */
interface Written {
  pack: OpenPack;
  batch: Pending[];
  rows: NewBlock[];
  /** The pack's length once this batch is in. */
  end: number;
  /** The flush's error, or null once its bytes are durable. */
  flushed: Promise<Error | null>;
}

/** A pack's read handle: closed once evicted (or its pack deleted) and no read uses it. */
interface PackReaderHandle {
  fh: Promise<FileHandle>;
  users: number;
  retired: boolean;
}

/**
 * Read handles kept open: a restore asks for one small file's block at a
 * time, and an open and a close per read cost the site's event loop more
 * than the read (about 0.35 s of it per restore of the mixed tree).
 */
const READERS = 32;

export interface PackStats {
  packs: number;
  packBytes: number;
  liveBytes: number;
  blocks: number;
  rawBytes: number;
  looseBlocks: number;
  /** Packs in object storage (0 without it). */
  remotePacks: number;
}

export class PackStore {
  private readonly o: PackStoreOptions;
  private readonly meta: MetaStore;
  private queue: Pending[] = [];
  private writing: Promise<void> | null = null;
  /** Blocks queued or being written: a second put of one waits for the first. */
  private inflight = new Map<string, Promise<void>>();
  private current: OpenPack | null = null;
  /** Packs opened and not yet closed (the current one, and retired ones finishing a write): never repacked. */
  private readonly unclosed = new Set<string>();
  private locked: string | null = null;
  /** Closed packs waiting for (or in) their upload, one at a time in order. */
  private uploads: Promise<void> = Promise.resolve();
  private readonly uploadsPending = new Set<string>();
  private idleTimer: NodeJS.Timeout | null = null;
  private closing = false;
  private readonly reader: PackReader | null;
  /** Set while quiesce() runs: the writer waits before its next write. */
  private paused: Promise<void> | null = null;
  /** The writer waits for `paused` with every write it made finished. */
  private parked = false;
  /** Set while the writer waits for a flush with nothing queued: a new put wakes it. */
  private wakeWriter: (() => void) | null = null;
  /** quiesce() calls waiting for the writer to park or stop. */
  private parkWaiters: Array<() => void> = [];
  /** Open read handles of packs, least recently used first (see withReader). */
  private readonly readers = new Map<string, PackReaderHandle>();

  constructor(options: PackStoreOptions) {
    this.o = options;
    this.meta = options.meta;
    this.reader = options.remote ? new PackReader(options.remote, (id) => this.meta.packBytes(id)) : null;
  }

  private packPath(id: string): string {
    return join(this.o.dir, 'packs', id.slice(0, 2), `${id}.pack`);
  }

  private loosePath(hash: string): string {
    return join(this.o.dir, 'blocks', hash.slice(0, 2), hash.slice(2, 4), hash);
  }

  /**
   * Start-up: cuts each indexed pack back to its indexed length (a crash
   * may have left an unindexed tail) and deletes packs the index never
   * learnt of, and a v1 site's temp files.
   */
  async init(): Promise<void> {
    await this.lock();
    await mkdir(join(this.o.dir, 'packs'), { recursive: true });
    await rm(join(this.o.dir, 'blocks', 'tmp'), { recursive: true, force: true });
    const packs = this.meta.packs();
    const known = new Map(packs.map((p) => [p.id, p]));
    const local = new Set<string>();
    for (const sub of await readdir(join(this.o.dir, 'packs'))) {
      for (const name of await readdir(join(this.o.dir, 'packs', sub)).catch(() => [] as string[])) {
        const id = name.replace(/\.pack$/, '');
        const file = join(this.o.dir, 'packs', sub, name);
        const p = known.get(id);
        if (p === undefined || p.remote) {
          await unlink(file); // never indexed, or uploaded already (the crash came before its deletion)
          continue;
        }
        local.add(id);
        if ((await stat(file)).size > p.bytes) await truncate(file, p.bytes);
      }
    }
    if (!this.o.remote) return;
    for (const p of packs) {
      if (p.remote) continue;
      if (local.has(p.id)) this.upload(p.id);
      else this.o.log?.('a pack is neither uploaded nor on the local disk: its blocks are lost (verify --deep names the files)', { pack: p.id });
    }
    // Objects nothing indexes (a crash between dropping a pack and deleting its object): in the background.
    void this.sweepRemote().catch((err: Error) => this.o.log?.('could not list the packs in object storage', { err: err.message }));
  }

  private async sweepRemote(): Promise<void> {
    const remote = this.o.remote as PackRemote;
    const unknown = (await remote.list()).filter((id) => this.meta.packBytes(id) === null && !this.uploadsPending.has(id) && !this.unclosed.has(id));
    if (unknown.length === 0) return;
    await this.o.beforeRemoteDelete?.();
    for (const id of unknown) {
      if (this.meta.packBytes(id) !== null) continue; // indexed meanwhile (cannot happen for a random id, but never delete what the index knows)
      await remote.delete(id);
      this.o.log?.('deleted a pack object nothing indexes', { pack: id });
    }
  }

  /** Queues a closed pack's upload; the index marks it remote, then the local file goes. */
  private upload(id: string): void {
    const remote = this.o.remote;
    if (!remote || this.uploadsPending.has(id)) return;
    this.uploadsPending.add(id);
    this.uploads = this.uploads.then(async () => {
      try {
        const bytes = this.meta.packBytes(id);
        if (bytes === null || this.closing) return; // repacked away meanwhile, or shutting down (start-up resumes it)
        let data: Buffer;
        try {
          data = (await readFile(this.packPath(id))).subarray(0, bytes);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOENT') return; // repack deleted it
          throw err;
        }
        if (data.length !== bytes) throw new Error(`pack ${id} is ${data.length} bytes on disk, ${bytes} indexed`);
        await remote.put(id, data);
        if (this.meta.markPackRemote(id)) {
          this.forgetReader(id);
          await unlink(this.packPath(id)).catch(() => undefined);
        }
        else await remote.delete(id); // dropped while it went up
      } catch (err) {
        if (!this.closing) this.o.log?.('pack upload failed: it stays on the local disk and is retried at the next start', { pack: id, err: (err as Error).message });
      } finally {
        this.uploadsPending.delete(id);
      }
    });
  }

  /** Resolves once every pack closed so far is uploaded (or failed to be). */
  async flushUploads(): Promise<void> {
    if (this.current && this.o.remote) await this.closeIdle(true);
    await this.uploads;
  }

  private armIdle(): void {
    if (!this.o.remote || !this.current) return;
    if (this.idleTimer) clearTimeout(this.idleTimer);
    this.idleTimer = setTimeout(() => void this.closeIdle(false), this.o.uploadIdleMs ?? 30000);
    this.idleTimer.unref();
  }

  /** Closes the open pack so it is uploaded (after a write in flight, if any). */
  private async closeIdle(now: boolean): Promise<void> {
    if (this.writing) {
      if (!now) return this.armIdle();
      await this.writing.catch(() => undefined);
    }
    if (this.current && !this.writing) await this.closeCurrent();
  }

  /**
   * One writer per data directory: start-up cuts and deletes what the index
   * does not know, which would destroy another writer's pack in progress.
   * A lock whose process is gone is taken over.
   */
  async lock(): Promise<void> {
    const file = join(this.o.dir, 'writer.lock');
    for (let attempt = 0; attempt < 2; attempt++) {
      try {
        await writeFile(file, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
        this.locked = file;
        return;
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      }
      const pid = Number((await readFile(file, 'utf8').catch(() => '')).trim());
      if (pid > 0 && pid !== process.pid && alive(pid)) {
        throw new VfsxError('VFSX_ERR_DR_BUSY', `${this.o.dir} is in use by process ${pid} (a running DR site migrates its v1 blocks itself)`);
      }
      await unlink(file).catch(() => undefined); // left by a process that is gone
    }
    throw new VfsxError('VFSX_ERR_DR_BUSY', `cannot take ${file}`);
  }

  private encode(data: Buffer): { flags: number; data: Buffer } {
    if (this.o.compression === 'zstd' && data.length >= MIN_COMPRESS) {
      const z = compress(data, { compressionLevel: this.o.zstdLevel ?? 3 });
      if (z.length <= data.length - (data.length >> 4)) return { flags: FLAG_ZSTD, data: z };
    }
    return { flags: 0, data };
  }

  /**
   * Stores blocks under their ids; refuses the whole call, before storing
   * any, if one does not hash to its id. Resolves once all are durable and
   * indexed.
   */
  async putMany(parts: Array<{ hash: string; data: Buffer }>, sealed = false): Promise<void> {
    for (const p of parts) {
      if (!sealed && sha256(p.data) !== p.hash) throw new VfsxError('VFSX_ERR_DR_HASH_MISMATCH', `block does not hash to ${p.hash}`);
    }
    const waits: Array<Promise<void>> = [];
    const fresh = new Set(this.meta.missingBlocks(parts.map((p) => p.hash)));
    for (const p of parts) {
      const already = this.inflight.get(p.hash);
      if (already) {
        waits.push(already);
        continue;
      }
      if (!fresh.has(p.hash)) continue;
      fresh.delete(p.hash);
      const { flags, data } = sealed ? { flags: FLAG_SEALED | FLAG_CRC32, data: p.data } : this.encode(p.data);
      waits.push(this.enqueue({ hash: p.hash, size: p.data.length, flags, data }));
    }
    await Promise.all(waits);
  }

  private enqueue(e: Omit<Pending, 'done'>): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      this.queue.push({ ...e, done: (err) => (err ? reject(err) : resolve()) });
    });
    const tracked = done.finally(() => {
      if (this.inflight.get(e.hash) === tracked) this.inflight.delete(e.hash);
    });
    // Only uploads are waited on by a second upload of the same block: a move re-points
    // an existing entry and stores nothing if retention forgot the block meanwhile.
    if (e.from === undefined) this.inflight.set(e.hash, tracked);
    tracked.catch(() => undefined);
    if (!this.writing) {
      this.writing = this.drain().finally(() => {
        this.writing = null;
        this.wakeParkWaiters();
      });
    } else this.wakeWriter?.();
    return tracked;
  }

  /**
   * The writer: one batch is written (and its flush started) while the one
   * before it is made durable and indexed, so the copy into the page cache,
   * the CRC-32s and the opening of a new pack overlap the disk's flush and
   * the index transaction instead of following them. Batches are indexed
   * and acknowledged in the order they were written, each only once its
   * own flush has returned.
   */
  private async drain(): Promise<void> {
    // The put that woke the writer queues all its blocks before the first write takes any
    // (else its first block went alone: a flush and an index transaction of its own).
    await Promise.resolve();
    let prev: Written | null = null;
    while (this.queue.length > 0 || prev !== null) {
      if (this.queue.length === 0 && prev !== null && !this.paused) {
        // A put arriving during the flush is written at once, not after it.
        const more = new Promise<void>((resolve) => { this.wakeWriter = resolve; });
        await Promise.race([prev.flushed, more]);
        this.wakeWriter = null;
      }
      if (this.queue.length === 0 || this.paused) {
        // Nothing left to overlap it with, or quiesce() waits: the last write finishes now.
        if (prev) await this.finish(prev);
        prev = null;
        if (this.paused) await this.park();
        continue;
      }
      // One write fills at most what is left of the open pack, so packs stay near packBytes;
      // a pack the next entry does not fit is closed first (not topped up by a write, a flush
      // and an index transaction of its own).
      const cur = this.current;
      if (cur && cur.written > 0 && ENTRY_HEADER + this.queue[0].data.length > this.o.packBytes - cur.written) await this.retire(cur);
      const room = Math.min(MAX_WRITE, this.o.packBytes - (this.current?.written ?? 0));
      let n = 0;
      let bytes = 0;
      while (n < this.queue.length && (n === 0 || bytes + ENTRY_HEADER + this.queue[n].data.length <= room)) bytes += ENTRY_HEADER + this.queue[n++].data.length;
      const w = await this.write(this.queue.splice(0, n));
      if (prev) await this.finish(prev);
      prev = w;
    }
  }

  /** Waits, with nothing written and unfinished, until quiesce() is done. */
  private async park(): Promise<void> {
    this.parked = true;
    this.wakeParkWaiters();
    try {
      while (this.paused) await this.paused;
    } finally {
      this.parked = false;
    }
  }

  private wakeParkWaiters(): void {
    for (const wake of this.parkWaiters.splice(0)) wake();
  }

  /**
   * Runs fn with no block being written (writes queue meanwhile) and every
   * pack closed so far, the open one included, uploaded: what the index
   * says then is all in object storage, unless an upload failed (the
   * caller checks MetaStore.localOnlyBlocks()).
   */
  async quiesce<T>(fn: () => Promise<T>): Promise<T> {
    while (this.paused) await this.paused;
    let release = () => undefined as void;
    this.paused = new Promise<void>((r) => { release = r; });
    try {
      // The writer finishes what it wrote (flushed and indexed), then waits.
      this.wakeWriter?.();
      if (this.writing && !this.parked) await new Promise<void>((resolve) => this.parkWaiters.push(resolve));
      if (this.current && this.o.remote) await this.closeCurrent();
      await this.uploads;
      return await fn();
    } finally {
      this.paused = null;
      release();
    }
  }

  private async openPack(): Promise<OpenPack> {
    const id = randomBytes(16).toString('hex');
    const dir = join(this.o.dir, 'packs', id.slice(0, 2));
    await mkdir(dir, { recursive: true });
    const fh = await (this.o.openPackFile ?? ((path: string) => open(path, 'wx', 0o600)))(this.packPath(id));
    this.unclosed.add(id);
    // The new name must survive a crash along with the data written to it.
    try {
      const d = await open(dir, 'r');
      try {
        await d.sync();
      } finally {
        await d.close();
      }
    } catch (err) {
      this.unclosed.delete(id);
      await fh.close().catch(() => undefined);
      throw err;
    }
    return { id, fh, written: 0, bytes: 0, pending: 0, retired: false, closed: false, failed: null };
  }

  private async closeCurrent(): Promise<void> {
    if (this.current) await this.retire(this.current);
  }

  /** No more writes go to pack; it is closed now, or by the last of its writes to finish. */
  private async retire(pack: OpenPack): Promise<void> {
    pack.retired = true;
    if (this.current === pack) {
      this.current = null;
      if (this.idleTimer) clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
    if (pack.pending === 0) await this.closePack(pack);
  }

  private async closePack(pack: OpenPack): Promise<void> {
    if (pack.closed) return;
    pack.closed = true;
    await pack.fh.close().catch(() => undefined);
    this.unclosed.delete(pack.id);
    if (pack.bytes > 0 && !this.closing) this.upload(pack.id);
  }

  /**
   * Writes a batch at the end of the open pack (a new one if none is open)
   * and starts its flush; finish() then indexes it. A batch that cannot be
   * written is failed here, and its pack, which may now hold a partial
   * tail, takes no more writes. Never throws.
   */
  private async write(batch: Pending[]): Promise<Written | null> {
    let pack: OpenPack | null = null;
    try {
      // The CRC-32s on the thread pool, while the event loop takes the next frames in (measured 0.1 s of it per 256 MiB).
      const crcs = await crc32s(batch.filter((e) => e.flags & FLAG_CRC32).map((e) => e.data));
      let nextCrc = 0;
      if (!this.current) this.current = await this.openPack();
      pack = this.current;
      const bufs: Buffer[] = [];
      const rows: NewBlock[] = [];
      let off = pack.written;
      for (const e of batch) {
        const h = Buffer.alloc(ENTRY_HEADER);
        h.writeUInt32BE(MAGIC, 0);
        h.writeUInt8(e.flags, 4);
        h.writeUInt32BE(e.data.length, 8);
        if (e.flags & FLAG_CRC32) crcs.copy(h, 12, 4 * nextCrc, 4 * ++nextCrc);
        else if (e.flags & FLAG_SEALED) createHash('sha256').update(e.data).digest().copy(h, 12);
        else Buffer.from(e.hash, 'hex').copy(h, 12);
        bufs.push(h, e.data);
        rows.push({ hash: e.hash, size: e.size, pack: pack.id, offset: off, stored: e.data.length, flags: e.flags, from: e.from });
        off += ENTRY_HEADER + e.data.length;
      }
      let pos = pack.written;
      let todo = bufs;
      while (todo.length > 0) {
        const { bytesWritten } = await pack.fh.writev(todo, pos);
        pos += bytesWritten;
        todo = skip(todo, bytesWritten);
      }
      pack.written = off;
      pack.pending++;
      const flushed = pack.fh.datasync().then(() => null, (err: Error) => err);
      if (pack.written >= this.o.packBytes) await this.retire(pack);
      return { pack, batch, rows, end: off, flushed };
    } catch (err) {
      if (pack) await this.retire(pack);
      batch.forEach((e) => e.done(err as Error));
      return null;
    }
  }

  /**
   * Indexes a written batch once its flush returned, and acknowledges it. A
   * failed flush or index transaction fails the batch, and every batch
   * written to that pack after it. Never throws.
   */
  private async finish(w: Written): Promise<void> {
    const { pack } = w;
    try {
      const err = (await w.flushed) ?? pack.failed;
      if (err) throw err;
      this.meta.indexBlocks(pack.id, w.end, w.rows);
      pack.bytes = w.end;
      w.batch.forEach((e) => e.done());
    } catch (err) {
      pack.failed ??= err as Error;
      w.batch.forEach((e) => e.done(err as Error));
      await this.retire(pack); // closed below, once its last write is finished
    } finally {
      pack.pending--;
    }
    if (pack.retired && pack.pending === 0) await this.closePack(pack);
    else if (pack === this.current) this.armIdle();
  }

  /** A block's bytes, checked against its id; a damaged one is an error, never data. */
  async get(hash: string): Promise<Buffer> {
    for (let attempt = 0; ; attempt++) {
      const loc = this.meta.locate(hash);
      if (!loc) throw new VfsxError('VFSX_ERR_DR_MISSING_BLOCKS', `block ${hash} is missing`, { cause: [hash] });
      try {
        return await this.read(hash, loc);
      } catch (err) {
        // Repack, migration or an upload moved it between the look-up and the read: look again.
        if (((err as NodeJS.ErrnoException).code === 'ENOENT' || /NoSuchKey/.test((err as Error).message)) && attempt < 2) continue;
        throw err;
      }
    }
  }

  private async read(hash: string, loc: BlockLocation): Promise<Buffer> {
    return (await this.readEntry(hash, loc)).data;
  }

  /** A block's bytes and, for a packed one, its stored (maybe compressed) form. */
  /** A pack entry's bytes (header and stored block), from the local pack or a range of the remote one. */
  private async fetchEntry(loc: BlockLocation, damaged: (why: string) => Error): Promise<Buffer> {
    const length = ENTRY_HEADER + loc.stored;
    if (loc.remote && this.reader) return this.reader.read(loc.pack as string, loc.offset, length);
    return this.readRange(loc.pack as string, loc.offset, length, () => damaged('the pack is shorter than its index says'));
  }

  /** length bytes of a local pack from offset; a pack shorter than that is the error `short` makes. */
  private async readRange(pack: string, offset: number, length: number, short = () => new Error(`pack ${pack} is shorter than its index says`)): Promise<Buffer> {
    return this.withReader(pack, async (fh) => {
      const bytes = Buffer.allocUnsafe(length);
      let got = 0;
      while (got < length) {
        const { bytesRead } = await fh.read(bytes, got, length - got, offset + got);
        if (bytesRead === 0) throw short();
        got += bytesRead;
      }
      return bytes;
    });
  }

  /**
   * Runs fn with a read handle of the pack, kept open for the next read
   * (READERS at most, least recently used closed first). Packs never change
   * where they are indexed, so a handle stays good until its pack is
   * deleted; forgetReader() comes before that. A failed read drops it.
   */
  private async withReader<T>(pack: string, fn: (fh: FileHandle) => Promise<T>): Promise<T> {
    let r = this.readers.get(pack);
    if (r) {
      this.readers.delete(pack); // to the most recent end
    } else {
      r = { fh: open(this.packPath(pack), 'r'), users: 0, retired: false };
      r.fh.catch(() => undefined);
    }
    this.readers.set(pack, r);
    r.users++; // before the eviction, which spares handles in use
    for (const [id, old] of this.readers) {
      if (this.readers.size <= READERS) break;
      if (old.users === 0) this.forgetReader(id);
    }
    try {
      return await fn(await r.fh);
    } catch (err) {
      if (this.readers.get(pack) === r) this.forgetReader(pack); // opened afresh next time (a pack repacked away, say)
      throw err;
    } finally {
      r.users--;
      if (r.retired && r.users === 0) closeReader(r);
    }
  }

  /** Drops the pack's read handle (closed now, or after the reads using it). */
  private forgetReader(pack: string): void {
    const r = this.readers.get(pack);
    if (!r) return;
    this.readers.delete(pack);
    r.retired = true;
    if (r.users === 0) closeReader(r);
  }

  /**
   * Several blocks, in order. Blocks of one pack that lie close together
   * are read in one go, a ranged request for a remote pack and one read of
   * a local one (a restore reads files whose blocks were packed side by
   * side; one open, read and close per block, and a read transaction per
   * look-up, made a restore of the mixed tree 13-18% slower).
   * Every block is still checked on its own.
   */
  async getMany(hashes: string[]): Promise<Buffer[]> {
    const out = new Array<Buffer | undefined>(hashes.length);
    const byPack = new Map<string, Array<{ i: number; loc: BlockLocation }>>();
    this.meta.locateMany(hashes).forEach((loc, i) => {
      if (loc?.pack && (!loc.remote || this.o.remote)) {
        const list = byPack.get(loc.pack) ?? [];
        list.push({ i, loc });
        byPack.set(loc.pack, list);
      }
    });
    const runs: Array<Array<{ i: number; loc: BlockLocation }>> = [];
    for (const list of byPack.values()) {
      list.sort((a, b) => a.loc.offset - b.loc.offset);
      let run: typeof list = [];
      for (const e of list) {
        const first = run[0]?.loc;
        const last = run[run.length - 1]?.loc;
        if (first && last && (e.loc.offset - (last.offset + ENTRY_HEADER + last.stored) > COALESCE_GAP
          || e.loc.offset + ENTRY_HEADER + e.loc.stored - first.offset > COALESCE_MAX)) {
          runs.push(run);
          run = [];
        }
        run.push(e);
      }
      if (run.length > 0) runs.push(run);
    }
    await Promise.all(runs.map(async (run) => {
      const first = run[0].loc;
      const end = Math.max(...run.map((e) => e.loc.offset + ENTRY_HEADER + e.loc.stored));
      let bytes: Buffer;
      try {
        bytes = first.remote
          ? await (this.o.remote as PackRemote).getRange(first.pack as string, first.offset, end - first.offset)
          : await this.readRange(first.pack as string, first.offset, end - first.offset);
      } catch {
        return; // read one by one below (repacked meanwhile, or a failure that get() reports)
      }
      const entries = run.map((e) => bytes.subarray(e.loc.offset - first.offset, e.loc.offset - first.offset + ENTRY_HEADER + e.loc.stored));
      // The sealed entries' CRC-32s on the thread pool (on the event loop they took about 0.1 s of it per restore of 256 MiB).
      const withCrc = run.map((e) => (e.loc.flags & FLAG_SEALED && e.loc.flags & FLAG_CRC32) !== 0);
      // A small read checks them at once (the trip to the thread pool costs more than they do).
      const crcs = withCrc.some(Boolean) && bytes.length >= ASYNC_CRC_BYTES
        ? await crc32s(entries.filter((_, k) => withCrc[k]).map((x) => x.subarray(ENTRY_HEADER))) : null;
      let nextCrc = 0;
      for (let k = 0; k < run.length; k++) {
        const crc = crcs && withCrc[k] ? crcs.readUInt32BE(4 * nextCrc++) : undefined;
        out[run[k].i] = (await this.readEntry(run[k].loc.hash, run[k].loc, entries[k], crc)).data;
      }
    }));
    return Promise.all(hashes.map((h, i) => out[i] ?? this.get(h)));
  }

  /** `crc`: the stored bytes' CRC-32 when the caller computed it (prefetched entries only). */
  private async readEntry(hash: string, loc: BlockLocation, prefetched?: Buffer, crc?: number): Promise<{ data: Buffer; stored: Buffer | null }> {
    const where = loc.pack === null ? 'its v1 file' : `pack ${loc.pack} at ${loc.offset}`;
    const damaged = (why: string) => new VfsxError('VFSX_ERR_DR_DAMAGED', `block ${hash} is damaged at the DR site (${where}): ${why}`);
    let data: Buffer;
    let stored: Buffer | null = null;
    if (loc.pack === null) {
      data = await readFile(this.loosePath(hash));
    } else {
      const entry = prefetched ?? await this.fetchEntry(loc, damaged);
      const sum = entry.subarray(12, ENTRY_HEADER).toString('hex');
      if (entry.readUInt32BE(0) !== MAGIC || entry.readUInt32BE(8) !== loc.stored
        || (!(loc.flags & FLAG_SEALED) && sum !== hash) || entry.readUInt8(4) !== loc.flags) {
        throw damaged('its header does not match the index');
      }
      stored = entry.subarray(ENTRY_HEADER);
      data = stored;
      if (loc.flags & FLAG_SEALED) {
        const ok = loc.flags & FLAG_CRC32
          ? (crc ?? crc32(data)) === entry.readUInt32BE(12) && entry.subarray(16, ENTRY_HEADER).every((b) => b === 0)
          : sha256(data) === sum;
        if (data.length !== loc.size || !ok) throw damaged('its bytes do not match their checksum');
        return { data, stored };
      }
      if (loc.flags & FLAG_ZSTD) {
        try {
          data = decompress(stored);
        } catch (err) {
          throw damaged(`it does not decompress (${(err as Error).message})`);
        }
      }
    }
    if (data.length !== loc.size || sha256(data) !== hash) throw damaged('its bytes do not hash to its id');
    return { data, stored };
  }

  /** Deletes v1 files of blocks retention freed (packed ones live on until repack). */
  async freeLoose(hashes: string[]): Promise<void> {
    for (const h of this.meta.looseOf(hashes)) await unlink(this.loosePath(h)).catch(() => undefined);
  }

  /**
   * Rewrites packs whose live bytes fell below `minLive` of their size:
   * their live blocks go to the open pack, then the old pack is deleted.
   * Returns the bytes reclaimed.
   */
  async repack(minLive: number, log?: (msg: string, o: object) => void): Promise<number> {
    let reclaimed = 0;
    const dropped: string[] = [];
    for (const p of this.meta.packUsage()) {
      if (this.unclosed.has(p.id) || p.live >= p.bytes * minLive) continue;
      const moves = this.meta.blocksIn(p.id).map(async (loc) => {
        const { stored } = await this.readEntry(loc.hash, loc); // a damaged block is not carried over
        await this.enqueue({ hash: loc.hash, size: loc.size, flags: loc.flags, data: stored as Buffer, from: p.id });
      }).map((m) => m.catch((err: Error) => log?.('block left in its pack', { pack: p.id, err: err.message })));
      await Promise.all(moves);
      if (this.meta.dropPackIfEmpty(p.id)) {
        this.forgetReader(p.id);
        await unlink(this.packPath(p.id)).catch(() => undefined);
        this.reader?.forget(p.id);
        if (this.o.remote) dropped.push(p.id);
        reclaimed += p.bytes - p.live;
        log?.('repacked', { pack: p.id, bytes: p.bytes, live: p.live });
      }
    }
    if (dropped.length > 0) {
      // The moved blocks' new pack goes up, and the index copy in the bucket
      // stops naming the old ones, before any old object is deleted: until
      // then the old objects are the only remote copy of those blocks.
      try {
        await this.flushUploads();
        if (this.meta.localOnlyBlocks() > 0) throw new Error('a pack is not uploaded yet');
        await this.o.beforeRemoteDelete?.();
        for (const id of dropped) await (this.o.remote as PackRemote).delete(id);
      } catch (err) {
        log?.('repacked pack objects left for the next start to delete', { packs: dropped.length, err: (err as Error).message });
      }
    }
    return reclaimed;
  }

  /**
   * Moves a v1 site's one-file-per-block store into packs, `batch` blocks at
   * a time: each block is packed and re-indexed before its file goes.
   * Returns how many moved; progress is called after each batch.
   */
  async migrateLoose(progress?: (done: number, total: number) => void, skipped?: (hash: string, err: Error) => void, batch = 512): Promise<number> {
    const total = this.meta.looseCount();
    let done = 0;
    let after = '';
    for (;;) {
      const locs = this.meta.looseBlocks(after, batch);
      if (locs.length === 0) break;
      after = locs[locs.length - 1].hash;
      const moved: string[] = [];
      await Promise.all(locs.map(async (loc) => {
        let data: Buffer;
        try {
          data = await this.read(loc.hash, loc);
        } catch (err) {
          // A v1 file that is gone or damaged stays as it is: verify --deep names it.
          skipped?.(loc.hash, err as Error);
          return;
        }
        const { flags, data: stored } = this.encode(data);
        await this.enqueue({ hash: loc.hash, size: loc.size, flags, data: stored, from: null });
        moved.push(loc.hash);
      }));
      for (const h of moved) await unlink(this.loosePath(h)).catch(() => undefined);
      done += moved.length;
      progress?.(done, total);
    }
    return done;
  }

  stats(): PackStats {
    return this.meta.storeStats();
  }

  async close(): Promise<void> {
    await this.writing;
    // Uploads still queued resume at the next start (their packs stay on the local disk).
    this.closing = true;
    await this.closeCurrent();
    for (const id of [...this.readers.keys()]) this.forgetReader(id);
    this.o.remote?.close();
    await this.uploads;
    if (this.locked) await unlink(this.locked).catch(() => undefined);
    this.locked = null;
  }
}

function closeReader(r: PackReaderHandle): void {
  void r.fh.then((fh) => fh.close()).catch(() => undefined);
}

/** Whether pid is a live vfsx process (a pid reused by something else does not count). */
function alive(pid: number): boolean {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'latin1').includes('vfsx');
  } catch {
    return false;
  }
}

/** The buffers after the first `n` bytes. */
function skip(bufs: Buffer[], n: number): Buffer[] {
  const out: Buffer[] = [];
  for (const b of bufs) {
    if (n >= b.length) {
      n -= b.length;
      continue;
    }
    out.push(n > 0 ? b.subarray(n) : b);
    n = 0;
  }
  return out;
}
