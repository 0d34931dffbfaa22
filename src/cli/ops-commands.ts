/**
 * The operator commands: `vfsx status`, `vfsx why`, `vfsx events`.
 * A human table on a terminal, stable JSON (--json) for scripts.
 */
import type { VfsxConfig } from '../config/schema';
import { EventBus, VfsxEvent } from '../journal/events';
import { BandwidthStatus, ShareStatus, Status, StatusReader } from '../operator/status';
import { formatRate, Schedule } from '../config/bwlimit';
import { siteNamed, sitesOf } from '../config/schema';
import { bwlimitOverride } from '../site-link/bandwidth';
import { dropSite } from '../replication-queue/site-state';
import { why } from '../operator/why';

const age = (s: number) => (s < 1 ? `${Math.round(s * 1000)} ms` : s < 120 ? `${s.toFixed(1)} s` : s < 7200 ? `${(s / 60).toFixed(1)} min` : `${(s / 3600).toFixed(1)} h`);
const bytes = (n: number) => (n < 1024 ? `${n} B` : n < 1 << 20 ? `${(n / 1024).toFixed(1)} KiB` : n < 1 << 30 ? `${(n / (1 << 20)).toFixed(1)} MiB` : `${(n / (1 << 30)).toFixed(2)} GiB`);
const when = (ms: number | null, now: number) => (ms ? `${age((now - ms) / 1000)} ago` : 'never');

function table(rows: string[][]): string {
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  ').trimEnd()).join('\n');
}

/** "5M now (timetable 08:00,5M 18:00,off; set by vfsx bwlimit), sending 4.9M/s". */
export function bwLine(b: BandwidthStatus): string {
  const now = b.limit > 0 ? `limited to ${formatRate(b.limit)}/s` : 'no limit';
  const how = b.text.includes(',') ? ` by timetable "${b.text}"` : '';
  const who = b.source === 'override' ? ' (set by vfsx bwlimit)' : '';
  return `${now}${how}${who}; sending ${formatRate(Math.round(b.sentPerSec)).replace('off', '0')}/s`;
}

