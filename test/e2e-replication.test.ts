/**
 * Replication end to end with real parts: smbclient -> smbd + vfsx ->
 * vfsx serve -> Redis journal -> replicator -> DR site over WebSocket.
 * After the backlog drains, the DR site must hold exactly the source tree.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { SiteClient } from '../src/site-link/site-client';
import { verifyShare } from '../src/replication/verify';
import { DrSiteHarness } from './helpers/dr-site-harness';
import { ReplicationStack } from './helpers/replication-stack';
import { RedisHarness } from './helpers/redis-harness';
import { REPO, ServiceHarness } from './helpers/service-harness';
import { q, smbclient } from './helpers/smbclient';
import { smbcWrite } from './helpers/smbc';
import { SMB_PASS, SMB_USER, SmbdHarness } from './helpers/smbd-harness';
import { xattrsOf } from '../src/replication/source-tree';
import { waitFor } from './helpers/wait-for';

let stack: ReplicationStack;
let redis: RedisHarness;
let dr: DrSiteHarness;
let svc: ServiceHarness;
let smbd: SmbdHarness;
let site: SiteClient;
let local: string;
const SHARE = 'docs';

before(async () => {
  stack = await ReplicationStack.start({ share: SHARE });
  ({ redis, dr, svc, smbd, local } = stack);
  site = stack.site;
});

after(async () => {
  await stack?.destroy();
});

async function smb(cmds: string): Promise<void> {
  const r = await smbclient(smbd.port, SHARE, cmds);
  assert.deepEqual(r.statuses, [], `${cmds}: ${r.stdout}${r.stderr}`);
}

const drained = () => stack.drained();
const randomWorkload = (tag: string, ops?: number) => stack.randomWorkload(tag, ops);
const converged = (tag: string) => stack.converged(tag);

/** After the site restarted: a new connection to it. */
async function reconnect(): Promise<void> {
  await stack.reconnect();
  site = stack.site;
}

const blockFiles = () => dr.stats().blocks;

test('vfsx replicate is its own process, below smbd and vfsx serve in CPU and I/O priority (every thread); the pump and status threads of vfsx serve are lowered too', async () => {
  const niceOf = (pid: number | string, tid: number | string) => {
    const st = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'latin1');
    return Number(st.slice(st.lastIndexOf(')') + 2).split(' ')[16]); // field 19
  };
  const rpid = svc.replicatorPid as number;
  assert.ok(rpid && rpid !== svc.pid, 'a process of its own');
  const threads = readdirSync(`/proc/${rpid}/task`);
  assert.ok(threads.length > 1);
  for (const tid of threads) {
    assert.equal(niceOf(rpid, tid), 10, `thread ${tid}: nice`);
    assert.match(spawnSync('ionice', ['-p', tid], { encoding: 'utf8' }).stdout, /best-effort: prio 7/, `thread ${tid}: ionice`);
  }
  // vfsx serve: its main thread (verdicts) keeps nice 0; only its pump and status threads, off the verdict path, run lower.
  const serve = svc.pid as number;
  assert.equal(niceOf(serve, serve), 0, 'vfsx serve main thread keeps nice 0');
  const loweredNow = () => readdirSync(`/proc/${serve}/task`).filter((tid) => niceOf(serve, tid) !== 0);
  // Each worker lowers itself as it starts; a moment after the service is up, both have.
  const lowered = await waitFor('both worker threads of vfsx serve to lower themselves', () => loweredNow().length >= 2 && loweredNow(), 5000, 50);
  assert.deepEqual(lowered.map((tid) => niceOf(serve, tid)), [10, 10], 'two threads of vfsx serve (the journal pump, the status reader) at nice 10');
});

test('a scripted workload through SMB converges: the DR site holds exactly the source tree', async () => {
  const f = (name: string, bytes: number) => writeFile(join(local, name), randomBytes(bytes));
  await f('small', 100);
  await f('multi', 300_000);
  await f('doc1', 70_000);
  await f('doc2', 90_000);
  await smb('mkdir a; mkdir a/b; mkdir "odd, %name# & ü 😀"');
  await smb(`put ${local}/small a/small.txt; put ${local}/multi a/b/multi.bin; put ${local}/small "odd, %name# & ü 😀/x y.txt"`);
  await smb(`put ${local}/small a/b/multi.bin`); // overwrite, smaller
  await smb('rename a/small.txt a/renamed.txt; mkdir gone; rmdir gone');
  await smb('rename a/b a/c; del a/renamed.txt');
  // An Office-style save: write a temp file, move the original away, move the temp in, delete the backup.
  await smb(`put ${local}/doc1 report.docx`);
  await smb(`put ${local}/doc2 ~WRL0001.tmp; rename report.docx ~WRL0002.tmp; rename ~WRL0001.tmp report.docx; del ~WRL0002.tmp`);
  await drained();
  const diffs = await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true });
  assert.deepEqual(diffs, []);
  const listed = (await site.call<Array<{ path: string }>>('object.list', { bucket: SHARE })).map((o) => o.path);
  assert.ok(listed.includes('report.docx') && listed.includes('a/c/multi.bin') && !listed.includes('a/b'), listed.join(', '));
});

