/**
 * Batches of change records: the unit of the replication queue. The pump
 * puts a share's records that arrive together into one job (in journal
 * order, numbered per share: ShareOrder runs them one after another across
 * every replicator process); the replicator coalesces a batch into work
 * items, one per path between renames, so a file created, written, renamed
 * and deleted within one batch costs a handful of site calls, not dozens.
 */
import { createHash } from 'node:crypto';
import type { ChangeRecord } from '../ops/change-record';

export interface BatchJob {
  share: string;
  /** Position of the batch among its share's batches (1, 2, ...). */
  seq: number;
  records: ChangeRecord[];
}

/** Every replication job: retried until it succeeds (capped backoff in the replicator's worker). */
export const REPLICATION_JOB_OPTIONS = { removeOnComplete: { count: 1000 }, removeOnFail: { count: 5000 }, attempts: 1_000_000, backoff: { type: 'custom' } };

/** BullMQ job names. */
export const BATCH = 'batch';
/** A record split off a batch that kept failing: retried alone, unordered. */
export const LONE = 'record';

const shareTag = (share: string) => createHash('sha256').update(share).digest('hex').slice(0, 16);

export function batchJobId(share: string, seq: number): string {
  return `b-${shareTag(share)}-${seq}`;
}

/** A record's member in its share's RPO set: the job holding it and its place there. */
export function rpoMember(jobId: string, index: number): string {
  return `${jobId}#${index}`;
}

export function parseRpoMember(member: string): { jobId: string; index: number } {
  const at = member.lastIndexOf('#');
  return at < 0 ? { jobId: member, index: 0 } : { jobId: member.slice(0, at), index: Number(member.slice(at + 1)) };
}

/** The records a job holds (a batch's, or a lone record). */
export function recordsOf(data: unknown): ChangeRecord[] {
  const b = data as Partial<BatchJob>;
  return Array.isArray(b.records) ? b.records : [data as ChangeRecord];
}

/** One sync to run: the latest record of a path, the union of its dirty ranges, its latest time. */
export interface WorkItem {
  rec: ChangeRecord;
  /** Dirty ranges to read; undefined: decide from the file (all blocks unless only metadata changed). */
  ranges: Array<[number, number]> | undefined;
  /** Latest time among the merged records (a sync started after it covers them all). */
  ts: number;
  /** Records merged into this item (for counting coalesced records). */
  merged: number;
  /**
   * Whether a merged record changed content without saying where (create,
   * truncate, a close without ranges): every block must be read; size and
   * mtime matching the site's copy prove nothing (mtime is coarse, and a
   * rewrite of the same size in the same tick keeps both).
   */
  whole: boolean;
  /**
   * The file (inode, hex) the ranges were written to, as the module
   * reported it: ranges say nothing about another file at the same name.
   */
  ino?: string;
}

/** Operations that change only metadata: they never widen the blocks to read. */
const METADATA_ONLY = new Set(['chmod', 'chown', 'utimes', 'chflags', 'setxattr', 'removexattr', 'setdosattr', 'setacl', 'mkdir', 'rmdir', 'symlink', 'mknod']);

/** The dirty ranges a record asks for: null when it needs none, undefined when it needs the whole file. */
export function rangesOf(rec: ChangeRecord): Array<[number, number]> | null | undefined {
  if (rec.names.stream !== undefined || METADATA_ONLY.has(rec.op)) return null;
  if ((rec.op === 'close' || rec.op === 'fsync') && rec.ranges !== undefined) return rec.ranges;
  return undefined; // create, truncate, unlink, a close without ranges
}

/**
 * Coalesces a batch, keeping journal order where it matters: renames and
 * links stay where they are and are never merged across; other records of
 * one path between two of them become one item at the place of the first
 * (so a directory is still synced before what was created inside it).
 */
export function coalesce(records: ChangeRecord[]): WorkItem[] {
  const items: WorkItem[] = [];
  const open = new Map<string, { item: WorkItem; whole: boolean; ranges: Array<[number, number]> }>();
  for (const rec of records) {
    if (rec.op === 'rename' || rec.op === 'link') {
      open.clear();
      items.push({ rec, ranges: undefined, ts: rec.ts, merged: 1, whole: false });
      continue;
    }
    const key = rec.names.path;
    const r = rangesOf(rec);
    const cur = open.get(key);
    const ino = r && typeof rec.args.ino === 'string' ? rec.args.ino : undefined;
    if (!cur) {
      const item: WorkItem = { rec, ranges: r ?? undefined, ts: rec.ts, merged: 1, whole: r === undefined, ...(ino ? { ino } : {}) };
      open.set(key, { item, whole: r === undefined, ranges: r ? [...r] : [] });
      items.push(item);
      continue;
    }
    cur.item.rec = rec;
    cur.item.ts = Math.max(cur.item.ts, rec.ts);
    cur.item.merged++;
    // Ranges written to two different files at one name: neither's ranges describe what is there now.
    if (ino && cur.item.ino && ino !== cur.item.ino) cur.whole = cur.item.whole = true;
    if (ino) cur.item.ino = ino;
    if (r === undefined) cur.whole = cur.item.whole = true;
    else if (r) cur.ranges.push(...r);
    cur.item.ranges = cur.whole || cur.ranges.length === 0 ? undefined : cur.ranges;
  }
  return items;
}
