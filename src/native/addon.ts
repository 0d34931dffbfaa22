/**
 * Typed access to the native addon (native/addon): SO_PEERCRED, flock,
 * file-tree calls beneath a directory that never follow a symlink, and
 * block ids, sealing and checksums on the thread pool.
 */
import { readdirSync } from 'node:fs';
import { getPriority, setPriority } from 'node:os';
import { join } from 'node:path';
import { VfsxError } from '../errors/vfsx-error';
import { allocWithRoom } from '../protocol/frame-room';

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

/** What statAt reports of one entry (never following a symlink). */
export interface TreeEntry {
  kind: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  uid: number;
  gid: number;
  size: number;
  ino: string;
  dev: string;
  mtimeNs: string;
  ctimeNs: string;
  /** A symlink's target, as bytes. */
  target?: Buffer;
  /** Every extended attribute (when asked for; files and directories only). */
  xattrs?: Record<string, Buffer>;
}

/** What scanDir returns: see ScanResult in native/addon/tree_ops.cc. */
export type PackedScan = [text: Buffer, nums: Float64Array, bin: Buffer];

/** A name or path as the tree's calls take it: a string (its UTF-8) or its bytes. */
export type Name = string | Buffer;

export interface TreeOps {
  useWalk(on: boolean): void;
  openRoot(path: string): number;
  openAt(root: number, rel: Name, flags: number, mode: number): number;
  statAt(root: number, rel: Name, xattrs: boolean): TreeEntry | null;
  /** A directory's entries packed as [text, nums, bin] (unpacked by Tree), null when rel is not a directory of the tree. */
  scanDir(root: number, rel: Name, xattrs: boolean, async: false): PackedScan | null;
  /** The same read on the thread pool, through a duplicate of root. */
  scanDir(root: number, rel: Name, xattrs: boolean, async: true): Promise<PackedScan | null>;
  mkdirAt(root: number, rel: Name, mode: number): boolean;
  symlinkAt(root: number, rel: Name, target: Name): void;
  unlinkAt(root: number, rel: Name, dir: boolean): void;
  renameAt(root: number, from: Name, to: Name): void;
  chownAt(root: number, rel: Name, uid: number, gid: number): void;
  utimesAt(root: number, rel: Name, mtimeNs: string): void;
  chmodAt(root: number, rel: Name, mode: number): void;
  setXattrAt(root: number, rel: Name, name: string, value: Buffer): void;
}

interface AddonExports extends TreeOps {
  peerCred(fd: number): PeerCred;
  tryLock(fd: number): boolean;
  readCached(fd: number, buf: Buffer, pos: number): number;
  setIoPriority(tid: number, cls: number, level: number): void;
  execve(file: string, argv: string[], env: string[]): never;
  blockIds(key: Buffer, run: Buffer, blockSize: number, async: false): Buffer;
  blockIds(key: Buffer, run: Buffer, blockSize: number, async: true): Promise<Buffer>;
  sealBlocks(key: Buffer, ids: Buffer, bodies: Buffer[], flags: number[], out: Buffer, async: false): Buffer;
  sealBlocks(key: Buffer, ids: Buffer, bodies: Buffer[], flags: number[], out: Buffer, async: true): Promise<Buffer>;
  openBlocks(blockKey: Buffer, idKey: Buffer, ids: Buffer, sealed: Buffer[], out: Buffer, async: false): Buffer;
  openBlocks(blockKey: Buffer, idKey: Buffer, ids: Buffer, sealed: Buffer[], out: Buffer, async: true): Promise<Buffer>;
  crc32s(bufs: Buffer[]): Promise<Buffer>;
}

let cached: AddonExports | undefined;

function addon(): AddonExports {
  if (cached) return cached;
  const root = join(__dirname, '..', '..', '..');
  const candidates = [join(root, 'native/addon/build/Release/vfsx_addon.node')];
  for (const file of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      cached = require(file) as AddonExports;
      return cached;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') {
        throw new VfsxError('VFSX_ERR_NATIVE_ADDON', `cannot load ${file}`, { cause: err });
      }
    }
  }
  throw new VfsxError('VFSX_ERR_NATIVE_ADDON', 'native addon not built (run npm install)');
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`not a file descriptor: ${fd}`);
}

/** The addon's file-tree calls; use them through Tree (src/native/tree.ts). */
export function treeOps(): TreeOps {
  return addon();
}

/** Credentials of the process at the other end of a Unix socket. */
export function peerCred(fd: number): PeerCred {
  checkFd(fd);
  return addon().peerCred(fd);
}

/** Takes an exclusive flock without waiting; false when another holds it. */
export function tryLock(fd: number): boolean {
  checkFd(fd);
  return addon().tryLock(fd);
}

/**
 * Reads into buf at pos what the page cache holds of that range, without
 * waiting for the disk (preadv2 RWF_NOWAIT): the bytes read (fewer than
 * asked when only the first pages are cached, 0 at the end of the file),
 * or -1 when the first page is not cached. Throws EOPNOTSUPP where the
 * file system cannot read without waiting.
 */
export function readCached(fd: number, buf: Buffer, pos: number): number {
  return addon().readCached(fd, buf, pos);
}

