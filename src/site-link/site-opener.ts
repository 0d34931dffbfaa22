/**
 * Connects to a DR site and opens its repository: an encrypted one through
 * its cipher (the master key unwrapped with the passphrase once, then kept
 * for every reconnection), a plaintext one (a site from before encryption)
 * as it is. A new, empty site is made encrypted when `encryptNew` is set.
 */
import { chmod, mkdir, readFile, writeFile } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { dirname } from 'node:path';
import { siteNamed, type VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import { KeyRecord, unwrapMasterKey, wrapMasterKey } from '../repository/key-record';
import { RepoCipher } from '../repository/repo-cipher';
import { DrClient, DrRpcError, Pacer } from './dr-client';
import { SealedSite } from './sealed-site';
import type { SiteClient } from './site-client';

export interface RepoInfo {
  format: number;
  encrypted: boolean;
  empty: boolean;
  check: string | null;
  keys: KeyRecord[];
  /** When the site last recovered its lost index from its copy in object storage (ms; absent: never). */
  recoveredAt?: number;
}

export interface SiteOpenerOptions {
  url: string;
  token: string;
  ca?: Buffer;
  /** Where the passphrase is kept (overridden by VFSX_PASSPHRASE). */
  passphraseFile?: string;
  /** Make a new (empty) site's repository encrypted, writing a new passphrase file if there is none. */
  encryptNew?: boolean;
  log?: (msg: string, o: object) => void;
  /** A bandwidth limit on what is sent. */
  pace?: Pacer;
  /** A bandwidth limit on the blocks received. */
  receivePace?: Pacer;
}

const METHOD_NOT_FOUND = -32601;
const REPO_STATE = -32009;

/** What the site says about its repository; a site older than encryption is plaintext. */
export async function repoInfo(link: DrClient): Promise<RepoInfo> {
  try {
    return await link.call<RepoInfo>('repo.info', {});
  } catch (err) {
    if (err instanceof DrRpcError && err.code === METHOD_NOT_FOUND) return { format: 1, encrypted: false, empty: false, check: null, keys: [] };
    throw err;
  }
}

export class SiteOpener {
  private cipher: RepoCipher | null = null;
  private warnedPlaintext = false;
  /** What the site said of its repository at the last open. */
  lastInfo: RepoInfo | null = null;

  constructor(private readonly o: SiteOpenerOptions) {}

  async open(): Promise<SiteClient> {
    const link = await DrClient.connect({ url: this.o.url, token: this.o.token, ca: this.o.ca, pace: this.o.pace, receivePace: this.o.receivePace });
    try {
      return await this.openOn(link, true);
    } catch (err) {
      link.close();
      throw err;
    }
  }

  /** The passphrase: VFSX_PASSPHRASE, else the passphrase file; null when neither exists. */
  async passphrase(): Promise<string | null> {
    const env = process.env.VFSX_PASSPHRASE;
    if (env) return env;
    if (!this.o.passphraseFile) return null;
    try {
      return (await readFile(this.o.passphraseFile, 'utf8')).replace(/\r?\n$/, '');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw err;
    }
  }

  /** Unlocks the repository's master key with the passphrase (tries every key record, as restic does). */
  async unlock(info: RepoInfo): Promise<RepoCipher> {
    return (await this.unlockKey(info)).cipher;
  }

  /** The master key, its cipher and the id of the key record the passphrase opened. */
  async unlockKey(info: RepoInfo): Promise<{ master: Buffer; cipher: RepoCipher; id: string }> {
    const pass = await this.passphrase();
    if (pass === null) {
      throw new VfsxError('VFSX_ERR_REPO_PASSPHRASE', `the repository at ${this.o.url} is encrypted: give its passphrase (${this.o.passphraseFile ? `in ${this.o.passphraseFile} or ` : ''}VFSX_PASSPHRASE)`);
    }
    for (const rec of info.keys) {
      const master = await unwrapMasterKey(rec, pass);
      if (!master) continue;
      const cipher = new RepoCipher(master);
      if (cipher.check !== info.check) throw new VfsxError('VFSX_ERR_REPO_KEY', `key ${rec.id} at ${this.o.url} opens a master key that is not this repository's (the site's key records were altered)`);
      return { master, cipher, id: rec.id };
    }
    throw new VfsxError('VFSX_ERR_REPO_PASSPHRASE', `wrong passphrase: it opens none of the ${info.keys.length} keys of the repository at ${this.o.url}`);
  }

  private async openOn(link: DrClient, mayInit: boolean): Promise<SiteClient> {
    const info = await repoInfo(link);
    this.lastInfo = info;
    if (info.encrypted) {
      if (this.cipher && this.cipher.check !== info.check) this.cipher = null; // another repository behind the same address
      this.cipher ??= await this.unlock(info);
      return new SealedSite(link, this.cipher);
    }
    if (!this.o.encryptNew) return link;
    if (!info.empty) {
      // A site from before encryption, or made with encryption off: it stays as it is (never a mix).
      if (!this.warnedPlaintext) this.o.log?.('the DR site repository is not encrypted (it already holds plaintext data): replicating in plaintext; to encrypt, resync into a new, empty site', { url: this.o.url });
      this.warnedPlaintext = true;
      return link;
    }
    const pass = (await this.passphrase()) ?? (await this.newPassphraseFile());
    const master = RepoCipher.newMasterKey();
    const cipher = new RepoCipher(master);
    try {
      await link.call('repo.init', { key: await wrapMasterKey(master, pass), check: cipher.check });
    } catch (err) {
      // Another replicator made it first (or wrote meanwhile): open what is there now.
      if (err instanceof DrRpcError && err.code === REPO_STATE && mayInit) return this.openOn(link, false);
      throw err;
    }
    this.cipher = cipher;
    this.o.log?.('the DR site repository is now encrypted', { url: this.o.url });
    return new SealedSite(link, cipher);
  }

  /** A new random passphrase in the passphrase file (0600): the admin must keep a copy off this host. */
  private async newPassphraseFile(): Promise<string> {
    const file = this.o.passphraseFile;
    if (!file) throw new VfsxError('VFSX_ERR_REPO_PASSPHRASE', 'a new encrypted repository needs a passphrase file (replication.passphraseFile) or VFSX_PASSPHRASE');
    const pass = randomBytes(24).toString('base64url');
    await mkdir(dirname(file), { recursive: true, mode: 0o700 });
    try {
      await writeFile(file, `${pass}\n`, { mode: 0o600, flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      return (await this.passphrase()) as string; // another process wrote it first
    }
    await chmod(file, 0o600);
    this.o.log?.('a new passphrase for the DR repository was written: keep a copy away from this host, a restore needs it', { file });
    return pass;
  }
}

/** The opener a configuration describes (replication.siteUrl, token, encryption, passphraseFile). */
export interface OpenAs {
  log?: (msg: string, o: object) => void;
  /** Instead of the site's passphrase file. */
  passphraseFile?: string;
  pace?: Pacer;
  receivePace?: Pacer;
  /** The site's name (default: the first configured). */
  site?: string;
  /** Whether this may make a new (empty) site's repository: only what writes (replication, resync). */
  writes?: boolean;
}

/** The opener of a configured site (an unknown name throws with the configured ones). */
export function siteOpenerOf(r: VfsxConfig['replication'], o: OpenAs = {}): SiteOpener {
  const s = siteNamed(r, o.site);
  return new SiteOpener({
    url: s.url, token: s.token, passphraseFile: o.passphraseFile ?? s.passphraseFile,
    encryptNew: o.writes === true && s.encryption === 'on', log: o.log, pace: o.pace, receivePace: o.receivePace,
  });
}
