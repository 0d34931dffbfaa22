/**
 * End to end with real parts: smbd with the vfsx module, `vfsx serve`,
 * redis-server, smbclient and libsmbclient. Every change made through SMB
 * must arrive in the journal as exactly the expected record.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { ChangeRecord } from '../src/ops/change-record';
import { readJournal, waitForRecords } from './helpers/journal-client';
import { RedisHarness } from './helpers/redis-harness';
import { ServiceHarness } from './helpers/service-harness';
import { q, smbclient } from './helpers/smbclient';
import { smbcTruncate, smbcWrite } from './helpers/smbc';
import { SMB_USER, SmbdHarness, sambaVersion } from './helpers/smbd-harness';

let redis: RedisHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;
let local: string;
let share: string;
const SHARE = 'vshare';
/** Samba 4.22 and later make a directory under a temporary name ("vfs mkdir use tmp name"). */
const TMP_NAME_MKDIR = (() => {
  const m = /^Version 4\.(\d+)/.exec(sambaVersion());
  return m !== null && Number(m[1]) >= 22;
})();

before(async () => {
  redis = await RedisHarness.start();
  svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    policy: [{ name: 'ransomware', action: 'deny', extensions: ['.locked'], ops: ['create', 'rename'] }],
  });
  await svc.start();
  smbd = await SmbdHarness.start([
    { name: SHARE, vfsx: { socket: svc.socket, spool: svc.spool } },
    { name: 'vsplit', vfsx: { socket: svc.socket, spool: svc.spool }, extra: ['vfsx:fold metadata = no'] },
  ]);
  share = smbd.sharePath(SHARE);
  local = await mkdtemp(join(tmpdir(), 'vfsx-local-'));
});

after(async () => {
  await smbd?.destroy();
  await svc?.destroy();
  await redis?.stop();
});

async function smb(cmds: string): Promise<void> {
  const r = await smbclient(smbd.port, SHARE, cmds);
  assert.equal(r.code, 0, `smbclient ${cmds}: ${r.stdout}${r.stderr}`);
  assert.deepEqual(r.statuses, [], `smbclient ${cmds}`);
}

/** Records for one path (or rename source), after the given count of earlier records. */
async function recordsFor(path: string, until: (r: ChangeRecord[]) => boolean): Promise<ChangeRecord[]> {
  const all = await waitForRecords(svc, `records for ${path}`, (recs) =>
    until(recs.filter((r) => r.names.path === path)));
  return all.filter((r) => r.names.path === path);
}

const ops = (recs: ChangeRecord[]) => recs.map((r) => r.op);

test('mkdir through SMB records mkdir, with the directory DOS attribute smbd set on it, for the user and share', async () => {
  // A new smbd process's first report asks for its verdict (the policy is not known before the hello's answer):
  // from the second on, the link is up and what smbd sets on a new directory may join its mkdir.
  await smb('mkdir dir0; mkdir dir1');
  // Samba 4.22+ makes a directory under a temporary name, sets its attribute there and renames it into
  // place: the mkdir is reported when that ends, and the attribute goes alone before it (docs/protocol.md).
  const tmpName = TMP_NAME_MKDIR;
  const recs = await recordsFor('dir1', (r) => r.some((x) => x.op === 'mkdir') && (!tmpName || r.some((x) => x.op === 'setdosattr')));
  if (tmpName) {
    assert.deepEqual(ops(recs).sort(), ['mkdir', 'setdosattr']);
    assert.equal(recs.find((x) => x.op === 'setdosattr')?.args.attrs, '10');
    recs.splice(recs.findIndex((x) => x.op === 'setdosattr'), 1);
  }
  assert.deepEqual(ops(recs), ['mkdir']);
  const [mk] = recs;
  assert.equal(mk.user, SMB_USER);
  assert.equal(mk.share, SHARE);
  assert.equal(mk.origpath, share);
  assert.equal(mk.outcome, 'confirmed');
  assert.match(String(mk.args.mode), /^[0-7]+$/);
  assert.equal(mk.args.attrs, tmpName ? undefined : '10'); // FILE_ATTRIBUTE_DIRECTORY, joined to the mkdir's report
  // vfsx:fold metadata = no: the attribute is a report of its own.
  const r = await smbclient(smbd.port, 'vsplit', 'mkdir splitdir0; mkdir splitdir');
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const split = await waitForRecords(svc, 'splitdir', (all) =>
    ['mkdir', 'setdosattr'].every((op) => all.some((x) => x.share === 'vsplit' && x.op === op && x.names.path === 'splitdir')));
  const mine = split.filter((x) => x.share === 'vsplit' && x.names.path === 'splitdir');
  assert.deepEqual(tmpName ? ops(mine).sort() : ops(mine), ['mkdir', 'setdosattr']);
  assert.equal(mine.find((x) => x.op === 'mkdir')?.args.attrs, undefined);
  assert.equal(mine.find((x) => x.op === 'setdosattr')?.args.attrs, '10');
});