test('nothing readable at rest: a text file replicated through SMB leaves neither its words nor its name in the site\'s data directory', async () => {
  const marker = 'WombatMarker4471';
  await writeFile(join(local, 'marked'), `${marker}: minutes of the meeting\n`.repeat(400));
  await smb(`mkdir ${marker}-minutes; put ${local}/marked ${marker}-minutes/${marker}.txt`);
  await drained();
  assert.deepEqual(await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true }), []);
  const walk = (dir: string): string[] => readdirSync(dir, { withFileTypes: true })
    .flatMap((e) => e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]);
  const files = walk(dr.dataDir);
  assert.ok(files.length > 0);
  // Read as the site has them now (the index's write-ahead log included).
  for (const f of files) assert.equal(readFileSync(f).indexOf(marker), -1, `${marker} is readable in ${f}`);
});

test('changing 1 byte in the middle of a 256 MiB file sends at most 2 blocks to the site', async () => {
  const big = join(local, 'big.bin');
  await writeFile(big, randomBytes(256 << 20));
  await smb(`put ${big} big.bin`);
  await drained();
  assert.deepEqual(await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true }), []);
  const before = blockFiles();
  await smbcWrite(smbd.port, SHARE, 'big.bin', 128 << 20, Buffer.from([0x5a]));
  await drained();
  const sent = blockFiles() - before;
  assert.ok(sent >= 1 && sent <= 2, `${sent} new blocks at the site`);
  assert.deepEqual(await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true }), []);
});

test('DOS attributes and a stream reach the site as xattrs, a metadata-only change is a new version, and restore puts them back', async () => {
  await writeFile(join(local, 'meta'), 'metadata carrier');
  await writeFile(join(local, 'stream'), 'alternate data stream');
  await smb(`put ${local}/meta meta.txt; put ${local}/stream meta.txt:extra; setmode meta.txt +h`);
  await drained();
  const src = join(smbd.sharePath(SHARE), 'meta.txt');
  const xattrs = await xattrsOf(src);
  assert.ok(xattrs, 'the source file has xattrs');
  for (const n of ['user.DOSATTRIB', 'user.DosStream.extra:$DATA']) assert.ok(n in xattrs, `${n} in ${Object.keys(xattrs).join(', ')}`);
  const head = await site.call<{ meta: { xattrs?: Record<string, string> } }>('object.stat', { bucket: SHARE, path: 'meta.txt' });
  assert.deepEqual(head.meta.xattrs, xattrs);
  assert.deepEqual(await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true }), []);
  // A metadata-only change (hidden off) is a new version with the new DOS attributes.
  await smb('setmode meta.txt -h');
  await drained();
  const after = await site.call<{ meta: { xattrs?: Record<string, string> } }>('object.stat', { bucket: SHARE, path: 'meta.txt' });
  assert.notEqual(after.meta.xattrs?.['user.DOSATTRIB'], xattrs['user.DOSATTRIB']);
  assert.deepEqual(after.meta.xattrs, await xattrsOf(src));
  const dest = join(local, 'restore-meta');
  const res = await cli(['restore', SHARE, dest, '--json']);
  assert.equal(res.code, 0, res.stdout + res.stderr);
  assert.deepEqual(JSON.parse(res.stdout).warnings, []);
  assert.deepEqual(await xattrsOf(join(dest, 'meta.txt')), await xattrsOf(src));
  await rm(dest, { recursive: true, force: true });
});

test('a file rewritten with the same size and then given its old write time (as copy tools and ransomware do) is replicated with its new content', async () => {
  const a = join(local, 'same-a');
  const b = join(local, 'same-b');
  // Larger than the replicator's small files (read whole in bulk): these go the one-by-one way.
  await writeFile(a, randomBytes(3 << 20));
  await writeFile(b, randomBytes(3 << 20));
  const when = 'utimes same.bin -1 -1 2024:05:06-07:08:09 -1';
  await smb(`put ${a} same.bin; ${when}`);
  await drained();
  const head = () => site.call<{ size: number; meta: { mtimeNs: string } }>('object.stat', { bucket: SHARE, path: 'same.bin' });
  const first = await head();
  // Same size, same write time, other bytes: only reading them can tell. The
  // replicator is paused meanwhile, so it first looks when both are done.
  const rpid = svc.replicatorPid as number;
  process.kill(rpid, 'SIGSTOP');
  try {
    await smb(`put ${b} same.bin; ${when}`);
  } finally {
    process.kill(rpid, 'SIGCONT');
  }
  await drained();
  const second = await head();
  assert.equal(second.size, first.size);
  assert.equal(second.meta.mtimeNs, first.meta.mtimeNs, 'the site saw the same size and write time both times');
  assert.deepEqual(await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true }), []);
});

