/**
 * Parsing of one bridge message, "user:operation:origpath:k=v,k=v"
 * (docs/protocol.md). Decodes from bytes; fields are escaped so the three
 * separating colons are the only raw ':' in a valid payload.
 */
import { VfsxError } from '../errors/vfsx-error';
import { escapeBytes, unescapeBytes } from './escape';

const COLON = 0x3a;
const COMMA = 0x2c;
const EQUALS = 0x3d;
const MAX_ARGS = 32;

export interface BridgeMessage {
  user: Buffer;
  op: string;
  origpath: Buffer;
  /** Argument values as the bytes they stand for. */
  args: Map<string, Buffer>;
}

function isKeyByte(c: number): boolean {
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x5f;
}

export function parseMessage(payload: Buffer): BridgeMessage {
  const c1 = payload.indexOf(COLON);
  const c2 = c1 < 0 ? -1 : payload.indexOf(COLON, c1 + 1);
  const c3 = c2 < 0 ? -1 : payload.indexOf(COLON, c2 + 1);
  if (c3 < 0) throw malformed('expected user:operation:origpath:args');
  if (payload.indexOf(COLON, c3 + 1) >= 0) throw malformed('unescaped colon in args');
  const op = unescapeBytes(payload, c1 + 1, c2).toString('latin1');
  if (!/^[a-z][a-z0-9_]{0,31}$/.test(op)) throw malformed('bad operation name');
  const args = new Map<string, Buffer>();
  let start = c3 + 1;
  while (start < payload.length) {
    let end = payload.indexOf(COMMA, start);
    if (end < 0) end = payload.length;
    const eq = payload.indexOf(EQUALS, start);
    if (eq < 0 || eq >= end || eq === start) throw malformed('argument without key=value');
    for (let i = start; i < eq; i++) {
      if (!isKeyByte(payload[i])) throw malformed('bad argument key');
    }
    const key = payload.toString('latin1', start, eq);
    if (args.has(key)) throw malformed(`duplicate argument ${key}`);
    if (args.size >= MAX_ARGS) throw malformed('too many arguments');
    args.set(key, unescapeBytes(payload, eq + 1, end));
    start = end + 1;
    if (end === payload.length - 1) throw malformed('trailing comma');
  }
  return {
    user: unescapeBytes(payload, 0, c1),
    op,
    origpath: unescapeBytes(payload, c2 + 1, c3),
    args,
  };
}

/** Builds a payload (for test clients, the benchmark and docs examples). */
export function formatMessage(
  user: Buffer | string,
  op: string,
  origpath: Buffer | string,
  args: Array<[string, Buffer | string | number]>,
): string {
  const a = args.map(([k, v]) => `${k}=${typeof v === 'number' ? String(v) : escapeBytes(v)}`);
  return `${escapeBytes(user)}:${escapeBytes(op)}:${escapeBytes(origpath)}:${a.join(',')}`;
}

function malformed(why: string): VfsxError {
  return new VfsxError('VFSX_ERR_PROTOCOL_MALFORMED', `malformed message: ${why}`);
}
