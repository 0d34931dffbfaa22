/**
 * A DR site client for an encrypted repository: the same calls as the plain
 * client, with every path, metadata box and block sealed on the way out
 * and opened (and checked) on the way back (src/repository/repo-cipher.ts).
 * Callers see plaintext; the site sees only sealed names and bytes.
 */
import { createHash } from 'node:crypto';
import { VfsxError } from '../errors/vfsx-error';
import { segmentsOf } from '../protocol/segments';
import { RepoCipher } from '../repository/repo-cipher';
import { DrClient } from './dr-client';
import type { BlockScope, SiteClient } from './site-client';

type Obj = Record<string, unknown>;

/** What the site keeps in the clear about a version, and the sealed metadata is bound to. */
const bound = (kind: unknown, size: unknown) => `vfsx meta v1\u0000${String(kind)}\u0000${String(size)}`;
const digest = (blocks: unknown[]) => createHash('sha256').update(blocks.join(',')).digest('hex');

export class SealedSite implements SiteClient {
  readonly encrypted = true;
  private unreadable: string[] = [];

  constructor(private readonly link: DrClient, private readonly cipher: RepoCipher) {}

  blockId(data: Buffer): string {
    return this.cipher.blockId(data);
  }

  blockIds(run: Buffer, blockSize: number): Promise<string[]> {
    return this.cipher.blockIds(run, blockSize);
  }

  async putBlocks(blocks: Buffer[], ids?: string[]): Promise<number> {
    const hs = ids ?? blocks.map((b) => this.cipher.blockId(b));
    return this.link.putBlocks(await this.cipher.sealBlocks(hs, blocks), hs);
  }

  async getBlocks(ids: string[], where?: BlockScope): Promise<Buffer[]> {
    const raw = await this.link.getRaw(ids, where ? { ...where, path: this.cipher.sealPath(where.path) } : undefined);
    return this.cipher.openBlocks(ids, raw);
  }

  takeUnreadable(): string[] {
    const u = this.unreadable;
    this.unreadable = [];
    return u;
  }

  onClose(fn: () => void): void {
    this.link.onClose(fn);
  }

  close(): void {
    this.link.close();
  }

  async call<T = unknown>(method: string, params: unknown): Promise<T> {
    const p = { ...(params as Obj) };
    const seal = (k: string) => {
      if (typeof p[k] === 'string' && p[k] !== '') p[k] = this.cipher.sealPath(p[k] as string);
    };
    for (const k of ['path', 'from', 'to', 'prefix']) seal(k);
    if (Array.isArray(p.paths)) p.paths = p.paths.map((x) => this.cipher.sealPath(String(x)));
    switch (method) {
      case 'object.commit':
        return this.committed(await this.link.call<Obj>(method, this.sealCommit(p)), params as Obj) as T;
      case 'object.commitMany': {
        const objects = (params as { objects: Obj[] }).objects;
        const r = await this.link.call<Obj[]>(method, { ...p, objects: objects.map((o) => this.sealCommit({ ...o, path: this.cipher.sealPath(String(o.path)) })) });
        return (Array.isArray(r) ? r.map((v, i) => this.committed(v, objects[i])) : r) as T;
      }
      case 'object.stat':
        return this.openVersion(await this.link.call<Obj | null>(method, p)) as T;
      case 'object.list': {
        const out: Obj[] = [];
        await this.list(params as object, (objects) => {
          for (const o of objects) out.push(o as Obj);
        });
        return out as T;
      }
      default:
        return this.link.call<T>(method, p);
    }
  }

  /** Each page opened: an object that fails authentication is left out and named by takeUnreadable(). */
  async list(params: object, onPage: (objects: unknown[]) => void | Promise<void>): Promise<void> {
    const p = { ...(params as Obj) };
    for (const k of ['path', 'prefix']) if (typeof p[k] === 'string' && p[k] !== '') p[k] = this.cipher.sealPath(p[k] as string);
    await this.link.list(p, (r) => {
      const out: Obj[] = [];
      for (const v of r) {
        try {
          out.push(this.openVersion(v as Obj | null) as Obj);
        } catch (err) {
          this.unreadable.push(`${String((v as Obj | null)?.path).slice(0, 80)}: ${(err as Error).message}`);
        }
      }
      return onPage(out);
    });
  }

  private sealCommit(o: Obj): Obj {
    const kind = o.kind;
    const size = kind === 'file' ? (o.size ?? 0) : 0;
    const inner: Obj = { m: o.meta };
    if (kind === 'symlink') inner.t = o.target ?? '';
    if (kind === 'file') {
      // Bound to the block list (b) and to its segment list (s): a patch commit, which names
      // only segments, can be bound (s only), and checked later against either.
      if (Array.isArray(o.segments)) inner.s = digest(o.segments);
      else {
        const blocks = (o.blocks as string[] | undefined) ?? [];
        inner.b = digest(blocks);
        inner.s = digest(segmentsOf(blocks));
      }
    }
    const sealed: Obj = { ...o, path: o.path, meta: { enc: this.cipher.sealMeta(inner, bound(kind, size)) } };
    if (kind === 'symlink') sealed.target = '';
    return sealed;
  }

  /** The site's answer to a commit, with the names and metadata the caller sent. */
  private committed(v: Obj | null, sent: Obj): Obj | null {
    if (v === null || typeof v !== 'object') return v;
    return { ...v, path: sent.path, meta: sent.meta, target: sent.kind === 'symlink' ? sent.target : v.target };
  }

  /** A version as the site describes it, opened and checked; throws when any part fails. */
  private openVersion(v: Obj | null): Obj | null {
    if (v === null) return null;
    if (typeof v !== 'object' || typeof v.path !== 'string') throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', 'the DR site sent a malformed object');
    const path = this.cipher.openPath(v.path);
    const enc = (v.meta as Obj | null)?.enc;
    if (typeof enc !== 'string') throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `${path}: the DR site sent unsealed metadata`);
    const inner = this.cipher.openMeta(enc, bound(v.kind, v.kind === 'file' ? v.size : 0), path) as Obj | null;
    if (typeof inner !== 'object' || inner === null) throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `${path}: malformed sealed metadata`);
    if (Array.isArray(v.blocks) && (inner.b !== undefined ? inner.b !== digest(v.blocks) : inner.s !== digest(segmentsOf(v.blocks as string[])))) {
      throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `${path}: the DR site's block list is not the one committed`);
    }
    const out: Obj = { ...v, path, meta: inner.m, target: v.kind === 'symlink' ? inner.t : v.target };
    if (Array.isArray(v.segments)) {
      if (inner.s === undefined) {
        delete out.segments; // sealed before segment lists were bound: a patch cannot start from it
        delete out.segmentBlocks;
      } else if (inner.s !== digest(v.segments)) {
        throw new VfsxError('VFSX_ERR_DR_BAD_REPLY', `${path}: the DR site's segment list is not the one committed`);
      }
    }
    return out;
  }
}
