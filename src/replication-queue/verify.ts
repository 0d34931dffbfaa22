/**
 * Compares a share's source tree with its DR site bucket: type, size, mode,
 * mtime and content hash of every object. Lists every difference.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { DrClient } from './dr-client';
import { fullMetaOf, lstatOrNull, readTarget } from './source-tree';

export interface Difference {
  path: string;
  what: string;
}

interface SiteObject {
  path: string;
  kind: string;
  size: number;
  target: string | null;
  meta: { mode?: number; mtimeNs?: string; xattrs?: Record<string, string> };
}

async function walk(root: string, rel = ''): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(join(root, rel), { withFileTypes: true })) {
    const p = rel ? `${rel}/${e.name}` : e.name;
    out.push(p);
    if (e.isDirectory()) out.push(...(await walk(root, p)));
  }
  return out;
}

function fileHash(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const h = createHash('sha256');
    createReadStream(path).on('data', (d) => h.update(d)).on('end', () => resolve(h.digest('hex'))).on('error', reject);
  });
}

async function siteHash(site: DrClient, bucket: string, path: string): Promise<string> {
  const st = await site.call<{ blocks: string[] }>('object.stat', { bucket, path, blocks: true });
  const h = createHash('sha256');
  for (let i = 0; i < st.blocks.length; i += 256) {
    for (const b of await site.getBlocks(st.blocks.slice(i, i + 256))) h.update(b);
  }
  return h.digest('hex');
}

export async function verifyShare(site: DrClient, bucket: string, root: string): Promise<Difference[]> {
  const diffs: Difference[] = [];
  const objects = new Map((await site.call<SiteObject[]>('object.list', { bucket })).map((o) => [o.path, o]));
  for (const rel of (await walk(root)).sort()) {
    const st = await lstatOrNull(join(root, rel));
    const o = objects.get(rel);
    objects.delete(rel);
    if (!st) continue; // vanished while we walked
    if (!o) {
      diffs.push({ path: rel, what: 'missing at the DR site' });
      continue;
    }
    const kind = st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'file';
    if (o.kind !== kind) {
      diffs.push({ path: rel, what: `type: source ${kind}, site ${o.kind}` });
      continue;
    }
    const m = await fullMetaOf(join(root, rel), st);
    const xs = JSON.stringify(m.xattrs ?? {});
    if (xs !== JSON.stringify(o.meta.xattrs ?? {})) {
      const names = new Set([...Object.keys(m.xattrs ?? {}), ...Object.keys(o.meta.xattrs ?? {})]);
      const differ = [...names].filter((n) => m.xattrs?.[n] !== o.meta.xattrs?.[n]).sort();
      diffs.push({ path: rel, what: `xattrs differ: ${differ.join(', ')}` });
    }
    if (o.meta.mode !== m.mode) diffs.push({ path: rel, what: `mode: source ${m.mode.toString(8)}, site ${o.meta.mode?.toString(8)}` });
    if (kind === 'symlink' && o.target !== (await readTarget(join(root, rel)))) diffs.push({ path: rel, what: 'symlink target' });
    if (kind !== 'file') continue;
    if (o.meta.mtimeNs !== m.mtimeNs) diffs.push({ path: rel, what: `mtime: source ${m.mtimeNs}, site ${o.meta.mtimeNs}` });
    if (o.size !== Number(st.size)) {
      diffs.push({ path: rel, what: `size: source ${st.size}, site ${o.size}` });
    } else if ((await fileHash(join(root, rel))) !== (await siteHash(site, bucket, rel))) {
      diffs.push({ path: rel, what: 'content differs' });
    }
  }
  for (const rel of objects.keys()) diffs.push({ path: rel, what: 'at the DR site only' });
  return diffs;
}
