/**
 * The safety net, against real parts: a real `vfsx dr-site` whose metadata
 * store and block files are tampered with on disk (a compromised or damaged
 * DR site), the real `vfsx restore`/`verify`/`resync` commands, a local
 * user racing the replicator by swapping directories and files for
 * symlinks, and scoped tokens refused everything outside their rights.
 */
import assert from 'node:assert/strict';
import { ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { lstat, mkdtemp, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import Database from 'better-sqlite3';
import { packEntries } from './helpers/dr-site-harness';
import { Tree } from '../src/native/tree';
import { blockHash, DrClient, DrRpcError } from '../src/site-link/dr-client';
import { SiteSync } from '../src/replication/site-sync';
import { verifyShare } from '../src/replication/verify';
import { restoreShare } from '../src/operator/restore';
import type { SiteClient } from '../src/site-link/site-client';
import { DrSiteHarness } from './helpers/dr-site-harness';
import { VFSX_BIN } from './helpers/service-harness';

let work: string;
let outside: string;
let site: DrSiteHarness;
const readToken = randomBytes(16).toString('hex');
const writeToken = randomBytes(16).toString('hex');

before(async () => {
  work = await mkdtemp(join(tmpdir(), 'vfsx-sec-'));
  outside = join(work, 'outside');
  mkdirSync(outside);
  site = await DrSiteHarness.start({
    tokens: [
      { token: readToken, buckets: ['docs'], access: 'read' },
      { token: writeToken, buckets: ['docs'], access: 'write' },
    ],
  });
});

after(async () => {
  await site?.destroy();
  await rm(work, { recursive: true, force: true });
});

/** Runs the real vfsx CLI with a config that reaches the site with `token`. */
async function vfsx(args: string[], token = site.token): Promise<{ code: number; stdout: string; stderr: string }> {
  const cfg = join(work, `cli-${token.slice(0, 6)}.json`);
  await writeFile(cfg, JSON.stringify({ replication: { siteUrl: site.url, token } }));
  return new Promise((resolve) => {
    execFile(process.execPath, [VFSX_BIN, ...args, '--config', cfg], { timeout: 120000, maxBuffer: 16 << 20 },
      (err, stdout, stderr) => resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }));
  });
}

async function rpcCode(p: Promise<unknown>): Promise<number> {
  try {
    await p;
  } catch (err) {
    if (err instanceof DrRpcError) return err.code;
    throw err;
  }
  return 0;
}