export function renderStatus(st: Status): string {
  const out: string[] = [];
  const many = st.sites.length > 1 || st.site.name !== 'default';
  for (const { site } of st.sites) {
    const name = many ? `DR site ${site.name} (${site.url})` : `DR site ${site.url}`;
    out.push(`${name}: ${site.state.toUpperCase()}${site.since ? ` since ${new Date(site.since).toISOString()}` : ''}`
      + `${site.replicatorRunning ? '' : ' (replicator not running: is vfsx replicate up, with replication.enabled?)'}`
      + `${site.configured ? '' : ' (no longer configured: vfsx site remove ' + site.name + ' drops its queue)'}`
      + `${site.initialSync === 'pending' ? ' (initial sync running)' : ''}`);
    if (site.replicators.length > 0) {
      out.push(`  replicators: ${site.replicators.map((r) => `${r.id} (${r.records} records, ${r.commits} commits)`).join(', ')}`);
    }
    if (site.lastError && site.state !== 'up') out.push(`  last error: ${site.lastError} (${when(site.lastErrorAt, st.at)})`);
    out.push(`  bandwidth: ${bwLine(site.bandwidth)}`);
  }
  out.push(`journal: ${st.journal.unpumped} unpumped, ${st.journal.awaitingOutcome} awaiting outcome; queue ${Object.entries(st.journal.queued).map(([k, v]) => `${k} ${v}`).join(', ')}`);
  out.push(st.spool.failOpenEngaged
    ? `FAIL-OPEN ENGAGED: ${st.spool.files} spool files (${bytes(st.spool.bytes)}) in ${st.spool.dir}`
    : `spool: empty (${st.spool.ingestedFiles} files ingested so far${st.spool.lastIngestAt ? `, last ${when(st.spool.lastIngestAt, st.at)}` : ''})`);
  out.push('');
  if (st.shares.length === 0) {
    out.push('no shares have reported changes yet');
  } else {
    const rows = [[...(many ? ['SITE'] : []), 'SHARE', 'BACKLOG', 'FILES', 'DIRTY', 'RPO AGE', 'OPS/S', 'BYTES/S', 'RETRYING', 'LAST COMMIT', 'SCRUB']];
    for (const { site, shares } of st.sites) {
      for (const s of shares) {
        rows.push([...(many ? [site.name] : []), s.share, `${s.backlog.records}`, `${s.backlog.files}${s.backlog.exact ? '' : '+'}`, bytes(s.backlog.bytes), age(s.rpoAgeSeconds),
          s.throughput.opsPerSec.toFixed(1), bytes(Math.round(s.throughput.bytesPerSec)), `${s.retrying.length}`, when(s.lastCommitAt, st.at), scrubText(s.scrub, st.at)]);
      }
    }
    out.push(table(rows));
  }
  const retrying = st.sites.flatMap((v) => v.shares.flatMap((s) => s.retrying));
  if (retrying.length > 0) {
    out.push('', 'records waiting to be retried (newest error):');
    for (const r of retrying.slice(0, 10)) out.push(`  ${many && r.site ? `[${r.site}] ` : ''}${r.share}:${r.path} ${r.op} after ${r.attempts} attempts: ${r.error}`);
    if (retrying.length > 10) out.push(`  ... and ${retrying.length - 10} more`);
  }
  const leftOut = st.sites.flatMap(({ site, shares }) => shares.filter((s) => s.leftOut.count > 0).map((s) => ({ site: site.name, s })));
  if (leftOut.length > 0) {
    out.push('', 'LEFT OUT: paths the DR site cannot take (retried at their next change and at every scrub):');
    for (const { site, s } of leftOut) {
      for (const e of s.leftOut.paths.slice(0, 10)) out.push(`  ${many ? `[${site}] ` : ''}${s.share}:${e.path} ${e.op} since ${when(e.since, st.at)}: ${e.error}`);
      if (s.leftOut.count > 10) out.push(`  ... and ${s.leftOut.count - 10} more in ${s.share}`);
    }
  }
  return `${out.join('\n')}\n`;
}

function scrubText(sc: ShareStatus['scrub'], now: number): string {
  if (sc.state === 'never') return 'not yet';
  if (sc.state === 'running') return `${sc.kind} pass: ${sc.checked} checked`;
  const found = sc.error ? `FAILED: ${sc.error}` : sc.differences === 0 ? 'no differences'
    : `${sc.repaired}/${sc.differences} differences repaired${sc.leftOut > 0 ? `, ${sc.leftOut} left out` : ''}`;
  return `${sc.kind} ${when(sc.finishedAt, now)}: ${found}`;
}

export async function statusCommand(config: VfsxConfig, o: { json: boolean; watch: boolean }): Promise<number> {
  const reader = new StatusReader(config);
  try {
    for (;;) {
      const st = await reader.read();
      if (o.json) process.stdout.write(`${JSON.stringify(st)}\n`);
      else process.stdout.write(`${o.watch && process.stdout.isTTY ? '\x1b[2J\x1b[H' : ''}${renderStatus(st)}`);
      if (!o.watch) return 0;
      await new Promise((r) => setTimeout(r, 2000));
    }
  } finally {
    await reader.close();
  }
}

/**
 * `vfsx bwlimit [RATE|TIMETABLE|config]`: shows the bandwidth limit, or sets
 * one that overrides replication.bwlimit until `vfsx bwlimit config` (kept
 * in Redis: it outlives restarts; every replicator takes it up within a second).
 */
