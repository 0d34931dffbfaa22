/**
 * Rebuilds a share from its DR site bucket (as it is, or as it was at a
 * time) into a directory: contents, owners, modes, times and xattrs.
 *
 * The site is not trusted. Everything is created beneath `dest` through
 * descriptors (src/native/tree.ts) and no symlink is ever followed; a
 * listed object below a site symlink or file, or a path that is not a
 * plain relative path, is refused and reported. Symlinks are created last,
 * once nothing more is written below them. Every block is checked against
 * its id before it is written; a file with a damaged or missing block is
 * not restored (its temp file is removed) and is reported as failed.
 */
import { promisify } from 'node:util';
import { close, fsync, readdirSync, writev } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { VfsxError } from '../errors/vfsx-error';
import { checkObjectPath } from '../dr-site/object-path';
import { Tree } from '../native/tree';
import { SEGMENT_BLOCKS, segmentHash } from '../protocol/segments';
import { DrRpcError } from '../site-link/dr-client';
import type { BlockScope, SiteClient } from '../site-link/site-client';

const writevAsync = promisify(writev);
const fsyncAsync = promisify(fsync);
const closeAsync = promisify(close);

/** Writes every buffer at pos (again after a short write); returns the position after them. */
async function writeAllAt(fd: number, bufs: Buffer[], pos: number): Promise<number> {
  let todo = bufs.filter((b) => b.length > 0);
  while (todo.length > 0) {
    let n = (await writevAsync(fd, todo, pos)).bytesWritten;
    pos += n;
    while (todo.length > 0 && n >= todo[0].length) n -= (todo.shift() as Buffer).length;
    if (n > 0) todo[0] = todo[0].subarray(n);
  }
  return pos;
}

interface SiteObject {
  path: string;
  kind: string;
  size: number;
  blockSize?: number;
  target: string | null;
  meta: { mode?: number; uid?: number; gid?: number; mtimeNs?: string; xattrs?: Record<string, string> };
  /** A small file's block list, when the listing carried it (see LISTED_BLOCKS). */
  blocks?: unknown;
}

export interface RestoreProgress {
  objects: number;
  done: number;
  bytes: number;
  /** Metadata that could not be applied (owner without privilege, an xattr the destination refuses): path: what. */
  warnings: string[];
  /** Objects not restored because restoring them would leave DEST or follow a link: path: why. */
  refused: string[];
  /** Files not restored because what the site sent is damaged or incomplete: path: why. */
  failed: string[];
}

export interface RestoreOptions {
  /** Restore the bucket as it was at this time (ms since the epoch). */
  at?: number;
  /** Restore into a DEST that is not empty (what is there with the same names is replaced). */
  force?: boolean;
  onProgress?: (p: RestoreProgress) => void;
  /** Files of more blocks than `from` are read `segments` segments at a time (WINDOWED_FROM, WINDOW_SEGMENTS; lower in tests). */
  windowed?: { from: number; segments: number };
}

const BLOCKS_PER_GET = 64;
/**
 * The listing carries the block list of each file of up to this many blocks
 * (256 KiB at 64 KiB blocks), so a small file costs one round trip (its
 * blocks), not two (object.stat, then its blocks): restoring 2,000 x 4 KiB
 * took 1.30-1.41 s against 1.45-1.69 s, with a quarter less CPU in the
 * restorer and at the site. Larger files are stat'ed on their turn: a
 * listing of every block id of a large share would not fit in memory.
 */
const LISTED_BLOCKS = 4;
/**
 * A file of more blocks than this is read in windows of WINDOW_SEGMENTS
 * segments (262,144 ids, about 17 MiB of JSON), each checked against the
 * version's segment list: its whole list in one answer would be up to 4
 * million ids (about 600 MiB of the restorer's heap), for each of the
 * LARGE_FILES_AT_ONCE files.
 */
const WINDOWED_FROM = 1 << 18;
const WINDOW_SEGMENTS = 1024;
const INVALID_PARAMS = -32602;
/**
 * Files restored at once: small ones (their blocks listed) up to
 * FILES_AT_ONCE, their fsyncs sharing the file system's journal commits;
 * of the others, each holding up to BLOCKS_PER_GET blocks in memory, at
 * most LARGE_FILES_AT_ONCE. 2,000 x 4 KiB restored in 1.08-1.29 s with 32
 * at once against 1.28-1.50 s with 8 (interleaved, caches dropped); 64
 * was no faster than 32.
 */
