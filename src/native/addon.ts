/**
 * Typed access to the native addon (native/addon): SO_PEERCRED and flock.
 */
import { join } from 'node:path';
import { VfsxError } from '../errors/vfsx-error';

export interface PeerCred {
  pid: number;
  uid: number;
  gid: number;
}

interface AddonExports {
  peerCred(fd: number): PeerCred;
  tryLock(fd: number): boolean;
}

let cached: AddonExports | undefined;

function addon(): AddonExports {
  if (cached) return cached;
  const root = join(__dirname, '..', '..', '..');
  const candidates = [join(root, 'native/addon/build/Release/vfsx_addon.node')];
  for (const file of candidates) {
    try {
      // eslint-disable-next-line @typescript-eslint/no-var-requires
      cached = require(file) as AddonExports;
      return cached;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') {
        throw new VfsxError('VFSX_ERR_NATIVE_ADDON', `cannot load ${file}`, { cause: err });
      }
    }
  }
  throw new VfsxError('VFSX_ERR_NATIVE_ADDON', 'native addon not built (run npm install)');
}

function checkFd(fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new TypeError(`not a file descriptor: ${fd}`);
}

/** Credentials of the process at the other end of a Unix socket. */
export function peerCred(fd: number): PeerCred {
  checkFd(fd);
  return addon().peerCred(fd);
}

/** Takes an exclusive flock without waiting; false when another holds it. */
export function tryLock(fd: number): boolean {
  checkFd(fd);
  return addon().tryLock(fd);
}