test('a several-MB put records create, then a close whose dirty ranges cover exactly the file', async () => {
  const data = randomBytes(5 * 1024 * 1024 + 123);
  await writeFile(join(local, 'big.bin'), data);
  await smb(`put ${join(local, 'big.bin')} big.bin`);
  const recs = await recordsFor('big.bin', (r) => r.some((x) => x.op === 'close'));
  assert.deepEqual(ops(recs).filter((o) => o !== 'setdosattr' && o !== 'utimes'), ['create', 'close']);
  assert.equal(recs[0].args.flags, 'cx');
  const close = recs.find((r) => r.op === 'close')!;
  assert.equal(close.args.flags, 'c');
  assert.deepEqual(close.ranges, [[0, data.length]]);
  // The file the ranges were written to, by inode: the replicator trusts the ranges only for it.
  assert.equal(close.args.ino, statSync(join(share, 'big.bin')).ino.toString(16));
  assert.deepEqual(await readFile(join(share, 'big.bin')), data);
});

test('a put is two records: the DOS attributes and the write time smbd sets ride on the close', async () => {
  await writeFile(join(local, 'rides.bin'), randomBytes(4096));
  await smb(`put ${join(local, 'rides.bin')} rides.bin`);
  const recs = await recordsFor('rides.bin', (r) => r.some((x) => x.op === 'close'));
  assert.deepEqual(ops(recs), ['create', 'close']);
  const close = recs[1];
  assert.equal(close.outcome, 'confirmed');
  assert.equal(close.args.attrs, '20'); // FILE_ATTRIBUTE_ARCHIVE, set by smbd on the new file
  // The write time smbd set at close, as asked (not the times the layers below filled in).
  const st = statSync(join(share, 'rides.bin'), { bigint: true });
  assert.equal(close.args.mtime, `${st.mtimeNs / 1_000_000_000n}.${String(st.mtimeNs % 1_000_000_000n).padStart(9, '0')}`);
  assert.equal(close.args.atime, undefined);
  // Metadata set through a handle with no content to report still goes alone.
  await smb('setmode rides.bin +r');
  const after = await waitForRecords(svc, 'setmode of rides.bin', (all) =>
    all.some((r) => r.op === 'setdosattr' && r.names.path === 'rides.bin' && r.args.attrs === '21'));
  assert.equal(after.filter((r) => r.names.path === 'rides.bin' && r.op === 'utimes').length, 0);
  // vfsx:fold metadata = no: each goes alone, as modules before it did.
  const r = await smbclient(smbd.port, 'vsplit', `put ${join(local, 'rides.bin')} split.bin`);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const split = await waitForRecords(svc, 'split.bin', (all) => all.some((x) => x.share === 'vsplit' && x.op === 'close'));
  assert.deepEqual(ops(split.filter((x) => x.share === 'vsplit' && x.names.path === 'split.bin')), ['create', 'setdosattr', 'utimes', 'close']);
});

/** Minor page faults of smbd's reaped children (the sessions), from the parent's /proc stat. */
async function sessionFaults(): Promise<number> {
  const fields = (await readFile(`/proc/${smbd.pid}/stat`, 'utf8')).split(') ')[1].split(' ');
  return Number(fields[8]); // cminflt
}

test('large writes reuse smbd\'s buffers: a 256 MiB put costs its session a bounded number of page faults', async () => {
  // Each SMB2 write arrives in an 8 MiB heap buffer. With glibc's dynamic
  // thresholds the heap top was trimmed between writes and refaulted, and a
  // module in the stack made that happen most of the time: 17,000-37,000
  // faults for 256 MiB (9,000-17,000 without a module). The module fixes the
  // thresholds, and the session's faults stay about 5,000-7,000, whatever the size.
  const f = join(local, 'huge.bin');
  await writeFile(f, randomBytes(1 << 20).toString('hex').repeat(128)); // 256 MiB
  const before = await sessionFaults();
  await smb(`put ${f} huge.bin; del huge.bin`);
  // The session's process is reaped soon after smbclient leaves.
  let faults = 0;
  for (const until = Date.now() + 10000; Date.now() < until; await new Promise((r) => setTimeout(r, 50))) {
    faults = (await sessionFaults()) - before;
    if (faults > 0) break;
  }
  assert.ok(faults > 1000, `the session's page faults were counted (${faults})`);
  assert.ok(faults < 12000, `a 256 MiB put cost the session ${faults} page faults; more means write buffers are refaulted`);
});

