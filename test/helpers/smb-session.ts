/**
 * One long-lived interactive smbclient session: commands are typed one at a
 * time and each waits for its own completion marker, so a test can stop or
 * freeze the service between commands of the same SMB session.
 */
import { ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { SMB_PASS, SMB_USER } from './smbd-harness';
import { waitFor } from './wait-for';

const MARK = 'Current directory is';

export class SmbSession {
  private readonly proc: ChildProcessWithoutNullStreams;
  private out = '';
  private marks = 0;

  private constructor(port: number, share: string) {
    // stdbuf: smbclient block-buffers stdout on a pipe; each marker must arrive at
    // once. And it waits for stdin to become readable before each fgets: a second
    // line already in stdio's buffer would wait for the next write, so stdin is
    // unbuffered (-i0). One pipe for both streams keeps an error before its marker.
    const args = ['-i0', '-oL', '-eL', 'smbclient', `//127.0.0.1/${share}`, '-p', String(port), '-U', `${SMB_USER}%${SMB_PASS}`];
    this.proc = spawn('sh', ['-c', 'exec stdbuf "$@" 2>&1', 'sh', ...args]);
    this.proc.stdout.on('data', (c: Buffer) => (this.out += c.toString()));
    this.proc.stderr.on('data', (c: Buffer) => (this.out += c.toString()));
  }

  static async open(port: number, share: string): Promise<SmbSession> {
    const s = new SmbSession(port, share);
    // One marker to wait for (run() would add a second).
    s.proc.stdin.write('pwd\n');
    await waitFor('smbclient to connect', () => s.count() >= 1, 30000, 5);
    s.marks = 1;
    return s;
  }

  /** Runs one command; returns its output and the NT_STATUS codes in it. */
  async run(cmd: string, timeoutMs = 30000): Promise<{ output: string; statuses: string[]; ms: number }> {
    const start = this.out.length;
    const t0 = Date.now();
    const want = this.marks + 1;
    this.proc.stdin.write(`${cmd}\npwd\n`);
    await waitFor(`smbclient to finish ${cmd}`, () => this.count() >= want, timeoutMs, 5).catch((err: Error) => {
      throw new Error(`${err.message}; smbclient said: ${this.out.slice(start)}`);
    });
    this.marks = want;
    const output = this.out.slice(start);
    return { output, statuses: output.match(/NT_STATUS_[A-Z_]+/g) ?? [], ms: Date.now() - t0 };
  }

  private count(): number {
    return this.out.split(MARK).length - 1;
  }

  async close(): Promise<void> {
    if (this.proc.exitCode !== null) return;
    const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
    this.proc.stdin.end('quit\n');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 3000))]);
    this.proc.kill('SIGKILL');
  }
}
