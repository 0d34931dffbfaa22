/**
 * Compares a share's source tree with its DR site bucket and lists every
 * difference. Three depths:
 *   metadata (default): type, size, mode, mtime, xattrs, symlink targets;
 *   content: also every source block's sha256 against the site's block ids
 *     (reads the source, downloads nothing);
 *   deep: also downloads every block of every head and checks its bytes
 *     against its id (finds damage at the site).
 * The source is read beneath its root, never through a symlink: a symlink
 * is compared as a symlink and what it points to is never read.
 */
import { Tree, TreeEntry } from '../native/tree';
import { VfsxError } from '../errors/vfsx-error';
import type { BlockScope, SiteClient } from '../site-link/site-client';
import { metaOfEntry, streamBlocks, targetOf } from './source-tree';

export interface Difference {
  path: string;
  what: string;
}

export interface VerifyOptions {
  content?: boolean;
  deep?: boolean;
  /** Called every PACE_EVERY entries with totals so far (a scrub throttles and reports progress here). */
  pace?: (checked: number, bytesRead: number) => Promise<void>;
}

const PACE_EVERY = 256;

interface SiteObject {
  path: string;
  kind: string;
  size: number;
  blockSize: number;
  /** With a content pass: the file's block ids. */
  blocks?: string[];
  target: string | null;
  meta: { mode?: number; mtimeNs?: string; xattrs?: Record<string, string> };
}

interface SiteHead {
  blockSize: number;
  blocks: string[];
  ts?: number;
}

const BLOCKS_PER_GET = 64;

/** Every entry below rel, each directory read on the thread pool (a share of a million files never holds the event loop for its walk). */
async function walk(tree: Tree, rel: string, out: Array<[string, TreeEntry]>): Promise<void> {
  for (const [name, e] of (await tree.scanAsync(rel, true)) ?? []) {
    const p = rel ? `${rel}/${name}` : name;
    out.push([p, e]);
    if (e.kind === 'dir') await walk(tree, p, out);
  }
}

function compareMeta(rel: string, e: TreeEntry, o: SiteObject, diffs: Difference[]): void {
  const m = metaOfEntry(e);
  if (JSON.stringify(m.xattrs ?? {}) !== JSON.stringify(o.meta.xattrs ?? {})) {
    const names = new Set([...Object.keys(m.xattrs ?? {}), ...Object.keys(o.meta.xattrs ?? {})]);
    const differ = [...names].filter((n) => m.xattrs?.[n] !== o.meta.xattrs?.[n]).sort();
    diffs.push({ path: rel, what: `xattrs differ: ${differ.join(', ')}` });
  }
  if (o.meta.mode !== m.mode) diffs.push({ path: rel, what: `mode: source ${m.mode.toString(8)}, site ${o.meta.mode?.toString(8)}` });
  if (e.kind === 'symlink' && o.target !== targetOf(e)) diffs.push({ path: rel, what: 'symlink target' });
  if (e.kind !== 'file') return;
  if (o.meta.mtimeNs !== m.mtimeNs) diffs.push({ path: rel, what: `mtime: source ${m.mtimeNs}, site ${o.meta.mtimeNs}` });
  if (o.size !== e.size) diffs.push({ path: rel, what: `size: source ${e.size}, site ${o.size}` });
}

/** Source block hashes against the site's block ids (listed with the objects): no block is downloaded. */
async function compareContent(site: SiteClient, tree: Tree, rel: string, obj: SiteObject, diffs: Difference[]): Promise<number> {
  const ids = obj.blocks ?? [];
  let fb;
  try {
    // Only the ids are kept: memory stays at two chunks whatever the file's size.
    fb = await streamBlocks(tree, rel, obj.blockSize > 0 ? obj.blockSize : 65536, null, (run, bs) => site.blockIds(run, bs), async () => undefined);
  } catch (err) {
    if (!(err instanceof VfsxError && err.code === 'VFSX_ERR_REPL_TORN')) throw err;
    diffs.push({ path: rel, what: 'changed while verified' });
    return 0;
  }
  const src = Array.from({ length: fb.count }, (_, i) => fb.ids.get(i) as string);
  if (src.length !== ids.length || src.some((h, i) => h !== ids[i])) diffs.push({ path: rel, what: 'content differs' });
  return fb.entry.size;
}

