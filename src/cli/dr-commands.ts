/**
 * `vfsx resync`, `vfsx verify` and `vfsx restore`: the DR operator's tools.
 * Progress goes to a terminal as one updating line, or as JSON with --json.
 */
import { execFileSync } from 'node:child_process';
import { siteNamed, type VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import type { SiteClient } from '../site-link/site-client';
import { siteOpenerOf } from '../site-link/site-opener';
import { Bandwidth, bandwidthOf, type SitePace } from '../site-link/bandwidth';
import { restoreShare } from '../operator/restore';
import { SiteSync } from '../replication/site-sync';
import { recordWholePass } from '../replication/left-out';
import { Tree } from '../native/tree';
import { verifyShare } from '../replication/verify';

export interface DrCommandOptions {
  json: boolean;
  source?: string;
  at?: string;
  /** verify: compare source block hashes with the site's block ids. */
  content?: boolean;
  /** verify: also download every block at the site and check its bytes. */
  deep?: boolean;
  /** restore: into a DEST that is not empty. */
  force?: boolean;
  /** The repository passphrase's file, instead of replication.passphraseFile. */
  passphraseFile?: string;
  /** The DR site (replication.sites) to work with; default the first. */
  site?: string;
  /** restore, verify --deep: a limit on the blocks read from the site (a rate or a timetable, as replication.bwlimit). */
  bwlimit?: string;
}

/** The share's path: --source, or what smbd's configuration says. */
function shareRoot(share: string, source?: string): string {
  if (source) return source;
  try {
    const out = execFileSync('testparm', ['-s', `--section-name=${share}`, '--parameter-name=path'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
    if (out) return out;
  } catch {
    /* fall through */
  }
  throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `cannot find the path of share ${share}: pass --source DIR`);
}

/**
 * Opens the site's repository; only a writing command (resync, given the
 * pace its sends keep to) may make a new one encrypted.
 */
async function connect(config: VfsxConfig, o: DrCommandOptions, pace?: SitePace): Promise<SiteClient> {
  const r = config.replication;
  const writes = pace !== undefined;
  if (!siteNamed(r, o.site).token) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'replication.token (or the site\'s token) is required to reach the DR site');
  const log = (msg: string, x: object) => process.stderr.write(`${msg} ${JSON.stringify(x)}\n`);
  if (pace && pace.limit > 0) process.stderr.write(`bandwidth limit: ${pace.binding.text}${pace.binding.source === 'override' ? ' (set by vfsx bwlimit)' : ''}\n`);
  // What is read is limited only when asked: a restore in a disaster wants the whole link.
  const receivePace = o.bwlimit === undefined ? undefined : receiveLimit(o.bwlimit);
  return siteOpenerOf(r, { log, passphraseFile: o.passphraseFile, pace, receivePace, site: o.site, writes }).open();
}

/** --bwlimit: the limit on blocks read from the site; one that does not parse is a usage error. */
function receiveLimit(text: string): Bandwidth {
  try {
    const b = new Bandwidth(text);
    process.stderr.write(`bandwidth limit on what is read from the site: ${b.text}\n`);
    return b;
  } catch (err) {
    throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `--bwlimit: ${(err as Error).message}`);
  }
}

function progressLine(json: boolean, text: string): void {
  if (!json && process.stdout.isTTY) process.stdout.write(`\r${text}\x1b[K`);
}

export async function verifyCommand(config: VfsxConfig, share: string, o: DrCommandOptions): Promise<number> {
  const site = await connect(config, o);
  try {
    const diffs = await verifyShare(site, share, shareRoot(share, o.source), { content: o.content === true || o.deep === true, deep: o.deep === true });
    if (o.json) process.stdout.write(`${JSON.stringify({ share, identical: diffs.length === 0, differences: diffs })}\n`);
    else if (diffs.length === 0) process.stdout.write(`${share}: the DR site is identical to the source\n`);
    else for (const d of diffs) process.stdout.write(`${d.path}: ${d.what}\n`);
    return diffs.length === 0 ? 0 : 1;
  } finally {
    site.close();
  }
}

export async function resyncCommand(config: VfsxConfig, share: string, o: DrCommandOptions): Promise<number> {
  // What is sent obeys the bandwidth limits the replicators keep to, together with them (a resync is an initial sync).
  const pace = await bandwidthOf(config, o.site);
  try {
    return await resync(config, share, o, await connect(config, o, pace));
  } finally {
    pace.close();
  }
}

