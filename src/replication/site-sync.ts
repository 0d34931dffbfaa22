/**
 * Makes one path (or subtree) of a share at the DR site match the source's
 * current state. Used per journal record by the Replicator and for a whole
 * share by `vfsx resync`.
 */
import type { Tree, TreeEntry } from '../native/tree';
import { isRetryable, VfsxError } from '../errors/vfsx-error';
import { isUtf8Name } from '../protocol/byte-names';
import { SEGMENT_BLOCKS, segmentHash, segmentsOf } from '../protocol/segments';
import { DrRpcError } from '../site-link/dr-client';
import type { SiteClient } from '../site-link/site-client';
import { Slots } from './slots';
import { CHUNK_BYTES, digestOf, metaOfEntry, readBlocks, streamBlocks, targetOf } from './source-tree';

interface Head {
  kind: string;
  size: number;
  blockSize: number;
  meta: { mode?: number; uid?: number; gid?: number; mtimeNs?: string };
  blocks?: string[];
}

/** Blocks per binary frame stay under this; the site must accept frames of 8 MiB or more. */
const MAX_PUT_BYTES = 4 << 20;
/** Block frames in flight per object. */
const PUT_WINDOW = 4;
const NOT_FOUND = -32003;
/** A site older than the call (object.deleteMany): the same work one call at a time. */
const METHOD_NOT_FOUND = -32601;
/** Objects per commitMany or deleteMany call (the site accepts up to 512). */
const BATCH_OBJECTS = 512;
/** The site refuses an object below something it has as a file or symlink. */
const NOT_A_DIRECTORY = -32006;
const TREE_CONCURRENCY = 16;
/**
 * Entries scanned ahead while the site lists what it has: the scan stops
 * when the listing arrives or at this many, and the walk reads the rest as
 * it goes (the whole tree held at once is about 300 bytes per entry: a
 * share of millions of files would not fit in the heap).
 */
const PREFETCH_ENTRIES = 100_000;
/** prune() lets the event loop turn after this many paths it only stat'ed. */
const PRUNE_YIELD = 1000;
/** Files up to this size go to the site many at a time (one blocks.missing, one commitMany). */
export const SMALL_FILE = 256 << 10;
const BATCH_FILES = 64;
/** Batches of small files in flight per directory (each up to BATCH_FILES x SMALL_FILE bytes). */
const SMALL_LANES = 4;
/**
 * Bytes of file data one sync holds at once in the chunks it streams (read,
 * waiting, or being sealed and sent): two full chunks, which one large
 * file alone uses as before (one read while the other is sent). Without
 * this bound every file in flight held two chunks of up to 16 MiB besides
 * their sealed copies: a fresh `vfsx resync` of 4 x 64 MiB + 2,000 x 4 KiB
 * peaked at 331-343 MiB resident against 214 MiB with it, in the same
 * time (2.96-3.40 s against 2.91-3.45 s, 3 interleaved rounds). Smaller
 * files take only their own size of it, so many of them still go at once.
 */
const STREAM_MEMORY = 34 << 20;

interface PatchHead {
  kind: string;
  size: number;
  blockSize: number;
  segments?: string[];
  segmentBlocks?: string[][];
}

/**
 * A file of more blocks than this (4 GiB at 64 KiB) is never synced from
 * its head's whole block list: its segments, or the whole file read.
 */
const WHOLE_LIST_BLOCKS = 1 << 16;
/** A patch commit spells out at most this many segments (the site takes 1,024); more changes take the usual way. */
const PATCH_SEGMENTS = 64;
const INVALID_PARAMS = -32602;
/**
 * A file of more blocks than this commits by segments: its segments first
 * (segments.put, SEGMENTS_PER_PUT at a time, about 17 MiB of JSON each),
 * then its segment list. Its block list in one commit would be about 67
 * bytes of JSON per block: past 1,000,000 blocks (61 GiB at 64 KiB) that
 * is more than the site's largest message (64 MiB), and the site closes
 * the connection at every try.
 */
const SEGMENTED_FROM = 1 << 18;
const SEGMENTS_PER_PUT = 1024;
/**
 * The most blocks a file may have at the site (its segment list's limit,
 * 16,384 segments: 256 GiB at 64 KiB blocks, more with a larger
 * replication.blockSize); its block list read back in one answer stays
 * within the largest string a JSON reply can be.
 */
export const MAX_FILE_BLOCKS = (1 << 14) * SEGMENT_BLOCKS;

const INVALID_PATH = -32002;
/** Errors of one path (vfsx-error.ts codes) that say nothing of the others. */
const PATH_FAULTS = new Set<string>(['VFSX_ERR_REPL_TOO_LARGE', 'VFSX_ERR_DR_INVALID_PATH', 'VFSX_ERR_BAD_NAME']);
/** errnos of the process or the machine, not of a path: they stop a pass. */
const NOT_PATH_ERRNOS = new Set(['EMFILE', 'ENFILE', 'ENOMEM', 'ENOSPC', 'EBADF']);

