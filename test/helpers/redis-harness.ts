/**
 * A real redis-server for tests, on a Unix socket in a temp dir, with AOF on
 * and noeviction as vfsx requires. Each test uses its own key prefix.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import IORedis from 'ioredis';
import { waitFor } from './wait-for';

export class RedisHarness {
  readonly dir: string;
  readonly socket: string;
  private proc: ChildProcess | null = null;

  private constructor(dir: string) {
    this.dir = dir;
    this.socket = join(dir, 'redis.sock');
  }

  static async start(): Promise<RedisHarness> {
    const h = new RedisHarness(await mkdtemp(join(tmpdir(), 'vfsx-redis-')));
    await h.startServer();
    return h;
  }

  async startServer(): Promise<void> {
    this.proc = spawn('redis-server', [
      '--port', '0', '--unixsocket', this.socket, '--unixsocketperm', '700',
      '--dir', this.dir, '--appendonly', 'yes', '--appendfsync', 'everysec',
      '--maxmemory-policy', 'noeviction', '--save', '',
    ], { stdio: 'ignore' });
    await waitFor('redis to answer', () => this.ping(), 10000, 20);
  }

  get pid(): number | undefined {
    return this.proc?.pid;
  }

  async ping(): Promise<boolean> {
    const c = new IORedis({ path: this.socket, lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null });
    c.on('error', () => undefined);
    try {
      await c.connect();
      return (await c.ping()) === 'PONG';
    } catch {
      return false;
    } finally {
      c.disconnect();
    }
  }

  /** Sends a signal to the server (SIGSTOP freezes it: writes hang instead of failing). */
  signal(sig: NodeJS.Signals): void {
    this.proc?.kill(sig);
  }

  /** Stops the server (SIGTERM: it writes its AOF) and waits for it to exit. */
  async stopServer(signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      // A server that does not exit on its own in 10 s (frozen, or a lost exit event) is killed.
      const t = setTimeout(() => { p.kill('SIGKILL'); setTimeout(resolve, 500); }, 10_000);
      p.once('exit', () => { clearTimeout(t); resolve(); });
      p.kill('SIGCONT');
      p.kill(signal);
    });
  }

  async stop(): Promise<void> {
    await this.stopServer();
    await rm(this.dir, { recursive: true, force: true });
  }
}
