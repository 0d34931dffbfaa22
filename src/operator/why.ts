/**
 * `vfsx why`: everything known about one path of a share: the source's
 * current state, the last changes the journal saw, records still pending
 * (and the error holding them back), and what the DR site has committed.
 */
import type { Queue } from 'bullmq';
import type { Redis } from 'ioredis';
import { siteNamed, sitesOf, type VfsxConfig } from '../config/schema';
import { stateKeys } from '../journal/redis-connection';
import { BatchResult, LEFT_OUT, leftOutEntry } from '../replication/left-out';
import { VfsxError } from '../errors/vfsx-error';
import type { ChangeRecord } from '../ops/change-record';
import { recordsOf } from '../replication-queue/batch';
import { siteOpenerOf } from '../site-link/site-opener';
import { Tree } from '../native/tree';

export interface WhyRecord {
  jobId: string;
  op: string;
  at: number;
  state: string;
  attempts: number;
  error: string | null;
  finishedAt: number | null;
}

export interface WhyReport {
  share: string;
  path: string;
  source: { exists: boolean; kind?: string; size?: number; mtimeMs?: number; root: string | null };
  /** Journal records naming the path (newest first): queued, retrying, and the recently replicated ones. */
  records: WhyRecord[];
  pending: number;
  /** The error of the newest record that keeps failing, if any. */
  heldBackBy: string | null;
  site: {
    url: string;
    reachable: boolean;
    error: string | null;
    head: { kind: string; size: number; ts: number; mtimeNs?: string } | null;
    versions: Array<{ version: number; ts: number; kind: string; size: number }>;
  };
  /** When the site cannot take the path (too large, a name it cannot hold): what it said, since when. */
  leftOut: { op: string; error: string; since: number; at: number } | null;
  verdict: 'in sync' | 'pending' | 'held back' | 'left out' | 'site unreachable' | 'not at the site' | 'differs' | 'never seen';
}

/** A finished job's record: committed, left out, or split off its batch into a lone job of its own. */
function finishedState(ret: unknown, rec: ChangeRecord): string {
  if (ret === LEFT_OUT) return LEFT_OUT;
  const split = (ret as Partial<BatchResult> | null)?.splitOff;
  return Array.isArray(split) && split.includes(rec.names.path) ? 'split off' : 'committed';
}

const names = (r: ChangeRecord): string[] => [r.names.path, r.names.to, r.names.from].filter((p): p is string => typeof p === 'string');

export async function why(queue: Queue, conn: Redis, cfg: Pick<VfsxConfig, 'replication' | 'redis'>, share: string, path: string, sourceRoot?: string, siteName?: string): Promise<WhyReport> {
  const rel = path.replace(/^\/+/, '').replace(/\/+$/, '');
  if (rel.includes('\u0000') || rel.split('/').some((c) => c === '..' || c === '.')) {
    throw new VfsxError('VFSX_ERR_DR_INVALID_PATH', `not a path inside a share: ${JSON.stringify(path)}`);
  }
  const jobs = await queue.getJobs(['active', 'waiting', 'delayed', 'prioritized', 'completed'], 0, -1, false);
  const records: WhyRecord[] = [];
  let root: string | null = sourceRoot ?? null;
  for (const j of jobs) {
    if (!j?.data) continue;
    for (const rec of recordsOf(j.data)) {
      if (rec.share !== share) continue;
      root ??= rec.origpath;
      if (!names(rec).includes(rel)) continue;
      const state = j.finishedOn ? finishedState(j.returnvalue, rec) : j.attemptsMade > 0 ? 'retrying' : j.processedOn ? 'active' : 'queued';
      records.push({ jobId: String(j.id), op: rec.op, at: rec.ts, state, attempts: j.attemptsMade, error: j.failedReason || null, finishedAt: j.finishedOn ?? null });
    }
  }
  records.sort((a, b) => b.at - a.at);
  const pending = records.filter((r) => r.state !== 'committed' && r.state !== LEFT_OUT && r.state !== 'split off');
  const heldBackBy = pending.find((r) => r.state === 'retrying')?.error ?? null;
  const left = await leftOutEntry(conn, stateKeys(cfg.redis.prefix, siteName ?? sitesOf(cfg.replication)[0].name).leftOut(share), rel);
  const leftOut = left && { op: left.op, error: left.error, since: left.since, at: left.at };

  const st = root ? sourceEntry(root, rel) : null;
  const source: WhyReport['source'] = st
    ? { exists: true, kind: st.kind, size: st.size, mtimeMs: Number(BigInt(st.mtimeNs) / 1_000_000n), root }
    : { exists: false, root };

  const site: WhyReport['site'] = { url: siteNamed(cfg.replication, siteName).url, reachable: false, error: null, head: null, versions: [] };
  try {
    const c = await siteOpenerOf(cfg.replication, { site: siteName }).open();
    try {
      site.reachable = true;
      const head = await c.call<{ kind: string; size: number; ts: number; meta: { mtimeNs?: string } } | null>('object.stat', { bucket: share, path: rel });
      site.head = head ? { kind: head.kind, size: head.size, ts: head.ts, mtimeNs: head.meta?.mtimeNs } : null;
      site.versions = (await c.call<WhyReport['site']['versions']>('object.versions', { bucket: share, path: rel })).slice(-20);
    } finally {
      c.close();
    }
  } catch (err) {
    site.error = (err as Error).message;
  }

  let verdict: WhyReport['verdict'];
  if (!site.reachable) verdict = 'site unreachable';
  else if (heldBackBy) verdict = 'held back';
  else if (pending.length > 0) verdict = 'pending';
  else if (leftOut) verdict = 'left out';
  else if (source.exists && !site.head) verdict = records.length === 0 ? 'never seen' : 'not at the site';
  else if (source.exists && site.head && (site.head.kind !== source.kind || (source.kind === 'file' && site.head.size !== source.size))) verdict = 'differs';
  else verdict = 'in sync';
  return { share, path: rel, source, records: records.slice(0, 50), pending: pending.length, heldBackBy, site, leftOut, verdict };
}

/** The path's entry beneath the share root (never through a symlink); null when it is not in the tree. */
function sourceEntry(root: string, rel: string) {
  let tree: Tree;
  try {
    tree = Tree.open(root);
  } catch {
    return null;
  }
  try {
    return tree.stat(rel);
  } finally {
    tree.close();
  }
}