/**
 * Whether err is about one path only: a file too large for the site, a name
 * it cannot hold, a source file that cannot be read (EACCES, EIO, ...). A
 * tree sync or a scrub leaves that path out, goes on with the rest and
 * reports it at the end. Anything else (the link down, the site's storage
 * not answering, a token refused) stops them at once, as before.
 */
export function isPathFault(err: unknown): boolean {
  if (err instanceof DrRpcError) return err.code === INVALID_PATH;
  if (err instanceof VfsxError) return PATH_FAULTS.has(err.code);
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && /^E[A-Z0-9]+$/.test(code) && !NOT_PATH_ERRNOS.has(code) && !isRetryable(err);
}

const NOT_UTF8 = 'not UTF-8: a plaintext repository holds UTF-8 names only (an encrypted one, the default for new repositories, holds any name)';

interface ListedObject {
  path: string;
  kind: string;
  size: number;
  meta: object;
}

/** What a tree sync keeps of a listed object to tell an unchanged entry: its kind, size and a digest of its metadata. */
const headKey = (kind: string, size: number, meta: object) => `${kind}|${kind === 'file' ? size : 0}|${digestOf(JSON.stringify(meta))}`;

export interface SyncStats {
  commits: number;
  blocksSent: number;
  bytesSent: number;
}

export interface SiteSyncOptions {
  site: SiteClient;
  bucket: string;
  /** The share's source tree: read beneath its root only, never through a symlink. */
  tree: Tree;
  blockSize: number;
  stats: SyncStats;
  /** Files of more blocks than `from` commit by segments, `perPut` per segments.put (SEGMENTED_FROM, SEGMENTS_PER_PUT; lower in tests). */
  segmented?: { from: number; perPut: number };
  /** Files of more blocks than this never fetch their head's whole block list (WHOLE_LIST_BLOCKS; lower in tests). */
  wholeListBlocks?: number;
}

export class SiteSync {
  readonly site: SiteClient;
  readonly bucket: string;
  readonly tree: Tree;
  readonly blockSize: number;
  private readonly stats: SyncStats;
  private readonly segmented: { from: number; perPut: number };
  private readonly wholeListBlocks: number;
  private readonly idsOf = (run: Buffer, bs: number) => this.site.blockIds(run, bs);
  /** File data in memory at once, across every file this sync streams (bytes). */
  private readonly memory = new Slots(STREAM_MEMORY);
  /** The site refused a patch commit's stat (older than them): never ask again on this link. */
  private noPatch = false;
  /** During syncTree: what the site has below the tree's root, so unchanged files cost no round trip. */
  /** headKey of each object the site listed below the synced tree (a digest: a share of millions is not held whole). */
  private heads: Map<string, string> | null = null;
  /** During syncTree: each directory's entries, scanned while the site's list was on its way. */
  private scanned: Map<string, Array<[string, TreeEntry]> | null> | null = null;
  /** Paths the last tree sync left out, each with why (isPathFault; names a plaintext repository cannot hold). */
  leftOut: Array<[path: string, why: string]> = [];

  constructor(o: SiteSyncOptions) {
    this.site = o.site;
    this.bucket = o.bucket;
    this.tree = o.tree;
    this.blockSize = o.blockSize;
    this.stats = o.stats;
    this.segmented = o.segmented ?? { from: SEGMENTED_FROM, perPut: SEGMENTS_PER_PUT };
    this.wholeListBlocks = o.wholeListBlocks ?? WHOLE_LIST_BLOCKS;
  }

  /** Whether the site's repository can hold the name (a plaintext one holds UTF-8 names only). */
  private canHold(rel: string): boolean {
    return this.site.encrypted || isUtf8Name(rel);
  }

  async rename(from: string, to: string): Promise<void> {
    const src = this.tree.stat(from);
    const dst = this.tree.stat(to);
    // A plaintext repository holds no name that is not UTF-8: nothing there to move (syncing `to` brings it, or leaves it out).
    if (!src && dst && this.canHold(from) && this.canHold(to)) {
      try {
        await this.site.call('object.move', { bucket: this.bucket, from, to });
      } catch (err) {
        if (!(err instanceof DrRpcError && err.code === NOT_FOUND)) throw err;
      }
    }
    await this.syncPath(from);
    await this.syncPath(to);
    // Records of paths below a renamed directory may have been handled after
    // the rename (their old names were gone), or, retried after a failure,
    // after the site moved the subtree (a delete then missed the moved copy):
    // reconcile the subtree both ways. Files the site already has cost a stat.
    if (dst?.kind === 'dir') await this.syncTree(to, true);
  }

