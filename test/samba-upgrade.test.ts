/**
 * A Samba upgrade never leaves a vfsx share broken, tested the way an admin
 * lives it: in a Debian 12 chroot with Samba 4.17 and vfsx installed (its
 * apt hook included, by scripts/build-module.sh), the admin adds
 * bookworm-backports and upgrades samba to 4.22 with apt. Without any manual
 * step the module is rebuilt for the new smbd, and a vfsx share served by it
 * works and journals.
 *
 * The chroot is cached (scripts/samba-chroot.sh bookworm); each run upgrades
 * a throwaway overlay of it, so the cached one keeps Samba 4.17. The headers
 * the hook prepared for the new Samba are copied back into the cache, so only
 * the first run pays for them.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { waitForRecords } from './helpers/journal-client';
import { RedisHarness } from './helpers/redis-harness';
import { REPO, ServiceHarness } from './helpers/service-harness';
import { smbclient } from './helpers/smbclient';
import { SmbdHarness, sambaExec } from './helpers/smbd-harness';

let base: string;
let work: string;
let root: string;
let mounted = false;
let redis: RedisHarness | undefined;
let svc: ServiceHarness | undefined;
let smbd: SmbdHarness | undefined;

const inRoot = (cmd: string, args: string[], timeout = 600_000) =>
  sambaExec(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout, maxBuffer: 64 << 20 }, root);
const buildId = (r: string) => {
  const modules = /MODULESDIR:\s*(\S+)/.exec(sambaExec('smbd', ['-b'], {}, r))?.[1];
  return /vfsx-build: samba=(\S+) interface=(\d+)/.exec(readFileSync(`${r}${modules}/vfs/vfsx.so`, 'latin1'))?.slice(1, 3);
};

before(async () => {
  base = execFileSync('bash', [join(REPO, 'scripts/samba-chroot.sh'), 'bookworm'], { encoding: 'utf8', timeout: 1_200_000, stdio: ['ignore', 'pipe', 'inherit'] }).trim();
  work = await mkdtemp('/var/tmp/vfsx-upgrade-');
  root = join(work, 'root');
  for (const d of ['root', 'upper', 'work']) await mkdir(join(work, d));
  try {
    execFileSync('mount', ['-t', 'overlay', 'overlay', '-o', `lowerdir=${base},upperdir=${work}/upper,workdir=${work}/work`, root]);
    mounted = true;
  } catch {
    await cp(base, root, { recursive: true, verbatimSymlinks: true }); // no overlayfs: a full copy
  }
});

after(async () => {
  await smbd?.destroy();
  await svc?.destroy();
  await redis?.stop();
  if (mounted) execFileSync('umount', [root]);
  if (work) await rm(work, { recursive: true, force: true });
});

test('upgrading samba 4.17 -> 4.22 (bookworm-backports) with apt rebuilds the vfsx module by itself; the vfsx share then works and journals', async () => {
  assert.match(sambaExec('smbd', ['-V'], {}, root), /^Version 4\.17\./);
  assert.equal(buildId(root)?.[1], '47', 'vfsx is installed for Samba 4.17 before the upgrade');
  assert.ok(existsSync(join(root, 'etc/apt/apt.conf.d/90vfsx-samba')), 'the install set up the apt hook');

  // The admin's part: backports in apt's sources, then one apt command.
  const mirror = /^URIs:\s*(\S+)/m.exec(readFileSync(join(root, 'etc/apt/sources.list.d/debian.sources'), 'utf8'))?.[1];
  await writeFile(join(root, 'etc/apt/sources.list.d/backports.sources'),
    `Types: deb\nURIs: ${mirror}\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n`);
  inRoot('apt-get', ['update', '-qq']);
  inRoot('env', ['DEBIAN_FRONTEND=noninteractive', 'apt-get', 'install', '-y', '-qq', '-o', 'Dpkg::Options::=--force-confold',
    '--no-install-recommends', '-t', 'bookworm-backports', 'samba'], 1_500_000);

  const version = sambaExec('smbd', ['-V'], {}, root);
  assert.match(version, /^Version 4\.22\./);
  const [built, iface] = buildId(root) ?? [];
  assert.equal(iface, '50', `the module was rebuilt for the new smbd (built for ${built})`);
  assert.equal(built, /^Version ([0-9.]+)/.exec(version)?.[1]);
  const status = JSON.parse(readFileSync(join(root, 'var/lib/vfsx/samba-hook.json'), 'utf8')) as { ok: boolean; samba: string; detail: string };
  assert.equal(status.ok, true, status.detail);
  assert.match(readFileSync(join(root, 'var/log/vfsx/samba-hook.log'), 'utf8'), /rebuilt and installed .*vfsx\.so for Samba 4\.22/);

  // The next run of this test finds the headers for the new Samba in the cache.
  const cacheDir = 'root/.cache/vfsx';
  for (const d of await readdir(join(root, cacheDir))) {
    if (d.startsWith('samba-') && !existsSync(join(base, cacheDir, d))) await cp(join(root, cacheDir, d), join(base, cacheDir, d), { recursive: true, verbatimSymlinks: true });
  }

  // The share, served by the upgraded smbd: no manual step in between.
  redis = await RedisHarness.start();
  svc = await ServiceHarness.create({ redisSocket: redis.socket });
  await svc.start();
  smbd = await SmbdHarness.start([{ name: 'after', vfsx: { socket: svc.socket, spool: svc.spool } }], [], { chroot: root });
  const r = await smbclient(smbd.port, 'after', 'mkdir upgraded; put /etc/hostname upgraded\\host.txt');
  assert.deepEqual(r.statuses, [], r.stdout + r.stderr);
  await waitForRecords(svc, 'the upgraded share journals', (recs) =>
    recs.some((x) => x.op === 'mkdir' && x.names.path === 'upgraded' && x.outcome === 'confirmed')
    && recs.some((x) => x.op === 'close' && x.names.path === 'upgraded/host.txt'));
});
