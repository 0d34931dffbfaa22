/**
 * The encrypted DR repository end to end, with the real `vfsx dr-site` and
 * the real CLI: nothing the site stores reveals contents or names, a wrong
 * passphrase or a tampered pack gives a clear error and no wrong data, keys
 * are managed with `vfsx key`, and a fresh machine restores with only the
 * site's address, a token and the passphrase.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { execFile, execFileSync, spawnSync } from 'node:child_process';
import { appendFile, chmod, lstat, mkdir, open, mkdtemp, readdir, readFile, readlink, rm, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import Database from 'better-sqlite3';
import { after, before, test } from 'node:test';
import { Tree } from '../src/native/tree';
import { restoreShare } from '../src/operator/restore';
import { SiteSync } from '../src/replication/site-sync';
import { verifyShare } from '../src/replication/verify';
import { DrRpcError } from '../src/site-link/dr-client';
import type { SiteClient } from '../src/site-link/site-client';
import { DrSiteHarness } from './helpers/dr-site-harness';
import { VFSX_BIN } from './helpers/service-harness';

const MARKER = 'QuokkaMarker7731';
const PASSPHRASE = 'correct horse battery staple';
let work: string;

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'vfsx-enc-'));
});

after(async () => {
  await rm(work, { recursive: true, force: true });
});

interface Run { code: number; stdout: string; stderr: string }

/** `vfsx ARGS` with a configuration naming only the site, a token and a passphrase file, as on a fresh machine. */
async function vfsx(dr: DrSiteHarness, args: string[], o: { passphraseFile?: string; env?: Record<string, string>; token?: string; encryption?: 'on' | 'off' } = {}): Promise<Run> {
  const cfg = join(work, `cfg-${randomBytes(4).toString('hex')}.json`);
  await writeFile(cfg, JSON.stringify({ replication: {
    siteUrl: dr.url, token: o.token ?? dr.token, passphraseFile: o.passphraseFile ?? dr.passphraseFile, ...(o.encryption ? { encryption: o.encryption } : {}),
  } }));
  return new Promise((resolve) => {
    execFile(process.execPath, [VFSX_BIN, ...args, '--config', cfg], { timeout: 300000, maxBuffer: 16 << 20, env: { ...process.env, VFSX_PASSPHRASE: '', VFSX_NEW_PASSPHRASE: '', ...o.env } },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

/** A share with the marker in text, in names, in a symlink target, in a big compressible file and in binary noise. */
async function makeTree(root: string): Promise<void> {
  await mkdir(join(root, `${MARKER}-dir`, 'deeper'), { recursive: true });
  await writeFile(join(root, `${MARKER}-notes.txt`), `${MARKER} says hello\n`.repeat(50));
  await writeFile(join(root, `${MARKER}-dir`, 'deeper', 'report.csv'), Array.from({ length: 20000 }, (_, i) => `${i},${MARKER},${i * 7}`).join('\n'));
  await writeFile(join(root, 'noise.bin'), Buffer.concat([randomBytes(200000), Buffer.from(MARKER), randomBytes(100000)]));
  await writeFile(join(root, 'empty'), '');
  await symlink(`${MARKER}-notes.txt`, join(root, 'link-to-notes'));
}

async function filesUnder(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) out.push(...await filesUnder(p));
    else out.push(p);
  }
  return out;
}

/**
 * Runs fn once on an encrypted and once on a plaintext repository, each on a
 * site of its own with `bucket` made; `link` is what the site is asked below
 * the sealing (the link's own calls), to watch or alter.
 */
async function eachRepo(bucket: string, fn: (r: { encryptNew: boolean; client: SiteClient; link: SiteClient }) => Promise<void>): Promise<void> {
  for (const encryptNew of [true, false]) {
    const dr = await DrSiteHarness.start();
    const client = await dr.repo({ encryptNew });
    try {
      await client.call('bucket.ensure', { bucket });
      await fn({ encryptNew, client, link: encryptNew ? (client as unknown as { link: SiteClient }).link : client });
    } finally {
      client.close();
      await dr.destroy();
    }
  }
}

/**
 * Records every call made on link (method, params) from now on; `around`
 * may refuse a call or alter its answer (real() makes the call itself).
 */
function watchCalls(link: SiteClient, around: (method: string, params: Record<string, unknown>, real: () => Promise<unknown>) => Promise<unknown> = (_m, _p, real) => real()): Array<[string, Record<string, unknown>]> {
  const realCall = link.call.bind(link);
  const seen: Array<[string, Record<string, unknown>]> = [];
  (link as { call: SiteClient['call'] }).call = async <T>(method: string, params: unknown): Promise<T> => {
    seen.push([method, params as Record<string, unknown>]);
    return (await around(method, params as Record<string, unknown>, () => realCall(method, params))) as T;
  };
  return seen;
}

function diffR(a: string, b: string): void {
  const d = spawnSync('diff', ['-r', '--no-dereference', a, b], { encoding: 'utf8' });
  assert.equal(d.status, 0, d.stdout + d.stderr);
}

test('nothing readable at rest: after a resync, neither the marker in contents nor any file name appears in the site\'s data directory, and a restore matches diff -r', async () => {
  const dr = await DrSiteHarness.start();
  try {
    const src = join(work, 'rest-src');
    await makeTree(src);
    await writeFile(dr.passphraseFile, PASSPHRASE);
    const r = await vfsx(dr, ['resync', 'docs', '--source', src, '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.equal(JSON.parse(r.stdout).objects >= 7, true, r.stdout);
    // The site flushed and closed its packs and index when it stopped.
    await dr.stop();
    const needles = [MARKER, 'report.csv', 'noise.bin', 'link-to-notes', 'deeper'].map((s) => Buffer.from(s));
    const files = await filesUnder(dr.dataDir);
    assert.ok(files.some((f) => f.endsWith('.pack')), `no pack in ${files.join(', ')}`);
    for (const f of files) {
      const bytes = await readFile(f);
      for (const n of needles) assert.equal(bytes.indexOf(n), -1, `${n.toString()} is readable in ${f}`);
    }
    await dr.startServer();
    const dest = join(work, 'rest-restored');
    const res = await vfsx(dr, ['restore', 'docs', dest, '--json']);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    diffR(src, dest);
  } finally {
    await dr.destroy();
  }
});

test('a wrong passphrase gives a clear error and writes nothing; no passphrase at all says how to give one', async () => {
  const dr = await DrSiteHarness.start();
  try {
    const src = join(work, 'wrong-src');
    await makeTree(src);
    await writeFile(dr.passphraseFile, PASSPHRASE);
    assert.equal((await vfsx(dr, ['resync', 'docs', '--source', src])).code, 0);

    const dest = join(work, 'wrong-restored');
    const bad = await vfsx(dr, ['restore', 'docs', dest], { env: { VFSX_PASSPHRASE: 'not the passphrase' } });
    assert.equal(bad.code, 1, bad.stdout + bad.stderr);
    assert.match(bad.stderr, /passphrase/i);
    assert.match(bad.stderr, /VFSX_ERR_REPO_PASSPHRASE/);
    await assert.rejects(readdir(dest), /ENOENT/, 'a wrong passphrase must write nothing');

    const none = await vfsx(dr, ['verify', 'docs', '--source', src], { passphraseFile: join(work, 'no-such-file') });
    assert.equal(none.code, 1, none.stdout + none.stderr);
    assert.match(none.stderr, /passphrase/i);
    assert.doesNotMatch(none.stdout, /identical/);
  } finally {
    await dr.destroy();
  }
});

/** The pack entries of a site's data directory: [file, offset of the entry, stored length]. */
async function packEntriesOf(dataDir: string): Promise<Array<{ file: string; off: number; len: number }>> {
  const out: Array<{ file: string; off: number; len: number }> = [];
  for (const file of (await filesUnder(dataDir)).filter((f) => f.endsWith('.pack'))) {
    const pack = await readFile(file);
    for (let off = 0; off + 44 <= pack.length;) {
      assert.equal(pack.readUInt32BE(off), 0x76786231, `no entry at ${off} of ${file}`);
      const len = pack.readUInt32BE(off + 8);
      out.push({ file, off, len });
      off += 44 + len;
    }
  }
  return out;
}

test('a flipped byte in a stored pack fails authentication: verify --deep names the file, restore reports it failed and never writes its wrong bytes, and the rest restores', async () => {
  const dr = await DrSiteHarness.start();
  try {
    const src = join(work, 'flip-src');
    await mkdir(src);
    // Random bytes: one block each, stored as they are sealed (nothing to compress).
    const a = randomBytes(30000);
    const b = randomBytes(30000);
    await writeFile(join(src, 'a-victim.bin'), a);
    await writeFile(dr.passphraseFile, PASSPHRASE);
    assert.equal((await vfsx(dr, ['resync', 'docs', '--source', src])).code, 0);
    await writeFile(join(src, 'b-victim.bin'), b);
    await writeFile(join(src, 'c-intact.txt'), 'nobody touched me\n');
    assert.equal((await vfsx(dr, ['resync', 'docs', '--source', src])).code, 0);
    await dr.stop();

    const entries = (await packEntriesOf(dr.dataDir)).filter((e) => e.len > 29000);
    assert.equal(entries.length, 2, JSON.stringify(entries));
    // Entry one: a flip the site's own checksum catches (damage at rest).
    // Entry two: a flip with the checksum rewritten to match, as a hostile
    // site would serve it: only the replicator's AES-GCM tag can catch it.
    for (const [i, e] of entries.entries()) {
      const pack = await readFile(e.file);
      assert.equal(pack.readUInt8(e.off + 4), 2 | 4, 'a sealed entry (2) whose checksum is CRC-32 (4)');
      pack[e.off + 44 + Math.floor(e.len / 2)] ^= 0x01;
      if (i === 1) pack.writeUInt32BE(crc32(pack.subarray(e.off + 44, e.off + 44 + e.len)), e.off + 12);
      await writeFile(e.file, pack);
    }
    await dr.startServer();

    const v = await vfsx(dr, ['verify', 'docs', '--source', src, '--deep', '--json']);
    assert.equal(v.code, 1, v.stdout + v.stderr);
    const named = JSON.parse(v.stdout).differences.map((d: { path: string }) => d.path).sort();
    assert.deepEqual(named, ['a-victim.bin', 'b-victim.bin'], v.stdout);

    const dest = join(work, 'flip-restored');
    const res = await vfsx(dr, ['restore', 'docs', dest, '--json']);
    assert.equal(res.code, 1, res.stdout + res.stderr);
    const out = JSON.parse(res.stdout);
    assert.equal(out.complete, false);
    assert.deepEqual(out.failed.map((f: string) => f.split(':')[0]).sort(), ['a-victim.bin', 'b-victim.bin'], res.stdout);
    assert.ok(out.failed.every((f: string) => /damaged|authentic|checksum|hash/i.test(f)), res.stdout);
    const restored = await readdir(dest);
    assert.ok(!restored.includes('a-victim.bin') && !restored.includes('b-victim.bin'), `damaged files were written: ${restored.join(', ')}`);
    assert.equal(await readFile(join(dest, 'c-intact.txt'), 'utf8'), 'nobody touched me\n');
  } finally {
    await dr.destroy();
  }
});

test('sealed entries written with a sha256 checksum (before CRC-32) still restore, and damage in them is still found', async () => {
  const dr = await DrSiteHarness.start();
  try {
    const src = join(work, 'old-sum-src');
    await mkdir(src);
    const a = randomBytes(30000);
    const b = randomBytes(30000);
    await writeFile(join(src, 'a.bin'), a);
    await writeFile(join(src, 'b.bin'), b);
    await writeFile(dr.passphraseFile, PASSPHRASE);
    assert.equal((await vfsx(dr, ['resync', 'docs', '--source', src])).code, 0);
    await dr.stop();
    // Both entries rewritten as the site wrote sealed entries before: flags 2, sha256 of the stored bytes;
    // the index says so too. The second one then gets a flipped byte.
    const entries = (await packEntriesOf(dr.dataDir)).filter((e) => e.len > 29000);
    assert.equal(entries.length, 2, JSON.stringify(entries));
    const db = new Database(join(dr.dataDir, 'meta.sqlite'));
    try {
      for (const [i, e] of entries.entries()) {
        const pack = await readFile(e.file);
        const stored = pack.subarray(e.off + 44, e.off + 44 + e.len);
        pack.writeUInt8(2, e.off + 4);
        createHash('sha256').update(stored).digest().copy(pack, e.off + 12);
        if (i === 1) stored[100] ^= 0x01;
        await writeFile(e.file, pack);
        const changed = db.prepare('UPDATE blocks SET flags = 2 WHERE pack IS NOT NULL AND off = ? AND stored = ? AND flags = 6').run(e.off, e.len).changes;
        assert.equal(changed, 1, 'one index row per entry');
      }
    } finally {
      db.close();
    }
    await dr.startServer();
    const dest = join(work, 'old-sum-restored');
    const res = await vfsx(dr, ['restore', 'docs', dest, '--json']);
    assert.equal(res.code, 1, res.stdout + res.stderr);
    const out = JSON.parse(res.stdout);
    assert.equal(out.failed.length, 1, res.stdout);
    assert.match(out.failed[0], /checksum/, res.stdout);
    const damaged = out.failed[0].split(':')[0];
    const intact = damaged === 'a.bin' ? 'b.bin' : 'a.bin';
    assert.deepEqual(await readFile(join(dest, intact)), intact === 'a.bin' ? a : b);
    assert.ok(!(await readdir(dest)).includes(damaged));
  } finally {
    await dr.destroy();
  }
});

test('vfsx key: add a passphrase, restore with it on a fresh machine (address, read token, passphrase), remove the first; a key cannot remove itself, the last key stays, and only the admin token may manage keys', async () => {
  const scoped = randomBytes(16).toString('hex');
  const reader = randomBytes(16).toString('hex');
  const dr = await DrSiteHarness.start({ tokens: [{ token: scoped, buckets: ['docs'], access: 'write' }, { token: reader, buckets: ['docs'], access: 'read' }] });
  try {
    const src = join(work, 'keys-src');
    await makeTree(src);
    await writeFile(dr.passphraseFile, PASSPHRASE);
    assert.equal((await vfsx(dr, ['resync', 'docs', '--source', src])).code, 0);

    let l = await vfsx(dr, ['key', 'list', '--json']);
    assert.equal(l.code, 0, l.stderr);
    const first = JSON.parse(l.stdout) as Array<{ id: string; label: string }>;
    assert.equal(first.length, 1);

    const second = join(work, 'second-passphrase');
    await writeFile(second, 'a second, different passphrase\n');
    const denied = await vfsx(dr, ['key', 'add', '--new-passphrase-file', second], { token: scoped });
    assert.equal(denied.code, 1);
    assert.match(denied.stderr, /only the admin token may/);

    const add = await vfsx(dr, ['key', 'add', '--new-passphrase-file', second, '--label', 'ops laptop', '--json']);
    assert.equal(add.code, 0, add.stdout + add.stderr);
    const added = JSON.parse(add.stdout) as { id: string; label: string };
    assert.equal(added.label, 'ops laptop');
    l = await vfsx(dr, ['key', 'list', '--json']);
    assert.deepEqual((JSON.parse(l.stdout) as Array<{ id: string }>).map((k) => k.id).sort(), [first[0].id, added.id].sort());

    const own = await vfsx(dr, ['key', 'remove', first[0].id]);
    assert.equal(own.code, 1);
    assert.match(own.stderr, /the one your passphrase opens/);

    const rm1 = await vfsx(dr, ['key', 'remove', first[0].id], { passphraseFile: second });
    assert.equal(rm1.code, 0, rm1.stdout + rm1.stderr);
    const old = await vfsx(dr, ['restore', 'docs', join(work, 'keys-old')]);
    assert.equal(old.code, 1, 'the removed passphrase must no longer open the repository');
    assert.match(old.stderr, /VFSX_ERR_REPO_PASSPHRASE/);

    // A fresh machine: the site's address, a read token and the passphrase (in the environment, no file).
    const dest = join(work, 'keys-restored');
    const res = await vfsx(dr, ['restore', 'docs', dest], { token: reader, passphraseFile: join(work, 'nothing-here'), env: { VFSX_PASSPHRASE: 'a second, different passphrase' } });
    assert.equal(res.code, 0, res.stdout + res.stderr);
    diffR(src, dest);

    // The last key cannot go: the site refuses even the admin, whoever asks.
    const last = await vfsx(dr, ['key', 'remove', added.id], { passphraseFile: second });
    assert.equal(last.code, 1);
    const client = await dr.client();
    try {
      await assert.rejects(client.call('repo.keyRemove', { id: added.id }), /last key/);
    } finally {
      client.close();
    }
    l = await vfsx(dr, ['key', 'list', '--json']);
    assert.equal(JSON.parse(l.stdout).length, 1);
  } finally {
    await dr.destroy();
  }
});

test('restore and verify --deep with --bwlimit read at most the limit from the site and still restore byte for byte; a limit that does not parse is refused', async () => {
  const dr = await DrSiteHarness.start();
  try {
    const src = join(work, 'bw-src');
    await mkdir(join(src, 'd'), { recursive: true });
    // 6 MiB that neither compresses nor deduplicates.
    for (let i = 0; i < 3; i++) await writeFile(join(src, 'd', `f${i}.bin`), randomBytes(2 << 20));
    await writeFile(join(src, 'small.txt'), 'small');
    await writeFile(dr.passphraseFile, PASSPHRASE);
    assert.equal((await vfsx(dr, ['resync', 'docs', '--source', src])).code, 0);

    const timed = async (args: string[]) => {
      const t0 = Date.now();
      const r = await vfsx(dr, args);
      return { ...r, ms: Date.now() - t0 };
    };
    const free = await timed(['restore', 'docs', join(work, 'bw-free')]);
    assert.equal(free.code, 0, free.stdout + free.stderr);
    // At 2 MiB/s, 6 MiB cannot arrive in less than about 3 s (a tenth of a second's burst aside).
    const limited = await timed(['restore', 'docs', join(work, 'bw-limited'), '--bwlimit', '2M', '--json']);
    assert.equal(limited.code, 0, limited.stdout + limited.stderr);
    assert.match(limited.stderr, /bandwidth limit on what is read from the site: 2M/);
    assert.equal(JSON.parse(limited.stdout).bytes, (6 << 20) + 5);
    diffR(src, join(work, 'bw-limited'));
    const deep = await timed(['verify', 'docs', '--source', src, '--deep', '--bwlimit', '2M']);
    assert.equal(deep.code, 0, deep.stdout + deep.stderr);
    process.stdout.write(`# restore of 6 MiB: ${free.ms} ms unlimited, ${limited.ms} ms at 2 MiB/s; verify --deep at 2 MiB/s ${deep.ms} ms\n`);
    assert.ok(limited.ms >= 2800, `restore at 2 MiB/s took ${limited.ms} ms for 6 MiB`);
    assert.ok(deep.ms >= 2800, `verify --deep at 2 MiB/s took ${deep.ms} ms for 6 MiB`);

    const bad = await vfsx(dr, ['restore', 'docs', join(work, 'bw-bad'), '--bwlimit', 'fast']);
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /--bwlimit: .*VFSX_ERR_CONFIG_INVALID/);
    await assert.rejects(readdir(join(work, 'bw-bad')), /ENOENT/, 'a refused limit restores nothing');
  } finally {
    await dr.destroy();
  }
});

test('a plaintext (v1-style) repository stays plaintext: resync with encryption off, then an encrypting client is told rather than mixing, and restore works without a passphrase', async () => {
  const dr = await DrSiteHarness.start();
  try {
    const src = join(work, 'plain-src');
    await makeTree(src);
    const plain = { encryption: 'off' as const, passphraseFile: join(work, 'none') };
    const r = await vfsx(dr, ['resync', 'docs', '--source', src], plain);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    // Not encrypted: the names are readable at the site (the scan the at-rest test relies on finds them).
    const seen = await Promise.all((await filesUnder(dr.dataDir)).map(async (f) => (await readFile(f)).includes('report.csv')));
    assert.ok(seen.includes(true), 'a plaintext repository keeps its names readable');

    // A replicator configured to encrypt finds a plaintext repository with data: it keeps it plaintext and says so.
    const enc = await vfsx(dr, ['resync', 'docs', '--source', src]);
    assert.equal(enc.code, 0, enc.stdout + enc.stderr);
    assert.match(enc.stderr, /not encrypted/i);
    // The site itself refuses sealed metadata in a plaintext repository.
    const client = await dr.client();
    try {
      await client.call('bucket.ensure', { bucket: 'docs' });
      await assert.rejects(client.call('object.commit', { bucket: 'docs', path: 'x', kind: 'file', size: 0, blocks: [], meta: { enc: 'AAAA' } }), /plaintext|not encrypted|enc/i);
    } finally {
      client.close();
    }
    const dest = join(work, 'plain-restored');
    const res = await vfsx(dr, ['restore', 'docs', dest], plain);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    diffR(src, dest);
  } finally {
    await dr.destroy();
  }
});

test("a few bytes changed in place go as a patch commit (the changed blocks and segments only), restore byte for byte, encrypted and plaintext; a site that alters a segment's block list (and, encrypted, the segment list) is refused and nothing is committed; a site without patch commits gets the usual commit", async () => {
  await eachRepo('p', async ({ encryptNew, client, link }) => {
    const src = join(work, `patch-src-${encryptNew}`);
    await mkdir(src, { recursive: true });
    const file = join(src, 'big.bin');
    // 4 KiB blocks: 640 blocks in three segments (256, 256, 128).
    await writeFile(file, randomBytes(640 * 4096 - 1000));
    const stats = { commits: 0, blocksSent: 0, bytesSent: 0 };
    const tree = Tree.open(src);
    const sync = new SiteSync({ site: client, bucket: 'p', tree, blockSize: 4096, stats });
    await sync.syncPath('big.bin');
    let tamper: ((method: string, r: Record<string, unknown>) => void) | null = null;
    let refuse = false;
    const seen = watchCalls(link, async (method, params, real) => {
      if (refuse && method === 'object.stat' && params.segments) throw new DrRpcError(-32602, 'invalid params');
      const r = await real();
      if (tamper && r && typeof r === 'object') tamper(method, r as Record<string, unknown>);
      return r;
    });
    const poke = async (offs: number[]) => {
      const data = await readFile(file);
      for (const o of offs) data[o] ^= 0x5a;
      await writeFile(file, data);
      return offs.map((o): [number, number] => [o, 1]);
    };
    const versions = async () => (await client.call<unknown[]>('object.versions', { bucket: 'p', path: 'big.bin' })).length;

    // Two bytes in segments 1 and 2: two blocks sent, a commit naming segments, two of them spelt out.
    const before = stats.blocksSent;
    await sync.syncPath('big.bin', await poke([300 * 4096 + 7, 600 * 4096]));
    assert.equal(stats.blocksSent - before, 2, 'two changed blocks sent');
    const commit = seen.find(([m]) => m === 'object.commit')?.[1];
    assert.ok(commit && Array.isArray(commit.segments) && commit.blocks === undefined, 'a patch commit names segments, not blocks');
    assert.equal((commit.segments as string[]).length, 3);
    assert.equal((commit.newSegments as string[][]).length, 2);
    assert.ok(!seen.some(([m, p]) => m === 'object.stat' && p.blocks === true), 'the whole block list was never fetched');
    const out = join(work, `patch-out-${encryptNew}`);
    assert.deepEqual((await restoreShare(client, 'p', out)).failed, []);
    assert.deepEqual(await readFile(join(out, 'big.bin')), await readFile(file));

    // A hostile site: a segment's block list with one id swapped, then (encrypted: the list is bound to
    // the sealed metadata; a plaintext repository trusts its site for lists) a segment list with one hash swapped.
    const n = await versions();
    tamper = (method, r) => {
      if (method === 'object.stat' && Array.isArray(r.segmentBlocks)) {
        const l = (r.segmentBlocks as string[][])[0];
        [l[0], l[1]] = [l[1], l[0]];
      }
    };
    await assert.rejects(sync.syncPath('big.bin', await poke([10])), (err: Error & { code?: string }) => err.code === 'VFSX_ERR_DR_BAD_REPLY' && /segment 0/.test(err.message));
    tamper = (method, r) => {
      if (method === 'object.stat' && Array.isArray(r.segments)) (r.segments as string[])[2] = (r.segments as string[])[1];
    };
    if (encryptNew) await assert.rejects(sync.syncPath('big.bin', await poke([11])), (err: Error & { code?: string }) => err.code === 'VFSX_ERR_DR_BAD_REPLY');
    assert.equal(await versions(), n, 'nothing committed from a tampered answer');

    // A site from before patch commits (it refuses the parameter): the usual commit, still only the changed block sent.
    tamper = null;
    refuse = true;
    seen.length = 0;
    const b2 = stats.blocksSent;
    await sync.syncPath('big.bin', await poke([12]));
    assert.equal(stats.blocksSent - b2, 1);
    assert.ok(seen.some(([m, p]) => m === 'object.commit' && Array.isArray(p.blocks)), 'the usual commit with the block list');
    const out2 = join(work, `patch-out2-${encryptNew}`);
    assert.deepEqual((await restoreShare(client, 'p', out2)).failed, []);
    assert.deepEqual(await readFile(join(out2, 'big.bin')), await readFile(file));
    tree.close();
  });
});

test('a file of more blocks than one commit message holds commits by segments (segments.put in pieces, then its segment list), encrypted and plaintext: restore byte for byte, verify --content clean, a later change goes as a patch; a site without segments.put takes the block list; a file past the site\'s limit fails clearly before it is read', async () => {
  await eachRepo('s', async ({ encryptNew, client, link }) => {
    const src = join(work, `seg-src-${encryptNew}`);
    await mkdir(src, { recursive: true });
    const file = join(src, 'image.vhdx');
    // 4 KiB blocks: 2,600 blocks, 11 segments; committed by segments from 1,000 blocks, 4 segments per put.
    await writeFile(file, randomBytes(2600 * 4096 - 123));
    let oldSite = false;
    const seen = watchCalls(link, async (method, _params, real) => {
      if (oldSite && method === 'segments.put') throw new DrRpcError(-32601, 'method not found');
      return real();
    });
    const stats = { commits: 0, blocksSent: 0, bytesSent: 0 };
    const tree = Tree.open(src);
    const sync = new SiteSync({ site: client, bucket: 's', tree, blockSize: 4096, stats, segmented: { from: 1000, perPut: 4 } });
    await sync.syncPath('image.vhdx');
    const puts = seen.filter(([m]) => m === 'segments.put').map(([, p]) => (p.segments as string[][]).length);
    assert.deepEqual(puts, [4, 4, 3], 'eleven segments in three puts');
    const commit = seen.find(([m]) => m === 'object.commit')?.[1];
    assert.ok(commit && Array.isArray(commit.segments) && commit.blocks === undefined && commit.newSegments === undefined, 'the commit names only its segment list');
    assert.equal((commit.segments as string[]).length, 11);
    const out = join(work, `seg-out-${encryptNew}`);
    assert.deepEqual((await restoreShare(client, 's', out)).failed, []);
    assert.deepEqual(await readFile(join(out, 'image.vhdx')), await readFile(file));
    const { verifyTree } = await import('../src/replication/verify');
    assert.deepEqual(await verifyTree(client, 's', tree, { content: true }), []);

    // A byte changed in segment 5: a patch commit over the segmented version, one block sent.
    const data = await readFile(file);
    data[5 * 256 * 4096 + 9] ^= 0xff;
    await writeFile(file, data);
    const b0 = stats.blocksSent;
    seen.length = 0;
    await sync.syncPath('image.vhdx', [[5 * 256 * 4096 + 9, 1]]);
    assert.equal(stats.blocksSent - b0, 1);
    assert.equal((seen.find(([m]) => m === 'object.commit')?.[1].newSegments as unknown[]).length, 1);

    // A site from before segments.put: the block list, as before.
    oldSite = true;
    seen.length = 0;
    data[9] ^= 0xff;
    await writeFile(file, data);
    await sync.syncPath('image.vhdx');
    assert.ok(seen.some(([m, p]) => m === 'object.commit' && Array.isArray(p.blocks) && (p.blocks as string[]).length === 2600), 'the usual commit with the block list');
    const out2 = join(work, `seg-out2-${encryptNew}`);
    assert.deepEqual((await restoreShare(client, 's', out2)).failed, []);
    assert.deepEqual(await readFile(join(out2, 'image.vhdx')), data);

    // Past the limit (a sparse file: nothing to read): refused at once, nothing sent or committed.
    const { MAX_FILE_BLOCKS } = await import('../src/replication/site-sync');
    execFileSync('truncate', ['-s', String((MAX_FILE_BLOCKS + 1) * 4096), join(src, 'huge.img')]);
    const b1 = stats.blocksSent;
    const t0 = Date.now();
    await assert.rejects(sync.syncPath('huge.img'), (err: Error & { code?: string }) => err.code === 'VFSX_ERR_REPL_TOO_LARGE' && /huge\.img: .* blocks of 4096; the DR site takes files of at most 4194304 blocks/.test(err.message));
    assert.ok(Date.now() - t0 < 5000, 'refused before reading 16 GiB');
    assert.equal(stats.blocksSent, b1);
    assert.equal(await client.call('object.stat', { bucket: 's', path: 'huge.img' }), null);
    tree.close();
  });
});

test('a file of many blocks restores a window of segments at a time, each list checked against its segment, from one version even when a new one is committed meanwhile; a site that alters a window\'s list fails that file only', async () => {
  await eachRepo('w', async ({ encryptNew, client, link }) => {
    const src = join(work, `win-src-${encryptNew}`);
    await mkdir(src, { recursive: true });
    // 4 KiB blocks: 2,600 blocks, 11 segments; windows of 4 segments from 1,000 blocks.
    const first = randomBytes(2600 * 4096 - 77);
    await writeFile(join(src, 'big.bin'), first);
    await writeFile(join(src, 'small.txt'), 'small');
    const tree = Tree.open(src);
    const sync = new SiteSync({ site: client, bucket: 'w', tree, blockSize: 4096, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
    await sync.syncTree('');
    const realCall = link.call.bind(link);
    const stats: Array<Record<string, unknown>> = [];
    let onStat: ((n: number, r: Record<string, unknown>) => Promise<void>) | null = null;
    let syncing = false;
    (link as { call: SiteClient['call'] }).call = async <T>(method: string, params: unknown): Promise<T> => {
      const r = await realCall<T>(method, params);
      if (method === 'object.stat' && !syncing) {
        stats.push(params as Record<string, unknown>);
        if (onStat && r) await onStat(stats.length, r as Record<string, unknown>);
      }
      return r;
    };
    const windowed = { from: 1000, segments: 4 };
    // A new version committed after the first window: the restore finishes the version it started.
    onStat = async (n) => {
      if (n !== 1) return;
      onStat = null;
      syncing = true;
      await writeFile(join(src, 'big.bin'), randomBytes(2600 * 4096));
      await sync.syncPath('big.bin');
      syncing = false;
    };
    const out = join(work, `win-out-${encryptNew}`);
    const p = await restoreShare(client, 'w', out, { windowed });
    assert.deepEqual(p.failed, []);
    assert.deepEqual(await readFile(join(out, 'big.bin')), first, 'the version the restore started with');
    assert.deepEqual(stats.map((x) => (x.segments as number[] | undefined)?.join(',')), ['0,1,2,3', '4,5,6,7', '8,9,10'], 'three windows, never the whole list');
    assert.ok(stats.slice(1).every((x) => typeof x.at === 'number'), 'the later windows ask for that version by its time');

    // A site that swaps two ids in the second window's list: that file fails, nothing of it is left, the rest restores.
    stats.length = 0;
    onStat = async (n, r) => {
      if (n === 2 && Array.isArray(r.segmentBlocks)) {
        const l = (r.segmentBlocks as string[][])[1];
        [l[0], l[1]] = [l[1], l[0]];
      }
    };
    const out2 = join(work, `win-out2-${encryptNew}`);
    const q = await restoreShare(client, 'w', out2, { windowed });
    assert.equal(q.failed.length, 1);
    assert.match(q.failed[0], /big\.bin.*segment 5/);
    assert.deepEqual((await readdir(out2)).sort(), ['small.txt']);
    tree.close();
  });
});

/** Every name below dir as hex bytes (the kernel's names, not what a decoder makes of them), with each file's contents. */
async function byteTree(dir: string | Buffer, rel = ''): Promise<string[]> {
  const here = Buffer.from(dir);
  const out: string[] = [];
  for (const name of await readdir(here, { encoding: 'buffer' })) {
    const p = Buffer.concat([here, Buffer.from('/'), name]);
    const relName = rel ? `${rel}/${name.toString('hex')}` : name.toString('hex');
    const st = await lstat(p);
    if (st.isDirectory()) out.push(`${relName}/`, ...await byteTree(p, relName));
    else if (st.isSymbolicLink()) out.push(`${relName} -> ${(await readlink(p, { encoding: 'buffer' })).toString('hex')}`);
    else out.push(`${relName} = ${(await readFile(p)).toString('hex')}`);
  }
  return out.sort();
}

test('names that are not UTF-8 (a share kept in Latin-1, a local user\'s odd bytes): an encrypted repository resyncs, verifies and restores them byte for byte; a plaintext one syncs the rest and names what it left out', async () => {
  const src = join(work, 'latin-src');
  const at = (...parts: Array<string | Buffer>) => Buffer.concat(parts.map((p) => (typeof p === 'string' ? Buffer.from(p) : p)));
  const latin = (s: string) => Buffer.from(s, 'latin1');
  await mkdir(src);
  await mkdir(at(src, '/', latin('Übung')));
  await writeFile(at(src, '/', latin('Übung'), '/', latin('résumé.txt')), 'cv');
  await writeFile(at(src, '/', latin('café.txt')), 'latin-1 name');
  await writeFile(join(src, 'café.txt'), 'the same name in UTF-8: another file');
  await writeFile(at(src, '/', Buffer.from([0x66, 0xff, 0xfe, 0xed, 0xa0, 0x80])), 'bytes no decoder takes');
  await symlink(at(latin('caf\xe9'), '.txt'), at(src, '/', latin('lien-vers-café')));
  await writeFile(join(src, 'plain.txt'), 'plain');
  const want = await byteTree(src);
  assert.ok(want.some((l) => l.startsWith(latin('café.txt').toString('hex'))), want.join('\n'));

  const enc = await DrSiteHarness.start();
  try {
    await writeFile(enc.passphraseFile, PASSPHRASE);
    const r = await vfsx(enc, ['resync', 'docs', '--source', src, '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const v = await vfsx(enc, ['verify', 'docs', '--source', src, '--content', '--json']);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    const dest = join(work, 'latin-restored');
    const res = await vfsx(enc, ['restore', 'docs', dest, '--json']);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    assert.deepEqual(await byteTree(dest), want);
    diffR(src, dest);
  } finally {
    await enc.destroy();
  }

  const plainSite = await DrSiteHarness.start();
  try {
    const plain = { encryption: 'off' as const, passphraseFile: join(work, 'none') };
    // And a file too large for the site (sparse, 300 GiB at 64 KiB blocks): left out too, the rest synced.
    await writeFile(join(src, 'huge.img'), '');
    await truncate(join(src, 'huge.img'), 300 * 2 ** 30);
    const r = await vfsx(plainSite, ['resync', 'docs', '--source', src, '--json'], plain);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /5 path\(s\) left out.*not UTF-8: a plaintext repository holds UTF-8 names only/);
    const leftOut = new Map((JSON.parse(r.stdout).leftOut as Array<{ path: string; why: string }>).map((x) => [x.path, x.why]));
    assert.deepEqual([...leftOut.keys()].sort(), ['caf\udce9.txt', 'f\udcff\udcfe\udced\udca0\udc80', 'huge.img', 'lien-vers-caf\udce9', '\udcdcbung'].sort());
    for (const [p, why] of leftOut) assert.match(why, p === 'huge.img' ? /takes files of at most 4194304 blocks/ : /^not UTF-8: a plaintext repository/, p);
    // The site itself never stores another name in place of one it cannot hold.
    const client = await plainSite.client();
    try {
      await assert.rejects(client.call('object.commit', { bucket: 'docs', path: 'caf\udce9', kind: 'dir', meta: {} }), /not UTF-8/);
      await assert.rejects(client.call('object.commit', { bucket: 'docs', path: 'ln', kind: 'symlink', target: 'caf\udce9', meta: {} }), /not UTF-8/);
    } finally {
      client.close();
    }
    const v = await vfsx(plainSite, ['verify', 'docs', '--source', src, '--json'], plain);
    assert.equal(v.code, 1, v.stdout + v.stderr);
    const missing = JSON.parse(v.stdout).differences.map((d: { path: string; what: string }) => `${d.path}: ${d.what}`).sort();
    assert.deepEqual(missing, ['caf\udce9.txt', 'f\udcff\udcfe\udced\udca0\udc80', 'huge.img', 'lien-vers-caf\udce9', '\udcdcbung', '\udcdcbung/r\udce9sum\udce9.txt'].map((p) => `${p}: missing at the DR site`).sort());
    const dest = join(work, 'latin-plain-restored');
    const res = await vfsx(plainSite, ['restore', 'docs', dest], plain);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    assert.deepEqual(await byteTree(dest), want.filter((l) => /^(?:636166c3a92e747874|706c61696e2e747874) /.test(l)));
  } finally {
    await plainSite.destroy();
  }
});

test('verify names every kind of difference (type, mode, mtime, size, xattrs, symlink target, content, missing, site only) from a pass that keeps only digests of the listing, encrypted and plaintext; the site listed a page at a time', async () => {
  await eachRepo('v', async ({ encryptNew, client, link }) => {
    const src = join(work, `verify-src-${encryptNew}`);
    await mkdir(join(src, 'dir'), { recursive: true });
    for (const n of ['same.txt', 'mode.txt', 'mtime.txt', 'size.txt', 'xattr.txt', 'content.txt', 'gone.txt', 'dir/inner.txt', 'type']) {
      await writeFile(join(src, n), `${n} `.repeat(100));
    }
    await symlink('same.txt', join(src, 'link'));
    const tree = Tree.open(src);
    try {
      await new SiteSync({ site: client, bucket: 'v', tree, blockSize: 4096, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } }).syncTree('');
      assert.deepEqual(await verifyShare(client, 'v', src, { content: true }), []);
      // Listed a page at a time: verify holds no joined listing.
      const pages: number[] = [];
      const realList = link.list.bind(link);
      (link as { list: SiteClient['list'] }).list = (params, onPage) => realList(params, (objects) => {
        pages.push(objects.length);
        return onPage(objects);
      });
      await chmod(join(src, 'mode.txt'), 0o600);
      await utimes(join(src, 'mtime.txt'), 1_000_000, 1_000_000);
      await writeFile(join(src, 'size.txt'), 'longer now '.repeat(100));
      tree.setXattr('xattr.txt', 'user.added', Buffer.from('x'));
      await rm(join(src, 'link'));
      await symlink('mode.txt', join(src, 'link'));
      await rm(join(src, 'type'));
      await mkdir(join(src, 'type'));
      const before = await lstat(join(src, 'content.txt'), { bigint: true });
      await writeFile(join(src, 'content.txt'), 'CONTENT.TXT '.repeat(100).slice(0, Number(before.size)));
      tree.utimes('content.txt', String(before.mtimeNs)); // same size and mtime: only the content differs
      await rm(join(src, 'gone.txt'));
      await writeFile(join(src, 'dir', 'new.txt'), 'new');
      const got = (await verifyShare(client, 'v', src, { content: true })).map((d) => `${d.path}: ${d.what}`);
      assert.ok(pages.length > 0, 'listed through list()');
      const expected = [
        /^content\.txt: content differs$/, /^dir\/new\.txt: missing at the DR site$/, /^link: symlink target$/,
        /^mode\.txt: mode: source 600, site 644$/, /^mtime\.txt: mtime: source 1000000000000000, site \d+$/, /^size\.txt: mtime: source \d+, site \d+$/,
        /^size\.txt: size: source 1100, site 900$/, /^type: type: source dir, site file$/, /^xattr\.txt: xattrs differ: user\.added$/,
        /^gone\.txt: at the DR site only$/, // what the site has and the source does not comes last
      ];
      assert.equal(got.length, expected.length, got.join('\n'));
      got.forEach((line, i) => assert.match(line, expected[i], got.join('\n')));
      // Without content: the same but content.txt.
      const meta = (await verifyShare(client, 'v', src)).map((d) => `${d.path}: ${d.what}`);
      assert.deepEqual(meta, got.filter((l) => !l.startsWith('content.txt')));
    } finally {
      tree.close();
    }
  });
});

test('a large file grown (an append) or changed in metadata only commits its segment list with the touched segments: the head\'s whole block list is never fetched, only the new blocks are read and sent; encrypted and plaintext, restore byte for byte', async () => {
  await eachRepo('g', async ({ encryptNew, client, link }) => {
    const src = join(work, `grow-src-${encryptNew}`);
    await mkdir(src, { recursive: true });
    const file = join(src, 'backup.bak');
    // 4 KiB blocks, and "large" from 512 blocks: 1,000 blocks and a bit, in four segments (the last partial).
    await writeFile(file, randomBytes(1000 * 4096 + 100));
    const stats = { commits: 0, blocksSent: 0, bytesSent: 0 };
    const tree = Tree.open(src);
    const sync = new SiteSync({ site: client, bucket: 'g', tree, blockSize: 4096, stats, wholeListBlocks: 512 });
    await sync.syncPath('backup.bak');
    const seen = watchCalls(link);
    const restored = async (tag: string) => {
      const out = join(work, `grow-out-${encryptNew}-${tag}`);
      assert.deepEqual((await restoreShare(client, 'g', out)).failed, []);
      assert.deepEqual(await readFile(join(out, 'backup.bak')), await readFile(file), tag);
      assert.deepEqual(await verifyShare(client, 'g', src, { content: true }), [], tag);
    };
    const append = async (bytes: number): Promise<Array<[number, number]>> => {
      const off = (await lstat(file)).size;
      await appendFile(file, randomBytes(bytes));
      return [[off, bytes]];
    };
    const commits = () => seen.filter(([m]) => m === 'object.commit').map(([, p]) => p);

    // An append of 300 blocks: the partial last block and the new ones are read; segment 3 (the partial one) is asked for, and nothing else.
    const b0 = stats.blocksSent;
    await sync.syncPath('backup.bak', await append(300 * 4096));
    assert.equal(stats.blocksSent - b0, 301);
    assert.ok(!seen.some(([m, p]) => m === 'object.stat' && p.blocks === true), 'the whole block list was never fetched');
    assert.deepEqual(seen.filter(([m, p]) => m === 'object.stat' && Array.isArray(p.segments)).map(([, p]) => p.segments), [[], [3]]);
    assert.equal(commits().length, 1);
    assert.equal((commits()[0].segments as string[]).length, 6);
    assert.equal((commits()[0].newSegments as string[][]).length, 3, 'segment 3 grown, segments 4 and 5 new');
    await restored('append');

    // Written in place and appended to at once.
    seen.length = 0;
    const fd = await open(file, 'r+');
    await fd.write(randomBytes(10), 0, 10, 5000);
    await fd.close();
    const b1 = stats.blocksSent;
    await sync.syncPath('backup.bak', [[5000, 10], ...await append(5000)]);
    assert.ok(stats.blocksSent - b1 <= 4, `${stats.blocksSent - b1} blocks sent`);
    assert.ok(!seen.some(([m, p]) => m === 'object.stat' && p.blocks === true));
    await restored('write and append');

    // Metadata only (an attribute): no block read or sent, the head's segment list committed with the new metadata.
    seen.length = 0;
    const b2 = stats.blocksSent;
    tree.setXattr('backup.bak', 'user.DOSATTRIB', Buffer.from([0x20, 0]));
    await sync.syncPath('backup.bak');
    assert.equal(stats.blocksSent - b2, 0);
    assert.ok(!seen.some(([m, p]) => m === 'object.stat' && p.blocks === true));
    assert.deepEqual(commits().map((p) => (p.newSegments as unknown[] | undefined)?.length), [0]);
    await restored('metadata');

    // Shrunk: not an append; the whole file is read (still without the head's list) and committed.
    seen.length = 0;
    await truncate(file, 700 * 4096);
    await sync.syncPath('backup.bak', [[0, 0]]);
    assert.ok(!seen.some(([m, p]) => m === 'object.stat' && p.blocks === true));
    await restored('truncated');
    tree.close();
  });
});
