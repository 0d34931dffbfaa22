/**
 * `vfsx doctor`: checks every precondition of a working system and prints a
 * line (and a fix) for each. Exit 1 when any check fails.
 */
import { execFile } from 'node:child_process';
import { createConnection } from 'node:net';
import { readdir, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import type { VfsxConfig } from '../config/schema';
import { DrClient } from '../site-link/dr-client';
import { repoInfo, RepoInfo, siteOpenerOf } from '../site-link/site-opener';
import { redisHealth } from '../journal/redis-connection';

export interface Check {
  name: string;
  result: 'pass' | 'warn' | 'fail';
  detail: string;
  fix?: string;
}

export interface DoctorOptions {
  json: boolean;
  /** Overrides smbd's MODULESDIR (tests, staged installs). */
  modulesDir?: string;
  /** smb.conf to read with testparm (default: smbd's). */
  smbConf?: string;
  /** What the Samba upgrade hook last did (default: /var/lib/vfsx/samba-hook.json). */
  hookStatus?: string;
  /** The apt hook that runs it (default: /etc/apt/apt.conf.d/90vfsx-samba). */
  aptHook?: string;
}

function run(cmd: string, args: string[]): Promise<{ ok: boolean; out: string }> {
  return new Promise((resolve) => {
    execFile(cmd, args, { timeout: 20000, maxBuffer: 16 << 20 }, (err, stdout, stderr) => resolve({ ok: !err, out: `${stdout}${err ? stderr : ''}` }));
  });
}

const REBUILD = 'rebuild and install it for this smbd: npm run build:module (as root), then restart smbd';

async function moduleChecks(o: DoctorOptions): Promise<Check[]> {
  const b = await run('smbd', ['-b']);
  if (!b.ok) return [{ name: 'smbd', result: 'fail', detail: 'smbd not found or not runnable', fix: 'apt-get install samba' }];
  const modulesDir = o.modulesDir ?? /MODULESDIR:\s*(\S+)/.exec(b.out)?.[1];
  const so = join(modulesDir ?? '/usr/lib/x86_64-linux-gnu/samba', 'vfs', 'vfsx.so');
  const v = await run('smbd', ['-V']);
  const smbdVersion = /Version\s+(\S+)/.exec(v.out)?.[1] ?? 'unknown';
  let image: Buffer;
  try {
    image = await readFile(so);
  } catch {
    return [{ name: 'module installed', result: 'fail', detail: `${so} is missing`, fix: `install the module: npm run build:module (builds for smbd ${smbdVersion})` }];
  }
  const out: Check[] = [{ name: 'module installed', result: 'pass', detail: so }];
  const id = /vfsx-build: samba=([^\s\0]+) interface=(\d+)/.exec(image.toString('latin1'));
  if (!id) {
    out.push({ name: 'module build', result: 'fail', detail: `${so} carries no build id (an old or foreign build)`, fix: REBUILD });
  } else if (smbdVersion.split('-')[0] !== id[1]) {
    out.push({ name: 'module build', result: 'fail', detail: `built for Samba ${id[1]} (VFS interface ${id[2]}), but smbd is ${smbdVersion}: smbd will refuse to load it (interface mismatch) or misbehave`, fix: REBUILD });
  } else {
    out.push({ name: 'module build', result: 'pass', detail: `built for Samba ${id[1]}, VFS interface ${id[2]}; smbd is ${smbdVersion}` });
  }
  return out;
}

/** The apt hook that rebuilds the module when Samba is upgraded, and what it did last. */
async function upgradeHookChecks(o: DoctorOptions): Promise<Check[]> {
  const name = 'Samba upgrades';
  const aptHook = o.aptHook ?? '/etc/apt/apt.conf.d/90vfsx-samba';
  let last: { ok?: boolean; samba?: string; detail?: string; at?: number } | undefined;
  try {
    last = JSON.parse(await readFile(o.hookStatus ?? '/var/lib/vfsx/samba-hook.json', 'utf8'));
  } catch {
    last = undefined;
  }
  if (last && last.ok === false) {
    return [{ name, result: 'fail', detail: `${last.detail ?? 'the module could not be rebuilt'} (${new Date(last.at ?? 0).toISOString()})`, fix: `${REBUILD}; the hook's log: /var/log/vfsx/samba-hook.log` }];
  }
  const hooked = await stat(aptHook).then(() => true, () => false);
  if (!hooked) return [{ name, result: 'warn', detail: `no ${aptHook}: an upgrade of samba will not rebuild the module`, fix: 'npm run build:module installs the hook' }];
  const when = last?.at ? `; last rebuilt for Samba ${last.samba} at ${new Date(last.at).toISOString()}` : '';
  return [{ name, result: 'pass', detail: `${aptHook} rebuilds the module when smbd changes${when}` }];
}

async function shareChecks(config: VfsxConfig, o: DoctorOptions): Promise<Check[]> {
  const t = await run('testparm', ['-s', ...(o.smbConf ? [o.smbConf] : [])]);
  if (!t.ok) return [{ name: 'shares', result: 'fail', detail: `testparm failed: ${t.out.trim().split('\n').pop()}`, fix: 'fix smb.conf (testparm -s shows the error)' }];
  const shares: Array<{ name: string; socket?: string }> = [];
  let section = '';
  let vfsx = false;
  let socket: string | undefined;
  const flush = () => {
    if (section && section !== 'global' && vfsx) shares.push({ name: section, socket });
  };
  for (const line of t.out.split('\n')) {
    const sec = /^\[(.+)\]\s*$/.exec(line.trim());
    if (sec) {
      flush();
      section = sec[1];
      vfsx = false;
      socket = undefined;
      continue;
    }
    const kv = /^\s*([^=]+?)\s*=\s*(.*)$/.exec(line);
    if (!kv) continue;
    if (kv[1].toLowerCase() === 'vfs objects' && /\bvfsx\b/.test(kv[2])) vfsx = true;
    if (kv[1].toLowerCase() === 'vfsx:socket') socket = kv[2].trim();
  }
  flush();
  if (shares.length === 0) return [{ name: 'shares', result: 'fail', detail: 'no share has "vfs objects = vfsx"', fix: 'add "vfs objects = vfsx" to each share to protect (samba-conf/smb.conf.example), then smbcontrol smbd reload-config' }];
  const out: Check[] = [{ name: 'shares', result: 'pass', detail: `vfsx on: ${shares.map((s) => s.name).join(', ')}` }];
  const wrong = shares.filter((s) => (s.socket ?? '/run/vfsx/vfsx.sock') !== config.socket.path);
  if (wrong.length > 0) out.push({ name: 'share sockets', result: 'fail', detail: `${wrong.map((s) => `${s.name} uses ${s.socket ?? '/run/vfsx/vfsx.sock (default)'}`).join('; ')}, the service listens on ${config.socket.path}`, fix: `set "vfsx:socket = ${config.socket.path}" in those shares` });
  return out;
}

function socketCheck(config: VfsxConfig): Promise<Check[]> {
  const path = config.socket.path;
  return new Promise((resolve) => {
    const c = createConnection(path);
    const done = (check: Check) => {
      c.destroy();
      const out = [check];
      if (!config.socket.allowedUids.includes(0)) out.push({ name: 'peer policy', result: 'fail', detail: `socket.allowedUids ${JSON.stringify(config.socket.allowedUids)} lacks 0: smbd connects as root`, fix: 'add 0 to socket.allowedUids' });
      else out.push({ name: 'peer policy', result: 'pass', detail: `uids ${config.socket.allowedUids.join(', ')} may connect (socket mode ${config.socket.socketMode})` });
      resolve(out);
    };
    c.setTimeout(3000, () => done({ name: 'socket', result: 'fail', detail: `${path}: no answer in 3 s`, fix: 'is vfsx serve hung? systemctl status vfsx' }));
    c.once('connect', () => done({ name: 'socket', result: 'pass', detail: `${path} accepts connections` }));
    c.once('error', (err) => done({ name: 'socket', result: 'fail', detail: `${path}: ${err.message}`, fix: 'start the service: systemctl start vfsx (or vfsx serve)' }));
  });
}

async function redisChecks(config: VfsxConfig): Promise<Check[]> {
  const where = config.redis.path ?? `${config.redis.host}:${config.redis.port}`;
  const h = await redisHealth(config.redis);
  if (!h.reachable) return [{ name: 'redis', result: 'fail', detail: `${where}: ${h.error}`, fix: 'start redis-server (systemctl start redis-server) and check redis.* in the config' }];
  const out: Check[] = [{ name: 'redis', result: 'pass', detail: `${where} answers` }];
  out.push(h.appendonly === 'yes'
    ? { name: 'redis AOF', result: 'pass', detail: 'appendonly yes' }
    : { name: 'redis AOF', result: 'fail', detail: `appendonly ${h.appendonly ?? '?'}: a Redis crash would lose journaled changes`, fix: 'set "appendonly yes" in redis.conf (or: redis-cli CONFIG SET appendonly yes; CONFIG REWRITE)' });
  out.push(h.policy === 'noeviction'
    ? { name: 'redis eviction', result: 'pass', detail: 'maxmemory-policy noeviction' }
    : { name: 'redis eviction', result: 'fail', detail: `maxmemory-policy ${h.policy ?? '?'}: Redis may evict journal keys under memory pressure`, fix: 'set "maxmemory-policy noeviction" in redis.conf' });
  return out;
}

async function siteCheck(config: VfsxConfig): Promise<Check[]> {
  const r = config.replication;
  if (!r.enabled) return [{ name: 'DR site', result: 'warn', detail: 'replication.enabled is false: changes are journaled but not replicated' }];
  try {
    const c = await DrClient.connect({ url: r.siteUrl, token: r.token ?? '' });
    let info: RepoInfo;
    try {
      await c.call('blocks.missing', { hashes: [] });
      info = await repoInfo(c);
    } finally {
      c.close();
    }
    return [{ name: 'DR site', result: 'pass', detail: `${r.siteUrl} answers and accepts the token` }, await repositoryCheck(config, info)];
  } catch (err) {
    const msg = (err as Error).message;
    const auth = /401|403|token|unauthori/i.test(msg);
    return [{ name: 'DR site', result: 'fail', detail: `${r.siteUrl}: ${msg}`, fix: auth ? 'replication.token must equal the site\'s drSite.token' : 'start the DR site (systemctl start vfsx-dr-site on that host) and check replication.siteUrl / the network' }];
  }
}

/** Whether the site's repository is encrypted, and whether this host's passphrase opens it. */
async function repositoryCheck(config: VfsxConfig, info: RepoInfo): Promise<Check> {
  const r = config.replication;
  const name = 'DR repository';
  if (!info.encrypted) {
    if (info.empty && r.encryption === 'on') return { name, result: 'pass', detail: 'new: it is made encrypted at the first replication' };
    return { name, result: 'warn', detail: 'plaintext: the DR site can read names and contents', fix: r.encryption === 'on' ? 'a repository with data stays as it is: replicate into a new, empty site to encrypt' : 'set replication.encryption to "on" and replicate into a new, empty site' };
  }
  try {
    const { id } = await siteOpenerOf(r).unlockKey(info);
    return { name, result: 'pass', detail: `encrypted; the passphrase opens key ${id} (${info.keys.length} key${info.keys.length === 1 ? '' : 's'})` };
  } catch (err) {
    return { name, result: 'fail', detail: (err as Error).message, fix: `put the repository's passphrase in ${r.passphraseFile} (0600)` };
  }
}

async function httpCheck(config: VfsxConfig): Promise<Check[]> {
  const h = config.http;
  if (!h.enabled) return [{ name: 'dashboard', result: 'warn', detail: 'http.enabled is false: no /metrics, no dashboard' }];
  const url = `http://${h.host.includes(':') ? `[${h.host}]` : h.host}:${h.port}/metrics`;
  try {
    const res = await fetch(url, { headers: h.token ? { authorization: `Bearer ${h.token}` } : {}, signal: AbortSignal.timeout(5000) });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    return [{ name: 'dashboard', result: 'pass', detail: `${url} answers (dashboard at /)` }];
  } catch (err) {
    return [{ name: 'dashboard', result: 'fail', detail: `${url}: ${(err as Error).message}`, fix: 'is vfsx serve running? a port taken by another process is logged as "dashboard and /metrics not served"' }];
  }
}

async function spoolCheck(config: VfsxConfig): Promise<Check[]> {
  const dir = config.spool.dir;
  let files: string[] = [];
  try {
    files = (await readdir(dir)).filter((n) => n.endsWith('.spool'));
  } catch {
    return [{ name: 'spool', result: 'pass', detail: `${dir} does not exist yet (nothing spooled)` }];
  }
  if (files.length === 0) return [{ name: 'spool', result: 'pass', detail: `${dir} is empty` }];
  let bytes = 0;
  for (const f of files) bytes += (await stat(join(dir, f)).catch(() => ({ size: 0 }))).size;
  return [{ name: 'spool', result: 'fail', detail: `${files.length} spool files (${bytes} bytes) in ${dir}: smbd fell back to spooling (fail-open) and they are not ingested yet`, fix: 'make sure vfsx serve runs and Redis is up; the service ingests spool files by itself' }];
}

export async function doctor(config: VfsxConfig, o: DoctorOptions): Promise<Check[]> {
  const groups = await Promise.all([moduleChecks(o), upgradeHookChecks(o), shareChecks(config, o), socketCheck(config), redisChecks(config), siteCheck(config), httpCheck(config), spoolCheck(config)]);
  return groups.flat();
}

export async function doctorCommand(config: VfsxConfig, o: DoctorOptions): Promise<number> {
  const checks = await doctor(config, o);
  const failed = checks.filter((c) => c.result === 'fail').length;
  if (o.json) {
    process.stdout.write(`${JSON.stringify({ ok: failed === 0, checks })}\n`);
  } else {
    for (const c of checks) {
      process.stdout.write(`${c.result === 'pass' ? ' ok ' : c.result === 'warn' ? 'warn' : 'FAIL'}  ${c.name}: ${c.detail}\n`);
      if (c.fix && c.result !== 'pass') process.stdout.write(`      fix: ${c.fix}\n`);
    }
    process.stdout.write(failed === 0 ? 'all checks passed\n' : `${failed} check(s) failed\n`);
  }
  return failed === 0 ? 0 : 1;
}
