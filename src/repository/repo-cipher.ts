/**
 * The cipher of an encrypted repository (docs/dr-site.md, "Encryption").
 * Everything the DR site stores is sealed here, on the Samba host, before
 * it leaves; the site never holds a key.
 *
 * - Blocks: zstd (when it saves 1/16), then AES-256-GCM with a random
 *   96-bit nonce and the block id as associated data, sealed by the native
 *   addon (native/addon/block_crypto.cc) and opened here with Node's crypto. A block id is
 *   HMAC-SHA256 of the plaintext under a repository key: the site can
 *   deduplicate without learning plaintext hashes. Opening checks the tag,
 *   then the id against the plaintext.
 * - Names: each path component on its own, deterministically (a synthetic
 *   IV: HMAC-SHA256 of the name, then AES-256-CTR; padded to 16 bytes),
 *   so the site keeps the tree's shape: moves, subtree deletes, listings
 *   by prefix and retention work on sealed names. Equal names seal alike.
 * - Metadata (mode, owner, times, xattrs, a symlink's target): one
 *   AES-256-GCM box per version, bound to the version's kind, size and
 *   block list, so it cannot be moved onto other content.
 *
 * All keys come from one 64-byte master key through HKDF-SHA256.
 */
import { createCipheriv, createDecipheriv, createHmac, hkdfSync, randomBytes, timingSafeEqual } from 'node:crypto';
import { compress, decompress } from 'zstd-napi';
import { VfsxError } from '../errors/vfsx-error';
import { hashBlocks, OPEN_STATUS, openBlocks, sealBlocks } from '../native/addon';
import { nameFromBytes, nameToBytes } from '../protocol/byte-names';
import { putFrameRoom } from '../protocol/frame-room';

export const MASTER_KEY_BYTES = 64;
const BLOCK_VERSION = 1;
const FLAG_ZSTD = 1;
const NONCE = 12;
const TAG = 16;
/** version, flags, nonce before the ciphertext; the tag after it. */
const BLOCK_HEAD = 2 + NONCE;
export const SEAL_OVERHEAD = BLOCK_HEAD + TAG;
const MIN_COMPRESS = 512;

/**
 * A fresh random nonce for a metadata box, cut from a pool filled by the
 * CSPRNG 512 nonces at a time (randomBytes(12) per call measured 5.7 us
 * here, a pooled one 0.15 us; blocks take theirs from OpenSSL in the addon). Each is handed out once; a used pool is dropped, never refilled in
 * place, so a nonce's bytes cannot change under a cipher still using them.
 */
let noncePool = Buffer.alloc(0);
let nonceAt = 0;
function freshNonce(): Buffer {
  if (nonceAt + NONCE > noncePool.length) {
    noncePool = randomBytes(NONCE * 512);
    nonceAt = 0;
  }
  nonceAt += NONCE;
  return noncePool.subarray(nonceAt - NONCE, nonceAt);
}

/** Bytes of a block compressed first to see whether the rest is worth it. */
const PROBE = 4096;

/**
 * Whether a block may shrink: its first PROBE bytes must. Random-looking
 * data (media, archives, encrypted files: most bytes of a typical share)
 * then costs a 4 KiB trial instead of compressing 64 KiB for nothing
 * (measured: a tenth of the replicator's CPU on an initial sync). A block
 * whose first 4 KiB are noise and the rest text goes uncompressed.
 */
function compressible(plain: Buffer): boolean {
  if (plain.length <= PROBE * 2) return true;
  const probe = plain.subarray(0, PROBE);
  return compress(probe, { compressionLevel: 1 }).length < PROBE - (PROBE >> 5);
}

/** Ids as the bytes the sealing takes (each must be 64 hex digits: the associated data of its block). */
function idBytes(ids: string[]): Buffer {
  for (const id of ids) if (!/^[0-9a-f]{64}$/.test(id)) throw new TypeError(`not a block id: ${id.slice(0, 70)}`);
  return Buffer.from(ids.join(''), 'hex');
}

const derive = (master: Buffer, what: string) => Buffer.from(hkdfSync('sha256', master, Buffer.alloc(0), `vfsx repository v1 ${what}`, 32));

const authFailed = (what: string) => new VfsxError('VFSX_ERR_DR_BAD_REPLY', `${what} fails authentication: altered at the DR site, or sealed with another repository's key`);

export class RepoCipher {
  private readonly idKey: Buffer;
  private readonly blockKey: Buffer;
  private readonly nameMacKey: Buffer;
  private readonly nameEncKey: Buffer;
  private readonly metaKey: Buffer;
  /** A fingerprint of the master key: what the site keeps to tell a wrong key from damage. */
  readonly check: string;
  private readonly names = new Map<string, string>();

