/**
 * Makes one path (or subtree) of a share at the DR site match the source's
 * current state. Used per journal record by the Replicator and for a whole
 * share by `vfsx resync`.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { DrClient, DrRpcError } from './dr-client';
import { lstatOrNull, metaOf, readBlocks, readTarget } from './source-tree';

interface Head {
  kind: string;
  size: number;
  blockSize: number;
  meta: { mode?: number; uid?: number; gid?: number; mtimeNs?: string };
  blocks?: string[];
}

/** Blocks per binary frame stay under this; the site must accept frames of 8 MiB or more. */
const MAX_PUT_BYTES = 4 << 20;
const NOT_FOUND = -32003;
const TREE_CONCURRENCY = 16;

export interface SyncStats {
  commits: number;
  blocksSent: number;
  bytesSent: number;
}

export interface SiteSyncOptions {
  site: DrClient;
  bucket: string;
  root: string;
  blockSize: number;
  stats: SyncStats;
}

export class SiteSync {
  readonly site: DrClient;
  readonly bucket: string;
  readonly root: string;
  private readonly blockSize: number;
  private readonly stats: SyncStats;

  constructor(o: SiteSyncOptions) {
    this.site = o.site;
    this.bucket = o.bucket;
    this.root = o.root;
    this.blockSize = o.blockSize;
    this.stats = o.stats;
  }

  async rename(from: string, to: string): Promise<void> {
    const src = await lstatOrNull(join(this.root, from));
    const dst = await lstatOrNull(join(this.root, to));
    if (!src && dst) {
      try {
        await this.site.call('object.move', { bucket: this.bucket, from, to });
      } catch (err) {
        if (!(err instanceof DrRpcError && err.code === NOT_FOUND)) throw err;
      }
    }
    await this.syncPath(from);
    await this.syncPath(to);
    // Records of paths below a renamed directory may have been handled after
    // the rename (their old names were gone): reconcile the subtree. Files
    // the site already has cost a stat (size and mtime match).
    if (dst?.isDirectory()) await this.syncTree(to);
  }

  /**
   * Reconciles a whole subtree. Up to TREE_CONCURRENCY objects are in flight
   * at once, so round trips and the site's fsyncs overlap; a directory is
   * committed before anything below it is.
   */
  async syncTree(rel: string): Promise<void> {
    const queue: string[] = [rel];
    const running = new Set<Promise<void>>();
    let failed: unknown = null;
    while ((queue.length > 0 || running.size > 0) && failed === null) {
      while (queue.length > 0 && running.size < TREE_CONCURRENCY) {
        const dir = queue.shift() as string;
        const p = this.syncDirEntries(dir, queue).catch((err) => {
          failed = err;
        }).finally(() => running.delete(p));
        running.add(p);
      }
      if (running.size > 0) await Promise.race(running);
    }
    if (failed !== null) throw failed;
  }

  /** Syncs the entries of one directory (files concurrently); queues its subdirectories. */
  private async syncDirEntries(rel: string, dirs: string[]): Promise<void> {
    let entries;
    try {
      entries = await readdir(join(this.root, rel), { withFileTypes: true });
    } catch {
      return; // gone meanwhile: a later record deletes it
    }
    const files: string[] = [];
    for (const e of entries) {
      const child = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        await this.syncPath(child); // the directory first, then what is below it
        dirs.push(child);
      } else {
        files.push(child);
      }
    }
    for (let i = 0; i < files.length; i += TREE_CONCURRENCY) {
      await Promise.all(files.slice(i, i + TREE_CONCURRENCY).map((f) => this.syncPath(f)));
    }
  }

  async syncPath(rel: string, ranges?: Array<[number, number]>): Promise<void> {
    const abs = join(this.root, rel);
    const st = await lstatOrNull(abs);
    const { site, bucket } = this;
    if (!st) {
      await site.call('object.delete', { bucket, path: rel });
    } else if (st.isDirectory()) {
      await site.call('object.commit', { bucket, path: rel, kind: 'dir', meta: metaOf(st) });
    } else if (st.isSymbolicLink()) {
      await site.call('object.commit', { bucket, path: rel, kind: 'symlink', meta: metaOf(st), target: await readTarget(abs) });
    } else if (st.isFile()) {
      await this.syncFile(abs, rel, ranges);
    }
    this.stats.commits++;
  }

  private async syncFile(abs: string, rel: string, ranges?: Array<[number, number]>, full = false): Promise<void> {
    const { site, bucket } = this;
    const head = await site.call<Head | null>('object.stat', { bucket, path: rel, blocks: true });
    const bs = head?.kind === 'file' && head.blockSize > 0 ? head.blockSize : this.blockSize;
    let which: Set<number> | null = null;
    if (!full && head?.kind === 'file' && head.blocks && ranges) {
      which = new Set();
      for (const [off, len] of ranges) {
        if (len === 0) continue;
        for (let i = Math.floor(off / bs); i <= Math.floor((off + len - 1) / bs); i++) which.add(i);
      }
    } else if (!full && head?.kind === 'file' && head.blocks && !ranges) {
      // Metadata-only change when size and mtime still match what the site has.
      const st = await lstatOrNull(abs);
      if (st && Number(st.size) === head.size && st.mtimeNs.toString() === head.meta.mtimeNs) which = new Set();
    }
    const fb = await readBlocks(abs, bs, which);
    const hashes: string[] = [];
    for (let i = 0; i < fb.count; i++) {
      const h = fb.read.get(i)?.[0] ?? head?.blocks?.[i];
      if (h === undefined) return this.syncFile(abs, rel, undefined, true); // grew outside the ranges
      hashes.push(h);
    }
    const fresh = [...fb.read.values()];
    const missing = new Set((await site.call<{ missing: string[] }>('blocks.missing', { hashes: fresh.map(([h]) => h) })).missing);
    let batch: Buffer[] = [];
    let bytes = 0;
    const flush = async () => {
      if (batch.length === 0) return;
      await site.putBlocks(batch);
      this.stats.blocksSent += batch.length;
      this.stats.bytesSent += bytes;
      batch = [];
      bytes = 0;
    };
    for (const [h, data] of fresh) {
      if (!missing.delete(h)) continue; // not missing, or already queued (same block twice)
      if (bytes + data.length > MAX_PUT_BYTES) await flush();
      batch.push(data);
      bytes += data.length;
    }
    await flush();
    try {
      await site.call('object.commit', {
        bucket, path: rel, kind: 'file', meta: metaOf(fb.stat), size: Number(fb.stat.size), blockSize: bs, blocks: hashes,
      });
    } catch (err) {
      // A block the head had is gone (retention raced us): send everything.
      if (err instanceof DrRpcError && err.code === -32001 && !full) return this.syncFile(abs, rel, undefined, true);
      throw err;
    }
  }
}