  /**
   * Reconciles a whole subtree. Up to TREE_CONCURRENCY objects are in flight
   * at once, so round trips and the site's fsyncs overlap; a directory is
   * committed before anything below it is.
   */
  async syncTree(rel: string, prune = false): Promise<void> {
    this.leftOut = [];
    // The site lists what it has (a page at a time, kept as digests) while the source tree is scanned.
    const heads = new Map<string, string>();
    const listing = this.site.list({ bucket: this.bucket, prefix: rel }, (objects) => {
      for (const o of objects as ListedObject[]) heads.set(o.path, headKey(o.kind, o.size, o.meta));
    });
    let arrived = false;
    listing.then(() => { arrived = true; }, () => { arrived = true; });
    try {
      this.scanned = new Map();
      await this.prefetch(rel, () => arrived);
    } catch (err) {
      listing.catch(() => undefined);
      this.scanned = null;
      throw err;
    }
    await listing;
    this.heads = heads;
    try {
      await this.walkTree(rel);
    } finally {
      this.heads = null;
      this.scanned = null;
    }
    if (prune) await this.prune(rel, [...heads.keys()]);
    if (this.leftOut.length > 0) {
      const n = this.leftOut.length;
      const some = this.leftOut.slice(0, 5).map(([p, why]) => `${JSON.stringify(p)}: ${why}`).join('; ');
      throw new VfsxError('VFSX_ERR_REPL_PARTIAL', `${n} path(s) left out, with what is below them (the rest is synced): ${some}${n > 5 ? '; ...' : ''}`);
    }
  }

  /** Deletes at the site what it has below rel and the source does not (parents first; a delete takes the subtree). */
  private async prune(rel: string, sitePaths: string[]): Promise<void> {
    let gone: string | null = null;
    let kept = 0;
    for (const p of [...sitePaths].sort()) {
      if (p === rel || (gone !== null && p.startsWith(`${gone}/`))) continue;
      if (this.tree.stat(p)) {
        if (++kept % PRUNE_YIELD === 0) await new Promise<void>((r) => setImmediate(r));
        continue;
      }
      await this.site.call('object.delete', { bucket: this.bucket, path: p });
      gone = p;
    }
  }

  /** Scans directories below rel (parents first) into `scanned` until `enough()` or PREFETCH_ENTRIES. */
  private async prefetch(rel: string, enough: () => boolean): Promise<void> {
    const dirs = [rel];
    let held = 0;
    for (let i = 0; i < dirs.length && held < PREFETCH_ENTRIES && !enough(); i++) {
      const entries = await this.tree.scanAsync(dirs[i], true);
      this.scanned?.set(dirs[i], entries);
      held += entries?.length ?? 0;
      for (const [name, e] of entries ?? []) if (e.kind === 'dir') dirs.push(dirs[i] ? `${dirs[i]}/${name}` : name);
    }
  }

  /**
   * Directories are synced up to TREE_CONCURRENCY at a time, each one as soon
   * as its parent is committed (not when its parent's files are done: a
   * directory of large files and one of small files then overlap, the
   * site's index work beside the replicator's sealing), and no more than
   * TREE_CONCURRENCY files are in flight across all of them.
   */
  private async walkTree(rel: string): Promise<void> {
    const queue: string[] = [rel];
    const running = new Set<Promise<void>>();
    let failed: unknown = null;
    let wake = () => undefined as void;
    const enqueue = (dir: string) => {
      queue.push(dir);
      wake();
    };
    const files = new Slots(TREE_CONCURRENCY);
    while ((queue.length > 0 || running.size > 0) && failed === null) {
      while (queue.length > 0 && running.size < TREE_CONCURRENCY) {
        const dir = queue.shift() as string;
        const p = this.syncDirEntries(dir, enqueue, files).catch((err) => {
          failed = err;
        }).finally(() => running.delete(p));
        running.add(p);
      }
      if (running.size === 0) break;
      const queued = new Promise<void>((resolve) => { wake = resolve; });
      await Promise.race([...running, queued]);
      wake = () => undefined;
    }
    if (failed !== null) throw failed;
  }

  /** Syncs the entries of one directory (files concurrently); queues its subdirectories. */
  private async syncDirEntries(rel: string, enqueue: (dir: string) => void, files: Slots): Promise<void> {
    const pre = this.scanned?.get(rel);
    this.scanned?.delete(rel);
    const entries = pre !== undefined ? pre : await this.tree.scanAsync(rel, true);
    if (!entries) return; // gone meanwhile, or now a symlink: a later record handles it
    // Unchanged files (same size and metadata as the site's head) are skipped; small ones go in batches.
    const small: string[] = [];
    const single: string[] = [];
    for (const [name, e] of entries) {
      const child = rel ? `${rel}/${name}` : name;
      if (!this.site.encrypted && !isUtf8Name(name)) {
        this.leftOut.push([child, NOT_UTF8]); // the rest of the tree still syncs; syncTree then fails, naming it
        continue;
      }
      const head = this.heads?.get(child);
      if (e.kind === 'dir') {
        // The directory first, then what is below it; an unchanged one costs no round trip.
        if (head === headKey('dir', 0, metaOfEntry(e))) enqueue(child);
        else if (await this.orLeaveOut(child, () => this.syncPath(child))) enqueue(child);
        continue;
      }
      if (e.kind !== 'file') {
        single.push(child);
        continue;
      }
      if (head === headKey('file', e.size, metaOfEntry(e))) continue;
      (e.size <= SMALL_FILE ? small : single).push(child);
    }
    // Batches of small files SMALL_LANES at a time: one is read and sealed while the site commits another.
    const batches: string[][] = [];
    for (let i = 0; i < small.length; i += BATCH_FILES) batches.push(small.slice(i, i + BATCH_FILES));
    await inLanes(batches, SMALL_LANES, (b) => files.with(() => this.syncSmallFiles(b).catch(async (err) => {
      if (!isPathFault(err)) throw err;
      for (const f of b) await this.orLeaveOut(f, () => this.syncPath(f)); // which one: each on its own
    })));
    await inLanes(single, TREE_CONCURRENCY, (f) => files.with(() => this.orLeaveOut(f, () => this.syncPath(f))));
  }

