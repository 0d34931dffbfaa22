/**
 * Prometheus metrics of `vfsx serve` (prom-client). Gauges are filled at
 * scrape time from the same Status `vfsx status` prints; the verdict
 * histogram is observed as verdicts are written. Replication counters and
 * the change -> commit histogram are totals every `vfsx replicate` process
 * adds to in Redis, read at scrape time.
 */
import { Counter, Gauge, Histogram, MetricObjectWithValues, MetricValueWithName, Registry } from 'prom-client';
import { COMMIT_LATENCY_BUCKETS } from '../journal/redis-connection';
import type { ReplicationTotals, Status } from '../operator/status';

export interface ServiceCounters {
  connectionsAccepted: () => number;
  /** Frames received from smbd, by kind. */
  frames: () => { reports: number; folded: number; outcomes: number };
  connections: () => number;
  spoolFilesIngested: () => number;
  /** Each site's commit-latency hash (see StateKeys.latency), or null when they cannot be read. */
  commitLatency: () => Promise<Record<string, Record<string, string>> | null>;
}

/** A histogram kept by other processes (as bucket counts in Redis), exposed as is. */
class RemoteHistogram {
  readonly name = 'vfsx_change_to_commit_seconds';
  readonly help = 'From the service receiving a change (close, rename, ...) to the DR site committing it (every replicator process), per site.';
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  /** site -> its hash. */
  hashes: Record<string, Record<string, string>> = {};

