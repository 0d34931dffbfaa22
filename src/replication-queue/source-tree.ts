/**
 * Reading the source side of a share: metadata as the DR site stores it,
 * and a file's blocks, with torn-read detection (a file that changes while
 * it is read is reported, not returned half old, half new).
 */
import { createHash } from 'node:crypto';
import { BigIntStats } from 'node:fs';
import { lstat, open, readlink } from 'node:fs/promises';
import { getAttribute, listAttributes, setAttribute } from 'fs-xattr';
import { VfsxError } from '../errors/vfsx-error';

export interface SourceMeta {
  mode: number;
  uid: number;
  gid: number;
  mtimeNs: string;
  /** Extended attributes, values base64: Samba keeps DOS attributes (user.DOSATTRIB), NT ACLs (security.NTACL) and streams (user.DosStream.*) there. */
  xattrs?: Record<string, string>;
}

const MISSING = new Set(['ENOENT', 'ENODATA', 'ENOTSUP', 'EOPNOTSUPP']);

/** Every extended attribute of a file or directory (undefined when it has none, or the filesystem has no xattrs). */
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

/** Sets extended attributes (base64 values); returns the names that could not be set (e.g. security.* without privilege). */
export async function setXattrs(path: string, xattrs: Record<string, string> | undefined): Promise<string[]> {
  const failed: string[] = [];
  for (const [n, v] of Object.entries(xattrs ?? {})) {
    await setAttribute(path, n, Buffer.from(v, 'base64')).catch(() => failed.push(n));
  }
  return failed;
}

/** Metadata of a file or directory as the DR site stores it, xattrs included. */
export async function fullMetaOf(path: string, st: BigIntStats): Promise<SourceMeta> {
  const m = metaOf(st);
  if (st.isSymbolicLink()) return m; // xattr calls would follow the link
  const xattrs = await xattrsOf(path);
  return xattrs ? { ...m, xattrs } : m;
}

export function metaOf(st: BigIntStats): SourceMeta {
  return { mode: Number(st.mode & 0o7777n), uid: Number(st.uid), gid: Number(st.gid), mtimeNs: st.mtimeNs.toString() };
}

export async function lstatOrNull(path: string): Promise<BigIntStats | null> {
  try {
    return await lstat(path, { bigint: true });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' || (err as NodeJS.ErrnoException).code === 'ENOTDIR') return null;
    throw err;
  }
}

export const readTarget = (path: string) => readlink(path);

const sameFile = (a: BigIntStats, b: BigIntStats) =>
  a.size === b.size && a.mtimeNs === b.mtimeNs && a.ctimeNs === b.ctimeNs && a.ino === b.ino;

export interface FileBlocks {
  stat: BigIntStats;
  /** index -> [hash, bytes] for the blocks read */
  read: Map<number, [string, Buffer]>;
  count: number;
}

/** Reads the given block indexes (all when `which` is null) of a file. */
export async function readBlocks(path: string, blockSize: number, which: Set<number> | null): Promise<FileBlocks> {
  const fh = await open(path, 'r');
  try {
    const before = await fh.stat({ bigint: true });
    const size = Number(before.size);
    const count = Math.ceil(size / blockSize);
    const read = new Map<number, [string, Buffer]>();
    for (let i = 0; i < count; i++) {
      if (which && !which.has(i)) continue;
      const len = Math.min(blockSize, size - i * blockSize);
      const buf = Buffer.allocUnsafe(len);
      const { bytesRead } = await fh.read(buf, 0, len, i * blockSize);
      if (bytesRead !== len) throw torn(path);
      read.set(i, [createHash('sha256').update(buf).digest('hex'), buf]);
    }
    const after = await fh.stat({ bigint: true });
    if (!sameFile(before, after)) throw torn(path);
    return { stat: after, read, count };
  } finally {
    await fh.close();
  }
}

function torn(path: string): VfsxError {
  return new VfsxError('VFSX_ERR_REPL_TORN', `${path} changed while it was read; retrying`);
}
