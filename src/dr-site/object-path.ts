/**
 * Object names inside a bucket: share-relative, '/'-separated, never
 * absolute, never climbing out ('..'), no empty or '.' components, no NUL,
 * valid UTF-8.
 * Lengths allow an encrypted repository's sealed names (a 255-byte name
 * seals to 363 characters).
 */
import { VfsxError } from '../errors/vfsx-error';
import { isUtf8Name, nameToBytes } from '../protocol/byte-names';

/**
 * A name that is not UTF-8 reaches a site escaped (src/protocol/byte-names.ts);
 * SQLite's text would turn each escaped byte into U+FFFD, so a plaintext
 * repository refuses it rather than store another name.
 */
const NOT_UTF8 = 'a name that is not UTF-8 (a plaintext repository holds UTF-8 names only; an encrypted one, the default, holds any name)';

/** A plaintext symlink's target: stored as text, like a path. */
export function checkTarget(target: unknown): string {
  const t = typeof target === 'string' ? target : '';
  if (!isUtf8Name(t)) throw new VfsxError('VFSX_ERR_DR_INVALID_PATH', `invalid symlink target: ${NOT_UTF8}`);
  return t;
}

/**
 * anyName: a name that is not UTF-8 passes too, as its escaped string
 * (what a restore gets from an encrypted repository), when it stands for
 * bytes; the site itself passes none (its SQLite text cannot hold them).
 */
export function checkObjectPath(path: unknown, o: { anyName?: boolean } = {}): string {
  const bad = (why: string) => new VfsxError('VFSX_ERR_DR_INVALID_PATH', `invalid object path: ${why}`);
  if (typeof path !== 'string' || path.length === 0) throw bad('empty');
  if (Buffer.byteLength(path) > 16384) throw bad('longer than 16384 bytes');
  if (path.startsWith('/')) throw bad('absolute');
  if (path.includes('\0')) throw bad('NUL byte');
  if (!isUtf8Name(path)) {
    if (!o.anyName) throw bad(NOT_UTF8);
    try {
      nameToBytes(path);
    } catch (err) {
      throw bad((err as Error).message);
    }
  }
  for (const c of path.split('/')) {
    if (c === '' || c === '.' || c === '..') throw bad(`component ${JSON.stringify(c)}`);
    if (Buffer.byteLength(c) > 512) throw bad('component longer than 512 bytes');
  }
  return path;
}

/** The path and every object below it, as SQL LIKE-free bounds: [path/, path0). */
export function subtreeBounds(path: string): [string, string] {
  return [`${path}/`, `${path}0`]; // '0' is the character after '/'
}
