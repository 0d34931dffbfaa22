/**
 * The master key of an encrypted repository, wrapped by a passphrase: what
 * the DR site keeps (one record per passphrase), so that a fresh machine
 * needs only the site's address, a token and a passphrase to restore.
 *
 * scrypt (memory-hard) turns the passphrase and a random salt into a
 * 256-bit key; AES-256-GCM wraps the master key with the record's id as
 * associated data. A record comes from the site, which is not trusted: its
 * scrypt parameters are bounded before any work is done.
 */
import { createCipheriv, createDecipheriv, randomBytes, scrypt } from 'node:crypto';
import { hostname } from 'node:os';
import { VfsxError } from '../errors/vfsx-error';
import { MASTER_KEY_BYTES } from './repo-cipher';

export interface KeyRecord {
  id: string;
  created: number;
  label: string;
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string };
  /** base64 of nonce (12), wrapped master key, tag (16) */
  wrapped: string;
}

/** 32 MiB and about 0.1 s here: the cost restic and age choose for an interactive unlock. */
export const DEFAULT_SCRYPT = { N: 1 << 15, r: 8, p: 1 } as const;
const MAX_SCRYPT_MEMORY = 256 << 20;

function kek(passphrase: string, kdf: KeyRecord['kdf']): Promise<Buffer> {
  const { N, r, p } = kdf;
  const mem = 128 * N * r;
  if (kdf.name !== 'scrypt' || !Number.isInteger(N) || N < 1 << 14 || N > 1 << 20 || (N & (N - 1)) !== 0
    || !Number.isInteger(r) || r < 1 || r > 32 || !Number.isInteger(p) || p < 1 || p > 4 || mem > MAX_SCRYPT_MEMORY) {
    return Promise.reject(new VfsxError('VFSX_ERR_REPO_KEY', `key parameters out of bounds (scrypt N=${N} r=${r} p=${p})`));
  }
  const salt = Buffer.from(kdf.salt, 'base64');
  if (salt.length < 16) return Promise.reject(new VfsxError('VFSX_ERR_REPO_KEY', 'key salt shorter than 16 bytes'));
  return new Promise((resolve, reject) => {
    scrypt(passphrase.normalize('NFC'), salt, 32, { N, r, p, maxmem: mem + (16 << 20) }, (err, key) => (err ? reject(err) : resolve(key)));
  });
}

export async function wrapMasterKey(master: Buffer, passphrase: string, label = hostname(), cost: { N: number; r: number; p: number } = DEFAULT_SCRYPT): Promise<KeyRecord> {
  const id = randomBytes(8).toString('hex');
  const kdf = { name: 'scrypt' as const, ...cost, salt: randomBytes(32).toString('base64') };
  const k = await kek(passphrase, kdf);
  const nonce = randomBytes(12);
  const c = createCipheriv('aes-256-gcm', k, nonce);
  c.setAAD(Buffer.from(id));
  const body = Buffer.concat([c.update(master), c.final()]);
  return { id, created: Date.now(), label: label.slice(0, 128), kdf, wrapped: Buffer.concat([nonce, body, c.getAuthTag()]).toString('base64') };
}

/** The master key, or null when the passphrase is not this record's. */
export async function unwrapMasterKey(rec: KeyRecord, passphrase: string): Promise<Buffer | null> {
  const raw = Buffer.from(rec.wrapped, 'base64');
  if (raw.length !== 12 + MASTER_KEY_BYTES + 16) throw new VfsxError('VFSX_ERR_REPO_KEY', `key ${rec.id} is malformed`);
  const k = await kek(passphrase, rec.kdf);
  const d = createDecipheriv('aes-256-gcm', k, raw.subarray(0, 12));
  d.setAAD(Buffer.from(rec.id));
  d.setAuthTag(raw.subarray(raw.length - 16));
  try {
    return Buffer.concat([d.update(raw.subarray(12, raw.length - 16)), d.final()]);
  } catch {
    return null;
  }
}