const FILES_AT_ONCE = 32;
const LARGE_FILES_AT_ONCE = 8;
/**
 * What the destination says about one object (something in the way, a name
 * it cannot hold): that object is refused and the restore goes on. Anything
 * else (ENOSPC, EIO, EROFS) stops the restore.
 */
const REFUSALS = new Set(['ELOOP', 'ENOTDIR', 'EINVAL', 'EEXIST', 'EISDIR', 'ENOTEMPTY', 'ENAMETOOLONG', 'EILSEQ', 'EPERM', 'EACCES']);

/** The site's own rule for object names: a plain relative path (any bytes, from an encrypted repository). */
const validRel = (p: unknown): p is string => {
  try {
    checkObjectPath(p, { anyName: true });
    return true;
  } catch {
    return false;
  }
};

const parentOf = (rel: string) => (rel.includes('/') ? rel.slice(0, rel.lastIndexOf('/')) : '');

const validNs = (ns: unknown): ns is string => typeof ns === 'string' && /^-?\d{1,19}$/.test(ns);

export async function restoreShare(site: SiteClient, bucket: string, dest: string, o: RestoreOptions = {}): Promise<RestoreProgress> {
  const root = resolve(dest);
  await mkdir(root, { recursive: true });
  if (!o.force && readdirSync(root).length > 0) {
    throw new VfsxError('VFSX_ERR_RESTORE_DEST_NOT_EMPTY', `${root} is not empty: restore into an empty directory, or pass --force to replace what is there`);
  }
  const params = o.at === undefined ? { bucket } : { bucket, at: o.at };
  const tree = Tree.open(root);
  try {
    const p = await new Restore(site, bucket, tree, o).run((onPage) => listObjects(site, params, onPage));
    // Objects whose sealed name or metadata failed authentication never reached the listing: they failed.
    for (const u of site.takeUnreadable()) p.failed.push(`${u} (not restored)`);
    return p;
  } finally {
    tree.close();
  }
}

type OnPage = (objects: unknown[]) => Promise<void>;

/**
 * The bucket's objects a page at a time, small files with their block
 * lists; a site from before blocksUpTo lists them without.
 */
async function listObjects(site: SiteClient, params: { bucket: string; at?: number }, onPage: OnPage): Promise<void> {
  let pages = 0;
  try {
    await site.list({ ...params, blocksUpTo: LISTED_BLOCKS }, (objects) => {
      pages++;
      return onPage(objects);
    });
    return;
  } catch (err) {
    if (pages > 0 || !(err instanceof DrRpcError && err.code === INVALID_PARAMS)) throw err;
  }
  await site.list(params, onPage);
}

/** from, from + 1, ..., to - 1 */
const range = (from: number, to: number): number[] => Array.from({ length: Math.max(0, to - from) }, (_, i) => from + i);

const isBlockList = (b: unknown): b is string[] => Array.isArray(b) && b.every((h) => typeof h === 'string' && /^[0-9a-f]{64}$/.test(h));

class Restore {
  private readonly progress: RestoreProgress = { objects: 0, done: 0, bytes: 0, warnings: [], refused: [], failed: [] };
  private readonly asRoot = process.getuid?.() === 0;
  private tmpSeq = 0;
  private readonly window: { from: number; segments: number };

  constructor(
    private readonly site: SiteClient,
    private readonly bucket: string,
    private readonly tree: Tree,
    private readonly o: RestoreOptions,
  ) {
    this.window = o.windowed ?? { from: WINDOWED_FROM, segments: WINDOW_SEGMENTS };
  }

