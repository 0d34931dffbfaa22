/**
 * The whole replicating system with real parts, as the README sets it up:
 * redis-server, a DR site, `vfsx serve` with `vfsx replicate`, and smbd with
 * a vfsx share stacked over streams_xattr and acl_xattr. Plus what the
 * convergence tests ask of it: a seeded random SMB workload, waiting for the
 * backlog to drain, and "converged" (verify identical, restore = diff -r).
 */
import { sitesOf } from '../../src/config/schema';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { validateConfig } from '../../src/config/load-config';
import { JournalReader } from '../../src/operator/journal-reader';
import type { SiteClient } from '../../src/site-link/site-client';
import { verifyShare } from '../../src/replication/verify';
import { DrSiteHarness } from './dr-site-harness';
import { RandomWorkload, treeDiffers } from './random-workload';
import { RedisHarness } from './redis-harness';
import { createRemoteHost, RemoteHost } from './remote-host';
import { ServiceHarness } from './service-harness';
import { SmbdHarness } from './smbd-harness';
import { waitFor } from './wait-for';

export class ReplicationStack {
  site!: SiteClient;
  /** The DR site's network namespace, when it runs as a remote host. */
  remote: RemoteHost | null = null;
  seed = Number(process.env.VFSX_SEED ?? Date.now() % 100000);

  private constructor(
    readonly share: string,
    readonly redis: RedisHarness,
    readonly dr: DrSiteHarness,
    readonly svc: ServiceHarness,
    readonly smbd: SmbdHarness,
    readonly local: string,
  ) {}

  /**
   * Starts every part; `drExtra` goes into the site's drSite configuration,
   * `replExtra` into replication's; `remote` puts the DR site in a network
   * namespace of its own behind a veth link of that many Mbit/s (a remote host);
   * `smbGlobal` goes into smb.conf's [global], `policy` into the service's rules.
   */
  static async start(o: {
    share?: string; drExtra?: Record<string, unknown>; replExtra?: Record<string, unknown>; remote?: { mbit: number }; smbGlobal?: string[]; policy?: unknown[];
  } = {}): Promise<ReplicationStack> {
    const share = o.share ?? 'docs';
    const redis = await RedisHarness.start();
    const remote = o.remote ? createRemoteHost(o.remote.mbit, `vfsxt${process.pid % 10000}`, 1) : null;
    let dr: DrSiteHarness;
    try {
      dr = await DrSiteHarness.start(o.drExtra ?? {}, remote ? { netns: remote.netns, host: remote.host } : {});
    } catch (err) {
      remote?.remove();
      throw err;
    }
    const svc = await ServiceHarness.create({
      redisSocket: redis.socket,
      policy: o.policy,
      extra: { replication: { enabled: true, ...dr.replication, blockSize: 65536, maxBackoffMs: 1000, ...o.replExtra } },
    });
    (svc.config.redis as Record<string, unknown>).prefix = svc.prefix;
    await svc.rewriteConfig();
    await svc.start();
    // As a production share would stack it: NT ACLs and streams live in xattrs below vfsx.
    const smbd = await SmbdHarness.start([{ name: share, vfsObjects: 'vfsx streams_xattr acl_xattr', vfsx: { socket: svc.socket, spool: svc.spool } }], o.smbGlobal);
    const s = new ReplicationStack(share, redis, dr, svc, smbd, await mkdtemp(join(tmpdir(), 'vfsx-repl-')));
    s.remote = remote;
    // A system configured for a plaintext repository gets one: the test's own client must not make it encrypted first.
    s.site = await dr.repo({ encryptNew: o.replExtra?.encryption !== 'off' });
    return s;
  }

  get root(): string {
    return this.smbd.sharePath(this.share);
  }

  /** After the site restarted: a new connection to it. */
  async reconnect(): Promise<void> {
    this.site.close();
    this.site = await this.dr.repo({ encryptNew: this.site.encrypted });
  }

