/**
 * Field escaping of the vfsx wire format (docs/protocol.md): printable ASCII
 * other than % : , = stands for itself, every other byte is %HH.
 */
import { VfsxError } from '../errors/vfsx-error';

const PERCENT = 0x25;

/** True for the bytes that may appear unescaped inside a field. */
export function isPlainByte(c: number): boolean {
  return c > 0x20 && c < 0x7f && c !== 0x25 && c !== 0x3a && c !== 0x2c && c !== 0x3d;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/** Decodes buf[start, end) into the bytes it stands for. Strict: throws on any stray byte. */
export function unescapeBytes(buf: Buffer, start: number, end: number): Buffer {
  let escapes = 0;
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c === PERCENT) {
      if (i + 2 >= end) {
        throw malformed(`truncated escape at byte ${i}`);
      }
      if (hexValue(buf[i + 1]) < 0 || hexValue(buf[i + 2]) < 0) {
        throw malformed(`bad escape at byte ${i}`);
      }
      escapes++;
      i += 2;
    } else if (!isPlainByte(c)) {
      throw malformed(`unescaped byte 0x${c.toString(16)} at ${i}`);
    }
  }
  if (escapes === 0) return buf.subarray(start, end);
  const out = Buffer.allocUnsafe(end - start - escapes * 2);
  let o = 0;
  for (let i = start; i < end; i++) {
    const c = buf[i];
    if (c === PERCENT) {
      out[o++] = (hexValue(buf[i + 1]) << 4) | hexValue(buf[i + 2]);
      i += 2;
    } else {
      out[o++] = c;
    }
  }
  return out;
}

const HEX = '0123456789ABCDEF';

/** Escapes raw bytes into a field (used by test clients, the benchmark and docs). */
export function escapeBytes(raw: Buffer | string): string {
  const b = typeof raw === 'string' ? Buffer.from(raw, 'utf8') : raw;
  let out = '';
  for (const c of b) {
    out += isPlainByte(c) ? String.fromCharCode(c) : '%' + HEX[c >> 4] + HEX[c & 15];
  }
  return out;
}

function malformed(why: string): VfsxError {
  return new VfsxError('VFSX_ERR_PROTOCOL_MALFORMED', `malformed field: ${why}`);
}