test('a write whose file was then replaced by an Office-style save (a new file renamed over it) is replicated as the new file, whether its size changed or not', async () => {
  // Larger than the replicator's small files: these take the dirty-range way.
  const sizes = { shrunk: [3 << 20, 1 << 20], same: [3 << 20, 3 << 20] };
  for (const [tag, [oldSize, newSize]] of Object.entries(sizes)) {
    const old = join(local, `office-${tag}-old`);
    const next = join(local, `office-${tag}-new`);
    await writeFile(old, randomBytes(oldSize));
    await writeFile(next, randomBytes(newSize));
    await smb(`mkdir office-${tag}; put ${old} office-${tag}/doc.bin`);
    await drained();
    // The replicator first looks when all is done: the write's ranges are
    // then those of a file no longer at the name.
    const rpid = svc.replicatorPid as number;
    process.kill(rpid, 'SIGSTOP');
    try {
      const at = tag === 'same' ? oldSize >> 1 : oldSize - 100;
      await smbcWrite(smbd.port, SHARE, `office-${tag}/doc.bin`, at, randomBytes(tag === 'same' ? 10 : 5000));
      await smb(`put ${next} office-${tag}/~WRL1.tmp; rename office-${tag}/doc.bin office-${tag}/~WRL2.tmp; `
        + `rename office-${tag}/~WRL1.tmp office-${tag}/doc.bin; del office-${tag}/~WRL2.tmp`);
    } finally {
      process.kill(rpid, 'SIGCONT');
    }
    await drained();
    assert.deepEqual(await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true }), [], tag);
  }
});

test('a stream renamed through SMB (SetInfo rename to ":new", as Windows does) is replicated as the same stream under its new name', async () => {
  await writeFile(join(local, 'sdata'), 'a stream to be renamed');
  await smb(`put /etc/hostname streamy.txt; put ${local}/sdata streamy.txt:before`);
  await drained();
  const r = spawnSync('/usr/bin/python3', [join(REPO, 'test/helpers/smb_rename.py'), String(smbd.port), SHARE, SMB_USER, SMB_PASS, 'streamy.txt:before', ':after'], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stdout + r.stderr);
  const src = join(smbd.sharePath(SHARE), 'streamy.txt');
  const xattrs = (await xattrsOf(src)) ?? {};
  assert.ok('user.DosStream.after:$DATA' in xattrs && !('user.DosStream.before:$DATA' in xattrs), Object.keys(xattrs).join(', '));
  // Only a report of the rename makes the replicator look at the file again.
  await drained();
  const head = await site.call<{ meta: { xattrs?: Record<string, string> } }>('object.stat', { bucket: SHARE, path: 'streamy.txt' });
  assert.deepEqual(head.meta.xattrs, xattrs);
  assert.equal(Buffer.from(head.meta.xattrs?.['user.DosStream.after:$DATA'] ?? '', 'base64').toString('latin1').replace(/\0+$/, ''), 'a stream to be renamed');
});

test('names with odd characters replicate intact', async () => {
  const names = ['comma, and % and #.txt', 'Ünïcödé 日本語.txt', 'emoji 😀🎉.txt', `${'y'.repeat(236)}.txt`];
  for (const n of names) await smb(`put /etc/hostname ${q(n)}`);
  await drained();
  const listed = new Set((await site.call<Array<{ path: string }>>('object.list', { bucket: SHARE })).map((o) => o.path));
  for (const n of names) assert.ok(listed.has(n), n);
  assert.deepEqual(await verifyShare(site, SHARE, smbd.sharePath(SHARE), { content: true }), []);
});

const cli = (args: string[]) => svc.cli(args);

