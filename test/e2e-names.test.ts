/**
 * Names that are not UTF-8 through the whole running system: a share whose
 * smbd keeps names in Latin-1 (`unix charset = iso8859-1`, as servers
 * migrated from older systems do), so every accented name a Windows client
 * saves reaches the module, the journal and the replicator as bytes that
 * are not UTF-8. Real smbd with the module, smbclient, redis-server,
 * `vfsx serve` and `vfsx replicate`, and an encrypted DR site.
 */
import assert from 'node:assert/strict';
import { readdirSync, renameSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { DEFAULT_SITE } from '../src/config/schema';
import { validateConfig } from '../src/config/load-config';
import { StatusReader, type Status } from '../src/operator/status';
import { why } from '../src/operator/why';
import { nameFromBytes } from '../src/protocol/byte-names';
import { ReplicationStack } from './helpers/replication-stack';
import { q, smbclient } from './helpers/smbclient';

let stack: ReplicationStack;

before(async () => {
  stack = await ReplicationStack.start({
    share: 'latin',
    smbGlobal: ['unix charset = iso8859-1'],
    policy: [{ name: 'ransomware', action: 'deny', extensions: ['.locked'], ops: ['create', 'rename'] }],
  });
});

after(async () => {
  await stack?.destroy();
});

const latin = (s: string) => Buffer.from(s, 'latin1').toString('hex');
/** The names in dir (below the share, given in Latin-1) as hex of their bytes. */
const namesIn = (dir = '') => readdirSync(Buffer.from(join(stack.root, dir), 'latin1'), { encoding: 'buffer' }).map((b) => b.toString('hex')).sort();

test('a Latin-1 share: accented names saved, renamed and deleted through SMB replicate to the encrypted site and restore with the same bytes; the ransomware policy denies .locked names too', async () => {
  const f = join(stack.local, 'f.txt');
  await writeFile(f, 'contenu\n'.repeat(1000));
  const cmds = [
    'mkdir Übung', `put ${f} ${q('Übung/résumé.txt')}`, `put ${f} ${q('café.txt')}`, `rename ${q('café.txt')} ${q('naïve.txt')}`,
    `put ${f} ${q('à effacer.txt')}`, `del ${q('à effacer.txt')}`, 'mkdir Ärger', `put ${f} ${q('Ärger/ö.bin')}`, `rename Ärger Ærger`,
    `put ${f} plain.txt`,
  ];
  const r = await smbclient(stack.smbd.port, stack.share, cmds.join('; '));
  assert.equal(r.code, 0, r.stdout + r.stderr);
  // On disk the names are Latin-1: every one of them reached the module as bytes that are not UTF-8.
  assert.deepEqual(namesIn(), [latin('Übung'), latin('naïve.txt'), latin('Ærger'), latin('plain.txt')].sort());
  assert.deepEqual(namesIn('Übung'), [latin('résumé.txt')]);
  assert.deepEqual(namesIn('Ærger'), [latin('ö.bin')]);

  // The policy matches them as well: a Windows name ending in .locked is denied, created or renamed to.
  const denied = await smbclient(stack.smbd.port, stack.share, `put ${f} ${q('vérrouillé.locked')}`);
  assert.ok(denied.statuses.includes('NT_STATUS_ACCESS_DENIED'), denied.stdout + denied.stderr);
  const renamed = await smbclient(stack.smbd.port, stack.share, `rename ${q('naïve.txt')} ${q('naïve.locked')}`);
  assert.ok(renamed.statuses.includes('NT_STATUS_ACCESS_DENIED'), renamed.stdout + renamed.stderr);
  assert.ok(!namesIn().some((n) => Buffer.from(n, 'hex').toString('latin1').endsWith('.locked')));

  // verify --content identical, and a restore is the share (diff -r compares the bytes of the names).
  await stack.converged('latin1');
});

test('a plaintext repository cannot hold a Latin-1 name: its records are left out after a few attempts (named in status and `vfsx why`, out of the RPO), the rest replicates, and its delete, or a resync that finds it gone, clears it; a resync names it too', async () => {
  const plain = await ReplicationStack.start({ share: 'latinplain', smbGlobal: ['unix charset = iso8859-1'], replExtra: { encryption: 'off' } });
  try {
    const f = join(plain.local, 'f.txt');
    await writeFile(f, 'contenu\n');
    const r = await smbclient(plain.smbd.port, plain.share, `put ${f} ${q('café.txt')}; put ${f} plain.txt`);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const cafe = Buffer.from('café.txt', 'latin1');
    const name = nameFromBytes(cafe);
    const st = async () => {
      const res = await plain.svc.cli(['status', '--json']);
      assert.equal(res.code, 0, res.stderr);
      return (JSON.parse(res.stdout) as Status).shares.find((s) => s.share === plain.share);
    };
    // Its records fail on the site's answer alone, not retried forever: the backlog drains.
    await plain.drained(90000);
    const s = await st();
    assert.ok(s, 'the share in status');
    assert.equal(s.leftOut.count, 1, JSON.stringify(s.leftOut));
    assert.equal(s.leftOut.paths[0].path, name);
    assert.match(s.leftOut.paths[0].error, /not UTF-8/);
    assert.equal(s.rpoAgeSeconds, 0);
    assert.equal(s.backlog.records, 0);
    assert.ok(await plain.site.call('object.stat', { bucket: plain.share, path: 'plain.txt' }), 'the rest replicated');
    // `vfsx why` as the CLI and the dashboard run it (a shell's argv cannot carry the name's bytes to Node).
    const cfg = validateConfig(plain.svc.config);
    const reader = new StatusReader(cfg);
    try {
      const w = await why(reader.queueOf(DEFAULT_SITE), reader.redis, cfg, plain.share, name);
      assert.equal(w.verdict, 'left out', JSON.stringify(w));
      assert.match(w.leftOut?.error ?? '', /not UTF-8/);
      // The batch that carried its records split them off; the lone job then left them out. None says committed.
      assert.ok(w.records.some((x) => x.state === 'left out') && w.records.every((x) => x.state === 'left out' || x.state === 'split off'), JSON.stringify(w.records));
    } finally {
      await reader.close();
    }
    const human = await plain.svc.cli(['status']);
    assert.match(human.stdout, /LEFT OUT/);
    // A resync cannot take it either: it names it, and the entry stays (its first operation kept).
    const rs = await plain.svc.cli(['resync', plain.share, '--source', plain.root, '--json']);
    assert.equal(rs.code, 1, rs.stdout + rs.stderr);
    assert.deepEqual(JSON.parse(rs.stdout).leftOut.map((l: { path: string }) => l.path), [name]);
    assert.deepEqual((await st())?.leftOut.paths.map((e) => [e.path, e.op]), [[name, 'close']]);
    // Deleted on the share: the site holds no such object, so the delete commits and the entry goes.
    const d = await smbclient(plain.smbd.port, plain.share, `del ${q('café.txt')}`);
    assert.equal(d.code, 0, d.stdout + d.stderr);
    await plain.drained();
    assert.equal((await st())?.leftOut.count, 0);
    // Left out again, then renamed behind smbd (no record says so): a whole resync finds the old name gone and drops it.
    const n = await smbclient(plain.smbd.port, plain.share, `put ${f} ${q('né.txt')}`);
    assert.equal(n.code, 0, n.stdout + n.stderr);
    await plain.drained(90000);
    assert.equal((await st())?.leftOut.count, 1);
    renameSync(Buffer.from(join(plain.root, 'né.txt'), 'latin1'), join(plain.root, 'ne.txt'));
    const rs2 = await plain.svc.cli(['resync', plain.share, '--source', plain.root, '--json']);
    assert.equal(rs2.code, 0, rs2.stdout + rs2.stderr);
    assert.equal((await st())?.leftOut.count, 0);
    assert.ok(await plain.site.call('object.stat', { bucket: plain.share, path: 'ne.txt' }));
  } finally {
    await plain.destroy();
  }
});
