/**
 * Rebuilds a share from its DR site bucket (as it is, or as it was at a
 * time) into a directory: contents, modes and modification times. Files are
 * written to a temp name and renamed; nothing is written outside `dest`.
 */
import { chmod, lchown, lutimes, mkdir, open, rename, symlink, utimes } from 'node:fs/promises';
import { dirname, resolve, sep } from 'node:path';
import { VfsxError } from '../errors/vfsx-error';
import { DrClient } from './dr-client';
import { setXattrs } from './source-tree';

interface SiteObject {
  path: string;
  kind: 'file' | 'dir' | 'symlink';
  size: number;
  target: string | null;
  meta: { mode?: number; uid?: number; gid?: number; mtimeNs?: string; xattrs?: Record<string, string> };
}

export interface RestoreProgress {
  objects: number;
  done: number;
  bytes: number;
  /** Metadata that could not be applied (owner without privilege, an xattr the destination refuses): path: what. */
  warnings: string[];
}

const secs = (ns?: string) => (ns ? Number(BigInt(ns) / 1000n) / 1e6 : Date.now() / 1000);

export async function restoreShare(
  site: DrClient,
  bucket: string,
  dest: string,
  at: number | undefined,
  onProgress: (p: RestoreProgress) => void = () => undefined,
): Promise<RestoreProgress> {
  const root = resolve(dest);
  const inside = (rel: string) => {
    const p = resolve(root, rel);
    if (!p.startsWith(root + sep)) throw new VfsxError('VFSX_ERR_DR_INVALID_PATH', `refusing to restore outside ${root}: ${rel}`);
    return p;
  };
  await mkdir(root, { recursive: true });
  const objects = await site.call<SiteObject[]>('object.list', at === undefined ? { bucket } : { bucket, at });
  const progress: RestoreProgress = { objects: objects.length, done: 0, bytes: 0, warnings: [] };
  const asRoot = process.getuid?.() === 0;
  /** Owner and xattrs; mode and times are set by the caller after (chown clears set-id bits). */
  const owner = async (p: string, o: SiteObject) => {
    if (asRoot && o.meta.uid !== undefined && o.meta.gid !== undefined) {
      await lchown(p, o.meta.uid, o.meta.gid).catch((err) => progress.warnings.push(`${o.path}: owner: ${(err as Error).message}`));
    }
    if (o.kind !== 'symlink') for (const n of await setXattrs(p, o.meta.xattrs)) progress.warnings.push(`${o.path}: xattr ${n} not set`);
  };
  const dirs: SiteObject[] = [];
  for (const o of objects) {
    const p = inside(o.path);
    await mkdir(o.kind === 'dir' ? p : dirname(p), { recursive: true });
    if (o.kind === 'dir') {
      dirs.push(o);
    } else if (o.kind === 'symlink') {
      await symlink(o.target ?? '', p);
      await owner(p, o);
      await lutimes(p, secs(o.meta.mtimeNs), secs(o.meta.mtimeNs)).catch(() => undefined);
    } else {
      const st = await site.call<{ blocks: string[] }>('object.stat', at === undefined ? { bucket, path: o.path, blocks: true } : { bucket, path: o.path, at, blocks: true });
      const tmp = `${p}.vfsx-restore`;
      const fh = await open(tmp, 'w', 0o600);
      try {
        for (let i = 0; i < st.blocks.length; i += 64) {
          for (const b of await site.getBlocks(st.blocks.slice(i, i + 64))) {
            await fh.write(b);
            progress.bytes += b.length;
          }
        }
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, p);
      await owner(p, o);
      if (o.meta.mode !== undefined) await chmod(p, o.meta.mode);
      await utimes(p, secs(o.meta.mtimeNs), secs(o.meta.mtimeNs));
    }
    progress.done++;
    onProgress(progress);
  }
  // Directories last, deepest first: filling them changed their times.
  for (const d of dirs.reverse()) {
    const p = inside(d.path);
    await owner(p, d);
    if (d.meta.mode !== undefined) await chmod(p, d.meta.mode);
    await utimes(p, secs(d.meta.mtimeNs), secs(d.meta.mtimeNs));
  }
  return progress;
}