/**
 * Downloads every distinct block of every head and checks its bytes against
 * its id. Blocks are asked for by the object holding them, so a read-only
 * token limited to the bucket can run it.
 */
async function checkSiteBlocks(site: SiteClient, bucket: string, files: string[], diffs: Difference[]): Promise<void> {
  const seen = new Set<string>();
  const bad = async (h: string, where: BlockScope) => {
    try {
      await site.getBlocks([h], where);
      return false;
    } catch (err) {
      if (err instanceof VfsxError && (err.code === 'VFSX_ERR_DR_BAD_BLOCK' || err.code === 'VFSX_ERR_DR_BAD_REPLY')) return true;
      const code = (err as { code?: unknown }).code;
      if (code === -32001 || code === -32008) return true; // missing, or damaged and refused by the site itself
      throw err;
    }
  };
  for (const path of files) {
    const head = await site.call<SiteHead | null>('object.stat', { bucket, path, blocks: true });
    const blocks = head?.blocks ?? [];
    // In order, BLOCKS_PER_GET of the list at a time, each block once: every get names its span
    // in the list, so the site checks those blocks only, not the whole list of a large file.
    for (let i = 0; i < blocks.length; i += BLOCKS_PER_GET) {
      const window = blocks.slice(i, i + BLOCKS_PER_GET);
      const batch = [...new Set(window)].filter((h) => !seen.has(h));
      if (batch.length === 0) continue;
      batch.forEach((h) => seen.add(h));
      // Of this version (at its time): a commit meanwhile makes another head, whose list these blocks are not in.
      const where: BlockScope = { bucket, path, ...(typeof head?.ts === 'number' ? { at: head.ts } : {}), span: { first: i, count: window.length } };
      try {
        await site.getBlocks(batch, where);
        continue;
      } catch {
        /* find which ones, one by one */
      }
      for (const h of batch) if (await bad(h, where)) diffs.push({ path, what: `block ${h} at the DR site is damaged or missing` });
    }
  }
}

export async function verifyShare(site: SiteClient, bucket: string, root: string, o: VerifyOptions = {}): Promise<Difference[]> {
  const tree = Tree.open(root);
  try {
    return await verifyTree(site, bucket, tree, o);
  } finally {
    tree.close();
  }
}

/** verifyShare over a tree the caller holds open (the replicator's scrub). */
export async function verifyTree(site: SiteClient, bucket: string, tree: Tree, o: VerifyOptions = {}): Promise<Difference[]> {
  const diffs: Difference[] = [];
  // The site lists its objects while the source is walked.
  const listing = site.call<SiteObject[]>('object.list', o.content ? { bucket, blocks: true } : { bucket });
  const entries: Array<[string, TreeEntry]> = [];
  try {
    await walk(tree, '', entries);
  } catch (err) {
    listing.catch(() => undefined);
    throw err;
  }
  const listed = await listing;
  // Objects whose sealed name or metadata fail authentication were left out of the listing: named here.
  for (const u of site.takeUnreadable()) diffs.push({ path: u, what: 'fails authentication at the DR site' });
  const objects = new Map(listed.map((x) => [x.path, x]));
  entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  let checked = 0;
  let bytesRead = 0;
  for (const [rel, e] of entries) {
    if (o.pace && ++checked % PACE_EVERY === 0) await o.pace(checked, bytesRead);
    const obj = objects.get(rel);
    objects.delete(rel);
    if (!obj) {
      diffs.push({ path: rel, what: 'missing at the DR site' });
      continue;
    }
    const kind = e.kind === 'other' ? 'special file' : e.kind;
    if (obj.kind !== kind) {
      diffs.push({ path: rel, what: `type: source ${kind}, site ${obj.kind}` });
      continue;
    }
    const before = diffs.length;
    compareMeta(rel, e, obj, diffs);
    if (o.content && e.kind === 'file' && diffs.length === before) bytesRead += await compareContent(site, tree, rel, obj, diffs);
  }
  await o.pace?.(entries.length, bytesRead);
  for (const rel of objects.keys()) diffs.push({ path: rel, what: 'at the DR site only' });
  if (o.deep) await checkSiteBlocks(site, bucket, listed.filter((x) => x.kind === 'file').map((x) => x.path), diffs);
  return diffs;
}