  /**
   * Restores the listing as its pages come: what is held is every path
   * listed so far (whether it is a directory: to refuse what lies below a
   * non-directory, or is listed twice), the directories and symlinks (their
   * metadata and links come last), and the files in flight; not the
   * listing (restoring a share of millions held some 570 B per object).
   * The site lists parents before what is below them; a listing that does
   * not (a hostile site) cannot make a restore write through a file or a
   * link: the late parent is refused where the child is in the way.
   */
  async run(list: (onPage: OnPage) => Promise<void>): Promise<RestoreProgress> {
    const kinds = new Map<string, boolean>();
    const dirs: SiteObject[] = [];
    const links: SiteObject[] = [];
    // Files are fetched several at a time (a round trip each would otherwise add up);
    // directories are made in listing order before anything below them starts.
    const inflight = new Set<Promise<void>>();
    const large = new Set<Promise<void>>();
    let fatal: { err: unknown } | null = null;
    let listErr: { err: unknown } | null = null;
    try {
      await list(async (page) => {
        this.progress.objects += page.length;
        for (const obj of page as SiteObject[]) {
          if (fatal) throw (fatal as { err: unknown }).err; // stops the listing; the files in flight are awaited below
          if (!this.admit(obj, kinds)) continue;
          if (obj.kind === 'symlink') {
            links.push(obj);
            continue;
          }
          if (obj.kind === 'dir') {
            await this.attempt(obj, async () => {
              this.mkdirs(parentOf(obj.path));
              this.tree.mkdir(obj.path, 0o700);
              dirs.push(obj);
            });
            continue;
          }
          // attempt() runs the step at once up to its first await: the parent is made now, in listing order.
          const p: Promise<void> = this.attempt(obj, async () => {
            this.mkdirs(parentOf(obj.path));
            await this.file(obj);
          }).catch((err: unknown) => {
            fatal ??= { err };
          }).finally(() => {
            inflight.delete(p);
            large.delete(p);
          });
          inflight.add(p);
          if (!(isBlockList(obj.blocks) && obj.blocks.length <= LISTED_BLOCKS)) large.add(p);
          while (inflight.size >= FILES_AT_ONCE || large.size >= LARGE_FILES_AT_ONCE) await Promise.race(large.size >= LARGE_FILES_AT_ONCE ? large : inflight);
        }
      });
    } catch (err) {
      listErr = { err };
    }
    await Promise.all(inflight);
    if (fatal) throw (fatal as { err: unknown }).err;
    if (listErr) throw listErr.err;
    // Symlinks last: nothing is written below one, so none is ever traversed.
    for (const obj of links) await this.attempt(obj, async () => this.symlink(obj));
    // Directories' metadata last, deepest first: filling them changed their times.
    dirs.sort((a, b) => (a.path < b.path ? 1 : a.path > b.path ? -1 : 0));
    for (const d of dirs) {
      await this.attempt(d, async () => {
        this.owner(d);
        this.xattrs(d);
        this.mode(d);
        this.times(d);
      }, false);
    }
    return this.progress;
  }

  /**
   * Whether an object may be restored; refuses it with the reason when not.
   * `kinds`: every valid path listed before, and whether it is a directory.
   */
  private admit(obj: SiteObject, kinds: Map<string, boolean>): boolean {
    const path = (obj as { path?: unknown } | null)?.path;
    if (!validRel(path)) {
      this.progress.refused.push(`${JSON.stringify(path)}: not a relative path inside the share`);
      return false;
    }
    if (!['file', 'dir', 'symlink'].includes(obj.kind) || typeof obj.meta !== 'object' || obj.meta === null) {
      this.progress.refused.push(`${path}: malformed object at the DR site`);
      return false;
    }
    if (kinds.has(path)) {
      this.progress.refused.push(`${path}: listed twice by the DR site`);
      return false;
    }
    kinds.set(path, obj.kind === 'dir');
    for (let i = path.indexOf('/'); i !== -1; i = path.indexOf('/', i + 1)) {
      const anc = path.slice(0, i);
      if (kinds.get(anc) === false) {
        this.progress.refused.push(`${path}: below ${anc}, which the DR site has as a non-directory`);
        return false;
      }
    }
    return true;
  }

  /** Runs one object's step; a refusal (something in the way) or a bad block is recorded, not thrown. */
  private async attempt(obj: SiteObject, step: () => Promise<void>, count = true): Promise<void> {
    try {
      await step();
    } catch (err) {
      const code = (err as { code?: string }).code ?? '';
      const msg = (err as Error).message;
      if (REFUSALS.has(code)) {
        this.progress.refused.push(`${obj.path}: ${msg}`);
      } else if (err instanceof DrRpcError || (err instanceof VfsxError && (err.code === 'VFSX_ERR_DR_BAD_BLOCK' || err.code === 'VFSX_ERR_DR_BAD_REPLY'))) {
        // Damaged, missing or refused by the site: this file is not restored; the rest goes on.
        this.progress.failed.push(`${obj.path}: ${msg}`);
      } else {
        throw err;
      }
    }
    if (count) {
      this.progress.done++;
      this.o.onProgress?.(this.progress);
    }
  }

