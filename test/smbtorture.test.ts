/**
 * smbtorture differential: Samba's own client test suites must give the same
 * result per subtest on a vfsx share as on a plain share of the same smbd.
 * (Some subtests fail on any share outside Samba's selftest settings; what
 * matters is that vfsx changes nothing.)
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, test } from 'node:test';
import { readJournal } from './helpers/journal-client';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness } from './helpers/service-harness';
import { SMB_PASS, SMB_USER, SmbdHarness } from './helpers/smbd-harness';

const SUITES = [
  'smb2.connect', 'smb2.create', 'smb2.rename', 'smb2.delete-on-close-perms', 'smb2.setinfo', 'smb2.streams',
  'smb2.rw', 'smb2.dir', 'smb2.lock', 'smb2.compound', 'smb2.sharemode', 'smb2.compound_async',
];

let redis: RedisHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;

before(async () => {
  redis = await RedisHarness.start();
  svc = await ServiceHarness.create({ redisSocket: redis.socket });
  await svc.start();
  const common = ['ea support = yes', 'store dos attributes = yes'];
  smbd = await SmbdHarness.start([
    { name: 'plain', extra: ['vfs objects = streams_xattr', ...common] },
    { name: 'vfsx', vfsx: { socket: svc.socket, spool: svc.spool }, extra: ['vfs objects = vfsx streams_xattr', ...common] },
  ]);
});

after(async () => {
  await smbd?.destroy();
  await svc?.destroy();
  await redis?.stop();
});

function torture(share: string, suite: string): Promise<Map<string, string>> {
  return new Promise((resolve) => {
    execFile('smbtorture', [`//127.0.0.1/${share}`, '-p', String(smbd.port), '-U', `${SMB_USER}%${SMB_PASS}`, suite],
      { timeout: 300000, maxBuffer: 64 << 20 }, (_err, stdout, stderr) => {
        const results = new Map<string, string>();
        for (const m of `${stdout}\n${stderr}`.matchAll(/^(success|failure|error|skip|xfail|uxsuccess): (\S+)/gm)) {
          results.set(m[2], m[1] === 'error' ? 'failure' : m[1]);
        }
        resolve(results);
      });
  });
}

for (const suite of SUITES) {
  test(`smbtorture ${suite} gives the same result per subtest on a vfsx share as on a plain share`, async () => {
    const plain = await torture('plain', suite);
    const vfsx = await torture('vfsx', suite);
    assert.ok(plain.size > 0, `${suite} ran no subtest on the plain share`);
    assert.deepEqual(Object.fromEntries([...vfsx].sort()), Object.fromEntries([...plain].sort()));
  });
}

test('the torture runs went through the module (the journal saw their changes)', async () => {
  const recs = await readJournal(svc);
  assert.ok(recs.length > 100, `only ${recs.length} records`);
  // smb2.compound_async sends SMB2 FLUSH: the fsync hook reports (and clears) the file's state.
  for (const op of ['create', 'close', 'fsync', 'rename', 'unlink', 'mkdir', 'setdosattr']) {
    assert.ok(recs.some((r) => r.op === op && r.share === 'vfsx'), `no ${op} record`);
  }
  assert.ok(recs.some((r) => r.names.stream !== undefined), 'no stream record');
  const flushed = recs.filter((r) => r.op === 'fsync' && r.names.path === 'compound_async_flush_close');
  assert.ok(flushed.length >= 1 && flushed.every((r) => r.args.flags === 'c'), JSON.stringify(flushed));
  assert.equal(recs.some((r) => r.share === 'plain'), false);
});