/** Every file below dir (recursively) whose bytes contain marker, as stored or (pack entries) decompressed. */
function filesContaining(dir: string, marker: Buffer): string[] {
  const out: string[] = [];
  for (const e of readdirSync(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const p = join(e.parentPath ?? (e as unknown as { path: string }).path, e.name);
    const bytes = readFileSync(p);
    if (bytes.includes(marker) || (p.endsWith('.pack') && packEntries(bytes).some((b) => b.includes(marker)))) out.push(p);
  }
  return out;
}

/** Appends a version straight into the site's SQLite store: what a compromised or corrupted site could hold. */
function forgeObject(bucket: string, path: string, kind: string, target: string | null, segments: string[] = [], size = 0): void {
  const db = new Database(join(site.dataDir, 'meta.sqlite'));
  try {
    const id = Number(db.prepare(`INSERT INTO versions (bucket, path, ts, kind, meta, size, block_size, segments, target)
      VALUES (?, ?, ?, ?, '{"mode":420}', ?, 65536, ?, ?)`).run(bucket, path, Date.now(), kind, size, JSON.stringify(segments), target).lastInsertRowid);
    db.prepare('INSERT INTO heads (bucket, path, version) VALUES (?, ?, ?) ON CONFLICT (bucket, path) DO UPDATE SET version = excluded.version').run(bucket, path, id);
  } finally {
    db.close();
  }
}

test('a hostile DR site cannot make restore write outside DEST or restore damaged data; refusals are reported and restore exits 1', async () => {
  const c = await site.client();
  const good = Buffer.from('good content\n');
  const victim = randomBytes(70_000);
  await c.call('bucket.ensure', { bucket: 'hostile' });
  await c.putBlocks([good, victim]);
  await c.call('object.commit', { bucket: 'hostile', path: 'ok.txt', kind: 'file', meta: { mode: 0o640 }, size: good.length, blockSize: 65536, blocks: [blockHash(good)] });
  await c.call('object.commit', { bucket: 'hostile', path: 'victim.bin', kind: 'file', meta: { mode: 0o644 }, size: victim.length, blockSize: 131072, blocks: [blockHash(victim)] });
  await c.call('object.commit', { bucket: 'hostile', path: 'sub', kind: 'dir', meta: { mode: 0o755 } });
  // The site's own checks refuse an object below a symlink or a file...
  await c.call('object.commit', { bucket: 'hostile', path: 'evil', kind: 'symlink', meta: {}, target: outside });
  assert.equal(await rpcCode(c.call('object.commit', { bucket: 'hostile', path: 'evil/owned.txt', kind: 'file', meta: {}, size: good.length, blockSize: 65536, blocks: [blockHash(good)] })), -32006);
  const seg = readSegment('hostile', 'ok.txt');
  c.close();
  // ...so forge them into its store, as a compromised or corrupted site would hold them.
  forgeObject('hostile', 'evil/owned.txt', 'file', null, seg, good.length);
  forgeObject('hostile', 'up', 'symlink', '..');
  forgeObject('hostile', 'up/escaped.txt', 'file', null, seg, good.length);
  forgeObject('hostile', 'sub/file-as-dir', 'file', null, seg, good.length);
  forgeObject('hostile', 'sub/file-as-dir/below.txt', 'file', null, seg, good.length);
  // Bit rot (or an attacker) at the site: one bit of victim.bin's block flipped in its pack.
  const h = blockHash(victim);
  const loc = blockLocation(h);
  const packFile = join(site.dataDir, 'packs', loc.pack.slice(0, 2), `${loc.pack}.pack`);
  const bytes = readFileSync(packFile);
  bytes[loc.off + 44 + 1234] ^= 0x01;
  writeFileSync(packFile, bytes);
  const k = await site.client();
  const refusal = await k.call('blocks.get', { hashes: [h] }).catch((err: Error) => err);
  k.close();
  assert.ok(refusal instanceof DrRpcError && refusal.code === -32008, `the site itself refuses to serve a damaged block: ${String(refusal)}`);
  assert.match(refusal.message, new RegExp(`block ${h} is damaged at the DR site \\(pack ${loc.pack} at ${loc.off}\\)`));

  const dest = join(work, 'restore-hostile');
  const r = await vfsx(['restore', 'hostile', dest, '--json']);
  assert.equal(r.code, 1, r.stdout + r.stderr);
  const out = JSON.parse(r.stdout) as { complete: boolean; refused: string[]; failed: string[] };
  assert.equal(out.complete, false);
  const refusedPaths = out.refused.map((x) => x.split(':')[0]).sort();
  assert.deepEqual(refusedPaths, ['evil/owned.txt', 'sub/file-as-dir/below.txt', 'up/escaped.txt']);
  assert.deepEqual(out.failed.map((x) => x.split(':')[0]), ['victim.bin']);
  // Nothing outside DEST, no damaged file, the rest restored; the symlinks restored as symlinks.
  assert.deepEqual(readdirSync(outside), []);
  assert.ok(!existsSync(join(work, 'escaped.txt')));
  assert.ok(!existsSync(join(dest, 'victim.bin')), 'a file with a damaged block is not written');
  assert.deepEqual(readdirSync(dest).filter((n) => n.startsWith('.vfsx-restore')), [], 'no temp file left behind');
  assert.equal(await readFile(join(dest, 'ok.txt'), 'utf8'), good.toString());
  assert.equal(await readlink(join(dest, 'evil')), outside);
  assert.equal(await readlink(join(dest, 'up')), '..');

  // The same objects listed children first (the site lists parents first; a hostile one need not):
  // the late parents are refused where the children are in the way, and nothing is written through them.
  const rc = await site.client();
  const reversed = Object.create(rc) as SiteClient;
  reversed.list = (params, onPage) => rc.list(params, (objects) => onPage([...objects].reverse()));
  const dest2 = join(work, 'restore-hostile-reversed');
  try {
    const p = await restoreShare(reversed, 'hostile', dest2);
    assert.deepEqual(p.refused.map((x) => x.split(':')[0]).sort(), ['evil', 'sub/file-as-dir', 'up'], p.refused.join('\n'));
    assert.deepEqual(p.failed.map((x) => x.split(':')[0]), ['victim.bin']);
  } finally {
    rc.close();
  }
  assert.deepEqual(readdirSync(outside), []);
  assert.ok(!existsSync(join(work, 'escaped.txt')));
  assert.equal((await lstat(join(dest2, 'evil'))).isDirectory(), true, 'evil stays the directory its child made, not a link');
  assert.equal(await readFile(join(dest2, 'up', 'escaped.txt'), 'utf8'), good.toString(), 'written beneath DEST, not through ..');
  assert.equal(await readFile(join(dest2, 'ok.txt'), 'utf8'), good.toString());

  // verify --deep finds the damaged block at the site.
  const src = join(work, 'hostile-src');
  mkdirSync(src);
  const v = await vfsx(['verify', 'hostile', '--source', src, '--deep', '--json']);
  assert.equal(v.code, 1);
  const diffs = (JSON.parse(v.stdout) as { differences: Array<{ path: string; what: string }> }).differences;
  assert.ok(diffs.some((d) => d.path === 'victim.bin' && d.what.includes(`block ${h}`)), JSON.stringify(diffs));
  // A restore into a non-empty DEST needs --force.
  const again = await vfsx(['restore', 'hostile', dest, '--json']);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /not empty.*--force/);
});

