/**
 * Names as the kernel has them (any bytes but '/' and NUL) carried in JS
 * strings, the way Python's "surrogateescape" does it: a name that is valid
 * UTF-8 is its own string, and each byte of one that is not valid UTF-8 at
 * its place becomes the lone surrogate U+DC80-U+DCFF. Valid UTF-8 never
 * decodes to a lone surrogate, so the mapping is one to one and every name
 * round-trips; an escaped byte is never '/' or NUL (they are ASCII), so an
 * escape cannot split or end a path.
 *
 * Where such a string leaves the process it is turned back into bytes
 * (nameToBytes: the tree's system calls, sealed names) or stays a string
 * whose JSON escapes it (JSON.stringify writes a lone surrogate as \udcXX):
 * the queue's jobs, the JSON-RPC messages, sealed metadata. A plaintext DR
 * site stores names as SQLite text, which cannot hold one: it refuses it
 * (only encrypted repositories, the default, hold every name).
 */
import { isUtf8 } from 'node:buffer';
import { VfsxError } from '../errors/vfsx-error';

const LONE_SURROGATE = /\p{Surrogate}/u;

/** Whether s is its own UTF-8 (holds no escaped byte). */
export function isUtf8Name(s: string): boolean {
  return !LONE_SURROGATE.test(s);
}

/** The length of the well-formed UTF-8 sequence at b[i], 0 when none starts there (RFC 3629). */
function sequenceAt(b: Buffer, i: number): number {
  const c = b[i];
  if (c < 0x80) return 1;
  const cont = (k: number, lo = 0x80, hi = 0xbf) => i + k < b.length && b[i + k] >= lo && b[i + k] <= hi;
  if (c >= 0xc2 && c <= 0xdf) return cont(1) ? 2 : 0;
  if (c >= 0xe0 && c <= 0xef) {
    const lo = c === 0xe0 ? 0xa0 : 0x80;
    const hi = c === 0xed ? 0x9f : 0xbf; // ED A0-BF would be a surrogate
    return cont(1, lo, hi) && cont(2) ? 3 : 0;
  }
  if (c >= 0xf0 && c <= 0xf4) {
    const lo = c === 0xf0 ? 0x90 : 0x80;
    const hi = c === 0xf4 ? 0x8f : 0xbf; // nothing above U+10FFFF
    return cont(1, lo, hi) && cont(2) && cont(3) ? 4 : 0;
  }
  return 0;
}

/** The string of a name's bytes (the bytes themselves when they are UTF-8). */
export function nameFromBytes(b: Buffer): string {
  if (isUtf8(b)) return b.toString('utf8');
  let out = '';
  let start = 0;
  for (let i = 0; i < b.length;) {
    const n = sequenceAt(b, i);
    if (n > 0) {
      i += n;
      continue;
    }
    out += b.toString('utf8', start, i) + String.fromCharCode(0xdc00 + b[i]);
    start = ++i;
  }
  return out + b.toString('utf8', start);
}

/**
 * The bytes a name stands for. Throws VFSX_ERR_BAD_NAME for a lone
 * surrogate that stands for no byte (U+D800-U+DC7F, U+DD00-U+DFFF): only
 * a hostile or broken peer sends one.
 */
export function nameToBytes(s: string): Buffer {
  if (isUtf8Name(s)) return Buffer.from(s, 'utf8');
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0xd800 || c > 0xdfff) continue;
    if (c <= 0xdbff && i + 1 < s.length && (s.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      i++; // a pair: one character
      continue;
    }
    if (c < 0xdc80 || c > 0xdcff) throw new VfsxError('VFSX_ERR_BAD_NAME', `a name holds U+${c.toString(16).toUpperCase()}, which stands for no byte`);
    parts.push(Buffer.from(s.slice(start, i), 'utf8'), Buffer.of(c - 0xdc00));
    start = i + 1;
  }
  parts.push(Buffer.from(s.slice(start), 'utf8'));
  return Buffer.concat(parts);
}

/** What the tree's system calls take for a name: the string itself when it is UTF-8. */
export function sysName(s: string): string | Buffer {
  return isUtf8Name(s) ? s : nameToBytes(s);
}

/**
 * The names of a change record as strings: a name the journal keeps in
 * base64 (pathB64: it is not UTF-8) becomes its escaped string under its
 * own key (path). Returns the record itself when it has none.
 */
export function withByteNames<T extends { names: Record<string, string> }>(rec: T): T {
  let names: Record<string, string> | null = null;
  // for-in, not Object.entries: this runs for every verdict the service gives, and allocates nothing for UTF-8 names.
  for (const k in rec.names) {
    if (!k.endsWith('B64')) continue;
    names ??= { ...rec.names };
    delete names[k];
    names[k.slice(0, -3)] = nameFromBytes(Buffer.from(rec.names[k], 'base64'));
  }
  return names ? { ...rec, names } : rec;
}
