/**
 * Object names inside a bucket: share-relative, '/'-separated, never
 * absolute, never climbing out ('..'), no empty or '.' components, no NUL.
 * Lengths allow an encrypted repository's sealed names (a 255-byte name
 * seals to 363 characters).
 */
import { VfsxError } from '../errors/vfsx-error';

export function checkObjectPath(path: unknown): string {
  const bad = (why: string) => new VfsxError('VFSX_ERR_DR_INVALID_PATH', `invalid object path: ${why}`);
  if (typeof path !== 'string' || path.length === 0) throw bad('empty');
  if (Buffer.byteLength(path) > 16384) throw bad('longer than 16384 bytes');
  if (path.startsWith('/')) throw bad('absolute');
  if (path.includes('\0')) throw bad('NUL byte');
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