function blockLocation(hash: string): { pack: string; off: number } {
  const db = new Database(join(site.dataDir, 'meta.sqlite'), { readonly: true });
  try {
    return db.prepare('SELECT pack, off FROM blocks WHERE hash = ?').get(hash) as { pack: string; off: number };
  } finally {
    db.close();
  }
}

function readSegment(bucket: string, path: string): string[] {
  const db = new Database(join(site.dataDir, 'meta.sqlite'), { readonly: true });
  try {
    const r = db.prepare('SELECT v.segments FROM heads h JOIN versions v ON v.id = h.version WHERE h.bucket = ? AND h.path = ?').get(bucket, path) as { segments: string };
    return JSON.parse(r.segments) as string[];
  } finally {
    db.close();
  }
}

test('a local user swapping a directory and a file for symlinks to an outside file while the source is read: the outside data never reaches the site', async () => {
  const marker = Buffer.from(`MARKER-${randomBytes(12).toString('hex')}`);
  const secretDir = join(work, 'secret');
  mkdirSync(secretDir);
  writeFileSync(join(secretDir, 'data.txt'), Buffer.concat([Buffer.from('outside the share: '), marker]));
  const root = join(work, 'race-share');
  mkdirSync(join(root, 'd'), { recursive: true });
  writeFileSync(join(root, 'd', 'data.txt'), 'inside the share, directory\n');
  writeFileSync(join(root, 'f.txt'), 'inside the share, file\n');
  // The racer: a separate process swapping d <-> symlink to the secret directory and f.txt <-> symlink to the secret file.
  const script = `
    cd ${JSON.stringify(root)}
    while :; do
      mv d d.real; ln -s ${JSON.stringify(secretDir)} d; mv f.txt f.real; ln -s ${JSON.stringify(join(secretDir, 'data.txt'))} f.txt
      rm d; mv d.real d; rm f.txt; mv f.real f.txt
    done`;
  const racer: ChildProcess = spawn('bash', ['-c', script], { stdio: 'ignore' });
  const c = await site.client();
  await c.call('bucket.ensure', { bucket: 'race' });
  const tree = Tree.open(root);
  const sync = new SiteSync({ site: c, bucket: 'race', tree, blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
  let rounds = 0;
  const until = Date.now() + 6000;
  try {
    while (Date.now() < until) {
      for (const rel of ['d/data.txt', 'f.txt', 'd']) {
        await sync.syncPath(rel).catch((err) => {
          if ((err as { code?: string }).code !== 'VFSX_ERR_REPL_TORN') throw err; // torn: retried by the replicator
        });
      }
      await sync.syncTree('').catch((err) => {
        if ((err as { code?: string }).code !== 'VFSX_ERR_REPL_TORN') throw err;
      });
      rounds++;
    }
  } finally {
    racer.kill('SIGKILL');
    await new Promise((r) => racer.once('exit', r));
  }
  assert.ok(rounds >= 5, `${rounds} rounds`);
  // The race really happened: the site saw d both as the directory and as the swapped-in symlink.
  const kinds = new Set((await c.call<Array<{ kind: string }>>('object.versions', { bucket: 'race', path: 'd' })).map((v) => v.kind));
  assert.ok(kinds.has('dir') && kinds.has('symlink'), [...kinds].join(', '));
  assert.deepEqual(filesContaining(site.dataDir, marker), [], 'the outside file reached the site');
  // Leave both swapped for symlinks: a resync replicates them as symlinks and verify agrees, without reading the target.
  for (const n of ['d', 'd.real', 'f.txt', 'f.real']) await rm(join(root, n), { recursive: true, force: true });
  symlinkSync(secretDir, join(root, 'd'));
  symlinkSync(join(secretDir, 'data.txt'), join(root, 'f.txt'));
  const rs = await vfsx(['resync', 'race', '--source', root, '--json']);
  assert.equal(rs.code, 0, rs.stdout + rs.stderr);
  const v = await vfsx(['verify', 'race', '--source', root, '--content', '--json']);
  assert.equal(v.code, 0, v.stdout + v.stderr);
  const heads = await c.call<Array<{ path: string; kind: string; target: string | null }>>('object.list', { bucket: 'race' });
  assert.deepEqual(heads.map((o) => [o.path, o.kind, o.target]), [['d', 'symlink', secretDir], ['f.txt', 'symlink', join(secretDir, 'data.txt')]]);
  assert.deepEqual(filesContaining(site.dataDir, marker), []);
  tree.close();
  c.close();
});

test('a directory replaced by a file and a file by a directory converge, whatever order the records come in', async () => {
  const root = join(work, 'kind-share');
  mkdirSync(join(root, 'x'), { recursive: true });
  writeFileSync(join(root, 'x', 'a.txt'), 'a');
  writeFileSync(join(root, 'y'), 'y was a file');
  const c = await site.client();
  await c.call('bucket.ensure', { bucket: 'kinds' });
  const tree = Tree.open(root);
  const sync = new SiteSync({ site: c, bucket: 'kinds', tree, blockSize: 65536, stats: { commits: 0, blocksSent: 0, bytesSent: 0 } });
  try {
    await sync.syncTree('');
    // x: directory -> file; y: file -> directory with a file in it.
    await rm(join(root, 'x'), { recursive: true });
    writeFileSync(join(root, 'x'), 'x is a file now');
    await rm(join(root, 'y'));
    mkdirSync(join(root, 'y'));
    writeFileSync(join(root, 'y', 'b.txt'), 'b');
    // The records of the children first: y/b.txt is refused below the site's file y until y is synced, which SiteSync does itself.
    await sync.syncPath('y/b.txt');
    await sync.syncPath('x');
    await sync.syncPath('x/a.txt');
    assert.deepEqual(await verifyShare(c, 'kinds', root, { content: true }), []);
  } finally {
    tree.close();
    c.close();
  }
});

test('scoped tokens: a read token and a write token are refused every call outside their rights; history survives a write token deleting everything', async () => {
  const admin = await site.client();
  const ro = await site.client(readToken);
  const rw = await site.client(writeToken);
  const data = Buffer.from('precious');
  const other = Buffer.from('in another bucket');
  await admin.call('bucket.ensure', { bucket: 'docs' });
  await admin.call('bucket.ensure', { bucket: 'other' });
  await admin.putBlocks([other]);
  await admin.call('object.commit', { bucket: 'other', path: 'o.txt', kind: 'file', meta: {}, size: other.length, blockSize: 65536, blocks: [blockHash(other)] });
  // The write token replicates into its bucket.
  await rw.putBlocks([data]);
  await rw.call('object.commit', { bucket: 'docs', path: 'p.txt', kind: 'file', meta: { mode: 0o644 }, size: data.length, blockSize: 65536, blocks: [blockHash(data)] });
  // The read token reads its bucket, blocks by the object holding them.
  assert.equal((await ro.call<Array<unknown>>('object.list', { bucket: 'docs' })).length, 1);
  assert.deepEqual(await ro.getBlocks([blockHash(data)], { bucket: 'docs', path: 'p.txt' }), [data]);
  const FORBIDDEN = -32007;
  const commit = { bucket: 'docs', path: 'q.txt', kind: 'dir', meta: {} };
  const refusedForRead: Array<[string, Record<string, unknown>]> = [
    ['bucket.ensure', { bucket: 'docs' }],
    ['object.commit', commit],
    ['object.commitMany', { bucket: 'docs', objects: [{ path: 'q', kind: 'dir', meta: {} }] }],
    ['object.delete', { bucket: 'docs', path: 'p.txt' }],
    ['object.deleteMany', { bucket: 'docs', paths: ['p.txt'] }],
    ['object.move', { bucket: 'docs', from: 'p.txt', to: 'r.txt' }],
    ['blocks.missing', { hashes: [blockHash(other)] }],
    ['segments.put', { segments: [[blockHash(data)]] }],
    ['blocks.get', { hashes: [blockHash(data)] }],
    ['blocks.get', { hashes: [blockHash(other)], bucket: 'docs', path: 'p.txt' }],
    ['blocks.get', { hashes: [blockHash(other)], bucket: 'other', path: 'o.txt' }],
    ['object.list', { bucket: 'other' }],
    ['object.stat', { bucket: 'other', path: 'o.txt' }],
    ['object.versions', { bucket: 'other', path: 'o.txt' }],
  ];
  for (const [m, p] of refusedForRead) assert.equal(await rpcCode(ro.call(m, p)), FORBIDDEN, `read token: ${m} ${JSON.stringify(p)}`);
  assert.equal(await rpcCode(ro.putBlocks([Buffer.from('x')])), FORBIDDEN, 'read token: blocks.put');
  const refusedForWrite: Array<[string, Record<string, unknown>]> = [
    ['bucket.ensure', { bucket: 'other' }],
    ['object.commit', { ...commit, bucket: 'other' }],
    ['object.delete', { bucket: 'other', path: 'o.txt' }],
    ['object.deleteMany', { bucket: 'other', paths: ['o.txt'] }],
    ['object.move', { bucket: 'other', from: 'o.txt', to: 'p.txt' }],
    ['object.list', { bucket: 'other' }],
    ['blocks.get', { hashes: [blockHash(other)] }],
    ['blocks.get', { hashes: [blockHash(other)], bucket: 'docs', path: 'p.txt' }],
    ['blocks.get', { hashes: [blockHash(other)], bucket: 'other', path: 'o.txt' }],
  ];
  for (const [m, p] of refusedForWrite) assert.equal(await rpcCode(rw.call(m, p)), FORBIDDEN, `write token: ${m} ${JSON.stringify(p)}`);
  await assert.rejects(DrClient.connect({ url: site.url, token: 'x'.repeat(32) }), /HTTP 401/);
  // A stolen write token deletes everything it can; a restore --at before that, with the read token, recovers it.
  const before = Date.now();
  await new Promise((r) => setTimeout(r, 20));
  for (const o of await rw.call<Array<{ path: string }>>('object.list', { bucket: 'docs' })) await rw.call('object.delete', { bucket: 'docs', path: o.path });
  assert.deepEqual(await ro.call('object.list', { bucket: 'docs' }), []);
  const dest = join(work, 'restore-at');
  const r = await vfsx(['restore', 'docs', dest, '--at', String(before), '--json'], readToken);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(await readFile(join(dest, 'p.txt'), 'utf8'), 'precious');
  for (const x of [admin, ro, rw]) x.close();
});

test('blocks.get with a span: a scoped token reads a large file\'s blocks by where they are in its list, the site checks only those (a hash outside the span is refused), and a site from before spans is asked without one', async () => {
  const admin = await site.client();
  const ro = await site.client(readToken);
  try {
    await admin.call('bucket.ensure', { bucket: 'docs' });
    // 600 blocks of 512 bytes: three segments.
    const data = Array.from({ length: 600 }, (_, i) => Buffer.alloc(512, i % 251).fill(i >> 8, 0, 1));
    await admin.putBlocks(data);
    const ids = data.map((b) => blockHash(b));
    await admin.call('object.commit', { bucket: 'docs', path: 'spanned.bin', kind: 'file', meta: {}, size: 600 * 512, blockSize: 512, blocks: ids });
    const where = { bucket: 'docs', path: 'spanned.bin' };
    assert.deepEqual(await ro.getBlocks(ids.slice(250, 314), { ...where, span: { first: 250, count: 64 } }), data.slice(250, 314), 'across a segment boundary');
    assert.deepEqual(await ro.getBlocks(ids.slice(590), { ...where, span: { first: 590, count: 100 } }), data.slice(590), 'a span past the end ends with the list');
    assert.equal(await rpcCode(ro.getBlocks([ids[10]], { ...where, span: { first: 250, count: 64 } })), -32007, 'a block of the file, but outside the span');
    assert.deepEqual(await ro.getBlocks([ids[10]], where), [data[10]], 'without a span: the whole list, as before');
  } finally {
    admin.close();
    ro.close();
  }

  // A site that refuses the parameter: the client asks again without it, and from then on.
  const { WebSocketServer } = await import('ws');
  const asked: Array<Record<string, unknown>> = [];
  const block = Buffer.from('old site block');
  const fake = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  fake.on('connection', (sock) => sock.on('message', (d: Buffer) => {
    const q = JSON.parse(d.toString()) as { id: number; params: Record<string, unknown> };
    asked.push(q.params);
    if ('span' in q.params) {
      sock.send(JSON.stringify({ jsonrpc: '2.0', id: q.id, error: { code: -32602, message: 'invalid params' } }));
      return;
    }
    const head = Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: q.id, result: { blocks: [{ hash: blockHash(block), size: block.length }] } }));
    const len = Buffer.alloc(4);
    len.writeUInt32BE(head.length);
    sock.send(Buffer.concat([len, head, block]), { binary: true });
  }));
  await new Promise((r) => fake.once('listening', r));
  const k = await DrClient.connect({ url: `ws://127.0.0.1:${(fake.address() as { port: number }).port}`, token: 't' });
  try {
    const w = { bucket: 'b', path: 'p', span: { first: 0, count: 1 } };
    assert.deepEqual(await k.getBlocks([blockHash(block)], w), [block]);
    assert.deepEqual(await k.getBlocks([blockHash(block)], w), [block]);
    assert.deepEqual(asked.map((x) => 'span' in x), [true, false, false]);
  } finally {
    k.close();
    fake.close();
  }
});
