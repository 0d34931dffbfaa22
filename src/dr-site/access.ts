/**
 * Who may do what at the DR site. The admin token (drSite.token) may do
 * everything. Each scoped token (drSite.tokens) names its buckets and its
 * access: `read` lists, stats and reads objects of its buckets (a restore,
 * a verify); `write` also commits, deletes, moves and stores blocks (a
 * replicating source server). No token can purge history: a delete is a
 * tombstone, and earlier versions stay restorable for drSite.retentionMs.
 *
 * Blocks are shared by content across buckets, so a scoped token reads a
 * block only by naming an object of its buckets that holds it. A write
 * token may ask blocks.missing (needed to skip blocks the site has): that
 * tells it whether some bucket holds content it already knows (see
 * docs/security.md).
 */
import { timingSafeEqual } from 'node:crypto';
import { VfsxError } from '../errors/vfsx-error';

export interface ScopedToken {
  token: string;
  buckets: string[];
  access: 'read' | 'write';
}

export interface Rights {
  /** Who, for logs: "admin" or "token #N". */
  name: string;
  admin: boolean;
  buckets: ReadonlySet<string>;
  write: boolean;
}

const READ_METHODS = new Set(['object.list', 'object.stat', 'object.versions', 'blocks.get']);
/** Any token: key records are wrapped by passphrases, and a restore on a fresh machine starts here. */
const REPO_METHODS = new Set(['repo.info']);
const WRITE_METHODS = new Set(['repo.init', 'bucket.ensure', 'object.commit', 'object.commitMany', 'object.delete', 'object.deleteMany', 'object.move', 'blocks.put', 'blocks.missing', 'segments.put']);

const same = (a: string, b: string) => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

/** The rights of the token a client presented (the whole Authorization header), or null. */
export function rightsOf(header: string, admin: string, scoped: ScopedToken[]): Rights | null {
  let found: Rights | null = null;
  // Every token is compared, so the time taken does not tell which one matched.
  if (same(header, `Bearer ${admin}`)) found = { name: 'admin', admin: true, buckets: new Set(), write: true };
  for (const [i, t] of scoped.entries()) {
    const match = same(header, `Bearer ${t.token}`);
    if (match && found === null) found = { name: `token #${i + 1}`, admin: false, buckets: new Set(t.buckets), write: t.access === 'write' };
  }
  return found;
}

/** Throws VFSX_ERR_DR_FORBIDDEN when the rights do not cover the call. */
export function authorize(r: Rights, method: string, params: Record<string, unknown>): void {
  if (r.admin) return;
  const deny = (why: string) => new VfsxError('VFSX_ERR_DR_FORBIDDEN', `${method} is not allowed for this token: ${why}`);
  if (REPO_METHODS.has(method)) return;
  if (!READ_METHODS.has(method) && !WRITE_METHODS.has(method)) throw deny('only the admin token may');
  if (WRITE_METHODS.has(method) && !r.write) throw deny('read-only');
  if (method === 'blocks.put' || method === 'blocks.missing' || method === 'repo.init') return;
  const bucket = params.bucket;
  if (typeof bucket !== 'string') throw deny('name the bucket (and, for blocks.get, the object)');
  if (!r.buckets.has(bucket)) throw deny(`bucket ${bucket} is not one of its buckets`);
  if (method === 'blocks.get' && typeof params.path !== 'string') throw deny('name the object the blocks belong to');
}
