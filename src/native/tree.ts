/**
 * A directory tree reached only beneath its root: every path is resolved
 * by the kernel (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS, or an
 * O_NOFOLLOW walk) relative to a descriptor of the root opened once, and a
 * symlink in any component fails instead of being followed. A path below a
 * symlink or a file is not in the tree: stat() answers null for it.
 *
 * Used for everything a root process reads of a share (replicator, resync,
 * verify) and writes into a restore destination.
 */
import { isUtf8 } from 'node:buffer';
import { closeSync, constants, fstatSync } from 'node:fs';
import { nameFromBytes, sysName } from '../protocol/byte-names';
import { PackedScan, treeOps, TreeEntry, TreeOps } from './addon';

export type { TreeEntry } from './addon';

const { O_RDONLY, O_WRONLY, O_CREAT, O_EXCL, O_NONBLOCK } = constants;

const KINDS: Record<number, TreeEntry['kind']> = { [constants.S_IFREG]: 'file', [constants.S_IFDIR]: 'dir', [constants.S_IFLNK]: 'symlink' };

/** Copies len bytes of bin at off (an entry's bytes outlive the scan's buffer). */
function bytesAt(bin: Buffer, off: number, len: number): Buffer {
  return Buffer.from(bin.subarray(off, off + len));
}

/** A scan's NUL-ended text fields; names that are not UTF-8 escaped (src/protocol/byte-names.ts). */
function textFields(text: Buffer): string[] {
  if (isUtf8(text)) return text.toString('utf8').split('\0');
  const out: string[] = [];
  for (let i = 0; i < text.length;) {
    let end = text.indexOf(0, i);
    if (end < 0) end = text.length; // every field ends in NUL; never loop on a text that does not
    out.push(nameFromBytes(text.subarray(i, end)));
    i = end + 1;
  }
  out.push('');
  return out;
}

/** The entries of a packed scan (the layout is ScanResult's in native/addon/tree_ops.cc). */
function unpackScan(packed: PackedScan | null): Array<[string, TreeEntry]> | null {
  if (packed === null) return null;
  const [text, nums, bin] = packed;
  const fields = textFields(text);
  const out: Array<[string, TreeEntry]> = [];
  let t = 0;
  let b = 0;
  for (let n = 0; n < nums.length;) {
    const stMode = nums[n++];
    const name = fields[t++];
    const e: TreeEntry = {
      kind: KINDS[stMode & constants.S_IFMT] ?? 'other',
      mode: stMode & 0o7777,
      uid: nums[n++],
      gid: nums[n++],
      size: nums[n++],
      ino: fields[t++],
      dev: fields[t++],
      mtimeNs: fields[t++],
      ctimeNs: fields[t++],
    };
    const targetLen = nums[n++];
    const xattrCount = nums[n++];
    if (targetLen >= 0) {
      e.target = bytesAt(bin, b, targetLen);
      b += targetLen;
    }
    if (xattrCount >= 0) {
      const x: Record<string, Buffer> = {};
      for (let i = 0; i < xattrCount; i++) {
        const len = nums[n++];
        x[fields[t++]] = bytesAt(bin, b, len);
        b += len;
      }
      e.xattrs = x;
    }
    out.push([name, e]);
  }
  return out;
}

export class Tree {
  readonly path: string;
  /** Identity of the root directory opened (a root replaced since then is another tree). */
  readonly dev: number;
  readonly ino: number;
  private fd: number;
  private readonly ops: TreeOps;

  private constructor(path: string, ops: TreeOps) {
    this.path = path;
    this.ops = ops;
    this.fd = ops.openRoot(path);
    const st = fstatSync(this.fd);
    this.dev = st.dev;
    this.ino = st.ino;
  }

  /** Opens the tree at path (the root itself may be reached through symlinks: it is configuration). */
  static open(path: string): Tree {
    return new Tree(path, treeOps());
  }

  /** The entry at rel (never following a symlink), or null when rel is not in the tree. */
  stat(rel: string, xattrs = false): TreeEntry | null {
    return this.ops.statAt(this.root(), sysName(rel), xattrs);
  }

  /**
   * Every entry of the directory rel with its metadata (xattrs when asked),
   * in one call: the fast path of whole-tree passes. Null when rel is not a
   * directory of the tree.
   */
  scan(rel: string, xattrs = false): Array<[string, TreeEntry]> | null {
    return unpackScan(this.ops.scanDir(this.root(), sysName(rel), xattrs, false));
  }

  /**
   * scan() read on the thread pool: the event loop runs on while a large
   * directory is read (100,000 entries take about a second; a cold one
   * waits on the disk for each inode). Only the unpacking is on the caller's thread.
   */
  async scanAsync(rel: string, xattrs = false): Promise<Array<[string, TreeEntry]> | null> {
    return unpackScan(await this.ops.scanDir(this.root(), sysName(rel), xattrs, true));
  }

  /**
   * Opens a regular file for reading; fails with ELOOP for a symlink and
   * EINVAL for anything not a regular file (a FIFO swapped in never blocks).
   */
  openRead(rel: string): number {
    const fd = this.ops.openAt(this.root(), sysName(rel), O_RDONLY | O_NONBLOCK, 0);
    if (!fstatSync(fd).isFile()) {
      closeSync(fd);
      throw Object.assign(new Error(`EINVAL: not a regular file, open '${rel}'`), { code: 'EINVAL', path: rel });
    }
    return fd;
  }

  /** Creates a new file (fails if anything is at rel) and opens it for writing. */
  createExclusive(rel: string, mode: number): number {
    return this.ops.openAt(this.root(), sysName(rel), O_WRONLY | O_CREAT | O_EXCL, mode);
  }

  /** Makes a directory; false when one is there already; fails when anything else is. */
  mkdir(rel: string, mode: number): boolean {
    return this.ops.mkdirAt(this.root(), sysName(rel), mode);
  }

  symlink(rel: string, target: string): void {
    this.ops.symlinkAt(this.root(), sysName(rel), sysName(target));
  }

  unlink(rel: string, dir = false): void {
    this.ops.unlinkAt(this.root(), sysName(rel), dir);
  }

  rename(from: string, to: string): void {
    this.ops.renameAt(this.root(), sysName(from), sysName(to));
  }

  /** Owner of rel itself (a symlink's own owner). */
  chown(rel: string, uid: number, gid: number): void {
    this.ops.chownAt(this.root(), sysName(rel), uid, gid);
  }

  /** Access and modification time of rel itself, in ns since the epoch. */
  utimes(rel: string, mtimeNs: string): void {
    this.ops.utimesAt(this.root(), sysName(rel), mtimeNs);
  }

  /** Mode of a file or directory; fails with ELOOP on a symlink. */
  chmod(rel: string, mode: number): void {
    this.ops.chmodAt(this.root(), sysName(rel), mode);
  }

  setXattr(rel: string, name: string, value: Buffer): void {
    this.ops.setXattrAt(this.root(), sysName(rel), name, value);
  }

  /** Safe to call twice. */
  close(): void {
    if (this.fd < 0) return;
    closeSync(this.fd);
    this.fd = -1;
  }

  private root(): number {
    if (this.fd < 0) throw new Error(`tree ${this.path} is closed`);
    return this.fd;
  }
}
