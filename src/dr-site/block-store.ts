/**
 * Content-addressed block storage on local disk: a block lives at
 * <dir>/<hh>/<hh>/<sha256 hex>, written to a temp file, fsynced and renamed,
 * so a crash never leaves a partial block under a real name.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, open, readFile, rename, rm, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { VfsxError } from '../errors/vfsx-error';

const HASH_RE = /^[0-9a-f]{64}$/;

export function sha256(data: Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

export function isBlockHash(h: unknown): h is string {
  return typeof h === 'string' && HASH_RE.test(h);
}

export interface BlockStoreOptions {
  dir: string;
}

export class BlockStore {
  private readonly dir: string;
  /** Bytes received by put() since start (what crossed the wire). */
  bytesWritten = 0;
  blocksWritten = 0;

  constructor(options: BlockStoreOptions) {
    this.dir = options.dir;
  }

  async init(): Promise<void> {
    await mkdir(join(this.dir, 'tmp'), { recursive: true });
    await rm(join(this.dir, 'tmp'), { recursive: true, force: true }); // leftovers of a crash
    await mkdir(join(this.dir, 'tmp'), { recursive: true });
  }

  private pathOf(hash: string): string {
    return join(this.dir, hash.slice(0, 2), hash.slice(2, 4), hash);
  }

  async has(hash: string): Promise<boolean> {
    try {
      await stat(this.pathOf(hash));
      return true;
    } catch {
      return false;
    }
  }

  /** Stores data under its hash; refuses data that does not hash to `hash`. */
  async put(hash: string, data: Buffer): Promise<void> {
    if (sha256(data) !== hash) {
      throw new VfsxError('VFSX_ERR_DR_HASH_MISMATCH', `block does not hash to ${hash}`);
    }
    this.bytesWritten += data.length;
    this.blocksWritten++;
    if (await this.has(hash)) return;
    const final = this.pathOf(hash);
    const tmp = join(this.dir, 'tmp', `${hash}.${randomBytes(6).toString('hex')}`);
    const fh = await open(tmp, 'wx', 0o600);
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await mkdir(join(this.dir, hash.slice(0, 2), hash.slice(2, 4)), { recursive: true });
    await rename(tmp, final);
  }

  async get(hash: string): Promise<Buffer> {
    return readFile(this.pathOf(hash));
  }

  async delete(hash: string): Promise<void> {
    await unlink(this.pathOf(hash)).catch(() => undefined);
  }
}
