/**
 * A real smbd on a loopback port with its own private/lock/state dirs,
 * serving shares with or without the vfsx module. smbd makes its own process
 * group (it signals its whole group on shutdown) and is stopped by PID.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort, portOpen } from './ports';
import { waitFor } from './wait-for';

export const SMB_USER = 'vfsxtest';
export const SMB_PASS = 'vfsx-Test-pw1';

export interface ShareSpec {
  name: string;
  /** The whole `vfs objects` line (default: vfsx). */
  vfsObjects?: string;
  vfsx?: { socket: string; spool: string; timeoutMs?: number; onFailure?: 'allow' | 'deny'; async?: boolean; strict?: boolean };
  extra?: string[];
}

export function ensureTestUser(): void {
  try {
    execFileSync('id', [SMB_USER], { stdio: 'ignore' });
  } catch {
    execFileSync('useradd', ['-M', '-s', '/usr/sbin/nologin', SMB_USER]);
  }
}

export function moduleInstalled(): string {
  const out = execFileSync('smbd', ['-b'], { encoding: 'utf8' });
  const dir = /MODULESDIR:\s*(\S+)/.exec(out)?.[1];
  const so = `${dir}/vfs/vfsx.so`;
  if (!existsSync(so)) throw new Error(`${so} missing: run npm run build:module`);
  return so;
}

export class SmbdHarness {
  readonly dir: string;
  readonly port: number;
  readonly shares: Map<string, string> = new Map();
  readonly logFile: string;
  private proc: ChildProcess | null = null;

  private constructor(dir: string, port: number) {
    this.dir = dir;
    this.port = port;
    this.logFile = join(dir, 'smbd.log');
  }

  static async start(shares: ShareSpec[], globalExtra: string[] = []): Promise<SmbdHarness> {
    ensureTestUser();
    moduleInstalled();
    const h = new SmbdHarness(await mkdtemp(join(tmpdir(), 'vfsx-smbd-')), await freePort());
    await h.configure(shares, globalExtra);
    await h.startServer();
    return h;
  }

  sharePath(name: string): string {
    const p = this.shares.get(name);
    if (!p) throw new Error(`no share ${name}`);
    return p;
  }

  private async configure(shares: ShareSpec[], globalExtra: string[]): Promise<void> {
    const d = this.dir;
    await chmod(d, 0o755); // the SMB user must traverse into the shares
    for (const sub of ['private', 'lock', 'state', 'cache', 'pid', 'ncalrpc']) await mkdir(join(d, sub));
    const lines = [
      '[global]',
      '  interfaces = 127.0.0.1',
      '  bind interfaces only = yes',
      `  smb ports = ${this.port}`,
      '  disable netbios = yes',
      `  private dir = ${d}/private`,
      `  lock directory = ${d}/lock`,
      `  state directory = ${d}/state`,
      `  cache directory = ${d}/cache`,
      `  pid directory = ${d}/pid`,
      `  ncalrpc dir = ${d}/ncalrpc`,
      `  passdb backend = tdbsam:${d}/private/passdb.tdb`,
      '  server role = standalone server',
      '  log level = 1',
      '  load printers = no',
      '  printing = bsd',
      '  printcap name = /dev/null',
      ...globalExtra.map((l) => `  ${l}`),
    ];
    for (const s of shares) {
      const path = join(d, 'shares', s.name);
      await mkdir(path, { recursive: true });
      await chmod(path, 0o777);
      this.shares.set(s.name, path);
      lines.push(`[${s.name}]`, `  path = ${path}`, '  read only = no');
      if (s.vfsx) {
        lines.push(
          `  vfs objects = ${s.vfsObjects ?? 'vfsx'}`,
          `  vfsx:socket = ${s.vfsx.socket}`,
          `  vfsx:spool = ${s.vfsx.spool}`,
          `  vfsx:timeout = ${s.vfsx.timeoutMs ?? 1000}`,
          `  vfsx:on_failure = ${s.vfsx.onFailure ?? 'allow'}`,
          `  vfsx:async = ${s.vfsx.async === false ? 'no' : 'yes'}`,
          `  vfsx:strict = ${s.vfsx.strict === true ? 'yes' : 'no'}`,
        );
      }
      for (const l of s.extra ?? []) lines.push(`  ${l}`);
    }
    await writeFile(join(d, 'smb.conf'), lines.join('\n') + '\n');
    execFileSync('smbpasswd', ['-c', join(d, 'smb.conf'), '-a', '-s', SMB_USER], {
      input: `${SMB_PASS}\n${SMB_PASS}\n`,
      stdio: ['pipe', 'ignore', 'ignore'],
    });
  }

  get confPath(): string {
    return join(this.dir, 'smb.conf');
  }

  async startServer(): Promise<void> {
    const { openSync } = await import('node:fs');
    const log = openSync(this.logFile, 'a');
    // smbd -F calls setsid() itself: it becomes its own process group leader.
    this.proc = spawn('smbd', ['-F', '--debug-stdout', '-s', this.confPath], {
      stdio: ['ignore', log, log],
    });
    await waitFor('smbd to listen', () => portOpen(this.port), 20000, 50);
  }

  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (p && p.exitCode === null && p.pid) {
      const exited = new Promise<void>((resolve) => p.once('exit', () => resolve()));
      p.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      try {
        process.kill(-p.pid, 'SIGKILL'); // any child left behind
      } catch {
        /* group gone */
      }
    }
  }

  async destroy(): Promise<void> {
    await this.stop();
    await rm(this.dir, { recursive: true, force: true });
  }
}