export async function bwlimitCommand(config: VfsxConfig, args: string[], o: { json: boolean; site?: string }): Promise<number> {
  const text = args.join(' ').trim();
  const site = o.site === undefined ? undefined : siteNamed(config.replication, o.site).name;
  if (text !== '' && text !== 'config') {
    try {
      Schedule.parse(text);
    } catch (err) {
      process.stderr.write(`vfsx bwlimit: ${(err as Error).message}\n`);
      return 2;
    }
  }
  const reader = new StatusReader(config);
  try {
    const over = await bwlimitOverride(config.redis, text === 'config' ? null : text === '' ? undefined : text, site);
    if (text !== '') await new Promise((r) => setTimeout(r, 1500)); // a replicator takes it up within a second
    const st = await reader.read();
    const view = st.sites.find((v) => v.site.name === site) ?? st.sites[0];
    const b = view.site.bandwidth;
    const configured = site === undefined ? config.replication.bwlimit : siteNamed(config.replication, site).bwlimit;
    const key = site === undefined ? 'replication.bwlimit' : `replication.sites[${site}].bwlimit`;
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ ...b, site: view.site.name, configured, override: over, replicatorRunning: view.site.replicatorRunning })}\n`);
    } else {
      const lines = [`bandwidth to ${view.site.url}: ${bwLine(b)}`, `  configured (${key}): ${configured}`];
      if (over !== null) lines.push(`  set while running (vfsx bwlimit): ${over}  ("vfsx bwlimit config" goes back to the configured limit)`);
      if (st.sites.length > 1) for (const v of st.sites) if (v !== view) lines.push(`  site ${v.site.name}: ${bwLine(v.site.bandwidth)}`);
      if (!view.site.replicatorRunning) lines.push('  vfsx replicate is not running: the limit applies when it starts');
      process.stdout.write(`${lines.join('\n')}\n`);
    }
    return 0;
  } finally {
    await reader.close();
  }
}

/** `vfsx site list|remove [NAME]`: the sites the journal feeds; remove drops one no longer configured. */
export async function siteCommand(config: VfsxConfig, sub: string | undefined, name: string | undefined, o: { json: boolean }): Promise<number> {
  const reader = new StatusReader(config);
  try {
    if (sub === undefined || sub === 'list') {
      const st = await reader.read();
      const rows = st.sites.map(({ site, shares }) => ({
        name: site.name, url: site.url, configured: site.configured, state: site.state, initialSync: site.initialSync,
        backlog: shares.reduce((a, s) => a + s.backlog.records, 0), rpoAgeSeconds: Math.max(0, ...shares.map((s) => s.rpoAgeSeconds)),
      }));
      if (o.json) process.stdout.write(`${JSON.stringify(rows)}\n`);
      else for (const r of rows) process.stdout.write(`${r.name}  ${r.url}  ${r.state}${r.configured ? '' : '  (not configured)'}  backlog ${r.backlog}  RPO age ${age(r.rpoAgeSeconds)}\n`);
      return 0;
    }
    if (sub === 'remove' && name) {
      if (sitesOf(config.replication).some((x) => x.name === name)) {
        process.stderr.write(`vfsx site remove: ${name} is still in replication.sites: take it out of the configuration (and restart vfsx replicate) first\n`);
        return 2;
      }
      const dropped = await dropSite(config, name);
      process.stdout.write(o.json ? `${JSON.stringify({ removed: name, ...dropped })}\n` : `site ${name}: no longer fed; ${dropped.jobs} queued jobs and ${dropped.keys} state keys dropped\n`);
      return 0;
    }
    process.stderr.write('usage: vfsx site list | vfsx site remove NAME\n');
    return 2;
  } finally {
    await reader.close();
  }
}

export async function whyCommand(config: VfsxConfig, share: string, path: string, o: { json: boolean; source?: string; site?: string }): Promise<number> {
  const reader = new StatusReader(config);
  try {
    // Every site's view of the path (or the one asked for); a single-site system shows its one site as before.
    const names = o.site ? [siteNamed(config.replication, o.site).name] : sitesOf(config.replication).map((x) => x.name);
    const reports = [];
    for (const name of names) reports.push({ name, r: await why(reader.queueOf(name), reader.redis, config, share, path, o.source, name) });
    if (o.json) {
      process.stdout.write(`${JSON.stringify(names.length === 1 && !o.site ? reports[0].r : reports.map(({ name, r }) => ({ ...r, siteName: name })))}\n`);
      return 0;
    }
    const lines: string[] = [];
    for (const { name, r } of reports) {
      lines.push(`${share}:${r.path}: ${r.verdict.toUpperCase()}${names.length > 1 ? ` at site ${name}` : ''}`);
      lines.push(`  source: ${r.source.exists ? `${r.source.kind}, ${r.source.size} bytes, modified ${new Date(r.source.mtimeMs ?? 0).toISOString()}` : r.source.root ? 'does not exist' : 'unknown (no record names the share root; pass --source)'}`);
      lines.push(`  DR site ${r.site.url}: ${r.site.reachable ? (r.site.head ? `${r.site.head.kind}, ${r.site.head.size} bytes, committed ${new Date(r.site.head.ts).toISOString()}, ${r.site.versions.length} versions kept` : 'no such object') : `unreachable (${r.site.error})`}`);
      if (r.heldBackBy) lines.push(`  held back by: ${r.heldBackBy}`);
      if (r.leftOut) lines.push(`  left out since ${new Date(r.leftOut.since).toISOString()}: the site cannot take it: ${r.leftOut.error}`);
      lines.push(`  ${r.pending} pending record(s); recent records (newest first):`);
      for (const x of r.records.slice(0, 15)) {
        // BullMQ counts the successful attempt too.
        const finished = x.state === 'committed' || x.state === 'left out';
        const failedAttempts = finished ? x.attempts - 1 : x.attempts;
        lines.push(`    ${new Date(x.at).toISOString()} ${x.op} ${x.state}${failedAttempts > 0 ? ` after ${failedAttempts} failed attempt(s)` : ''}${x.error && x.state !== 'committed' ? `: ${x.error}` : ''}`);
      }
      if (r.records.length === 0) lines.push('    none kept (replicated records are kept for the last 1000 jobs)');
    }
    process.stdout.write(`${lines.join('\n')}\n`);
    return 0;
  } finally {
    await reader.close();
  }
}

function renderEvent(e: VfsxEvent): string {
  const parts = [new Date(e.at).toISOString(), e.type];
  if (e.share) parts.push(e.share + (e.path !== undefined ? `:${e.path}` : ''));
  if (e.op) parts.push(e.op);
  if (e.latencyMs !== undefined) parts.push(`${e.latencyMs} ms after the change`);
  if (e.rpoAgeMs !== undefined) parts.push(`rpo ${age(e.rpoAgeMs / 1000)} (threshold ${age((e.thresholdMs ?? 0) / 1000)})`);
  if (e.type === 'scrub-finished') {
    parts.push(`${e.scrub} pass: ${e.files} checked, ${e.differences} differences, ${e.repaired} repaired${e.leftOut ? `, ${e.leftOut} left out (the site cannot take them)` : ''}`);
    if (e.error) parts.push(`error: ${e.error}`);
    return parts.join(' ');
  }
  if (e.type === 'scrub-repaired') return [...parts, `repaired: ${e.what}`].join(' ');
  if (e.type === 'left-out') return [...parts, ...(e.site ? [e.site] : []), `the site cannot take it: ${e.error ?? ''}`].join(' ');
  if (e.files !== undefined) parts.push(`${e.files} spool files`);
  if (e.site) parts.push(e.site);
  if (e.error) parts.push(`error: ${e.error}`);
  return parts.join(' ');
}

export async function eventsCommand(config: VfsxConfig, o: { json: boolean; recent: boolean }): Promise<number> {
  if (o.recent) {
    const bus = new EventBus(config.redis);
    try {
      for (const e of (await bus.recent(200)).reverse()) process.stdout.write(`${o.json ? JSON.stringify(e) : renderEvent(e)}\n`);
    } finally {
      await bus.close();
    }
  }
  const stop = await EventBus.subscribe(config.redis, (e) => process.stdout.write(`${o.json ? JSON.stringify(e) : renderEvent(e)}\n`));
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await stop();
  return 0;
}