  async get(): Promise<Omit<MetricObjectWithValues<MetricValueWithName<string>>, 'collect'>> {
    const values: Array<MetricValueWithName<string>> = [];
    for (const [site, h] of Object.entries(this.hashes)) {
      let acc = 0;
      COMMIT_LATENCY_BUCKETS.forEach((le, i) => {
        acc += Number(h[`b${i}`] ?? 0);
        values.push({ labels: { site, le }, value: acc, metricName: `${this.name}_bucket` });
      });
      acc += Number(h.inf ?? 0);
      values.push({ labels: { site, le: '+Inf' }, value: acc, metricName: `${this.name}_bucket` });
      values.push({ labels: { site }, value: Number(h.sum ?? 0), metricName: `${this.name}_sum` });
      values.push({ labels: { site }, value: Number(h.count ?? 0), metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: 'histogram' as never, aggregator: 'sum', values };
  }
}

export class Metrics {
  readonly registry = new Registry();
  readonly verdictLatency: Histogram;
  private readonly refresh: () => Promise<void>;

  constructor(readStatus: () => Promise<Status | null>, counters: ServiceCounters) {
    const r = this.registry;
    this.verdictLatency = new Histogram({
      name: 'vfsx_verdict_latency_seconds',
      help: 'From a report that waits for a verdict arriving to its verdict being written (includes the durable journal write).',
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 1],
      registers: [r],
    });
    const commitLatency = new RemoteHistogram();
    r.registerMetric(commitLatency as never);
    const g = (name: string, help: string, labelNames: string[] = []) => new Gauge({ name, help, labelNames, registers: [r] });
    const up = g('vfsx_redis_up', 'Whether the status could be read from Redis (1) or not (0).');
    const siteUp = g('vfsx_site_up', 'DR site link: 1 up, 0 down or unknown.', ['site']);
    const replicatorUp = g('vfsx_replicator_running', 'Whether the replicator reported within the last 5 s.', ['site']);
    const bwLimit = g('vfsx_site_bandwidth_limit_bytes_per_second', 'Bandwidth limit in force on what goes to the DR site (0: none).', ['site']);
    const bwSent = g('vfsx_site_sent_bytes_per_second', 'Bytes sent to the DR site per second (blocks and metadata), over the last 10 s.', ['site']);
    const records = g('vfsx_backlog_records', 'Changes recorded but not yet committed at the DR site.', ['share', 'site']);
    const files = g('vfsx_backlog_files', 'Distinct paths among the oldest 1000 uncommitted changes.', ['share', 'site']);
    const bytes = g('vfsx_backlog_dirty_bytes', 'Dirty bytes of the oldest 1000 uncommitted closes/flushes.', ['share', 'site']);
    const rpo = g('vfsx_rpo_age_seconds', 'Age of the oldest change not yet committed at the DR site (0: none).', ['share', 'site']);
    const opsRate = g('vfsx_replicated_ops_per_second', 'Changes committed per second, averaged over the last minute.', ['share', 'site']);
    const bytesRate = g('vfsx_replicated_bytes_per_second', 'Block bytes sent per second, averaged over the last minute.', ['share', 'site']);
    const commits = g('vfsx_share_commits', 'Changes committed at the DR site since the journal began (per share).', ['share', 'site']);
    const lastCommit = g('vfsx_last_commit_timestamp_seconds', 'When the last change of the share was committed.', ['share', 'site']);
    const retrying = g('vfsx_retrying_records', 'Records that failed at least once and wait to be retried.', ['share', 'site']);
    const leftOut = g('vfsx_left_out_paths', 'Paths the DR site cannot take (too large, a name it cannot hold, unreadable): not replicated, retried at their next change and at every scrub.', ['share', 'site']);
    const scrubRunning = g('vfsx_scrub_running', '1 while a scrub pass of the share runs.', ['share', 'kind', 'site']);
    const scrubChecked = g('vfsx_scrub_checked_entries', 'Entries the running (or last) scrub pass checked.', ['share', 'site']);
    const scrubDiffs = g('vfsx_scrub_differences', 'Differences the last scrub pass found between the share and the DR site.', ['share', 'site']);
    const scrubRepaired = g('vfsx_scrub_repaired', 'Differences the last scrub pass repaired.', ['share', 'site']);
    const scrubLast = g('vfsx_scrub_last_pass_timestamp_seconds', 'When the last successful scrub pass of this kind started.', ['share', 'kind', 'site']);
    const unpumped = g('vfsx_journal_unpumped_records', 'Journal entries not yet turned into replication jobs (up to 1000).');
    const awaiting = g('vfsx_journal_awaiting_outcome_records', 'Journal records whose operation outcome has not arrived.');
    const queue = g('vfsx_queue_jobs', 'BullMQ replication jobs by state.', ['state']);
    const spoolFiles = g('vfsx_spool_files', 'Spool files smbd wrote while the service or Redis was unavailable (fail-open).');
    const spoolBytes = g('vfsx_spool_bytes', 'Bytes in spool files.');
    const failOpen = g('vfsx_fail_open_engaged', '1 while spool files exist: smbd is spooling reports instead of sending them.');
    const conns = g('vfsx_bridge_connections', 'smbd processes connected to the socket.');
    new Counter({ name: 'vfsx_spool_files_ingested_total', help: 'Spool files ingested by this service.', registers: [r], collect() { this.reset(); this.inc(counters.spoolFilesIngested()); } });
    new Counter({ name: 'vfsx_bridge_connections_accepted_total', help: 'smbd connections accepted by this service.', registers: [r], collect() { this.reset(); this.inc(counters.connectionsAccepted()); } });
    new Counter({
      name: 'vfsx_bridge_frames_total', help: 'Frames received from smbd: reports (folded: reports that carry their outcome) and separate outcomes.', labelNames: ['kind'], registers: [r],
      collect() {
        this.reset();
        const f = counters.frames();
        this.inc({ kind: 'report' }, f.reports);
        this.inc({ kind: 'folded' }, f.folded);
        this.inc({ kind: 'outcome' }, f.outcomes);
      },
    });
    let totals: ReplicationTotals | null = null;
    const repl = (name: string, help: string, pick: (s: ReplicationTotals) => number) =>
      new Counter({ name, help, registers: [r], collect() { this.reset(); if (totals) this.inc(pick(totals)); } });
    repl('vfsx_replication_records_total', 'Records the replicators processed since the journal began.', (s) => s.records);
    repl('vfsx_replication_commits_total', 'Objects committed at the DR site since the journal began.', (s) => s.commits);
    repl('vfsx_replication_coalesced_total', 'Records found already replicated by a later sync of their path (no site call).', (s) => s.coalesced);
    repl('vfsx_replication_blocks_sent_total', 'Blocks sent to the DR site since the journal began.', (s) => s.blocksSent);
    repl('vfsx_replication_sent_bytes_total', 'Block bytes sent to the DR site since the journal began.', (s) => s.bytesSent);
    repl('vfsx_replication_failures_total', 'Failed replication attempts (retried) since the journal began.', (s) => s.failures);

    const readSeconds = g('vfsx_scrape_status_read_seconds', 'Time this scrape took to read the status from Redis.');
    // One status read per scrape, shared by every gauge, before anything is serialized.
    this.refresh = async () => {
      const t0 = performance.now();
      const [st, lat] = await Promise.all([readStatus(), counters.commitLatency()]);
      readSeconds.set((performance.now() - t0) / 1000);
      commitLatency.hashes = lat ?? {};
      totals = st?.site.totals ?? null;
      conns.set(counters.connections());
      for (const m of [siteUp, replicatorUp, bwLimit, bwSent, records, files, bytes, rpo, opsRate, bytesRate, commits, lastCommit, retrying, leftOut, queue,
        scrubRunning, scrubChecked, scrubDiffs, scrubRepaired, scrubLast]) m.reset();
      up.set(st ? 1 : 0);
      if (!st) return;
      for (const { site, shares } of st.sites) {
      const at = { site: site.name };
      siteUp.set(at, site.state === 'up' ? 1 : 0);
      replicatorUp.set(at, site.replicatorRunning ? 1 : 0);
      bwLimit.set(at, site.bandwidth.limit);
      bwSent.set(at, site.bandwidth.sentPerSec);
      for (const s of shares) {
        const l = { share: s.share, site: site.name };
        records.set(l, s.backlog.records);
        files.set(l, s.backlog.files);
        bytes.set(l, s.backlog.bytes);
        rpo.set(l, s.rpoAgeSeconds);
        opsRate.set(l, s.throughput.opsPerSec);
        bytesRate.set(l, s.throughput.bytesPerSec);
        commits.set(l, s.commits);
        if (s.lastCommitAt) lastCommit.set(l, s.lastCommitAt / 1000);
        retrying.set(l, s.retrying.length);
        leftOut.set(l, s.leftOut.count);
        const sc = s.scrub;
        if (sc.kind) scrubRunning.set({ share: s.share, kind: sc.kind, site: site.name }, sc.state === 'running' ? 1 : 0);
        scrubChecked.set(l, sc.checked);
        scrubDiffs.set(l, sc.differences);
        scrubRepaired.set(l, sc.repaired);
        if (sc.lastMetadataAt) scrubLast.set({ share: s.share, kind: 'metadata', site: site.name }, sc.lastMetadataAt / 1000);
        if (sc.lastContentAt) scrubLast.set({ share: s.share, kind: 'content', site: site.name }, sc.lastContentAt / 1000);
      }
      }
      unpumped.set(st.journal.unpumped);
      awaiting.set(st.journal.awaitingOutcome);
      for (const [state, n] of Object.entries(st.journal.queued)) queue.set({ state }, n);
      spoolFiles.set(st.spool.files);
      spoolBytes.set(st.spool.bytes);
      failOpen.set(st.spool.failOpenEngaged ? 1 : 0);
    };
  }

  /** The exposition text: refreshes the gauges from one status read, then serializes. */
  async render(): Promise<string> {
    await this.refresh();
    return this.registry.metrics();
  }
}