  /** Runs a path's sync; true when done, false when it failed with a fault of that path alone (left out). */
  private async orLeaveOut(rel: string, fn: () => Promise<unknown>): Promise<boolean> {
    try {
      await fn();
      return true;
    } catch (err) {
      if (!isPathFault(err)) throw err;
      this.leftOut.push([rel, (err as Error).message]);
      return false;
    }
  }

  /**
   * Many paths at once, each as the source has it now (the entry the caller
   * read, or null when the path is gone): deletes in one transaction per
   * BATCH_OBJECTS, directories (parents first) and symlinks committed
   * together, small files in rounds of BATCH_FILES (syncSmallFiles). Larger
   * files, and whatever the site refuses in bulk, go one by one.
   */
  async syncMany(entries: Array<[string, TreeEntry | null]>): Promise<void> {
    const { site, bucket } = this;
    const gone: string[] = [];
    const plain: Array<[string, TreeEntry]> = [];
    const small: string[] = [];
    const single: string[] = [];
    for (const [rel, e] of entries) {
      if (e === null) gone.push(rel);
      else if (e.kind === 'dir' || e.kind === 'symlink') plain.push([rel, e]);
      else if (e.kind === 'file' && e.size <= SMALL_FILE) small.push(rel);
      else single.push(rel);
    }
    for (let i = 0; i < gone.length; i += BATCH_OBJECTS) {
      const paths = gone.slice(i, i + BATCH_OBJECTS);
      try {
        await site.call('object.deleteMany', { bucket, paths });
        this.stats.commits += paths.length;
      } catch (err) {
        if (!(err instanceof DrRpcError && err.code === METHOD_NOT_FOUND)) throw err;
        single.push(...paths);
      }
    }
    // Depth first: a directory's parent is committed before it.
    plain.sort(([a], [b]) => a.split('/').length - b.split('/').length);
    for (let i = 0; i < plain.length; i += BATCH_OBJECTS) {
      const chunk = plain.slice(i, i + BATCH_OBJECTS);
      const objects = chunk.map(([rel, e]) => e.kind === 'dir'
        ? { path: rel, kind: 'dir', meta: metaOfEntry(e) }
        : { path: rel, kind: 'symlink', meta: metaOfEntry(e), target: targetOf(e) });
      try {
        await site.call('object.commitMany', { bucket, objects });
        this.stats.commits += objects.length;
      } catch (err) {
        // The site has an ancestor as a file: one by one, ancestors first.
        if (!(err instanceof DrRpcError && err.code === NOT_A_DIRECTORY)) throw err;
        single.push(...chunk.map(([rel]) => rel));
      }
    }
    await this.syncFiles(small);
    // Every block read: the caller counts these paths as synced whole.
    for (const rel of single) await this.syncPath(rel, undefined, true);
  }

  /**
   * Whole small files, many at once: one "which blocks are missing", the
   * missing blocks in as few frames as fit, one commit of all of them in one
   * transaction at the site. A file that vanishes or changes while it is
   * read goes the one-by-one way instead.
   */
  async syncFiles(rels: string[]): Promise<void> {
    for (let i = 0; i < rels.length; i += BATCH_FILES) await this.syncSmallFiles(rels.slice(i, i + BATCH_FILES));
  }