/** I/O scheduling classes of ioprio_set(2). */
export const IO_CLASS = { realtime: 1, 'best-effort': 2, idle: 3 } as const;

/**
 * Lowers every thread of this process to CPU niceness `nice` and the given
 * I/O class and level (threads started later inherit it from their creator).
 * Per thread, because Linux applies both to one thread at a time.
 */
export function lowerPriority(nice: number, ioClass: keyof typeof IO_CLASS, ioLevel: number): void {
  for (const t of readdirSync('/proc/self/task')) {
    const tid = Number(t);
    try {
      if (getPriority(tid) < nice) setPriority(tid, nice);
      addon().setIoPriority(tid, IO_CLASS[ioClass], ioLevel);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ESRCH') throw err; // a thread that just ended
    }
  }
}

/** Replaces this process with `file` (same PID); throws only when execve(2) fails. */
export function execve(file: string, argv: string[], env: NodeJS.ProcessEnv): never {
  return addon().execve(file, argv, Object.entries(env).filter(([, v]) => v !== undefined).map(([k, v]) => `${k}=${v}`));
}

/** Runs from this size are hashed on the thread pool (for a small file the round trip there costs more than its hash). */
const ASYNC_HASH_BYTES = 256 << 10;

/**
 * The ids of a run's blocks (blockSize bytes each, the last may be
 * shorter), as hex: HMAC-SHA256 under `key`, or SHA-256 when `key` is
 * empty. A large run is hashed on the thread pool, beside the event loop's
 * reads and sends.
 */
export async function hashBlocks(key: Buffer, run: Buffer, blockSize: number): Promise<string[]> {
  const raw = run.length >= ASYNC_HASH_BYTES ? await addon().blockIds(key, run, blockSize, true) : addon().blockIds(key, run, blockSize, false);
  const out: string[] = [];
  for (let o = 0; o < raw.length; o += 32) out.push(raw.toString('hex', o, o + 32));
  return out;
}

/**
 * Seals each body with AES-256-GCM under `key` (a random nonce each, its
 * 32-byte id from `ids` as associated data; `flags` go in the header) as
 * src/repository/repo-cipher.ts lays a sealed block out, all into one new
 * buffer, back to back (each `overhead` bytes longer than its body). On
 * the thread pool when `async`. With `room`, that many bytes are reserved
 * in front of the buffer for a frame's header.
 */
export function sealBlocks(key: Buffer, ids: Buffer, bodies: Buffer[], flags: number[], overhead: number, async: true, room?: number): Promise<Buffer>;
export function sealBlocks(key: Buffer, ids: Buffer, bodies: Buffer[], flags: number[], overhead: number, async: false, room?: number): Buffer;
export function sealBlocks(key: Buffer, ids: Buffer, bodies: Buffer[], flags: number[], overhead: number, async: boolean, room = 0): Buffer | Promise<Buffer> {
  let total = 0;
  for (const b of bodies) total += overhead + b.length;
  // Not zero-filled (every byte is written), and not from the shared pool (the thread pool writes it);
  // `room` bytes in front for the header of the frame that sends them (src/protocol/frame-room.ts).
  const out = allocWithRoom(total, room);
  return async ? addon().sealBlocks(key, ids, bodies, flags, out, true) : addon().sealBlocks(key, ids, bodies, flags, out, false);
}

/** What openBlocks says of each block (native/addon/block_crypto.cc). */
export const OPEN_STATUS = { opened: 0, notSealed: 1, authFailed: 2, wrongId: 3, compressed: 4 } as const;

/**
 * Opens blocks sealed as sealBlocks seals them: AES-256-GCM under
 * `blockKey` with each 32-byte id of `ids` as associated data, then (unless
 * flagged compressed) checks HMAC-SHA256(idKey, plaintext) against the id.
 * Returns one status byte per block (OPEN_STATUS) and the bodies back to
 * back in one new buffer (each `overhead` bytes shorter than its sealed
 * form). On the thread pool from ASYNC_HASH_BYTES sealed bytes.
 */
export async function openBlocks(blockKey: Buffer, idKey: Buffer, ids: Buffer, sealed: Buffer[], overhead: number): Promise<{ status: Buffer; out: Buffer }> {
  let total = 0;
  let sealedBytes = 0;
  for (const b of sealed) {
    sealedBytes += b.length;
    if (b.length >= overhead) total += b.length - overhead;
  }
  // As for sealBlocks: every byte of an opened block is written; not from the shared pool.
  const out = Buffer.allocUnsafeSlow(total);
  const status = sealedBytes >= ASYNC_HASH_BYTES
    ? await addon().openBlocks(blockKey, idKey, ids, sealed, out, true)
    : addon().openBlocks(blockKey, idKey, ids, sealed, out, false);
  return { status, out };
}

/** zlib's CRC-32 of each buffer (4 bytes big-endian each), on the thread pool. */
export function crc32s(bufs: Buffer[]): Promise<Buffer> {
  return bufs.length === 0 ? Promise.resolve(Buffer.alloc(0)) : addon().crc32s(bufs);
}

/**
 * Resolve beneath a tree by walking one component at a time with O_NOFOLLOW
 * even where openat2 exists: the path kernels before 5.6 take. For tests.
 */
export function useWalkFallback(on: boolean): void {
  addon().useWalk(on);
}
