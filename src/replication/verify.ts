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
import { digestOf, metaOfEntry, streamBlocks, targetOf } from './source-tree';

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

/** Source block hashes against the site's block ids (their digest, listed with the objects): no block is downloaded. */
async function compareContent(site: SiteClient, tree: Tree, rel: string, blockSize: number, ids: string, diffs: Difference[]): Promise<number> {
  let fb;
  try {
    // Only the ids are kept: memory stays at two chunks whatever the file's size.
    fb = await streamBlocks(tree, rel, blockSize > 0 ? blockSize : 65536, null, (run, bs) => site.blockIds(run, bs), async () => undefined);
  } catch (err) {
    if (!(err instanceof VfsxError && err.code === 'VFSX_ERR_REPL_TORN')) throw err;
    diffs.push({ path: rel, what: 'changed while verified' });
    return 0;
  }
  const src = Array.from({ length: fb.count }, (_, i) => fb.ids.get(i) as string);
  if (blocksKey(src) !== ids) diffs.push({ path: rel, what: 'content differs' });
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

/**
 * What a pass keeps of a listed object: its kind and block size, a digest
 * of what compareMeta compares and, in a content pass, of its block ids.
 * About 150 bytes with its path, where the listed object itself took about
 * 2 KiB: a share of millions of files no longer has to fit its listing in
 * the replicator's heap (the scrub runs there).
 */
type Kept = string;

/** The fields compareMeta compares, of the site's object, or of a source entry of the same kind. */
function metaKey(kind: string, xattrs: unknown, mode: unknown, target: unknown, mtimeNs: unknown, size: unknown): string {
  return digestOf(JSON.stringify([JSON.stringify(xattrs ?? {}), mode ?? null, kind === 'symlink' ? target ?? null : null,
    kind === 'file' ? mtimeNs ?? null : null, kind === 'file' ? size ?? null : null]));
}

const blocksKey = (ids: string[]) => digestOf(`${ids.length} ${ids.join(' ')}`);

function keep(o: SiteObject, content: boolean): Kept {
  const key = metaKey(o.kind, o.meta?.xattrs, o.meta?.mode, o.target, o.meta?.mtimeNs, o.size);
  return `${o.kind}|${o.blockSize ?? 0}|${key}|${content && o.kind === 'file' ? blocksKey(o.blocks ?? []) : ''}`;
}

/** verifyShare over a tree the caller holds open (the replicator's scrub). */
export async function verifyTree(site: SiteClient, bucket: string, tree: Tree, o: VerifyOptions = {}): Promise<Difference[]> {
  // The site's listing, a page at a time, kept as digests (Kept) by path.
  const kept = new Map<string, Kept>();
  const files: string[] = [];
  await site.list(o.content ? { bucket, blocks: true } : { bucket }, (objects) => {
    for (const x of objects as SiteObject[]) {
      kept.set(x.path, keep(x, o.content === true));
      if (o.deep && x.kind === 'file') files.push(x.path);
    }
  });
  // Objects whose sealed name or metadata fail authentication were left out of the listing: named here.
  const diffs: Difference[] = site.takeUnreadable().map((u) => ({ path: u, what: 'fails authentication at the DR site' }));
  const found: Difference[] = [];
  let checked = 0;
  let bytesRead = 0;
  // The source, a directory at a time (each read on the thread pool).
  const dirs = [''];
  while (dirs.length > 0) {
    const dir = dirs.pop() as string;
    for (const [name, e] of (await tree.scanAsync(dir, true)) ?? []) {
      const rel = dir ? `${dir}/${name}` : name;
      if (e.kind === 'dir') dirs.push(rel);
      if (o.pace && ++checked % PACE_EVERY === 0) await o.pace(checked, bytesRead);
      const k = kept.get(rel);
      kept.delete(rel);
      if (k === undefined) {
        found.push({ path: rel, what: 'missing at the DR site' });
        continue;
      }
      const [siteKind, blockSize, key, ids] = k.split('|');
      const kind = e.kind === 'other' ? 'special file' : e.kind;
      if (siteKind !== kind) {
        found.push({ path: rel, what: `type: source ${kind}, site ${siteKind}` });
        continue;
      }
      const m = metaOfEntry(e);
      let [bs, blocks] = [Number(blockSize), ids];
      if (metaKey(e.kind, m.xattrs, m.mode, e.kind === 'symlink' ? targetOf(e) : null, m.mtimeNs, e.size) !== key) {
        // They differ: the site's object again, whole, to say how.
        const obj = await site.call<SiteObject | null>('object.stat', { bucket, path: rel, ...(o.content && e.kind === 'file' ? { blocks: true } : {}) });
        const before = found.length;
        if (obj === null) found.push({ path: rel, what: 'missing at the DR site' });
        else if (obj.kind !== kind) found.push({ path: rel, what: `type: source ${kind}, site ${obj.kind}` });
        else compareMeta(rel, e, obj, found);
        if (found.length > before || obj === null) continue;
        [bs, blocks] = [obj.blockSize, blocksKey(obj.blocks ?? [])]; // it changed at the site meanwhile, to match
      }
      if (o.content && e.kind === 'file') bytesRead += await compareContent(site, tree, rel, bs, blocks, found);
    }
  }
  if (o.pace) await o.pace(checked, bytesRead);
  found.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  diffs.push(...found);
  for (const rel of kept.keys()) diffs.push({ path: rel, what: 'at the DR site only' });
  if (o.deep) await checkSiteBlocks(site, bucket, files, diffs);
  return diffs;
}