/** vfsx_bridge_frames_total by kind, from the service's /metrics. */
async function frames(): Promise<Record<string, number>> {
  const text = await (await fetch(`${svc.httpUrl}/metrics`)).text();
  return Object.fromEntries([...text.matchAll(/^vfsx_bridge_frames_total\{kind="(\w+)"\} (\d+)$/gm)].map((m) => [m[1], Number(m[2])]));
}

test('the reports of a put carry their own outcomes (folded): no separate outcome frames, every record confirmed', async () => {
  await writeFile(join(local, 'fold.bin'), randomBytes(4096));
  const before = await frames();
  // A new smbd process: its first report (the mkdir) may go out before the hello's answer and then asks, so one
  // "done" follows it (when the answer came first, it is folded too); then the link is up and the policy known,
  // and the two puts' reports go out folded.
  await smb(`mkdir folddir; put ${join(local, 'fold.bin')} folddir/a.bin; put ${join(local, 'fold.bin')} folddir/b.bin`);
  const recs = [
    ...await recordsFor('folddir/a.bin', (r) => r.some((x) => x.op === 'close')),
    ...await recordsFor('folddir/b.bin', (r) => r.some((x) => x.op === 'close')),
  ];
  const after = await frames();
  assert.equal(recs.filter((r) => r.op === 'create').length, 2, JSON.stringify(ops(recs)));
  for (const r of recs) assert.equal(r.outcome, 'confirmed', `${r.op} ${r.outcome}`);
  const delta = (k: string) => after[k] - before[k];
  assert.ok(delta('report') >= recs.length + 1, `reports ${delta('report')} for ${recs.length} records and the mkdir`);
  assert.ok(delta('outcome') <= 1, `outcome frames (at most the mkdir's): ${JSON.stringify({ before, after })}`);
  // Every report of the puts but the closes (which always carry their outcome) arrived folded (so did the directory's attribute).
  assert.ok(delta('folded') >= recs.filter((r) => r.op !== 'close').length, `folded frames: ${JSON.stringify({ before, after })}`);
});

test('overwrite, write at end (append), write in the middle and truncate each record what changed', async () => {
  const first = randomBytes(3000);
  await writeFile(join(local, 'f.bin'), first);
  await smb(`put ${join(local, 'f.bin')} f.bin`);
  await recordsFor('f.bin', (r) => r.some((x) => x.op === 'close'));
  const before = (await readJournal(svc)).length;
  /** Content records for f.bin since `before`, once the n-th has arrived. */
  const since = async (n: number) => {
    const all = await waitForRecords(svc, `${n} records for f.bin`, (recs) =>
      recs.slice(before).filter((r) => r.names.path === 'f.bin' && r.op !== 'setdosattr' && r.op !== 'utimes').length >= n);
    return all.slice(before).filter((r) => r.names.path === 'f.bin' && r.op !== 'setdosattr' && r.op !== 'utimes');
  };

  const second = randomBytes(2000);
  await writeFile(join(local, 'f.bin'), second);
  await smb(`put ${join(local, 'f.bin')} f.bin`); // overwrite: truncate to 0, write 2000
  let recs = await since(2);
  assert.deepEqual(ops(recs), ['truncate', 'close']);
  assert.equal(recs[0].args.size, 0);
  assert.deepEqual(recs[1].ranges, [[0, 2000]]);

  await smbcWrite(smbd.port, SHARE, 'f.bin', 2000, Buffer.from('APPENDED')); // at the end
  recs = await since(3);
  assert.equal(recs[2].op, 'close');
  assert.deepEqual(recs[2].ranges, [[2000, 8]]);

  await smbcWrite(smbd.port, SHARE, 'f.bin', 100, Buffer.from('mid'));
  recs = await since(4);
  assert.deepEqual(recs[3].ranges, [[100, 3]]);

  await smbcTruncate(smbd.port, SHARE, 'f.bin', 500);
  recs = await since(5);
  assert.equal(recs[4].op, 'truncate');
  assert.equal(recs[4].args.size, 500);
  assert.equal((await stat(join(share, 'f.bin'))).size, 500);
});

