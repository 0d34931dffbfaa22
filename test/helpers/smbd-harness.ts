/**
 * A real smbd on a loopback port with its own private/lock/state dirs,
 * serving shares with or without the vfsx module. smbd makes its own process
 * group (it signals its whole group on shutdown) and is stopped by PID.
 *
 * With VFSX_SAMBA_CHROOT set (the version matrix of `npm test`), smbd and
 * its tools run from that Debian chroot (another release's Samba, with vfsx
 * built for it by scripts/samba-chroot.sh), in a private mount namespace
 * that shows the host's /tmp at /tmp: shares, sockets and spools keep the
 * same paths for smbd and for the service on the host.
 */
import { ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
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

/** The chroot whose Samba the tests use, or undefined for the host's. */
export const SAMBA_CHROOT = process.env.VFSX_SAMBA_CHROOT || undefined;
const CHROOT_SCRIPT = resolve(__dirname, '../../../scripts/samba-chroot.sh');

/** Runs a program (smbd, smbpasswd, ...) of the Samba under test: the host's, or a chroot's. */
export function sambaCommand(cmd: string, args: string[], root = SAMBA_CHROOT): [string, string[]] {
  return root ? ['bash', [CHROOT_SCRIPT, '--run', root, cmd, ...args]] : [cmd, args];
}

export function sambaExec(cmd: string, args: string[], opts: Parameters<typeof execFileSync>[2] = {}, root = SAMBA_CHROOT): string {
  const [c, a] = sambaCommand(cmd, args, root);
  return String(execFileSync(c, a, { encoding: 'utf8', ...opts }) ?? '');
}

export function ensureTestUser(root = SAMBA_CHROOT): void {
  try {
    execFileSync('id', [SMB_USER], { stdio: 'ignore' });
  } catch {
    execFileSync('useradd', ['-M', '-s', '/usr/sbin/nologin', SMB_USER]);
  }
  if (!root) return;
  // The same user, same ids, inside the chroot: files it makes belong to the same owner.
  const uid = execFileSync('id', ['-u', SMB_USER], { encoding: 'utf8' }).trim();
  const gid = execFileSync('id', ['-g', SMB_USER], { encoding: 'utf8' }).trim();
  try {
    sambaExec('id', [SMB_USER], { stdio: 'ignore' }, root);
  } catch {
    sambaExec('groupadd', ['-g', gid, SMB_USER], { stdio: 'ignore' }, root);
    sambaExec('useradd', ['-M', '-u', uid, '-g', gid, '-s', '/usr/sbin/nologin', SMB_USER], { stdio: 'ignore' }, root);
  }
}

/** The Samba under test: its version (`smbd -V`) and VFS module path. */
export function sambaVersion(root = SAMBA_CHROOT): string {
  return sambaExec('smbd', ['-V'], {}, root).trim();
}

export function moduleInstalled(root = SAMBA_CHROOT): string {
  const out = sambaExec('smbd', ['-b'], {}, root);
  const dir = /MODULESDIR:\s*(\S+)/.exec(out)?.[1];
  const so = `${dir}/vfs/vfsx.so`;
  if (!existsSync(`${root ?? ''}${so}`)) throw new Error(`${so} missing: run npm run build:module`);
  return so;
}

export class SmbdHarness {
  readonly dir: string;
  readonly port: number;
  readonly shares: Map<string, string> = new Map();
  readonly logFile: string;
  /** The chroot whose smbd this is (undefined: the host's). */
  readonly root: string | undefined;
  private proc: ChildProcess | null = null;

  private constructor(dir: string, port: number, root: string | undefined) {
    this.dir = dir;
    this.port = port;
    this.root = root;
    this.logFile = join(dir, 'smbd.log');
  }

  static async start(shares: ShareSpec[], globalExtra: string[] = [], opts: { chroot?: string } = {}): Promise<SmbdHarness> {
    const root = opts.chroot ?? SAMBA_CHROOT;
    ensureTestUser(root);
    moduleInstalled(root);
    const h = new SmbdHarness(await mkdtemp(join(tmpdir(), 'vfsx-smbd-')), await freePort(), root);
    await h.configure(shares, globalExtra);
    await h.startServer();
    return h;
  }

  /** The smbd parent's PID (each client session runs in a child of it). */
  get pid(): number {
    if (!this.proc?.pid) throw new Error('smbd is not running');
    return this.proc.pid;
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
    sambaExec('smbpasswd', ['-c', join(d, 'smb.conf'), '-a', '-s', SMB_USER], {
      input: `${SMB_PASS}\n${SMB_PASS}\n`,
      stdio: ['pipe', 'ignore', 'ignore'],
    }, this.root);
  }

  get confPath(): string {
    return join(this.dir, 'smb.conf');
  }

  async startServer(): Promise<void> {
    const { openSync } = await import('node:fs');
    const log = openSync(this.logFile, 'a');
    // smbd -F calls setsid() itself: it becomes its own process group leader.
    // (From a chroot the script execs its way to smbd: the PID stays smbd's.)
    const [cmd, args] = sambaCommand('smbd', ['-F', '--debug-stdout', '-s', this.confPath], this.root);
    this.proc = spawn(cmd, args, { stdio: ['ignore', log, log] });
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