async function resync(config: VfsxConfig, share: string, o: DrCommandOptions, site: SiteClient): Promise<number> {
  const root = shareRoot(share, o.source);
  const stats = { commits: 0, blocksSent: 0, bytesSent: 0 };
  const trees: Tree[] = [];
  try {
    await site.call('bucket.ensure', { bucket: share });
    const tree = Tree.open(root);
    trees.push(tree);
    const sync = new SiteSync({ site, bucket: share, tree, blockSize: config.replication.blockSize, stats });
    const startedAt = Date.now();
    const timer = setInterval(() => progressLine(o.json, `resync ${share}: ${stats.commits} objects, ${stats.bytesSent} bytes sent`), 250);
    try {
      // Paths that fail on their own (too large, a name the site cannot hold) are left out; the rest syncs and is pruned.
      let partial: VfsxError | null = null;
      try {
        await sync.syncTree('');
      } catch (err) {
        if (!(err instanceof VfsxError && err.code === 'VFSX_ERR_REPL_PARTIAL')) throw err;
        partial = err;
      }
      // What the source no longer has: the site's listing a page at a time (a share of millions is not held whole).
      let deleted = 0;
      await site.list({ bucket: share }, async (objects) => {
        for (const obj of objects as Array<{ path: string }>) {
          if (!sync.tree.stat(obj.path)) deleted += (await site.call<{ ended: number }>('object.delete', { bucket: share, path: obj.path })).ended;
        }
      });
      progressLine(o.json, '');
      const leftOut = sync.leftOut.map(([path, why]) => ({ path, why }));
      // What `vfsx status` lists as left out, brought up to date (when Redis answers).
      await recordWholePass(config.redis, siteNamed(config.replication, o.site).name, share, startedAt, leftOut);
      const out = { share, objects: stats.commits, blocksSent: stats.blocksSent, bytesSent: stats.bytesSent, deleted, leftOut };
      process.stdout.write(o.json ? `${JSON.stringify(out)}\n` : `resync ${share}: ${out.objects} objects checked, ${out.blocksSent} blocks (${out.bytesSent} bytes) sent, ${deleted} deleted${leftOut.length > 0 ? `, ${leftOut.length} left out` : ''}\n`);
      if (partial) {
        process.stderr.write(`vfsx resync: ${partial.message}\n`);
        return 1;
      }
      return 0;
    } finally {
      clearInterval(timer);
    }
  } finally {
    for (const t of trees) t.close();
    site.close();
  }
}

export async function restoreCommand(config: VfsxConfig, share: string, dest: string, o: DrCommandOptions): Promise<number> {
  let at: number | undefined;
  if (o.at !== undefined) {
    at = /^\d+$/.test(o.at) ? Number(o.at) : Date.parse(o.at);
    if (!Number.isFinite(at)) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `--at: not a time: ${o.at} (ISO 8601 or ms since the epoch)`);
  }
  const site = await connect(config, o);
  try {
    const p = await restoreShare(site, share, dest, {
      at, force: o.force === true, onProgress: (q) => progressLine(o.json, `restore ${share}: ${q.done}/${q.objects} objects, ${q.bytes} bytes`),
    });
    progressLine(o.json, '');
    const complete = p.refused.length === 0 && p.failed.length === 0;
    const out = { share, dest, at: at ?? null, objects: p.objects, bytes: p.bytes, complete, refused: p.refused, failed: p.failed, warnings: p.warnings };
    if (o.json) {
      process.stdout.write(`${JSON.stringify(out)}\n`);
    } else {
      process.stdout.write(`restored ${p.objects - p.refused.length - p.failed.length} of ${p.objects} objects (${p.bytes} bytes) of ${share} into ${dest}\n`);
      for (const [what, list] of [['refused', p.refused], ['FAILED', p.failed], ['warning', p.warnings]] as const) {
        for (const w of list.slice(0, 20)) process.stdout.write(`  ${what}: ${w}\n`);
        if (list.length > 20) process.stdout.write(`  ... and ${list.length - 20} more (${what})\n`);
      }
    }
    // Refused or damaged objects make the restore incomplete: the operator must see a failure.
    return complete ? 0 : 1;
  } finally {
    site.close();
  }
}
