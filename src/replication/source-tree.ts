/**
 * Reading the source side of a share: metadata as the DR site stores it,
 * and a file's blocks, with torn-read detection (a file that changes while
 * it is read is reported, not returned half old, half new). Everything is
 * read beneath the share root without following a symlink (Tree).
 */
import { createHash } from 'node:crypto';
import { BigIntStats, closeSync, fstat, fstatSync, read, readSync } from 'node:fs';
import { promisify } from 'node:util';
import { getAttribute, listAttributes } from 'fs-xattr';
import { VfsxError } from '../errors/vfsx-error';
import { nameFromBytes } from '../protocol/byte-names';
import { readCached } from '../native/addon';
import type { Slots } from './slots';
import type { Tree, TreeEntry } from '../native/tree';

const fstatAsync = promisify(fstat) as (fd: number, o: { bigint: true }) => Promise<BigIntStats>;
const readAsync = promisify(read) as unknown as (fd: number, b: Buffer, off: number, len: number, pos: number) => Promise<{ bytesRead: number }>;

export interface SourceMeta {
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: string;
  /** Extended attributes, values base64: Samba keeps DOS attributes (user.DOSATTRIB), NT ACLs (security.NTACL) and streams (user.DosStream.*) there. */
  xattrs?: Record<string, string>;
}

const MISSING = new Set(['ENOENT', 'ENODATA', 'ENOTSUP', 'EOPNOTSUPP']);

/** Every extended attribute of a file or directory by path (tests and tools on trusted paths; undefined when it has none). */
export async function xattrsOf(path: string): Promise<Record<string, string> | undefined> {
  let names: string[];
  try {
    names = await listAttributes(path);
  } catch (err) {
    if (MISSING.has((err as NodeJS.ErrnoException).code ?? '')) return undefined;
    throw err;
  }
  const out: Record<string, string> = {};
  for (const n of names.sort()) {
    try {
      out[n] = (await getAttribute(path, n)).toString('base64');
    } catch (err) {
      if (!MISSING.has((err as NodeJS.ErrnoException).code ?? '')) throw err;
    }
  }
  return Object.keys(out).length > 0 ? out : undefined;
}

/**
 * Metadata as the DR site stores it, from an entry read beneath the share
 * root (xattrs included when the entry was read with them).
 */
export function metaOfEntry(e: TreeEntry): SourceMeta {
  const m: SourceMeta = { mode: e.mode, uid: e.uid, gid: e.gid, mtimeNs: e.mtimeNs };
  if (!e.xattrs) return m;
  const names = Object.keys(e.xattrs).sort();
  if (names.length === 0) return m;
  const xattrs: Record<string, string> = {};
  for (const n of names) xattrs[n] = e.xattrs[n].toString('base64');
  return { ...m, xattrs };
}

/** A symlink's target as the site stores it. */
/** A short digest of s (SHA-256, 22 base64 characters): what a whole-share pass keeps of an object's metadata. */
export const digestOf = (s: string): string => createHash('sha256').update(s).digest('base64').slice(0, 22);

/** A symlink's target as a name string (escaped where it is not UTF-8: src/protocol/byte-names.ts). */
export const targetOf = (e: TreeEntry): string => nameFromBytes(e.target ?? Buffer.alloc(0));

const sameFile = (a: BigIntStats, e: TreeEntry) =>
  e.kind === 'file' && a.size === BigInt(e.size) && a.mtimeNs.toString() === e.mtimeNs && a.ctimeNs.toString() === e.ctimeNs && a.ino.toString() === e.ino;

export interface FileBlocks {
  /** The file's entry (xattrs included) as it was while every block was read. */
  entry: TreeEntry;
  /** index -> [hash, bytes] for the blocks read */
  read: Map<number, [string, Buffer]>;
  count: number;
}

/**
 * Reads the given block indexes (all when `which` is null) of the regular
 * file rel beneath the tree's root, never through a symlink. A file that
 * changes while it is read, or is swapped for anything else, is torn.
 * `idsOf` names the blocks of a run as the site knows them (SiteClient.blockIds).
 */
export async function readBlocks(tree: Tree, rel: string, blockSize: number, which: Set<number> | null, idsOf: IdsOf): Promise<FileBlocks> {
  const read = new Map<number, [string, Buffer]>();
  const r = await streamBlocks(tree, rel, blockSize, which, idsOf, async (chunk) => {
    for (const [i, id, buf] of chunk) read.set(i, [id, buf]);
  }, Infinity);
  return { entry: r.entry, read, count: r.count };
}

/** The ids of a run's blocks (blockSize bytes each, the last may be shorter). */
export type IdsOf = (run: Buffer, blockSize: number) => Promise<string[]>;

export interface FileIds {
  /** The file's entry (xattrs included) as it was while every block was read. */
  entry: TreeEntry;
  /** index -> id for the blocks read */
  ids: Map<number, string>;
  count: number;
}

/**
 * readBlocks for files of any size: the blocks are handed to `onChunk`
 * about `chunkBytes` at a time, in order, and only their ids are kept.
 * The next chunk is read while the last one is handled, so reading
 * overlaps sending and memory stays at two chunks. With `memory`, every
 * chunk also holds its bytes of that budget from its first read until it
 * has been handled, so the files streamed at once share it (the budget is
 * only ever awaited before a read, never by a chunk being handled: its
 * holders always finish). A file that changes while it is
 * read is torn (after its chunks were handed over: what was sent of it is
 * then orphaned blocks, which retention frees).
 */