  private async syncSmallFiles(rels: string[]): Promise<void> {
    const { site, bucket, blockSize: bs } = this;
    const objects: Array<Record<string, unknown>> = [];
    const blocks = new Map<string, Buffer>();
    const oneByOne: string[] = [];
    await Promise.all(rels.map(async (rel) => {
      try {
        const fb = await readBlocks(this.tree, rel, bs, null, this.idsOf);
        const hashes: string[] = [];
        for (let i = 0; i < fb.count; i++) {
          const [h, data] = fb.read.get(i) as [string, Buffer];
          hashes.push(h);
          blocks.set(h, data);
        }
        objects.push({ path: rel, kind: 'file', meta: metaOfEntry(fb.entry), size: fb.entry.size, blockSize: bs, blocks: hashes });
      } catch {
        oneByOne.push(rel); // gone, torn or unreadable now: the single path reports it properly
      }
    }));
    if (objects.length > 0) {
      const missing = (await site.call<{ missing: string[] }>('blocks.missing', { hashes: [...blocks.keys()] })).missing;
      await this.sendBlocks(missing.map((h) => [h, blocks.get(h) as Buffer]));
      try {
        await site.call('object.commitMany', { bucket, objects });
        this.stats.commits += objects.length;
      } catch (err) {
        // A block went away meanwhile (retention), or the site has an ancestor as a file: one by one.
        if (!(err instanceof DrRpcError && (err.code === -32001 || err.code === NOT_A_DIRECTORY))) throw err;
        oneByOne.push(...objects.map((o) => o.path as string));
      }
    }
    // Every block read (a file torn under its writer is not what the site had): synced whole, as the caller counts it.
    for (const rel of oneByOne) await this.syncPath(rel, undefined, true);
  }

  /**
   * Makes the site's object at rel match the source now. Returns true when
   * the whole state was read (a file's every block, or a path that is not a
   * regular file), false when only dirty blocks or metadata were. `ino`
   * (hex) names the file the ranges were written to.
   */
  async syncPath(rel: string, ranges?: Array<[number, number]>, full = false, ino?: string): Promise<boolean> {
    try {
      return await this.syncPathOnce(rel, ranges, full, ino);
    } catch (err) {
      if (!(err instanceof DrRpcError && err.code === NOT_A_DIRECTORY)) throw err;
    }
    // The site has an ancestor as a file or symlink (the source replaced it
    // with a directory, and that record is not handled yet): bring the
    // ancestors up to date first, then this path.
    const parts = rel.split('/');
    for (let i = 1; i < parts.length; i++) await this.syncPathOnce(parts.slice(0, i).join('/'));
    return this.syncPathOnce(rel, ranges, full, ino);
  }

  /** Like syncPath, but a file's every block is read and sent if the site lacks it (a scrub's repair of content). */
  async resyncPath(rel: string): Promise<void> {
    await this.syncPathOnce(rel, undefined, true);
  }

  private async syncPathOnce(rel: string, ranges?: Array<[number, number]>, full = false, ino?: string): Promise<boolean> {
    const e = this.tree.stat(rel, true);
    const { site, bucket } = this;
    let whole = true;
    if (!e) {
      // A name a plaintext repository cannot hold was never there: its delete has nothing to do.
      if (this.canHold(rel)) await site.call('object.delete', { bucket, path: rel });
    } else if (e.kind === 'dir') {
      await site.call('object.commit', { bucket, path: rel, kind: 'dir', meta: metaOfEntry(e) });
    } else if (e.kind === 'symlink') {
      // A symlink is replicated as a symlink; what it points to is never read.
      await site.call('object.commit', { bucket, path: rel, kind: 'symlink', meta: metaOfEntry(e), target: targetOf(e) });
    } else if (e.kind === 'file') {
      whole = await this.syncFile(rel, ranges, full, ino);
    }
    this.stats.commits++;
    return whole;
  }

  /**
   * Sends blocks in frames of up to MAX_PUT_BYTES, PUT_WINDOW frames in
   * flight: round trips to a remote site overlap, and the site stores
   * frames concurrently. (On loopback it measured no faster than one
   * frame at a time: there the site's disk flushes are the limit.)
   */
  private async sendBlocks(blocks: Array<[string, Buffer]>): Promise<void> {
    const frames: Array<Array<[string, Buffer]>> = [];
    let frame: Array<[string, Buffer]> = [];
    let bytes = 0;
    for (const b of blocks) {
      if (bytes + b[1].length > MAX_PUT_BYTES && frame.length > 0) {
        frames.push(frame);
        frame = [];
        bytes = 0;
      }
      frame.push(b);
      bytes += b[1].length;
    }
    if (frame.length > 0) frames.push(frame);
    await inLanes(frames, PUT_WINDOW, async (f) => {
      const data = f.map(([, d]) => d);
      await this.site.putBlocks(data, f.map(([h]) => h));
      this.stats.blocksSent += data.length;
      for (const d of data) this.stats.bytesSent += d.length;
    });
  }

  /**
   * Hands each chunk's blocks the site lacks to it (one "which are
   * missing" per chunk; a block met twice is asked for and sent once).
   */
  private chunkSender(): (chunk: Array<[number, string, Buffer]>) => Promise<void> {
    const asked = new Set<string>();
    return async (chunk) => {
      const ids = [...new Set(chunk.map(([, h]) => h))].filter((h) => !asked.has(h));
      if (ids.length === 0) return;
      for (const h of ids) asked.add(h);
      const missing = new Set((await this.site.call<{ missing: string[] }>('blocks.missing', { hashes: ids })).missing);
      const send: Array<[string, Buffer]> = [];
      for (const [, h, data] of chunk) {
        if (missing.delete(h)) send.push([h, data]); // else not missing, or already queued (same block twice)
      }
      await this.sendBlocks(send);
    };
  }