test('rename of a file and of a directory record source and target', async () => {
  await smb('mkdir rdir; put /etc/hostname rdir/a.txt');
  await smb('mkdir rwarm; rename rdir/a.txt rdir/b.txt; rename rdir rdir2'); // the mkdir: see the first test
  const recs = await waitForRecords(svc, 'renames', (all) => all.filter((r) => r.op === 'rename').length >= 2);
  const renames = recs.filter((r) => r.op === 'rename').map((r) => [r.names.path, r.names.to]);
  assert.deepEqual(renames, [['rdir/a.txt', 'rdir/b.txt'], ['rdir', 'rdir2']]);
  assert.ok(existsSync(join(share, 'rdir2/b.txt')));
  // smbd sets the archive attribute on the renamed file: it joins the rename's report, no report of its own.
  const fileRename = recs.find((r) => r.op === 'rename' && r.names.path === 'rdir/a.txt')!;
  assert.equal(fileRename.args.attrs, '20');
  assert.equal(recs.some((r) => r.op === 'setdosattr' && r.names.path === 'rdir/b.txt'), false);
});

test('delete and rmdir record unlink and rmdir', async () => {
  await smb('mkdir gone; put /etc/hostname gone/x');
  await smb('del gone/x; rmdir gone');
  const recs = await waitForRecords(svc, 'unlink+rmdir', (all) =>
    all.some((r) => r.op === 'unlink' && r.names.path === 'gone/x') && all.some((r) => r.op === 'rmdir' && r.names.path === 'gone'));
  const u = recs.filter((r) => r.op === 'unlink' || r.op === 'rmdir').map((r) => `${r.op} ${r.names.path}`);
  assert.deepEqual(u.filter((s) => s.includes('gone')), ['unlink gone/x', 'rmdir gone']);
});

test('setmode and utimes record the DOS attributes and the times that were set', async () => {
  await smb('put /etc/hostname attr.txt');
  await smb('setmode attr.txt +rh; utimes attr.txt 2021:02:03-04:05:06 -1 2022:03:04-05:06:07 -1');
  const recs = await waitForRecords(svc, 'setmode+utimes', (all) =>
    all.some((r) => r.op === 'setdosattr' && r.names.path === 'attr.txt' && r.args.attrs === '23')
    && all.some((r) => r.op === 'utimes' && r.names.path === 'attr.txt' && r.args.btime !== undefined));
  const ut = recs.find((r) => r.op === 'utimes' && r.names.path === 'attr.txt' && r.args.btime !== undefined)!;
  const mtime = Number(String(ut.args.mtime).split('.')[0]);
  assert.equal(mtime, Math.floor((await stat(join(share, 'attr.txt'))).mtimeMs / 1000));
  assert.equal(ut.args.atime, undefined); // -1: not changed, not reported
});

test('names with spaces , % # & Unicode, emoji and a 240-byte component arrive intact', async () => {
  const names = ['a b,c%d#e&f.txt', 'Ünïcödé ÆØÅ 日本語.txt', 'emoji 😀🎉.txt', `${'x'.repeat(236)}.txt`];
  assert.equal(Buffer.byteLength(names[3]), 240);
  for (const n of names) await smb(`put /etc/hostname ${q(n)}`);
  const recs = await waitForRecords(svc, 'odd names', (all) =>
    names.every((n) => all.some((r) => r.op === 'close' && r.names.path === n)));
  for (const n of names) {
    assert.ok(recs.some((r) => r.op === 'create' && r.names.path === n), n);
    assert.ok(existsSync(join(share, n)), n);
  }
});

test('a denied extension makes smbclient report NT_STATUS_ACCESS_DENIED and nothing is created', async () => {
  const r = await smbclient(smbd.port, SHARE, 'put /etc/hostname evil.locked');
  assert.ok(r.statuses.includes('NT_STATUS_ACCESS_DENIED'), r.stdout + r.stderr);
  assert.equal(existsSync(join(share, 'evil.locked')), false);
  await smb('put /etc/hostname fine.txt');
  const r2 = await smbclient(smbd.port, SHARE, 'rename fine.txt fine.locked');
  assert.ok(r2.statuses.includes('NT_STATUS_ACCESS_DENIED'), r2.stdout + r2.stderr);
  assert.ok(existsSync(join(share, 'fine.txt')));
  const recs = await readJournal(svc);
  assert.equal(recs.some((x) => Object.values(x.names).some((v) => v.endsWith('.locked'))), false);
  assert.ok(svc.logs.some((l) => l.audit === 'denied' && l.rule === 'ransomware'));
});