export async function streamBlocks(
  tree: Tree, rel: string, blockSize: number, which: Set<number> | null, idsOf: IdsOf,
  onChunk: (chunk: Array<[number, string, Buffer]>) => Promise<void>, chunkBytes = CHUNK_BYTES, memory: Slots | null = null,
): Promise<FileIds> {
  let fd: number;
  try {
    fd = tree.openRead(rel);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ELOOP' || code === 'EINVAL' || code === 'ENOENT' || code === 'ENOTDIR') throw torn(rel);
    throw err;
  }
  let handling: Promise<void> = Promise.resolve();
  /** Gives back the budget of the chunk being read (null: none taken yet, or no `memory`). */
  let held: (() => void) | null = null;
  try {
    // Small files are read by the event loop when cached (see SMALL_READ_MAX), large ones on the thread pool.
    const before = fstatSync(fd, { bigint: true });
    const io = before.size <= BigInt(SMALL_READ_MAX) ? smallIo : asyncIo;
    const size = Number(before.size);
    const count = Math.ceil(size / blockSize);
    const ids = new Map<number, string>();
    let chunk: Array<[number, string, Buffer]> = [];
    let bytes = 0;
    const handOver = async () => {
      await handling; // one chunk handled while the next is read
      const c = chunk;
      const done = held;
      chunk = [];
      bytes = 0;
      held = null;
      handling = onChunk(c);
      if (done) void handling.then(done, done); // the chunk's budget comes back once it is handled, however that ends
      handling.catch(() => undefined); // observed now, awaited (and thrown) at the next hand-over
    };
    for (let i = 0; i < count;) {
      if (which && !which.has(i)) {
        i++;
        continue;
      }
      // Neighbouring blocks are read together, about READ_RUN bytes per call (a thread-pool
      // round trip and a disk request per 64 KiB block would leave the disk waiting).
      let n = 1;
      while (i + n < count && n * blockSize < READ_RUN && (!which || which.has(i + n))) n++;
      if (memory && held === null) {
        // What this chunk will hold: a chunk ends at the first run that takes it to chunkBytes.
        const left = which ? which.size * blockSize : size - i * blockSize;
        held = await memory.acquire(Math.min(left, chunkBytes + READ_RUN));
      }
      const start = i * blockSize;
      const runLen = Math.min(n * blockSize, size - start);
      const run = Buffer.allocUnsafe(runLen);
      if ((await io.read(fd, run, start)) !== runLen) throw torn(rel);
      const runIds = await idsOf(run, blockSize);
      for (let k = 0; k < n; k++, i++) {
        const buf = run.subarray(k * blockSize, Math.min((k + 1) * blockSize, runLen));
        const id = runIds[k];
        ids.set(i, id);
        chunk.push([i, id, buf]);
        bytes += buf.length;
      }
      if (bytes >= chunkBytes) await handOver();
    }
    if (chunk.length > 0) await handOver();
    await handling;
    const after = await io.fstat(fd);
    // The name must still be this file, and the file unchanged: metadata and xattrs belong to what was read.
    const entry = tree.stat(rel, true);
    if (!entry || !sameFile(before, entry) || !sameFile(after, entry)) throw torn(rel);
    return { entry, ids, count };
  } catch (err) {
    await handling.catch(() => undefined); // a chunk still being handled must not fail unobserved
    throw err;
  } finally {
    held?.(); // a chunk read in part and never handed over
    closeSync(fd);
  }
}

/** Bytes handed over per chunk by streamBlocks. */
export const CHUNK_BYTES = 16 << 20;

/** Bytes read per call when neighbouring blocks are wanted. */
const READ_RUN = 1 << 20;

/**
 * Files up to this size are read by the event loop itself when the page
 * cache holds them (a thread-pool round trip would cost more than the
 * read), on the thread pool when it does not: an initial sync of 2,000
 * cold 4 KiB files stalled the event loop on the disk for 0.3 s of its
 * 0.85 s; asking the cache first (readSmall) and reading the rest on the
 * thread pool took 0.68-0.87 s (median 0.80) against 0.79-0.95 s (median
 * 0.885) in 8 interleaved pairs, caches dropped. Hot files cost as before;
 * read on the thread pool they cost twice the system time.
 */
const SMALL_READ_MAX = 64 << 10;

interface BlockIo {
  read(fd: number, buf: Buffer, pos: number): Promise<number> | number;
  fstat(fd: number): Promise<BigIntStats> | BigIntStats;
}

/** The file system refused RWF_NOWAIT once: small reads are plain synchronous reads from then on. */
let noWaitUnsupported = false;

/** What the cache holds is read at once, the rest (if any) on the thread pool. */
function readSmall(fd: number, buf: Buffer, pos: number): Promise<number> | number {
  if (noWaitUnsupported) return readSync(fd, buf, 0, buf.length, pos);
  let n: number;
  try {
    n = readCached(fd, buf, pos);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EOPNOTSUPP') throw err;
    noWaitUnsupported = true;
    return readSync(fd, buf, 0, buf.length, pos);
  }
  if (n === buf.length || n === 0) return n;
  const have = Math.max(n, 0);
  return readRest(fd, buf, pos, have);
}

async function readRest(fd: number, buf: Buffer, pos: number, have: number): Promise<number> {
  while (have < buf.length) {
    const { bytesRead } = await readAsync(fd, buf, have, buf.length - have, pos + have);
    if (bytesRead === 0) break; // shorter now: the caller finds the file torn
    have += bytesRead;
  }
  return have;
}

const smallIo: BlockIo = {
  read: readSmall,
  fstat: (fd) => fstatSync(fd, { bigint: true }),
};

const asyncIo: BlockIo = {
  read: async (fd, buf, pos) => (await readAsync(fd, buf, 0, buf.length, pos)).bytesRead,
  fstat: (fd) => fstatAsync(fd, { bigint: true }),
};

function torn(path: string): VfsxError {
  return new VfsxError('VFSX_ERR_REPL_TORN', `${path} changed while it was read; retrying`);
}