  /** Directories the listing lacks are made too (0755; a listed one gets its own mode later). */
  private mkdirs(rel: string): void {
    if (rel === '') return;
    const parts = rel.split('/');
    for (let i = 1; i <= parts.length; i++) this.tree.mkdir(parts.slice(0, i).join('/'), 0o755);
  }

  private tmpName(rel: string): string {
    const dir = parentOf(rel);
    const name = `.vfsx-restore.${process.pid}.${this.tmpSeq++}`;
    return dir ? `${dir}/${name}` : name;
  }

  /**
   * The version to restore and its block list: whole (from the listing for
   * a small file, else one object.stat), or for a large file its first
   * window, the rest read as the file is written (windows()).
   */
  private async version(obj: SiteObject, where: BlockScope): Promise<{ meta?: unknown; blocks: string[]; segments?: string[]; ts?: unknown }> {
    const bs = obj.blockSize ?? 0;
    const count = bs > 0 ? Math.ceil(obj.size / bs) : 0;
    const bad = () => new VfsxError('VFSX_ERR_DR_BAD_REPLY', 'the DR site does not describe this file consistently');
    if (obj.blocks === undefined && count > this.window.from) {
      const st = await this.site.call<{ size?: unknown; segments?: unknown; segmentBlocks?: unknown; meta?: unknown; ts?: unknown } | null>(
        'object.stat', { ...where, segments: range(0, Math.min(this.window.segments, Math.ceil(count / SEGMENT_BLOCKS))) });
      // Without a segment list (sealed before lists were bound) the whole list is asked for below.
      if (st && st.size === obj.size && Array.isArray(st.segments)) {
        if (!isBlockList(st.segments) || st.segments.length !== Math.ceil(count / SEGMENT_BLOCKS)) throw bad();
        return { meta: st.meta, ts: st.ts, segments: st.segments, blocks: this.windowBlocks(st.segments, 0, st.segmentBlocks) };
      }
    }
    // A small file's version came whole in the listing (an encrypted repository checked its block
    // list against its sealed metadata there); any other is asked for now.
    const st: { size?: unknown; blocks?: unknown; meta?: unknown; ts?: unknown } | null = obj.blocks !== undefined
      ? obj : await this.site.call<{ size?: unknown; blocks?: unknown; meta?: unknown; ts?: unknown } | null>('object.stat', { ...where, blocks: true });
    if (!st || !isBlockList(st.blocks) || st.size !== obj.size) throw bad();
    return { meta: st.meta, ts: st.ts, blocks: st.blocks };
  }

