/** The real `vfsx dr-site` as a child process on a loopback port. */
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MetaStore } from '../../src/dr-site/meta-store';
import type { PackStats } from '../../src/dr-site/pack-store';
import { decompress } from 'zstd-napi';
import { DrClient } from '../../src/site-link/dr-client';
import type { SiteClient } from '../../src/site-link/site-client';
import { SiteOpener } from '../../src/site-link/site-opener';
import { freePort } from './ports';
import { VFSX_BIN } from './service-harness';
import { collectJsonLines } from './json-lines';
import { waitFor } from './wait-for';

/**
 * The blocks in a pack file's bytes, decompressed where stored compressed
 * (the layout of src/dr-site/pack-store.ts, parsed independently).
 */
export function packEntries(pack: Buffer): Buffer[] {
  const out: Buffer[] = [];
  for (let off = 0; off + 44 <= pack.length;) {
    if (pack.readUInt32BE(off) !== 0x76786231) throw new Error(`no entry at ${off}`);
    const flags = pack.readUInt8(off + 4);
    const len = pack.readUInt32BE(off + 8);
    const data = pack.subarray(off + 44, off + 44 + len);
    out.push(flags & 1 ? decompress(data) : data);
    off += 44 + len;
  }
  return out;
}

export class DrSiteHarness {
  readonly dir: string;
  readonly dataDir: string;
  readonly token = randomBytes(16).toString('hex');
  port = 0;
  logs: Array<Record<string, unknown>> = [];
  private proc: ChildProcess | null = null;

  private constructor(dir: string) {
    this.dir = dir;
    this.dataDir = join(dir, 'data');
  }

  extra: Record<string, unknown> = {};
  /** Where it runs: a network namespace and its address there (a remote host), at a CPU niceness. */
  private place: { netns?: string; host?: string; nice?: number } = {};

  static async start(extra: Record<string, unknown> = {}, place: { netns?: string; host?: string; nice?: number } = {}): Promise<DrSiteHarness> {
    const h = new DrSiteHarness(await mkdtemp(join(tmpdir(), 'vfsx-dr-')));
    h.extra = extra;
    h.place = place;
    h.port = await freePort();
    await h.startServer();
    return h;
  }

  get url(): string {
    return `ws://${this.place.host ?? '127.0.0.1'}:${this.port}/`;
  }

  async startServer(): Promise<void> {
    const cfg = join(this.dir, 'dr.json');
    const host = this.place.host ?? '127.0.0.1';
    await writeFile(cfg, JSON.stringify({ drSite: { host, port: this.port, token: this.token, dataDir: this.dataDir, maxFrameBytes: 16 << 20, ...this.extra } }));
    const from = this.logs.length;
    // VFSX_SITE_PROF=dir writes a CPU profile there; VFSX_CHILD_NODE_ARGS and VFSX_CHILD_NODE_ARGS_DR_SITE
    // pass other options to node (as the service harness does), e.g. --trace-gc.
    const nodeArgs = [
      ...(process.env.VFSX_SITE_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.VFSX_SITE_PROF}`] : []),
      ...[process.env.VFSX_CHILD_NODE_ARGS, process.env.VFSX_CHILD_NODE_ARGS_DR_SITE].join(' ').split(' ').filter(Boolean),
    ];
    const argv = [process.execPath, ...nodeArgs, VFSX_BIN, 'dr-site', '--config', cfg];
    if (this.place.nice !== undefined) argv.unshift('nice', '-n', String(this.place.nice));
    if (this.place.netns) argv.unshift('ip', 'netns', 'exec', this.place.netns);
    const p = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc = p;
    collectJsonLines(p.stdout, this.logs);
    p.stderr?.on('data', (c: Buffer) => this.logs.push({ stderr: c.toString() }));
    // A site that ends without stop(): its last words go to the test's output, so a failure far from here says why.
    p.once('exit', (code, sig) => {
      if (this.proc === p) process.stderr.write(`# dr-site ${p.pid} exited unasked (code ${code}, signal ${sig}); last log lines: ${JSON.stringify(this.logs.slice(-20))}\n`);
    });
    await waitFor('dr site to listen', () => this.logs.slice(from).some((l) => l.msg === 'vfsx dr-site serving') || p.exitCode !== null);
    if (p.exitCode !== null) throw new Error(`dr-site exited: ${JSON.stringify(this.logs.slice(from))}`);
  }

  /** A plain client: the site's calls as they are (sealed names and bytes in an encrypted repository). */
  client(token = this.token): Promise<DrClient> {
    return DrClient.connect({ url: this.url, token });
  }

  /** The repository passphrase (written when repo() first makes the repository encrypted). */
  get passphraseFile(): string {
    return join(this.dir, 'passphrase');
  }

  /** What a replicating service's configuration names: the site, its token, the passphrase. */
  get replication(): { siteUrl: string; token: string; passphraseFile: string } {
    return { siteUrl: this.url, token: this.token, passphraseFile: this.passphraseFile };
  }

  /**
   * The repository as vfsx sees it (an encrypted one opened with the
   * passphrase); a new site is made encrypted here, as a replicator would.
   */
  repo(o: { encryptNew?: boolean; token?: string } = {}): Promise<SiteClient> {
    return new SiteOpener({ url: this.url, token: o.token ?? this.token, passphraseFile: this.passphraseFile, encryptNew: o.encryptNew ?? true }).open();
  }

  /** What the site's index holds (opened beside the running site; SQLite WAL allows it). */
  stats(): PackStats {
    const m = new MetaStore(join(this.dataDir, 'meta.sqlite'));
    try {
      return m.storeStats();
    } finally {
      m.close();
    }
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get alive(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  /** Freezes (SIGSTOP) or thaws (SIGCONT) the site: calls wait instead of failing. */
  signal(sig: 'SIGSTOP' | 'SIGCONT'): void {
    this.proc?.kill(sig);
  }

  async stop(sig: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((r) => {
      p.once('exit', () => r());
      p.kill(sig);
    });
  }

  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
  }
}
