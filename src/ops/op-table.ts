/**
 * One handler per operation, registered in one table. A handler names the
 * operation's phase and validates its arguments into a record's fields.
 */
import { VfsxError } from '../errors/vfsx-error';
import { OPERATIONS } from '../config/schema';

export type Phase = 'pre' | 'post';
type ArgKind = 'name' | 'octal' | 'uint' | 'int' | 'hex' | 'time' | 'flags' | 'text' | 'ranges';

export interface OpHandler {
  op: string;
  phase: Phase;
  /** Arguments every report of this op carries (besides seq, share, path). */
  required: Record<string, ArgKind>;
  optional: Record<string, ArgKind>;
}

export interface ParsedArgs {
  names: Record<string, string>;
  args: Record<string, string | number>;
  ranges?: Array<[number, number]>;
  err?: number;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

function handler(op: string, phase: Phase, required: OpHandler['required'], optional: OpHandler['optional'] = {}): OpHandler {
  // err: a pre-phase report may carry its outcome (a folded report, docs/protocol.md).
  return { op, phase, required, optional: { stream: 'name', ...(phase === 'pre' ? { err: 'uint' as const } : {}), ...optional } };
}

const times = { atime: 'time', mtime: 'time', ctime: 'time', btime: 'time' } as const;

/** The table. Keep it in step with OPERATIONS (a test checks) and the C hooks. */
export const OP_TABLE: ReadonlyMap<string, OpHandler> = new Map(
  [
    handler('create', 'pre', { flags: 'flags', mode: 'octal' }),
    // ino (hex): the file the ranges were written to (modules before it omit it). attrs and times: DOS
    // attributes and times set through the handle, riding on its report (protocol 4, docs/protocol.md).
    handler('close', 'post', { flags: 'flags', ranges: 'ranges', err: 'uint' }, { ino: 'hex', attrs: 'hex', ...times }),
    handler('fsync', 'post', { flags: 'flags', ranges: 'ranges', err: 'uint' }, { ino: 'hex', attrs: 'hex', ...times }),
    handler('truncate', 'pre', { size: 'int' }),
    // attrs: the DOS attributes smbd set on the directory it made, or on the renamed file (protocol 4).
    handler('mkdir', 'pre', { mode: 'octal' }, { attrs: 'hex' }),
    handler('rmdir', 'pre', {}),
    handler('unlink', 'pre', {}),
    handler('rename', 'pre', { to: 'name' }, { to_stream: 'name', noreplace: 'uint', attrs: 'hex' }),
    handler('symlink', 'pre', { target: 'name' }),
    handler('link', 'pre', { from: 'name' }, { from_stream: 'name' }),
    handler('mknod', 'pre', { mode: 'octal', dev: 'uint' }),
    handler('chmod', 'pre', { mode: 'octal' }),
    handler('chown', 'pre', { uid: 'int', gid: 'int' }, { nofollow: 'uint' }),
    handler('utimes', 'pre', {}, times),
    handler('chflags', 'pre', { flags: 'hex' }),
    handler('setxattr', 'pre', { name: 'text', size: 'uint' }),
    handler('removexattr', 'pre', { name: 'text' }),
    handler('setdosattr', 'pre', { attrs: 'hex' }),
    handler('setacl', 'pre', { kind: 'text' }, { secinfo: 'hex', type: 'uint' }),
  ].map((h) => [h.op, h]),
);

for (const op of OPERATIONS) {
  if (!OP_TABLE.has(op)) throw new Error(`op table lacks ${op}`);
}

const COMMON = new Set(['seq', 'share', 'path', 'async', 'strict', 'denied']);

function bad(op: string, why: string): VfsxError {
  return new VfsxError('VFSX_ERR_OPS_BAD_ARGS', `${op}: ${why}`);
}

/** Decodes a name: a string when valid UTF-8, else base64 under key+'B64'. */
export function putName(out: Record<string, string>, key: string, v: Buffer): void {
  try {
    out[key] = utf8.decode(v);
  } catch {
    out[`${key}B64`] = v.toString('base64');
  }
}

function parseRanges(op: string, s: string): Array<[number, number]> {
  if (s === '') return [];
  return s.split(';').map((part) => {
    const m = /^(\d{1,19})\+(\d{1,19})$/.exec(part);
    if (!m) throw bad(op, `bad range ${JSON.stringify(part)}`);
    return [Number(m[1]), Number(m[2])];
  });
}

const PATTERNS: Record<Exclude<ArgKind, 'name' | 'text' | 'ranges'>, RegExp> = {
  octal: /^[0-7]{1,7}$/,
  uint: /^\d{1,20}$/,
  int: /^-?\d{1,20}$/,
  hex: /^[0-9a-f]{1,16}$/,
  time: /^-?\d{1,20}\.\d{9}$/,
  flags: /^[a-z]{0,8}$/,
};

function convert(op: string, key: string, kind: ArgKind, v: Buffer, out: ParsedArgs): void {
  if (kind === 'name') {
    putName(out.names, key, v);
    return;
  }
  const s = v.toString('latin1');
  if (kind === 'text') {
    putName(out.names, key, v);
    return;
  }
  if (kind === 'ranges') {
    out.ranges = parseRanges(op, s);
    return;
  }
  if (!PATTERNS[kind].test(s)) throw bad(op, `bad ${key}=${JSON.stringify(s)}`);
  if (key === 'err') out.err = Number(s);
  else if (kind === 'uint' || kind === 'int') out.args[key] = Number(s);
  else out.args[key] = s;
}

/** A folded report: a before-phase operation's report that carries its own outcome (err=; docs/protocol.md). */
export function isFolded(op: string, args: Map<string, Buffer>): boolean {
  return OP_TABLE.get(op)?.phase === 'pre' && args.has('err');
}

/** Validates the arguments of one report against its handler. */
export function parseArgs(h: OpHandler, args: Map<string, Buffer>): ParsedArgs {
  const out: ParsedArgs = { names: {}, args: {} };
  const path = args.get('path');
  if (path === undefined || path.length === 0) throw bad(h.op, 'missing path');
  putName(out.names, 'path', path);
  for (const [key, kind] of Object.entries(h.required)) {
    const v = args.get(key);
    if (v === undefined) throw bad(h.op, `missing ${key}`);
    convert(h.op, key, kind, v, out);
  }
  for (const [key, v] of args) {
    if (COMMON.has(key) || key in h.required) continue;
    const kind = h.optional[key];
    if (kind === undefined) throw bad(h.op, `unknown argument ${key}`);
    convert(h.op, key, kind, v, out);
  }
  return out;
}