  /** The block ids of the window of segments from `first`, each list checked against its segment's hash. */
  private windowBlocks(segments: string[], first: number, lists: unknown): string[] {
    const want = Math.min(this.window.segments, segments.length - first);
    if (!Array.isArray(lists) || lists.length !== want) throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', 'the DR site sent another number of segments than asked');
    const out: string[] = [];
    lists.forEach((l: unknown, i) => {
      const last = first + i === segments.length - 1;
      if (!isBlockList(l) || l.length === 0 || (!last && l.length !== SEGMENT_BLOCKS) || segmentHash(l) !== segments[first + i]) {
        throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `segment ${first + i}: the DR site's block list is not the segment's`);
      }
      for (const h of l) out.push(h);
    });
    return out;
  }

  /** Every block id of the version in order, a window at a time (the first given; the rest asked of `where`, that same version). */
  private async *windows(v: { blocks: string[]; segments?: string[] }, where: BlockScope): AsyncGenerator<string[]> {
    yield v.blocks;
    const segments = v.segments;
    if (segments === undefined) return;
    const per = this.window.segments;
    for (let s = per; s < segments.length; s += per) {
      const st = await this.site.call<{ segments?: unknown; segmentBlocks?: unknown } | null>(
        'object.stat', { ...where, segments: range(s, Math.min(segments.length, s + per)) });
      if (!st || !Array.isArray(st.segments) || st.segments.length !== segments.length || st.segments.some((h, i) => h !== segments[i])) {
        throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', 'the file changed at the DR site while it was restored');
      }
      yield this.windowBlocks(segments, s, st.segmentBlocks);
    }
  }

  /** Writes a file to a temp name beneath its directory, checks every block, applies metadata, renames. */
  private async file(obj: SiteObject): Promise<void> {
    const where = this.o.at === undefined ? { bucket: this.bucket, path: obj.path } : { bucket: this.bucket, path: obj.path, at: this.o.at };
    const st = await this.version(obj, where);
    // Its blocks (and further windows) asked of this version, at its own time when the latest was asked
    // for: a commit while the file is restored is another version, whose list the site would check them against.
    const scope: BlockScope = where.at === undefined && typeof st.ts === 'number' ? { ...where, at: st.ts } : where;
    const tmp = this.tmpName(obj.path);
    const fd = this.tree.createExclusive(tmp, 0o600);
    let closed = false;
    try {
      let pos = 0;
      let base = 0;
      for await (const blocks of this.windows(st, scope)) {
        for (let i = 0; i < blocks.length; i += BLOCKS_PER_GET) {
          // A GET's blocks in one writev (was a write per 64 KiB block: 4,096 trips to the thread pool per 256 MiB).
          const batch = blocks.slice(i, i + BLOCKS_PER_GET);
          pos = await writeAllAt(fd, await this.site.getBlocks(batch, { ...scope, span: { first: base + i, count: batch.length } }), pos);
        }
        base += blocks.length;
      }
      if (pos !== obj.size) throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `the DR site's blocks make ${pos} bytes, the file has ${obj.size}`);
      await fsyncAsync(fd);
      await closeAsync(fd);
      closed = true;
      this.progress.bytes += pos;
      // The metadata of the version whose blocks were written (an encrypted repository binds the two).
      const meta = typeof st.meta === 'object' && st.meta !== null ? st.meta as SiteObject['meta'] : obj.meta;
      const tmpObj = { ...obj, meta, path: tmp };
      this.owner(tmpObj);
      this.xattrs(tmpObj);
      this.mode(tmpObj);
      this.times(tmpObj);
      this.tree.rename(tmp, obj.path);
    } catch (err) {
      if (!closed) await closeAsync(fd).catch(() => undefined);
      try {
        this.tree.unlink(tmp);
      } catch {
        /* already gone */
      }
      throw err;
    }
  }

  private symlink(obj: SiteObject): void {
    if (typeof obj.target !== 'string' || obj.target.length === 0 || obj.target.includes('\u0000')) {
      throw Object.assign(new Error('malformed symlink target'), { code: 'EINVAL' });
    }
    this.mkdirs(parentOf(obj.path));
    const tmp = this.tmpName(obj.path);
    this.tree.symlink(tmp, obj.target);
    this.owner({ ...obj, path: tmp });
    this.times({ ...obj, path: tmp });
    this.tree.rename(tmp, obj.path);
  }

  private owner(obj: SiteObject): void {
    const { uid, gid } = obj.meta;
    if (!this.asRoot || !Number.isInteger(uid) || !Number.isInteger(gid)) return;
    try {
      this.tree.chown(obj.path, uid as number, gid as number);
    } catch (err) {
      this.progress.warnings.push(`${obj.path}: owner: ${(err as Error).message}`);
    }
  }

  private xattrs(obj: SiteObject): void {
    for (const [n, v] of Object.entries(obj.meta.xattrs ?? {})) {
      try {
        this.tree.setXattr(obj.path, n, Buffer.from(String(v), 'base64'));
      } catch {
        this.progress.warnings.push(`${obj.path}: xattr ${n} not set`);
      }
    }
  }

  private mode(obj: SiteObject): void {
    const m = obj.meta.mode;
    if (Number.isInteger(m)) this.tree.chmod(obj.path, (m as number) & 0o7777);
  }

  private times(obj: SiteObject): void {
    if (validNs(obj.meta.mtimeNs)) this.tree.utimes(obj.path, obj.meta.mtimeNs);
  }
}