  constructor(master: Buffer) {
    if (master.length !== MASTER_KEY_BYTES) throw new VfsxError('VFSX_ERR_REPO_KEY', `a master key is ${MASTER_KEY_BYTES} bytes`);
    this.idKey = derive(master, 'block id');
    this.blockKey = derive(master, 'block');
    this.nameMacKey = derive(master, 'name mac');
    this.nameEncKey = derive(master, 'name');
    this.metaKey = derive(master, 'meta');
    this.check = derive(master, 'check').toString('hex');
  }

  static newMasterKey(): Buffer {
    return randomBytes(MASTER_KEY_BYTES);
  }

  blockId(plain: Buffer): string {
    return createHmac('sha256', this.idKey).update(plain).digest('hex');
  }

  /** The ids of a run's blocks (blockSize bytes each, the last may be shorter). */
  blockIds(run: Buffer, blockSize: number): Promise<string[]> {
    return hashBlocks(this.idKey, run, blockSize);
  }

  /** What is encrypted of a block: zstd of it when that saves 1/16, else the block. */
  private bodyOf(plain: Buffer, compression: boolean): [Buffer, number] {
    if (compression && plain.length >= MIN_COMPRESS && compressible(plain)) {
      const z = compress(plain, { compressionLevel: 3 });
      if (z.length <= plain.length - (plain.length >> 4)) return [z, FLAG_ZSTD];
    }
    return [plain, 0];
  }

  sealBlock(id: string, plain: Buffer, compression = true): Buffer {
    const [body, flags] = this.bodyOf(plain, compression);
    return sealBlocks(this.blockKey, idBytes([id]), [body], [flags], SEAL_OVERHEAD, false);
  }

  /**
   * Seals blocks (ids[i] names plains[i]) on the thread pool, all into one
   * buffer (the native addon encrypts with the OpenSSL Node links, where
   * Node's cipher objects allocate an output per block), with room in front
   * for the header of the frame that sends them; returns a view of each
   * sealed block.
   */
  async sealBlocks(ids: string[], plains: Buffer[], compression = true): Promise<Buffer[]> {
    const bodies: Buffer[] = [];
    const flags: number[] = [];
    for (const p of plains) {
      const [body, f] = this.bodyOf(p, compression);
      bodies.push(body);
      flags.push(f);
    }
    const all = await sealBlocks(this.blockKey, idBytes(ids), bodies, flags, SEAL_OVERHEAD, true, putFrameRoom(bodies.length));
    let off = 0;
    return bodies.map((b) => all.subarray(off, (off += SEAL_OVERHEAD + b.length)));
  }

  /** The plaintext of a sealed block, or VFSX_ERR_DR_BAD_BLOCK: never bytes that fail a check. */
  openBlock(id: string, sealed: Buffer): Buffer {
    const bad = (why: string) => this.badBlock(id, why);
    if (sealed.length < SEAL_OVERHEAD || sealed.readUInt8(0) !== BLOCK_VERSION) throw bad('is not a sealed block');
    const flags = sealed.readUInt8(1);
    const d = createDecipheriv('aes-256-gcm', this.blockKey, sealed.subarray(2, BLOCK_HEAD));
    d.setAAD(Buffer.from(id, 'hex'));
    d.setAuthTag(sealed.subarray(sealed.length - TAG));
    let body: Buffer;
    try {
      body = Buffer.concat([d.update(sealed.subarray(BLOCK_HEAD, sealed.length - TAG)), d.final()]);
    } catch {
      throw bad('fails authentication (altered, damaged, or sealed with another key)');
    }
    if (flags & FLAG_ZSTD) return this.finishCompressed(id, body);
    if (this.blockId(body) !== id) throw bad('is not the block asked for');
    return body;
  }

