/**
 * The Unix domain socket the vfsx module of every smbd process connects to.
 * Checks each peer's uid with SO_PEERCRED before reading a byte from it.
 */
import { chmod, mkdir, unlink } from 'node:fs/promises';
import { createConnection, createServer, Server, Socket } from 'node:net';
import { dirname } from 'node:path';
import type { Logger } from 'pino';
import { VfsxError } from '../errors/vfsx-error';
import { peerCred } from '../native/addon';
import type { OpDispatcher } from '../ops/op-dispatcher';
import { BridgeConnection, FrameCounts } from './bridge-connection';

export interface SocketServerOptions {
  path: string;
  dirMode: string;
  socketMode: string;
  allowedUids: readonly number[];
  maxFrameBytes: number;
  maxConnections: number;
  dispatcher: OpDispatcher;
  logger: Logger;
  observeVerdict?: (seconds: number) => void;
}

function socketFd(socket: Socket): number | undefined {
  const handle = (socket as unknown as { _handle?: { fd?: number } })._handle;
  return typeof handle?.fd === 'number' && handle.fd >= 0 ? handle.fd : undefined;
}

/** True when a live server answers on path. */
function inUse(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

export class SocketServer {
  private readonly opts: SocketServerOptions;
  private readonly log: Logger;
  private server: Server | null = null;
  readonly connections = new Set<BridgeConnection>();
  refused = 0;
  accepted = 0;
  /** Frames received on every connection so far. */
  readonly frames: FrameCounts = { reports: 0, folded: 0, outcomes: 0 };

  constructor(options: SocketServerOptions) {
    this.opts = options;
    this.log = options.logger;
  }

  async listen(): Promise<void> {
    const { path } = this.opts;
    await mkdir(dirname(path), { recursive: true, mode: parseInt(this.opts.dirMode, 8) });
    await chmod(dirname(path), parseInt(this.opts.dirMode, 8)).catch(() => undefined);
    if (await inUse(path)) {
      throw new VfsxError('VFSX_ERR_SOCKET_IN_USE', `another vfsx service is listening on ${path}`);
    }
    await unlink(path).catch(() => undefined);
    const server = createServer({ pauseOnConnect: true }, (s) => this.accept(s));
    server.maxConnections = this.opts.maxConnections;
    server.on('error', (err) => this.log.error({ err }, 'socket server error'));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
    await chmod(path, parseInt(this.opts.socketMode, 8));
    this.server = server;
    this.log.info({ path }, 'listening');
  }

  private accept(socket: Socket): void {
    const fd = socketFd(socket);
    let cred;
    try {
      if (fd === undefined) throw new Error('no file descriptor');
      cred = peerCred(fd);
    } catch (err) {
      this.refused++;
      this.log.warn({ err }, 'refused peer: credentials unavailable');
      socket.destroy();
      return;
    }
    if (!this.opts.allowedUids.includes(cred.uid)) {
      this.refused++;
      this.log.warn({ peer: cred }, 'refused peer: uid not allowed');
      socket.destroy();
      return;
    }
    this.accepted++;
    const conn = new BridgeConnection({
      socket,
      dispatcher: this.opts.dispatcher,
      maxFrameBytes: this.opts.maxFrameBytes,
      frames: this.frames,
      logger: this.log.child({ peer: { pid: cred.pid, uid: cred.uid } }),
      onClose: (c) => this.connections.delete(c),
      observeVerdict: this.opts.observeVerdict,
    });
    this.connections.add(conn);
    socket.resume();
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = null;
    for (const c of this.connections) c.close('shutdown');
    if (server) {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await unlink(this.opts.path).catch(() => undefined);
    }
  }
}
