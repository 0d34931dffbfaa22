/**
 * Copies of the DR site's index (meta.sqlite) in object storage, next to
 * the packs, so a site whose local disk is lost comes back from the bucket
 * alone (drSite.storage.backend "s3").
 *
 * A copy is taken while no block is being written and after every pack
 * the index knows has been uploaded: every block a copy names is in the
 * bucket. Pack objects are deleted (repack, the start-up sweep) only after
 * a newer copy that no longer names them went up; the newest copies are
 * kept (KEEP), older ones deleted. A site that starts with no index and
 * an S3 backend recovers from the newest copy whose packs are all in the
 * bucket; with packs in the bucket but no copy it refuses to start rather
 * than treat them as unknown and delete them.
 *
 * Names sort by time: `<ms, 15 digits>-<8 hex>.sqlite.zst` (zstd).
 */
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { open, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';
import { compress, decompress } from 'zstd-napi';
import { VfsxError } from '../errors/vfsx-error';
import type { MetaStore } from './meta-store';
import type { PackStore } from './pack-store';
import type { PackRemote } from './s3-packs';

/** Copies kept in the bucket (a damaged newest one falls back to the one before). */
export const INDEX_COPIES_KEPT = 3;

export interface IndexSnapshotsOptions {
  dataDir: string;
  meta: MetaStore;
  blocks: PackStore;
  remote: PackRemote;
  log: (msg: string, o: object) => void;
  /** Told of each copy that went up. */
  info?: (msg: string, o: object) => void;
}

export class IndexSnapshots {
  private running: Promise<boolean> | null = null;
  /** meta.changes() at the last copy (-1: none taken by this process). */
  private lastChanges = -1;
  lastName: string | null = null;

  constructor(private readonly o: IndexSnapshotsOptions) {}

  /**
   * Takes a copy and uploads it, unless the index did not change since the
   * last one (force: always). Concurrent calls share one copy. Resolves
   * true when a copy went up; throws when it could not (a pack not
   * uploaded, the bucket not answering).
   */
  take(force = false): Promise<boolean> {
    if (!this.running) this.running = this.takeOnce(force).finally(() => { this.running = null; });
    return this.running;
  }

  private async takeOnce(force: boolean): Promise<boolean> {
    const { meta, blocks, remote, dataDir } = this.o;
    const tmp = join(dataDir, 'index-copy.tmp');
    let changes = 0;
    const raw = await blocks.quiesce(async () => {
      changes = meta.changes();
      if (!force && changes === this.lastChanges) return null;
      const local = meta.localOnlyBlocks();
      if (local > 0) throw new VfsxError('VFSX_ERR_DR_STORAGE', `${local} blocks are not in object storage yet: no index copy now`);
      await rm(tmp, { force: true });
      await meta.backup(tmp);
      return readFile(tmp);
    });
    await rm(tmp, { force: true });
    if (raw === null) return false;
    const name = `${String(Date.now()).padStart(15, '0')}-${randomBytes(4).toString('hex')}.sqlite.zst`;
    const packed = compress(raw, { compressionLevel: 3 });
    await remote.putIndex(name, packed);
    this.o.info?.('index copied to object storage', { copy: name, bytes: packed.length });
    this.lastChanges = changes;
    this.lastName = name;
    const all = await remote.listIndex();
    for (const old of all.slice(0, Math.max(0, all.length - INDEX_COPIES_KEPT))) await remote.deleteIndex(old);
    return true;
  }
}

/**
 * Before the index opens: a site with an S3 backend and no index file
 * recovers it from the bucket. Returns the copy it came from, or null
 * (an index exists, or the bucket is empty: a new site).
 */
export async function recoverIndex(file: string, remote: PackRemote, log: (msg: string, o: object) => void): Promise<string | null> {
  if (existsSync(file)) return null;
  const copies = (await remote.listIndex()).reverse();
  const packs = new Set(await remote.list());
  if (copies.length === 0) {
    if (packs.size === 0) return null;
    throw new VfsxError('VFSX_ERR_DR_REPO_STATE', `${remote.where} holds ${packs.size} packs but no copy of the index, and this site has none: `
      + 'refusing to start (it would take them for leftovers and delete them); restore the data directory, or give the site an empty bucket or prefix');
  }
  const tmp = `${file}.recover`;
  for (const name of copies) {
    try {
      await writeFile(tmp, decompress(await remote.getIndex(name)), { mode: 0o600 });
      const missing = packsMissing(tmp, packs);
      if (missing > 0) {
        log('an index copy names packs the bucket no longer holds: trying an older one', { copy: name, missing });
        continue;
      }
      const fh = await open(tmp, 'r');
      await fh.sync();
      await fh.close();
      await rename(tmp, file);
      const d = await open(dirname(file), 'r');
      await d.sync();
      await d.close();
      return name;
    } catch (err) {
      log('an index copy could not be used: trying an older one', { copy: name, err: (err as Error).message });
    } finally {
      await rm(tmp, { force: true });
    }
  }
  throw new VfsxError('VFSX_ERR_DR_REPO_STATE', `no usable copy of the index in ${remote.where} (${copies.length} tried): refusing to start`);
}

/** How many packs the index file names that are not in `inBucket` (opened read-only; a damaged file throws). */
function packsMissing(file: string, inBucket: Set<string>): number {
  const db = new Database(file, { readonly: true, fileMustExist: true });
  try {
    const ok = db.pragma('quick_check', { simple: true });
    if (ok !== 'ok') throw new Error(`the copy fails SQLite's check: ${String(ok)}`);
    const ids = db.prepare('SELECT DISTINCT pack FROM blocks WHERE pack IS NOT NULL').pluck().all() as string[];
    return ids.filter((id) => !inBucket.has(id)).length;
  } finally {
    db.close();
  }
}