  /**
   * openBlock for many blocks at once (a GET's), in the addon: authenticated
   * and checked against their ids on the thread pool, each plaintext a view
   * into one buffer. The first block that fails throws, as openBlock would.
   */
  async openBlocks(ids: string[], sealed: Buffer[]): Promise<Buffer[]> {
    let idBuf: Buffer;
    try {
      idBuf = idBytes(ids);
    } catch (err) {
      throw new VfsxError('VFSX_ERR_DR_BAD_BLOCK', `a block from the DR site cannot be opened: ${(err as Error).message}`);
    }
    const { status, out } = await openBlocks(this.blockKey, this.idKey, idBuf, sealed, SEAL_OVERHEAD);
    const plains: Buffer[] = [];
    let off = 0;
    for (let i = 0; i < sealed.length; i++) {
      const body = sealed[i].length >= SEAL_OVERHEAD ? out.subarray(off, (off += sealed[i].length - SEAL_OVERHEAD)) : out.subarray(off, off);
      switch (status[i]) {
        case OPEN_STATUS.opened:
          plains.push(body);
          break;
        case OPEN_STATUS.compressed:
          plains.push(this.finishCompressed(ids[i], body));
          break;
        default:
          throw this.badBlock(ids[i], status[i] === OPEN_STATUS.notSealed ? 'is not a sealed block'
            : status[i] === OPEN_STATUS.wrongId ? 'is not the block asked for'
              : 'fails authentication (altered, damaged, or sealed with another key)');
      }
    }
    return plains;
  }

  private badBlock(id: string, why: string): VfsxError {
    return new VfsxError('VFSX_ERR_DR_BAD_BLOCK', `block ${id} from the DR site ${why}`);
  }

  /** An authenticated compressed body: its plaintext, which must have the id asked for. */
  private finishCompressed(id: string, body: Buffer): Buffer {
    let plain: Buffer;
    try {
      plain = decompress(body);
    } catch (err) {
      throw this.badBlock(id, `does not decompress (${(err as Error).message})`);
    }
    if (this.blockId(plain) !== id) throw this.badBlock(id, 'is not the block asked for');
    return plain;
  }

  /** One path component's bytes (src/protocol/byte-names.ts), sealed deterministically (base64url, no '/', never '.' or '..'). */
  sealName(name: string): string {
    const hit = this.names.get(name);
    if (hit !== undefined) return hit;
    const plain = nameToBytes(name);
    const pad = 16 - (plain.length % 16);
    const padded = Buffer.concat([plain, Buffer.alloc(pad, pad)]);
    const iv = createHmac('sha256', this.nameMacKey).update(padded).digest().subarray(0, 16);
    const c = createCipheriv('aes-256-ctr', this.nameEncKey, iv);
    const sealed = Buffer.concat([iv, c.update(padded), c.final()]).toString('base64url');
    if (this.names.size > 100_000) this.names.clear();
    this.names.set(name, sealed);
    return sealed;
  }

  openName(sealed: string): string {
    const raw = Buffer.from(sealed, 'base64url');
    if (raw.length < 32 || raw.length % 16 !== 0 || raw.toString('base64url') !== sealed) throw authFailed(`name ${sealed.slice(0, 40)}`);
    const iv = raw.subarray(0, 16);
    const d = createDecipheriv('aes-256-ctr', this.nameEncKey, iv);
    const padded = Buffer.concat([d.update(raw.subarray(16)), d.final()]);
    const mac = createHmac('sha256', this.nameMacKey).update(padded).digest().subarray(0, 16);
    const pad = padded[padded.length - 1];
    if (!timingSafeEqual(mac, iv) || pad < 1 || pad > 16) throw authFailed(`name ${sealed.slice(0, 40)}`);
    return nameFromBytes(padded.subarray(0, padded.length - pad));
  }

  sealPath(path: string): string {
    return path.split('/').map((c) => this.sealName(c)).join('/');
  }

  openPath(sealed: string): string {
    return sealed.split('/').map((c) => this.openName(c)).join('/');
  }

  /** Seals a version's metadata, bound to what the site keeps in the clear about it. */
  sealMeta(meta: unknown, bound: string): string {
    const nonce = freshNonce();
    const c = createCipheriv('aes-256-gcm', this.metaKey, nonce);
    c.setAAD(Buffer.from(bound));
    const body = Buffer.concat([c.update(JSON.stringify(meta)), c.final()]);
    return Buffer.concat([nonce, body, c.getAuthTag()]).toString('base64');
  }

  openMeta(sealed: string, bound: string, what: string): unknown {
    const raw = Buffer.from(sealed, 'base64');
    if (raw.length < NONCE + TAG) throw authFailed(`metadata of ${what}`);
    const d = createDecipheriv('aes-256-gcm', this.metaKey, raw.subarray(0, NONCE));
    d.setAAD(Buffer.from(bound));
    d.setAuthTag(raw.subarray(raw.length - TAG));
    try {
      return JSON.parse(Buffer.concat([d.update(raw.subarray(NONCE, raw.length - TAG)), d.final()]).toString('utf8'));
    } catch {
      throw authFailed(`metadata of ${what}`);
    }
  }
}
