/**
 * The real `vfsx serve` as a child process (so tests can SIGKILL or SIGSTOP
 * it), with a config file in a temp dir and its JSON log collected.
 */
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtemp, rm, writeFile, chmod } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { randomBytes } from 'node:crypto';
import { collectJsonLines } from './json-lines';
import { freePort } from './ports';
import { waitFor } from './wait-for';

export const REPO = resolve(__dirname, '..', '..', '..');
export const VFSX_BIN = join(REPO, 'bin', 'vfsx.js');

export interface ServiceOptions {
  redisSocket: string;
  policy?: unknown[];
  extra?: Record<string, unknown>;
  allowedUids?: number[];
}

export class ServiceHarness {
  readonly dir: string;
  readonly socket: string;
  readonly spool: string;
  readonly prefix: string;
  readonly configFile: string;
  readonly config: Record<string, unknown>;
  logs: Array<Record<string, unknown>> = [];
  private proc: ChildProcess | null = null;
  /** `vfsx replicate` processes: one started with the service when the config enables replication, more on request. */
  private replicators: ChildProcess[] = [];

  /** Whether `vfsx serve` is still running. */
  get alive(): boolean {
    return this.proc !== null && this.proc.exitCode === null && this.proc.signalCode === null;
  }

  private constructor(dir: string, o: ServiceOptions) {
    this.dir = dir;
    this.socket = join(dir, 'run', 'vfsx.sock');
    this.spool = join(dir, 'spool');
    this.prefix = `t${randomBytes(4).toString('hex')}`;
    this.configFile = join(dir, 'vfsx.json');
    this.config = {
      socket: { path: this.socket, allowedUids: o.allowedUids ?? [0] },
      redis: { path: o.redisSocket, prefix: this.prefix },
      spool: { dir: this.spool, scanIntervalMs: 100 },
      journal: { sweepIntervalMs: 200, reconcileAfterMs: 3000, reconcileDelayMs: 0 },
      policy: { rules: o.policy ?? [] },
      log: { level: 'info' },
      ...o.extra,
    };
  }

  static async create(o: ServiceOptions): Promise<ServiceHarness> {
    const dir = await mkdtemp(join(tmpdir(), 'vfsx-svc-'));
    await chmod(dir, 0o755);
    const h = new ServiceHarness(dir, o);
    if (!o.extra?.http) h.config.http = { port: await freePort() };
    await writeFile(h.configFile, JSON.stringify(h.config, null, 2));
    return h;
  }

  /** Writes this.config again (after a test changed it). */
  async rewriteConfig(): Promise<void> {
    await writeFile(this.configFile, JSON.stringify(this.config, null, 2));
  }

  /** Runs a `vfsx` command against this service's config; never rejects (the exit code tells). */
  cli(args: string[], timeoutMs = 300000): Promise<{ code: number; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      execFile(process.execPath, [VFSX_BIN, ...args, '--config', this.configFile], { timeout: timeoutMs, maxBuffer: 16 << 20 },
        (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
    });
  }

  /** Base URL of the dashboard, /metrics and the API. */
  get httpUrl(): string {
    return `http://127.0.0.1:${(this.config.http as { port: number }).port}`;
  }

  async start(): Promise<void> {
    const from = this.logs.length; // earlier runs' lines do not count
    const since = (msg: string) => this.logs.slice(from).some((l) => l.msg === msg);
    const p = this.spawnVfsx('serve');
    this.proc = p;
    await waitFor('vfsx serve to start', () => since('vfsx serving') || p.exitCode !== null);
    if (p.exitCode !== null) throw new Error(`vfsx serve exited: ${JSON.stringify(this.logs.slice(from))}`);
    await waitFor('journal ready', () => since('journal ready'));
    if ((this.config.replication as { enabled?: boolean } | undefined)?.enabled) await this.startReplicator();
  }

  /** Starts `vfsx replicate` (its own process, as deployed) with this config; `args` e.g. ['--site', 'third']. */
  async startReplicator(args: string[] = []): Promise<void> {
    const from = this.logs.length;
    const p = this.spawnVfsx('replicate', args);
    this.replicators.push(p);
    await waitFor('vfsx replicate to start', () => this.logs.slice(from).some((l) => l.msg === 'vfsx replicating') || p.exitCode !== null);
    if (p.exitCode !== null) throw new Error(`vfsx replicate exited: ${JSON.stringify(this.logs.slice(from))}`);
  }

  private spawnVfsx(command: string, args: string[] = []): ChildProcess {
    // VFSX_CHILD_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") passes options to node for profiling;
    // VFSX_CHILD_NODE_ARGS_SERVE (_REPLICATE, ...) to that command's processes only.
    const nodeArgs = [process.env.VFSX_CHILD_NODE_ARGS, process.env[`VFSX_CHILD_NODE_ARGS_${command.toUpperCase()}`]]
      .join(' ').split(' ').filter(Boolean);
    const p = spawn(process.execPath, [...nodeArgs, VFSX_BIN, command, '--config', this.configFile, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    collectJsonLines(p.stdout, this.logs);
    p.stderr?.on('data', (chunk: Buffer) => this.logs.push({ stderr: chunk.toString('utf8') }));
    return p;
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  get replicatorPid(): number | undefined {
    return this.replicators[0]?.pid;
  }

  get replicatorPids(): number[] {
    return this.replicators.map((p) => p.pid as number);
  }

  signal(sig: NodeJS.Signals): void {
    this.proc?.kill(sig);
  }

  /** Stops the service and its replicator (SIGTERM, or SIGKILL for crash tests) and waits for both to exit. */
  async stop(sig: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.proc;
    this.proc = null;
    await Promise.all([ServiceHarness.end(p, sig), this.stopReplicator(sig)]);
  }

  /** Stops every replicator process (or only the one with pid). */
  async stopReplicator(sig: NodeJS.Signals = 'SIGTERM', pid?: number): Promise<void> {
    const stopping = this.replicators.filter((p) => pid === undefined || p.pid === pid);
    this.replicators = this.replicators.filter((p) => !stopping.includes(p));
    await Promise.all(stopping.map((p) => ServiceHarness.end(p, sig)));
  }

  private static async end(p: ChildProcess | null, sig: NodeJS.Signals): Promise<void> {
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
    if (sig !== 'SIGKILL') p.kill('SIGCONT');
    p.kill(sig);
    await exited;
  }

  async destroy(): Promise<void> {
    await this.stop('SIGKILL');
    await rm(this.dir, { recursive: true, force: true });
  }

  logsWith(msg: string): Array<Record<string, unknown>> {
    return this.logs.filter((l) => l.msg === msg);
  }
}
