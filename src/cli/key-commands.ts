/**
 * `vfsx key list|add|remove`: the passphrases of an encrypted DR repository.
 * Each passphrase wraps the same master key in its own record at the site
 * (src/repository/key-record.ts); adding one needs a passphrase that works.
 */
import { readFile } from 'node:fs/promises';
import { siteNamed, type VfsxConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';
import { wrapMasterKey } from '../repository/key-record';
import { DrClient } from '../site-link/dr-client';
import { repoInfo, RepoInfo, siteOpenerOf } from '../site-link/site-opener';

export interface KeyCommandOptions {
  json: boolean;
  passphraseFile?: string;
  newPassphraseFile?: string;
  label?: string;
  /** The DR site (replication.sites); default the first. */
  site?: string;
}

async function withSite<T>(config: VfsxConfig, fn: (link: DrClient, info: RepoInfo) => Promise<T>, site?: string): Promise<T> {
  const s = siteNamed(config.replication, site);
  if (!s.token) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'replication.token is required to reach the DR site');
  const link = await DrClient.connect({ url: s.url, token: s.token });
  try {
    const info = await repoInfo(link);
    if (!info.encrypted) throw new VfsxError('VFSX_ERR_DR_REPO_STATE', `the repository at ${s.url} is not encrypted: it has no keys`);
    return await fn(link, info);
  } finally {
    link.close();
  }
}

async function newPassphrase(o: KeyCommandOptions): Promise<string> {
  const env = process.env.VFSX_NEW_PASSPHRASE;
  const pass = o.newPassphraseFile ? (await readFile(o.newPassphraseFile, 'utf8')).replace(/\r?\n$/, '') : env;
  if (!pass) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'give the new passphrase with --new-passphrase-file FILE or VFSX_NEW_PASSPHRASE');
  if (pass.length < 8) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'a passphrase has at least 8 characters');
  return pass;
}

export async function keyCommand(config: VfsxConfig, sub: string | undefined, arg: string | undefined, o: KeyCommandOptions): Promise<number> {
  const withSiteOf = <T>(c: VfsxConfig, fn: (link: DrClient, info: RepoInfo) => Promise<T>) => withSite(c, fn, o.site);
  const opener = () => siteOpenerOf(config.replication, { passphraseFile: o.passphraseFile, site: o.site });
  switch (sub) {
    case 'list':
      return withSiteOf(config, async (_link, info) => {
        if (o.json) process.stdout.write(`${JSON.stringify(info.keys.map(({ id, label, created }) => ({ id, label, created })))}\n`);
        else for (const k of info.keys) process.stdout.write(`${k.id}  ${new Date(k.created).toISOString()}  ${k.label}\n`);
        return 0;
      });
    case 'add':
      return withSiteOf(config, async (link, info) => {
        const { master } = await opener().unlockKey(info);
        const rec = await wrapMasterKey(master, await newPassphrase(o), o.label);
        await link.call('repo.keyAdd', { key: rec });
        process.stdout.write(o.json ? `${JSON.stringify({ id: rec.id, label: rec.label })}\n` : `added key ${rec.id} (${rec.label})\n`);
        return 0;
      });
    case 'remove':
      if (!arg) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'vfsx key remove: which key (an id from vfsx key list)?');
      return withSiteOf(config, async (link, info) => {
        // As restic does: the key this passphrase opens stays (removing it could lock the operator out).
        const { id } = await opener().unlockKey(info);
        if (id === arg) throw new VfsxError('VFSX_ERR_DR_REPO_STATE', `key ${arg} is the one your passphrase opens: remove it with another passphrase`);
        const { removed } = await link.call<{ removed: boolean }>('repo.keyRemove', { id: arg });
        if (!removed) throw new VfsxError('VFSX_ERR_DR_NOT_FOUND', `no key ${arg}`);
        process.stdout.write(o.json ? `${JSON.stringify({ removed: arg })}\n` : `removed key ${arg}\n`);
        return 0;
      });
    default:
      throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'vfsx key: list, add or remove');
  }
}