  /**
   * A few blocks of a file changed in place (its size did not): reads and
   * sends those blocks, and commits the site's segment list with only the
   * segments they fall in spelt out, instead of fetching and sending the
   * whole block list (16,384 ids for 1 GiB). Null when this cannot apply
   * (no such head, another size or block size, a site without patch
   * commits, or an encrypted head sealed before segment lists were bound):
   * the caller takes the usual way.
   */
  private async patchFile(rel: string, ranges: Array<[number, number]>, st: TreeEntry | null): Promise<boolean | null> {
    const bs = this.blockSize;
    if (this.noPatch || !st || st.kind !== 'file' || st.size === 0) return null;
    const count = Math.ceil(st.size / bs);
    // Ranges reaching past the file: it was truncated since (or is another file); the usual way reads it.
    if (ranges.some(([off, len]) => off + len > st.size)) return null;
    const which = new Set<number>();
    for (const [off, len] of ranges) {
      if (len === 0) continue;
      for (let i = Math.floor(off / bs); i <= Math.min(count - 1, Math.floor((off + len - 1) / bs)); i++) which.add(i);
    }
    const segIdx = [...new Set([...which].map((i) => Math.floor(i / SEGMENT_BLOCKS)))].sort((a, b) => a - b);
    if (which.size === 0 || segIdx.length > PATCH_SEGMENTS) return null;
    const head = await this.patchHead(rel, segIdx);
    if (!head || head.blockSize !== bs || head.size !== st.size) return null;
    const headSegments = head.segments;
    const lists = head.lists;
    // A head whose segments do not tile the file as this client cuts it: the usual way rewrites it whole.
    const nseg = Math.ceil(count / SEGMENT_BLOCKS);
    const fits = (si: number) => (lists.get(si) as string[]).length === (si === nseg - 1 ? count - si * SEGMENT_BLOCKS : SEGMENT_BLOCKS);
    if (headSegments.length !== nseg || !segIdx.every(fits)) return null;
    const fb = await streamBlocks(this.tree, rel, bs, which, this.idsOf, this.chunkSender(), CHUNK_BYTES, this.memory);
    if (fb.count !== count) return null; // resized meanwhile: the usual way reads what it is now
    for (const i of which) (lists.get(Math.floor(i / SEGMENT_BLOCKS)) as string[])[i % SEGMENT_BLOCKS] = fb.ids.get(i) as string;
    return this.commitSegments(rel, fb.entry, bs, headSegments, lists);
  }

