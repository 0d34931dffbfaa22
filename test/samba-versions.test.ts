/**
 * What differs between Samba versions, seen through SMB with real parts. Runs
 * against the host's smbd and, in the version matrix of `npm test`, against
 * the smbd of a Debian 13 chroot (VFSX_SAMBA_CHROOT): Samba 4.22 and later
 * make a directory under a temporary name and rename it into place; vfsx
 * must still report, judge and journal one mkdir of the name the user gave.
 */
import assert from 'node:assert/strict';
import { chmod, mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readJournal, waitForRecords } from './helpers/journal-client';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness } from './helpers/service-harness';
import { smbclient } from './helpers/smbclient';
import { waitFor } from './helpers/wait-for';
import { SAMBA_CHROOT, SmbdHarness, sambaVersion } from './helpers/smbd-harness';

let redis: RedisHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;
const SHARE = 'vers';
const version = sambaVersion();

before(async () => {
  redis = await RedisHarness.start();
  svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    policy: [{ name: 'archive is closed', action: 'deny', ops: ['mkdir'], paths: ['archive/**'] }],
  });
  await svc.start();
  // store dos attributes is on by default: Samba 4.22+ then makes directories under a temporary name.
  smbd = await SmbdHarness.start([{ name: SHARE, vfsx: { socket: svc.socket, spool: svc.spool } }]);
});

after(async () => {
  await smbd?.destroy();
  await svc?.destroy();
  await redis?.stop();
});

test(`${version}${SAMBA_CHROOT ? ' (chroot)' : ''}: the vfsx module built for this smbd loads (a wrong VFS interface fails the tree connect)`, async () => {
  const r = await smbclient(smbd.port, SHARE, 'ls');
  assert.deepEqual(r.statuses, [], r.stdout + r.stderr); // a module built for another interface makes the tree connect fail
  assert.match(version, /^Version 4\.\d+/);
});

test('a mkdir through SMB is journaled as one mkdir of the name the user gave, never a temporary name', async () => {
  const r = await smbclient(smbd.port, SHARE, 'mkdir plans; mkdir plans\\q1');
  assert.deepEqual(r.statuses, [], r.stdout + r.stderr);
  const recs = await waitForRecords(svc, 'plans and plans/q1', (rs) =>
    ['plans', 'plans/q1'].every((p) => rs.some((x) => x.op === 'mkdir' && x.names.path === p && x.outcome === 'confirmed')));
  const mine = recs.filter((x) => x.names.path === 'plans' || x.names.path === 'plans/q1');
  assert.deepEqual(mine.filter((x) => x.op === 'mkdir').map((x) => x.names.path), ['plans', 'plans/q1']);
  assert.deepEqual(mine.filter((x) => x.op === 'rename'), [], 'the rename into place is part of the mkdir');
  const tmp = recs.filter((x) => JSON.stringify(x.names).includes('TMPNAME'));
  assert.deepEqual(tmp, [], 'no record names a temporary directory');
  assert.deepEqual((await readdir(smbd.sharePath(SHARE))).filter((n) => n.includes('TMPNAME')), []);
});

test('a deny rule on mkdir by path refuses a directory created through SMB and creates nothing, not even a temporary one', async () => {
  const root = smbd.sharePath(SHARE);
  await mkdir(join(root, 'archive'));
  await chmod(join(root, 'archive'), 0o777); // the user may write there: only the policy says no
  const r = await smbclient(smbd.port, SHARE, 'mkdir archive\\2026');
  assert.deepEqual(r.statuses, ['NT_STATUS_ACCESS_DENIED'], r.stdout + r.stderr);
  assert.deepEqual(await readdir(join(root, 'archive')), []);
  // Outside the rule's paths the same user makes directories as usual.
  assert.deepEqual((await smbclient(smbd.port, SHARE, 'mkdir open2026')).statuses, []);
  const recs = await waitForRecords(svc, 'open2026', (rs) => rs.some((x) => x.op === 'mkdir' && x.names.path === 'open2026' && x.outcome === 'confirmed'));
  assert.deepEqual(recs.filter((x) => x.names.path?.startsWith('archive/')), [], 'a denied mkdir is not journaled');
  await waitFor('the denial audited by the service', () => svc.logsWith('operation denied by policy')
    .some((l) => l.op === 'mkdir' && (l.names as Record<string, string>).path === 'archive/2026'));
  assert.equal((await readJournal(svc)).filter((x) => JSON.stringify(x.names).includes('TMPNAME')).length, 0);
});
