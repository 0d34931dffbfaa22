/**
 * Paths left out: changes replication cannot carry to a site whatever it
 * tries (a file too large for it, a name a plaintext repository cannot
 * hold, a source file that cannot be read: `isPathFault`). Retrying such a
 * record forever held its share's RPO age up forever and hid every real
 * delay behind it; instead, after a few attempts the record is left out:
 * named in a hash per share and site (`StateKeys.leftOut`), shown by
 * `vfsx status`, /metrics, the dashboard and `vfsx why`, announced by a
 * `left-out` event (an alert by default), and taken out of the RPO.
 *
 * A left-out path is not given up: its next change is replicated as any
 * other (a commit of the path clears it), and every scrub pass compares it
 * and repairs it once the site can take it, or names it again.
 */
import type { ChainableCommander, Redis } from 'ioredis';
import type { VfsxConfig } from '../config/schema';
import { stateKeys, withRedisOnce } from '../journal/redis-connection';
import { nameFromBytes, nameToBytes } from '../protocol/byte-names';

/** The return value of a job whose record was left out. */
export const LEFT_OUT = 'left out';

/** The return value of a batch that split records off (their paths): they went on as lone jobs. */
export interface BatchResult {
  splitOff: string[];
}

export interface LeftOutPath {
  path: string;
  /** The operation that could not be replicated ("scrub" when a scrub pass found it). */
  op: string;
  error: string;
  /** ms: the change that could not be replicated. */
  since: number;
  /** ms: when it was (last) found that it cannot be. */
  at: number;
}

/**
 * The hash's fields are the names' bytes (a name that is not UTF-8 keeps
 * them: Redis would turn an escaped byte into U+FFFD).
 */
export const leftOutField = (path: string): Buffer => nameToBytes(path);

/** Adds a left-out path to a caller's pipeline (HSET: 1 when the path was not left out before). */
export function leaveOut(p: ChainableCommander, key: string, e: LeftOutPath): ChainableCommander {
  const { path, ...rest } = e;
  return p.hset(key, leftOutField(path), JSON.stringify(rest));
}

function parse(path: string, json: string): LeftOutPath {
  try {
    const v = JSON.parse(json) as Partial<LeftOutPath>;
    return { path, op: String(v.op ?? ''), error: String(v.error ?? ''), since: Number(v.since ?? 0), at: Number(v.at ?? 0) };
  } catch {
    return { path, op: '', error: json, since: 0, at: 0 };
  }
}

/** How many paths are left out, and up to `limit` of them (by path). */
export async function readLeftOut(conn: Redis, key: string, limit = 20): Promise<{ count: number; paths: LeftOutPath[] }> {
  const count = await conn.hlen(key);
  if (count === 0) return { count, paths: [] };
  const paths: LeftOutPath[] = [];
  let cursor = '0';
  // A bounded read: a share with very many left out is shown by its count and a sample.
  do {
    const [next, kv] = await conn.hscanBuffer(key, cursor, 'COUNT', 200);
    cursor = String(next);
    for (let i = 0; i + 1 < kv.length; i += 2) paths.push(parse(nameFromBytes(kv[i]), kv[i + 1].toString()));
  } while (cursor !== '0' && paths.length < Math.max(limit, 200));
  paths.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return { count, paths: paths.slice(0, limit) };
}

/** One path's entry, or null. */
export async function leftOutEntry(conn: Redis, key: string, path: string): Promise<LeftOutPath | null> {
  const v = await conn.hget(key, leftOutField(path));
  return v === null ? null : parse(path, v);
}

/**
 * After a whole scrub pass that began at `startedAt`: drops the entries
 * found before the pass that it did not find again (repaired, deleted, or
 * renamed away; `keep` are paths it did not judge). Entries made during
 * the pass stay.
 */
export async function pruneLeftOut(conn: Redis, key: string, startedAt: number, foundAgain: Set<string>, keep: Set<string>): Promise<number> {
  const stale: Buffer[] = [];
  let cursor = '0';
  do {
    const [next, kv] = await conn.hscanBuffer(key, cursor, 'COUNT', 500);
    cursor = String(next);
    for (let i = 0; i + 1 < kv.length; i += 2) {
      const e = parse(nameFromBytes(kv[i]), kv[i + 1].toString());
      if (e.at < startedAt && !foundAgain.has(e.path) && !keep.has(e.path)) stale.push(kv[i], kv[i + 1]);
    }
  } while (cursor !== '0');
  let n = 0;
  // Only an entry still as read: one a record left out again meanwhile stays.
  for (let i = 0; i < stale.length; i += 1000) n += Number(await conn.eval(DEL_IF_SAME, 1, key, ...stale.slice(i, i + 1000)));
  return n;
}

const DEL_IF_SAME = `local n = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then redis.call('HDEL', KEYS[1], ARGV[i]); n = n + 1 end
end
return n`;

/**
 * Names a path a whole pass (a scrub, a resync) found the site cannot take,
 * keeping the operation and time of an entry already there. Returns
 * whether the path was not left out before (announce it then).
 */
export async function noteLeftOut(conn: Redis, key: string, path: string, op: string, error: string): Promise<boolean> {
  const at = Date.now();
  const before = await leftOutEntry(conn, key, path);
  await leaveOut(conn.pipeline(), key, { path, op: before?.op ?? op, error, since: before?.since ?? at, at }).exec();
  return before === null;
}

/**
 * After `vfsx resync` of a whole share (begun at `startedAt`): the paths it
 * left out are named, the entries it found in sync or gone are dropped, as
 * a scrub pass would. Best effort: a resync runs without Redis too (a
 * disaster), and then the next scrub pass does this. Returns whether it did.
 */
export async function recordWholePass(redis: VfsxConfig['redis'], site: string, share: string, startedAt: number, leftOut: Array<{ path: string; why: string }>): Promise<boolean> {
  const key = stateKeys(redis.prefix, site).leftOut(share);
  try {
    await withRedisOnce(redis, async (c) => {
      for (const { path, why } of leftOut) await noteLeftOut(c, key, path, 'resync', why);
      await pruneLeftOut(c, key, startedAt, new Set(leftOut.map((l) => l.path)), new Set());
    }, 2000);
    return true;
  } catch {
    return false;
  }
}