  /**
   * The head's segment list and the block lists of the segments asked for
   * (each checked against the hash the list names: what a hostile site
   * cannot fake). Null when there is no file head to patch, or the site
   * (from before patch commits) or the head (encrypted and sealed before
   * segment lists were bound) does not give them.
   */
  private async patchHead(rel: string, segIdx: number[]): Promise<(PatchHead & { segments: string[]; lists: Map<number, string[]> }) | null> {
    let head: PatchHead | null;
    try {
      head = await this.site.call<PatchHead | null>('object.stat', { bucket: this.bucket, path: rel, segments: segIdx });
    } catch (err) {
      if (!(err instanceof DrRpcError && err.code === INVALID_PARAMS)) throw err;
      this.noPatch = true; // a site from before patch commits
      return null;
    }
    if (!head || head.kind !== 'file' || !Array.isArray(head.segments) || !Array.isArray(head.segmentBlocks)) return null;
    const { segments, segmentBlocks } = head;
    if (segIdx.some((si) => si >= segments.length)) return null; // a shorter head than the file now (grown): not a patch
    if (segmentBlocks.length !== segIdx.length) throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `${rel}: the DR site answered ${segmentBlocks.length} segments for ${segIdx.length} asked`);
    const lists = new Map<number, string[]>();
    for (let k = 0; k < segIdx.length; k++) {
      const list = segmentBlocks[k];
      if (!Array.isArray(list) || segmentHash(list) !== segments[segIdx[k]]) {
        throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `${rel}: the DR site's segment ${segIdx[k]} is not the one its list names`);
      }
      lists.set(segIdx[k], [...list]);
    }
    return { ...head, segments, lists };
  }

  /**
   * Commits a file by its segment list: the head's, with the segments in
   * `lists` (changed or new) in their place. New lists go with the commit,
   * or ahead of it by segments.put when there are many. A segment or block
   * gone meanwhile (retention raced us): the whole file is sent.
   */
  private async commitSegments(rel: string, entry: TreeEntry, bs: number, headSegments: string[], lists: Map<number, string[]>): Promise<boolean> {
    const segments = [...headSegments];
    const newSegments: string[][] = [];
    for (const [si, list] of [...lists].sort(([a], [b]) => a - b)) {
      const h = segmentHash(list);
      if (h === segments[si]) continue;
      segments[si] = h;
      newSegments.push(list);
    }
    const params = { bucket: this.bucket, path: rel, kind: 'file', meta: metaOfEntry(entry), size: entry.size, blockSize: bs, segments };
    try {
      if (newSegments.length > PATCH_SEGMENTS) {
        for (let i = 0; i < newSegments.length; i += this.segmented.perPut) await this.site.call('segments.put', { segments: newSegments.slice(i, i + this.segmented.perPut) });
        await this.site.call('object.commit', params);
      } else {
        await this.site.call('object.commit', { ...params, newSegments });
      }
    } catch (err) {
      if (err instanceof DrRpcError && err.code === -32001) return this.syncFile(rel, undefined, true);
      throw err;
    }
    return false;
  }

  /**
   * A file of more than wholeListBlocks blocks changed without a change
   * of its size (metadata: an attribute, an ACL) or grown (written past
   * its end: an append, a log, a backup written in pieces): commits the
   * head's segment list with only the segments touched spelt out, reading
   * only the blocks written and those past the head's end. Its whole block
   * list (up to 4 million ids, about 600 MiB of heap) is never fetched.
   * Null when this cannot apply: the usual way then reads the whole file,
   * still without the head's list.
   */
  private async growFile(rel: string, ranges: Array<[number, number]> | undefined, st: TreeEntry): Promise<boolean | null> {
    if (this.noPatch) return null;
    const top = await this.patchHead(rel, []);
    if (!top || top.blockSize <= 0) return null;
    const bs = top.blockSize;
    const headCount = Math.ceil(top.size / bs);
    const count = Math.ceil(st.size / bs);
    if (top.segments.length !== Math.ceil(headCount / SEGMENT_BLOCKS) || count > MAX_FILE_BLOCKS) return null;
    const which = new Set<number>();
    if (!ranges) {
      // Only metadata changed when size and mtime still match what the site has.
      if (st.size !== top.size || st.mtimeNs !== (top as { meta?: { mtimeNs?: string } }).meta?.mtimeNs) return null;
    } else {
      const end = ranges.reduce((m, [off, len]) => Math.max(m, off + len), 0);
      // Writes in the ranges over the site's copy give this size; another means another change.
      if (st.size < top.size || st.size !== Math.max(top.size, end)) return null;
      for (const [off, len] of ranges) {
        if (len === 0) continue;
        for (let i = Math.floor(off / bs); i <= Math.min(count - 1, Math.floor((off + len - 1) / bs)); i++) which.add(i);
      }
      for (let i = Math.floor(top.size / bs); i < count; i++) which.add(i); // past the head's end: read whatever the ranges say
    }
    // The head's segments the writes fall in (the grown file's new ones have no list at the site yet).
    const touched = [...new Set([...which].map((i) => Math.floor(i / SEGMENT_BLOCKS)))].filter((si) => si < top.segments.length).sort((a, b) => a - b);
    if (touched.length > PATCH_SEGMENTS) return null;
    const head = touched.length > 0 ? await this.patchHead(rel, touched) : { ...top, lists: new Map<number, string[]>() };
    if (!head || head.blockSize !== bs || head.size !== top.size || head.segments.join() !== top.segments.join()) return null; // changed meanwhile
    const lists = head.lists;
    const fits = (si: number) => (lists.get(si) as string[]).length === Math.min(SEGMENT_BLOCKS, headCount - si * SEGMENT_BLOCKS);
    if (!touched.every(fits)) return null;
    const fb = await streamBlocks(this.tree, rel, bs, which, this.idsOf, this.chunkSender(), CHUNK_BYTES, this.memory);
    if (fb.count !== count) return null; // resized meanwhile: the usual way reads what it is now
    if (!ranges && fb.entry.mtimeNs !== st.mtimeNs) return null; // written meanwhile: not metadata only any more
    for (const i of which) {
      const si = Math.floor(i / SEGMENT_BLOCKS);
      let list = lists.get(si);
      if (!list) lists.set(si, (list = []));
      list[i % SEGMENT_BLOCKS] = fb.ids.get(i) as string;
    }
    // Every list whole: the head's blocks where not written, the written and the new ones read.
    for (const [si, list] of lists) {
      if (list.length !== Math.min(SEGMENT_BLOCKS, count - si * SEGMENT_BLOCKS)) return null;
      for (let k = 0; k < list.length; k++) if (typeof list[k] !== 'string') return null; // a hole: a block not read
    }
    return this.commitSegments(rel, fb.entry, bs, top.segments, lists);
  }

  /** Whether st is the regular file with inode `ino` (hex, as the module reports it). */
  private static isFile(st: TreeEntry | null, ino: string): boolean {
    try {
      return st !== null && st.kind === 'file' && st.ino === BigInt(`0x${ino}`).toString();
    } catch {
      return false; // not hex: trust nothing
    }
  }

  /**
   * Returns whether every block was read. Dirty ranges are trusted only for
   * the file they were written to (`ino`) and only when they explain its
   * size: by the time a report is replicated its name may hold another file
   * (an Office save renamed one over it) or one truncated since, and
   * blocks taken from the site's copy would then be another file's, under
   * this one's size and mtime (which the metadata-only check trusts).
   */
  private async syncFile(rel: string, ranges?: Array<[number, number]>, full = false, ino?: string): Promise<boolean> {
    const { site, bucket } = this;
    const st = !full && ranges ? this.tree.stat(rel) : null;
    if (!full && ranges && ino !== undefined && !SiteSync.isFile(st, ino)) {
      ranges = undefined;
      full = true;
    }
    // A large file: never its whole block list (up to 4 million ids); its segments where that applies, else read it all.
    const local = st ?? this.tree.stat(rel);
    const large = local?.kind === 'file' && Math.ceil(local.size / this.blockSize) > this.wholeListBlocks;
    if (!full && (ranges || large)) {
      const patched = large ? await this.growFile(rel, ranges, local) : await this.patchFile(rel, ranges as Array<[number, number]>, st);
      if (patched !== null) return patched;
    }
    const head = await site.call<Head | null>('object.stat', { bucket, path: rel, ...(large ? {} : { blocks: true }) });
    const bs = head?.kind === 'file' && head.blockSize > 0 ? head.blockSize : this.blockSize;
    const size = local?.size ?? 0;
    if (Math.ceil(size / bs) > MAX_FILE_BLOCKS) {
      throw new VfsxError('VFSX_ERR_REPL_TOO_LARGE', `${rel}: ${size} bytes is ${Math.ceil(size / bs)} blocks of ${bs}; the DR site takes files of at most ${MAX_FILE_BLOCKS} blocks (a larger replication.blockSize for new files raises the limit)`);
    }
    let which: Set<number> | null = null;
    if (!full && head?.kind === 'file' && head.blocks && ranges) {
      const end = ranges.reduce((m, [off, len]) => Math.max(m, off + len), 0);
      const now = this.tree.stat(rel); // after the site's answer: the file as it is read next
      // Writes in the ranges over the site's copy give this size; another means another change (read it all).
      if (now && now.size === Math.max(head.size, end)) {
        which = new Set();
        for (const [off, len] of ranges) {
          if (len === 0) continue;
          for (let i = Math.floor(off / bs); i <= Math.floor((off + len - 1) / bs); i++) which.add(i);
        }
      }
    } else if (!full && head?.kind === 'file' && head.blocks && !ranges) {
      // Metadata-only change when size and mtime still match what the site has.
      const now = this.tree.stat(rel);
      if (now && now.size === head.size && now.mtimeNs === head.meta.mtimeNs) which = new Set();
    }
    // Streamed: each chunk's missing blocks go to the site while the next chunk is read.
    const fb = await streamBlocks(this.tree, rel, bs, which, this.idsOf, this.chunkSender(), CHUNK_BYTES, this.memory);
    const meta = metaOfEntry(fb.entry);
    const hashes: string[] = [];
    for (let i = 0; i < fb.count; i++) {
      const h = fb.ids.get(i) ?? head?.blocks?.[i];
      if (h === undefined) return this.syncFile(rel, undefined, true); // grew outside the ranges
      hashes.push(h);
    }
    try {
      if (hashes.length > this.segmented.from && await this.putSegments(hashes)) {
        await site.call('object.commit', { bucket, path: rel, kind: 'file', meta, size: fb.entry.size, blockSize: bs, segments: segmentsOf(hashes) });
      } else {
        await site.call('object.commit', { bucket, path: rel, kind: 'file', meta, size: fb.entry.size, blockSize: bs, blocks: hashes });
      }
      return which === null;
    } catch (err) {
      // A block the head had is gone (retention raced us): send everything.
      if (err instanceof DrRpcError && err.code === -32001 && !full) return this.syncFile(rel, undefined, true);
      throw err;
    }
  }

  /** A large file's segments, stored ahead of its commit; false when the site has no segments.put (it then takes the block list). */
  private async putSegments(blocks: string[]): Promise<boolean> {
    const segments: string[][] = [];
    for (let i = 0; i < blocks.length; i += SEGMENT_BLOCKS) segments.push(blocks.slice(i, i + SEGMENT_BLOCKS));
    const per = this.segmented.perPut;
    for (let i = 0; i < segments.length; i += per) {
      try {
        await this.site.call('segments.put', { segments: segments.slice(i, i + per) });
      } catch (err) {
        if (i === 0 && err instanceof DrRpcError && err.code === METHOD_NOT_FOUND) return false;
        throw err;
      }
    }
    return true;
  }
}

/** Runs fn on each item in order, at most `lanes` at once. */
async function inLanes<T>(items: T[], lanes: number, fn: (item: T) => Promise<unknown>): Promise<void> {
  let next = 0;
  const lane = async () => {
    while (next < items.length) await fn(items[next++]);
  };
  await Promise.all(Array.from({ length: Math.min(lanes, items.length) }, lane));
}