test('vfsx verify finds drift, vfsx resync repairs it, and vfsx restore rebuilds the share (diff -r) now and --at an earlier time', async () => {
  const root = smbd.sharePath(SHARE);
  let v = await cli(['verify', SHARE, '--source', root, '--json']);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  assert.equal(JSON.parse(v.stdout).identical, true);

  await writeFile(join(root, 'behind-samba.txt'), 'written locally, not through SMB');
  await rm(join(root, 'report.docx'));
  v = await cli(['verify', SHARE, '--source', root, '--json']);
  assert.equal(v.code, 1);
  assert.deepEqual(JSON.parse(v.stdout).differences.map((d: { path: string; what: string }) => `${d.path}: ${d.what}`).sort(),
    ['behind-samba.txt: missing at the DR site', 'report.docx: at the DR site only']);

  const r = await cli(['resync', SHARE, '--source', root, '--json']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(JSON.parse(r.stdout).deleted, 1);
  const again = await cli(['verify', SHARE, '--source', root]);
  assert.equal(again.code, 0, again.stdout + again.stderr);

  const dest = join(local, 'restored');
  const res = await cli(['restore', SHARE, dest, '--json']);
  assert.equal(res.code, 0, res.stdout + res.stderr);
  const diff = spawnSync('diff', ['-r', root, dest], { encoding: 'utf8' });
  assert.equal(diff.status, 0, diff.stdout + diff.stderr);

  await writeFile(join(local, 'v1'), 'version one');
  await writeFile(join(local, 'v2'), 'version two, longer');
  await smb(`put ${local}/v1 pit.txt`);
  await drained();
  await new Promise((resolve) => setTimeout(resolve, 50));
  const between = Date.now();
  await new Promise((resolve) => setTimeout(resolve, 50));
  await smb(`put ${local}/v2 pit.txt`);
  await drained();
  const old = join(local, 'restored-at');
  const ra = await cli(['restore', SHARE, old, '--at', String(between), '--json']);
  assert.equal(ra.code, 0, ra.stdout + ra.stderr);
  assert.equal(await readFile(join(old, 'pit.txt'), 'utf8'), 'version one');
  assert.equal(await readFile(join(smbd.sharePath(SHARE), 'pit.txt'), 'utf8'), 'version two, longer');
});

test('a random workload of 2,000 SMB operations converges: verify is identical and a restore matches diff -r', async () => {
  await randomWorkload('random');
  await converged('random');
});

test('three vfsx replicate processes share the queue: each does work, one SIGKILLed mid-workload loses nothing, and the site converges', async () => {
  await svc.startReplicator();
  await svc.startReplicator();
  const [, second, third] = svc.replicatorPids;
  try {
    const run = randomWorkload('multi', 3000);
    await new Promise((r) => setTimeout(r, 4000));
    await svc.stopReplicator('SIGKILL', third); // its batch in flight is picked up again by another process
    await run;
    await converged('multi');
    const st = JSON.parse((await svc.cli(['status', '--json'])).stdout) as { site: { replicators: Array<{ pid: number; records: number }> } };
    const alive = st.site.replicators.filter((r) => r.pid === svc.replicatorPid || r.pid === second);
    assert.equal(alive.length, 2, JSON.stringify(st.site.replicators));
    for (const r of alive) assert.ok(r.records > 0, `replicator ${r.pid} replicated nothing: ${JSON.stringify(st.site.replicators)}`);
  } finally {
    await svc.stopReplicator('SIGTERM', second);
    await svc.stopReplicator('SIGKILL', third);
  }
});

test('with the DR site stopped for 30 s during a workload and restarted, replication catches up and converges', async () => {
  const run = randomWorkload('sitedown');
  await new Promise((r) => setTimeout(r, 500));
  await dr.stop();
  const downAt = Date.now();
  await run;
  await new Promise((r) => setTimeout(r, Math.max(0, 30000 - (Date.now() - downAt)))); // records fail and back off
  await dr.startServer();
  await reconnect();
  await converged('sitedown');
});

test('with the DR site killed (SIGKILL) mid-upload during a workload and restarted, replication converges', async () => {
  const before = blockFiles();
  const run = randomWorkload('sitekill');
  await waitFor('blocks arriving at the site', () => blockFiles() > before + 20, 60000, 5);
  await dr.stop('SIGKILL');
  await run;
  await dr.startServer();
  await reconnect();
  await converged('sitekill');
});

test('with the service killed (SIGKILL) during a workload and restarted, nothing is lost and the site converges', async () => {
  const run = randomWorkload('killed');
  await new Promise((r) => setTimeout(r, 1500));
  await svc.stop('SIGKILL');
  await run; // smbd goes on (fail-open) and spools
  await svc.start();
  await converged('killed');
});

test('with Redis restarted during a workload, the journal and replication recover and converge', async () => {
  const run = randomWorkload('redis');
  await new Promise((r) => setTimeout(r, 1500));
  await redis.stopServer();
  await new Promise((r) => setTimeout(r, 1000));
  await redis.startServer();
  await run;
  await converged('redis');
});