  async drained(timeoutMs = 60000): Promise<void> {
    await drained(this.svc.config, timeoutMs);
  }

  /** A random workload of `ops` operations through SMB in its own directory; the share must then match its model. */
  async randomWorkload(tag: string, ops = 2000): Promise<void> {
    const w = new RandomWorkload(++this.seed, tag, join(this.local, `rw-${tag}`));
    w.plan(ops);
    const res = await w.run(this.smbd.port, this.share);
    assert.ok(res.ops >= ops, `${res.ops} ops`);
    assert.deepEqual(await treeDiffers(this.root, tag, res.expected), [], `seed ${w.seed}: the share does not match the workload's model`);
    process.stdout.write(`# ${tag}: seed ${w.seed}, ${JSON.stringify(res.counts)}\n`);
  }

  /** Drained, then verify reports identical and a restore into an empty directory is identical to the share (diff -r). */
  async converged(tag: string, drainMs?: number): Promise<void> {
    await this.drained(drainMs);
    const diffs = await verifyShare(this.site, this.share, this.root, { content: true });
    if (diffs.length > 0) {
      // What each side has, for the failure report.
      const detail = await Promise.all(diffs.slice(0, 5).map(async (d) => {
        const head = await this.site.call<Record<string, unknown> | null>('object.stat', { bucket: this.share, path: d.path, blocks: true }).catch((e) => String(e));
        const src = await stat(join(this.root, d.path), { bigint: true }).then((s) => ({ size: String(s.size), mtimeNs: String(s.mtimeNs) }), (e) => String(e));
        // The source's block ids as this client cuts them, and the site's versions of the path: which commit went wrong.
        const blocks = await readFile(join(this.root, d.path)).then((b) => {
          const ids: string[] = [];
          for (let o = 0; o < b.length; o += 65536) ids.push(this.site.blockId(b.subarray(o, o + 65536)));
          return ids;
        }, (e) => String(e));
        const versions = await this.site.call('object.versions', { bucket: this.share, path: d.path }).catch((e) => String(e));
        return { ...d, site: head, source: { ...(typeof src === 'string' ? { error: src } : src), blocks }, versions };
      }));
      assert.fail(`seed ${this.seed}: the site differs from the source: ${JSON.stringify(detail)}`);
    }
    const dest = join(this.local, `restore-${tag}`);
    const res = await this.svc.cli(['restore', this.share, dest, '--json']);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    const diff = spawnSync('diff', ['-r', this.root, dest], { encoding: 'utf8', maxBuffer: 64 << 20 });
    assert.equal(diff.status, 0, diff.stdout.slice(0, 4000) + diff.stderr);
    await rm(dest, { recursive: true, force: true });
  }

  async destroy(): Promise<void> {
    this.site?.close();
    await this.smbd?.destroy();
    await this.svc?.destroy();
    await this.dr?.destroy();
    this.remote?.remove();
    await this.redis?.stop();
    await rm(this.local, { recursive: true, force: true });
  }
}

/**
 * Waits until every configured site's queue is empty and nothing is
 * unpumped or awaiting its outcome, for a whole second: a report smbd sent
 * as a workload ended may still be on its way into the journal.
 */
export async function drained(config: Record<string, unknown>, timeoutMs = 60000): Promise<void> {
  const cfg = validateConfig(config);
  const reader = new JournalReader({ redis: cfg.redis, queueName: cfg.journal.queueName, sites: sitesOf(cfg.replication).map((s) => s.name) });
  try {
    let since = 0;
    await waitFor('the replication backlog to drain', async () => {
      const b = await reader.backlog();
      if (b.queued + b.pending + b.unpumped > 0) since = 0;
      else if (since === 0) since = Date.now();
      return since > 0 && Date.now() - since >= 1000;
    }, timeoutMs, 100);
  } finally {
    await reader.close();
  }
}
