/**
 * The RestFS DR site, as a real `vfsx dr-site` process over a real
 * WebSocket: versions, content-addressed blocks, idempotent namespace calls,
 * point-in-time reads, and hostile input.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import WebSocket from 'ws';
import Database from 'better-sqlite3';
import { MetaStore, segmentHash, SUBTREE_HEADS } from '../src/dr-site/meta-store';
import { DR_SITE_NODE_FLAGS, HUGE_PAGES_TUNABLE, MALLOC_TUNABLES, mallocTunablesSet, missingNodeFlags, thpMode, wantedTunables, withMallocTunables } from '../src/native/malloc-tunables';
import { blockHash, DrClient, DrRpcError } from '../src/site-link/dr-client';
import { allocWithRoom, claimRoom, putFrameRoom } from '../src/protocol/frame-room';
import { restoreShare } from '../src/operator/restore';
import type { SiteClient } from '../src/site-link/site-client';
import { DrSiteHarness, packEntries } from './helpers/dr-site-harness';
import { VFSX_BIN } from './helpers/service-harness';
import { waitFor } from './helpers/wait-for';

let site: DrSiteHarness;
let c: DrClient;
const B = 'docs';

before(async () => {
  site = await DrSiteHarness.start();
  c = await site.client();
  await c.call('bucket.ensure', { bucket: B });
});

after(async () => {
  c?.close();
  await site?.destroy();
});

/** fn on a MetaStore of its own in a temp directory, with a clock it sets (clock.now, ms); both removed after. */
function withMeta(fn: (m: MetaStore, clock: { now: number }) => void): void {
  const clock = { now: 1000 };
  const dir = mkdtempSync(join(tmpdir(), 'vfsx-meta-'));
  const m = new MetaStore(join(dir, 'm.sqlite'), () => clock.now);
  try {
    fn(m, clock);
  } finally {
    m.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

function packRows(h: DrSiteHarness): Array<{ id: string; bytes: number }> {
  const m = new MetaStore(join(h.dataDir, 'meta.sqlite'));
  try {
    return m.packs();
  } finally {
    m.close();
  }
}

/** The pack files the site process has open (from /proc; a deleted one ends in " (deleted)"). */
function packHandles(h: DrSiteHarness): string[] {
  const dir = `/proc/${h.pid}/fd`;
  return readdirSync(dir).map((fd) => {
    try {
      return readlinkSync(join(dir, fd));
    } catch {
      return ''; // closed meanwhile
    }
  }).filter((f) => /\.pack( \(deleted\))?$/.test(f));
}

function packFiles(h: DrSiteHarness): Array<{ id: string; bytes: Buffer }> {
  return readdirSync(join(h.dataDir, 'packs'), { recursive: true, withFileTypes: true }).filter((d) => d.isFile())
    .map((d) => ({ id: d.name.replace(/\.pack$/, ''), bytes: readFileSync(join(d.parentPath ?? (d as unknown as { path: string }).path, d.name)) }));
}

const rpcError = async (p: Promise<unknown>): Promise<DrRpcError> => {
  try {
    await p;
  } catch (err) {
    if (err instanceof DrRpcError) return err;
    throw err;
  }
  throw new Error('expected a JSON-RPC error');
};

test('a file commits as a version of content-addressed blocks; identical blocks are stored once; a retried commit is harmless', async () => {
  const a = randomBytes(4096);
  const b = randomBytes(4096);
  const hashes = [a, b, a].map(blockHash);
  assert.deepEqual((await c.call<{ missing: string[] }>('blocks.missing', { hashes })).missing, [hashes[0], hashes[1]]);
  assert.equal(await c.putBlocks([a, b]), 2);
  assert.deepEqual((await c.call<{ missing: string[] }>('blocks.missing', { hashes })).missing, []);
  const commit = { bucket: B, path: 'f.bin', kind: 'file', meta: { mode: 0o644, mtimeNs: '1700000000000000000' }, size: 12288, blockSize: 4096, blocks: hashes };
  const v1 = await c.call<{ version: number }>('object.commit', commit);
  const v2 = await c.call<{ version: number }>('object.commit', commit);
  assert.equal(v2.version, v1.version, 'same content and metadata: no new version');
  const st = await c.call<{ blocks: string[]; size: number }>('object.stat', { bucket: B, path: 'f.bin', blocks: true });
  assert.deepEqual(st.blocks, hashes);
  const data = await c.getBlocks(st.blocks);
  assert.deepEqual(Buffer.concat(data), Buffer.concat([a, b, a]));
  assert.equal(site.stats().blocks, 2);
});

test('directories and symlinks commit; move and delete act on whole subtrees and are idempotent', async () => {
  await c.call('object.commit', { bucket: B, path: 'd', kind: 'dir', meta: { mode: 0o755 } });
  await c.call('object.commit', { bucket: B, path: 'd/sub', kind: 'dir', meta: { mode: 0o755 } });
  await c.call('object.commit', { bucket: B, path: 'd/sub/l', kind: 'symlink', meta: {}, target: '../f.bin' });
  assert.deepEqual(await c.call('object.move', { bucket: B, from: 'd', to: 'e' }), { moved: 3 });
  assert.deepEqual(await c.call('object.move', { bucket: B, from: 'd', to: 'e' }), { moved: 0 }, 'retried move');
  const paths = (await c.call<Array<{ path: string }>>('object.list', { bucket: B })).map((o) => o.path);
  assert.deepEqual(paths.filter((p) => p !== 'f.bin'), ['e', 'e/sub', 'e/sub/l']);
  assert.equal((await c.call<{ target: string }>('object.stat', { bucket: B, path: 'e/sub/l' })).target, '../f.bin');
  assert.deepEqual(await c.call('object.delete', { bucket: B, path: 'e' }), { ended: 3 });
  assert.deepEqual(await c.call('object.delete', { bucket: B, path: 'e' }), { ended: 0 }, 'retried delete');
  assert.equal(await c.call('object.stat', { bucket: B, path: 'e/sub' }), null);
  const vs = await c.call<Array<{ kind: string }>>('object.versions', { bucket: B, path: 'e' });
  assert.deepEqual(vs.map((v) => v.kind), ['dir', 'tombstone']);
});

test('object.deleteMany ends several paths (subtrees) in one transaction, checks every path before it deletes any, and is idempotent', async () => {
  await c.call('object.commitMany', { bucket: B, objects: [
    { path: 'dm', kind: 'dir', meta: {} }, { path: 'dm/a', kind: 'dir', meta: {} }, { path: 'dm/a/x', kind: 'symlink', meta: {}, target: 't' },
    { path: 'dm/b', kind: 'symlink', meta: {}, target: 't' }, { path: 'dm/c', kind: 'dir', meta: {} },
  ] });
  const bad = await rpcError(c.call('object.deleteMany', { bucket: B, paths: ['dm/c', '../outside'] }));
  assert.equal(bad.code, -32002, 'invalid path');
  assert.notEqual(await c.call('object.stat', { bucket: B, path: 'dm/c' }), null, 'a refused call deletes nothing');
  assert.deepEqual(await c.call('object.deleteMany', { bucket: B, paths: ['dm/a', 'dm/b', 'dm/none'] }), { ended: [2, 1, 0] });
  assert.deepEqual(await c.call('object.deleteMany', { bucket: B, paths: ['dm/a', 'dm/b'] }), { ended: [0, 0] }, 'retried');
  const left = (await c.call<Array<{ path: string }>>('object.list', { bucket: B, prefix: 'dm' })).map((o) => o.path);
  assert.deepEqual(left, ['dm', 'dm/c']);
});

test('reading at a time between two versions gives the older content', async () => {
  const one = Buffer.from('version one');
  const two = Buffer.from('version two!');
  await c.putBlocks([one, two]);
  await c.call('object.commit', { bucket: B, path: 'pit.txt', kind: 'file', meta: {}, size: one.length, blockSize: 4096, blocks: [blockHash(one)] });
  await new Promise((r) => setTimeout(r, 20));
  const between = Date.now();
  await new Promise((r) => setTimeout(r, 20));
  await c.call('object.commit', { bucket: B, path: 'pit.txt', kind: 'file', meta: {}, size: two.length, blockSize: 4096, blocks: [blockHash(two)] });
  const old = await c.call<{ blocks: string[] }>('object.stat', { bucket: B, path: 'pit.txt', at: between, blocks: true });
  assert.deepEqual(Buffer.concat(await c.getBlocks(old.blocks)), one);
  const now = await c.call<{ blocks: string[] }>('object.stat', { bucket: B, path: 'pit.txt', blocks: true });
  assert.deepEqual(Buffer.concat(await c.getBlocks(now.blocks)), two);
  const listed = await c.call<Array<{ path: string; size: number }>>('object.list', { bucket: B, at: between });
  assert.equal(listed.find((o) => o.path === 'pit.txt')?.size, one.length);
});

test('a commit naming blocks the site lacks is refused with their list', async () => {
  const missing = blockHash(randomBytes(10));
  const e = await rpcError(c.call('object.commit', { bucket: B, path: 'x', kind: 'file', meta: {}, size: 10, blockSize: 4096, blocks: [missing] }));
  assert.equal(e.code, -32001);
  assert.deepEqual((e.data as { missing: string[] }).missing, [missing]);
  assert.equal(await c.call('object.stat', { bucket: B, path: 'x' }), null);
});

function raw(token = site.token): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(site.url, { headers: { authorization: `Bearer ${token}` } });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_q, res) => reject(new Error(`HTTP ${res.statusCode}`)));
    ws.once('error', reject);
  });
}

function exchange(ws: WebSocket, data: string | Buffer): Promise<unknown> {
  return new Promise((resolve) => {
    ws.once('message', (d: Buffer) => resolve(JSON.parse(d.toString())));
    ws.send(data);
  });
}

test('hostile JSON-RPC gets error objects with stable codes and the site keeps serving', async () => {
  const ws = await raw();
  const code = async (data: string | Buffer) => ((await exchange(ws, data)) as { error: { code: number } }).error.code;
  assert.equal(await code('{not json'), -32700);
  assert.equal(await code('42'), -32600);
  assert.equal(await code('[]'), -32600);
  assert.equal(await code(JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'no.such' })), -32601);
  assert.equal(await code(JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'object.stat', params: { bucket: B } })), -32602);
  assert.equal(await code(JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'object.stat', params: { bucket: B, path: 'a', evil: 1 } })), -32602);
  assert.equal(await code(JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'blocks.put', params: { blocks: [] + '' } })), -32602);
  assert.equal(await code(Buffer.from([0, 0, 0, 200, 1, 2])), -32600, 'binary frame with a truncated header');
  const batch = (await exchange(ws, JSON.stringify([
    { jsonrpc: '2.0', id: 5, method: 'bucket.ensure', params: { bucket: B } },
    { jsonrpc: '2.0', id: 6, method: 'nope' },
  ]))) as Array<{ id: number; error?: { code: number } }>;
  assert.deepEqual(batch.map((r) => [r.id, r.error?.code ?? 0]), [[5, 0], [6, -32601]]);
  ws.close();
});

test('path traversal and absolute names are refused and nothing is written outside the bucket', async () => {
  for (const path of ['../escape', '/etc/passwd', 'a/../../b', 'a//b', './a', 'a/.', 'a\u0000b']) {
    const e = await rpcError(c.call('object.commit', { bucket: B, path, kind: 'dir', meta: {} }));
    assert.equal(e.code, -32002, path);
  }
  const e = await rpcError(c.call('object.move', { bucket: B, from: 'f.bin', to: '../../outside' }));
  assert.equal(e.code, -32002);
  assert.equal((await rpcError(c.call('bucket.ensure', { bucket: '../x' }))).code, -32602);
  assert.equal(existsSync(join(site.dataDir, '..', 'escape')), false);
  assert.equal(existsSync(join(site.dir, '..', 'outside')), false);
});

test('a block whose bytes do not match its hash is refused and not stored', async () => {
  const data = randomBytes(100);
  const wrong = blockHash(randomBytes(100));
  const ws = await raw();
  const head = Buffer.from(JSON.stringify({ jsonrpc: '2.0', id: 9, method: 'blocks.put', params: { blocks: [{ hash: wrong, size: 100 }] } }));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(head.length);
  const r = (await exchange(ws, Buffer.concat([len, head, data]))) as { error: { code: number } };
  assert.equal(r.error.code, -32004);
  ws.close();
  assert.deepEqual((await c.call<{ missing: string[] }>('blocks.missing', { hashes: [wrong] })).missing, [wrong]);
});

test('a wrong token is refused at the upgrade and an oversized frame closes only that connection', async () => {
  await assert.rejects(raw('not-the-token-at-all'), /HTTP 401/);
  const ws = await raw();
  const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
  ws.send(Buffer.alloc((16 << 20) + 1));
  assert.equal(await closed, 1009);
  assert.ok(site.alive);
  assert.deepEqual(await c.call('bucket.ensure', { bucket: B }), { bucket: B });
  assert.ok(site.logs.some((l) => l.msg === 'refused client: bad token'));
});

test('a delete, move or listing takes exactly the path and its subtree, found by index searches, not by reading the bucket', () => {
  const dir = mkdtempSync(join(tmpdir(), 'vfsx-meta-'));
  const m = new MetaStore(join(dir, 'm.sqlite'));
  try {
    m.ensureBucket('b');
    // Names that sort between 'a' and 'a/' or just after the subtree: none of them is below 'a'.
    const names = ['a', 'a/x', 'a/x/y', 'a b', 'a!', 'a-1', 'a.txt', 'a0', 'ab', 'az'];
    for (const n of names) m.commit('b', n, { kind: n === 'a' || n === 'a/x' ? 'dir' : 'file', meta: {}, size: 0 });
    assert.deepEqual(m.list('b', undefined, 'a').map((v) => v.path), ['a', 'a/x', 'a/x/y']);
    assert.equal(m.move('b', 'a/x', 'a b2'), 2);
    assert.deepEqual(m.list('b', undefined, 'a b2').map((v) => v.path), ['a b2', 'a b2/y']);
    assert.equal(m.delete('b', 'a'), 1, 'a alone is left of its subtree');
    assert.deepEqual(m.list('b').map((v) => v.path), ['a b', 'a b2', 'a b2/y', 'a!', 'a-1', 'a.txt', 'a0', 'ab', 'az'].sort());
  } finally {
    m.close();
  }
  // What SQLite does with the query: every step an index search by bucket and path, no scan.
  const db = new Database(join(dir, 'm.sqlite'));
  try {
    const plan = (db.prepare(`EXPLAIN QUERY PLAN ${SUBTREE_HEADS}`).all('b', 'x', 'b', 'x/', 'x0') as Array<{ detail: string }>).map((r) => r.detail);
    const onHeads = plan.filter((d) => / h /.test(` ${d} `) || d.includes('heads'));
    assert.equal(onHeads.length, 2, plan.join('; '));
    for (const d of onHeads) assert.match(d, /^SEARCH h USING .*\(bucket=\? AND path(=\?|>\? AND path<\?)\)$/, plan.join('; '));
    assert.ok(!plan.some((d) => d.startsWith('SCAN')), plan.join('; '));
  } finally {
    db.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a listing in pages (MetaStore): pages of any size join to the whole listing, for heads, a subtree and an earlier time, odd names in the site\'s (UTF-8 byte) order', () => {
  withMeta((m, clock) => {
    m.ensureBucket('b');
    // Siblings of the prefix that sort between "p" and "p/" ('-', '.', ' '), names beyond the BMP and at its top.
    const names = ['p', 'p-x', 'p.x', 'p x', 'p/a', 'p/a/b', 'p/é', 'p/😀', 'p/\uffff', 'p/\ufffd', 'q', 'a', 'p0'];
    for (const n of names) m.commit('b', n, { kind: 'dir', meta: {} });
    clock.now = 2000;
    m.delete('b', 'p/a/b');
    m.commit('b', 'p/late', { kind: 'dir', meta: {} });
    const byBytes = (xs: string[]) => [...xs].sort((x, y) => Buffer.compare(Buffer.from(x), Buffer.from(y)));
    for (const [at, prefix] of [[undefined, undefined], [undefined, 'p'], [1500, undefined], [1500, 'p'], [undefined, 'p/a'], [undefined, 'none']] as const) {
      const whole = m.list('b', at, prefix).map((v) => v.path);
      if (prefix === undefined) assert.deepEqual(whole, byBytes(whole), 'the site lists in byte order');
      for (const limit of [1, 2, 3, 7, 100]) {
        const paged: string[] = [];
        let after: string | undefined;
        for (let i = 0; i < 100; i++) {
          const page = m.list('b', at, prefix, { after, limit }).map((v) => v.path);
          assert.ok(page.length <= limit);
          paged.push(...page);
          if (page.length < limit) break;
          after = page[page.length - 1];
        }
        assert.deepEqual(paged, whole, `at ${at} prefix ${prefix} limit ${limit}`);
      }
    }
    assert.deepEqual(m.list('b', undefined, 'p').map((v) => v.path), byBytes(['p', 'p/a', 'p/é', 'p/😀', 'p/\uffff', 'p/\ufffd', 'p/late']));
    assert.ok(m.list('b', 1500, 'p').some((v) => v.path === 'p/a/b'), 'at 1500 p/a/b was there');
  });
});

test('object.list through the client goes in pages of 10,000 and joins them: 25,000 objects whole and in order; a page answers at most limit and the next cursor; a site that does not move forward is refused', async () => {
  const P = 'paged';
  await c.call('bucket.ensure', { bucket: P });
  const paths = Array.from({ length: 25_000 }, (_, i) => `d${String(i).padStart(5, '0')}`);
  for (let i = 0; i < paths.length; i += 512) {
    await c.call('object.commitMany', { bucket: P, objects: paths.slice(i, i + 512).map((path) => ({ path, kind: 'dir', meta: {} })) });
  }
  const all = await c.call<Array<{ path: string }>>('object.list', { bucket: P });
  assert.deepEqual(all.map((o) => o.path), paths);
  const at = await c.call<Array<{ path: string }>>('object.list', { bucket: P, at: Date.now() + 1000 });
  assert.equal(at.length, paths.length);

  // The site's side of a page.
  const ws = await raw();
  try {
    const page = (await exchange(ws, JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'object.list', params: { bucket: P, limit: 3, after: 'd00009' } }))) as { result: { objects: Array<{ path: string }>; next: string | null } };
    assert.deepEqual(page.result.objects.map((o) => o.path), ['d00010', 'd00011', 'd00012']);
    assert.equal(page.result.next, 'd00012');
    const last = (await exchange(ws, JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'object.list', params: { bucket: P, limit: 3, after: 'd24997' } }))) as { result: { objects: Array<{ path: string }>; next: string | null } };
    assert.deepEqual(last.result.objects.map((o) => o.path), ['d24998', 'd24999']);
    assert.equal(last.result.next, null);
    const tooMany = (await exchange(ws, JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'object.list', params: { bucket: P, limit: 100_001 } }))) as { error: { code: number } };
    assert.equal(tooMany.error.code, -32602);
  } finally {
    ws.close();
  }

  // A site from before paging (it refuses the parameters) is listed in one piece, then always so;
  // a site whose pages do not move forward is refused instead of listed forever.
  const asked: Array<Record<string, unknown>> = [];
  const fake = new WebSocket.Server({ host: '127.0.0.1', port: 0 });
  fake.on('connection', (sock) => sock.on('message', (d: Buffer) => {
    const q = JSON.parse(d.toString()) as { id: number; params: Record<string, unknown> };
    asked.push(q.params);
    const reply = q.params.bucket === 'old'
      ? ('limit' in q.params ? { error: { code: -32602, message: 'invalid params: must NOT have additional properties' } } : { result: [{ path: 'x' }, { path: 'y' }] })
      : { result: { objects: [{ path: 'z' }], next: 'm' } };
    sock.send(JSON.stringify({ jsonrpc: '2.0', id: q.id, ...reply }));
  }));
  await new Promise((r) => fake.once('listening', r));
  const k = await DrClient.connect({ url: `ws://127.0.0.1:${(fake.address() as { port: number }).port}`, token: 't' });
  try {
    assert.deepEqual(await k.call('object.list', { bucket: 'old' }), [{ path: 'x' }, { path: 'y' }]);
    assert.deepEqual(await k.call('object.list', { bucket: 'old' }), [{ path: 'x' }, { path: 'y' }]);
    assert.deepEqual(asked.map((x) => 'limit' in x), [true, false, false], 'asked for a page once, then in one piece');
    const k2 = await DrClient.connect({ url: `ws://127.0.0.1:${(fake.address() as { port: number }).port}`, token: 't' });
    try {
      await assert.rejects(k2.call('object.list', { bucket: 'loop' }), (err: Error & { code?: string }) => err.code === 'VFSX_ERR_DR_BAD_REPLY');
    } finally {
      k2.close();
    }
  } finally {
    k.close();
    fake.close();
  }
});

test('segments stored ahead of their commit (segments.put): every block must be there; a commit naming them takes its blocks; one never committed is dropped after the orphan grace, and a block retention freed meanwhile is found missing', () => {
  const h = (c: string) => c.repeat(64);
  const missing = (f: () => unknown): unknown => {
    try {
      f();
    } catch (err) {
      return (err as { code?: string; cause?: unknown }).code === 'VFSX_ERR_DR_MISSING_BLOCKS' ? (err as { cause?: unknown }).cause : err;
    }
    return 'no error';
  };
  withMeta((m, clock) => {
    m.ensureBucket('b');
    for (const x of ['a', 'b', 'c', 'd']) m.addBlock(h(x), 1);
    assert.deepEqual(missing(() => m.putSegments([[h('a'), h('e')]])), [h('e')], 'a segment with a block the site lacks is refused');
    assert.equal(m.putSegments([[h('a'), h('b')], [h('c')]]), 2);
    assert.equal(m.putSegments([[h('a'), h('b')]]), 0, 'idempotent');
    const [s1, s2] = [segmentHash([h('a'), h('b')]), segmentHash([h('c')])];
    // Committed by its segment list alone.
    const v = m.commit('b', 'big', { kind: 'file', meta: {}, size: 3, blockSize: 1, segments: [s1, s2] });
    assert.deepEqual(m.blocksOf(v), [h('a'), h('b'), h('c')]);
    assert.deepEqual(missing(() => m.commit('b', 'other', { kind: 'file', meta: {}, size: 1, blockSize: 1, segments: [segmentHash([h('d')])] })), [], 'a segment neither stored nor given');
    // Stored at 2000, its block an orphan (a stored segment holds no block): retention frees the block; the commit finds it missing.
    clock.now = 2000;
    m.putSegments([[h('d')]]);
    const freed = m.collect(0, 1500);
    assert.deepEqual(freed, [h('d')]);
    m.forgetBlocks(freed);
    const s3 = segmentHash([h('d')]);
    assert.deepEqual(missing(() => m.commit('b', 'd1', { kind: 'file', meta: {}, size: 1, blockSize: 1, segments: [s3] })), [h('d')]);
    m.addBlock(h('d'), 1); // sent again, as the client does on that answer
    assert.deepEqual(m.blocksOf(m.commit('b', 'd1', { kind: 'file', meta: {}, size: 1, blockSize: 1, segments: [s3] })), [h('d')]);
    // One never committed is dropped once older than the orphan cut.
    clock.now = 3000;
    m.putSegments([[h('c'), h('d')]]);
    m.collect(0, 2999);
    assert.equal(m.putSegments([[h('c'), h('d')]]), 0, 'kept while younger than the cut');
    m.collect(0, 3001);
    assert.equal(m.putSegments([[h('c'), h('d')]]), 1, 'dropped once older: stored anew');
    assert.deepEqual(m.blocksOf(m.head('b', 'big') as NonNullable<ReturnType<typeof m.head>>), [h('a'), h('b'), h('c')], 'a committed segment is never dropped');
  });
});

test('retention keeps every block a retained version needs and frees the rest', () => {
  withMeta((m, clock) => {
    m.ensureBucket('b');
    for (const h of ['a', 'b', 'c'].map((x) => x.repeat(64))) m.addBlock(h, 1);
    m.commit('b', 'f', { kind: 'file', meta: {}, size: 1 }, ['a'.repeat(64)]);
    clock.now = 2000;
    m.commit('b', 'f', { kind: 'file', meta: {}, size: 1 }, ['b'.repeat(64)]);
    clock.now = 3000;
    m.commit('b', 'g', { kind: 'file', meta: {}, size: 1 }, ['a'.repeat(64)]);
    clock.now = 4000;
    m.delete('b', 'g');
    clock.now = 10000;
    // Keep what a restore at 2500 or later needs: f's second version; g is gone before 4000 only.
    assert.deepEqual(m.collect(2500, 9000).sort(), ['c'.repeat(64)], 'only the never-used block');
    assert.deepEqual(m.collect(5000, 9000).sort(), ['a'.repeat(64), 'c'.repeat(64)], 'g deleted before 5000: a is free');
    assert.equal(m.at('b', 'f', 2500)?.size, 1);
  });
});

test('the site frees, on its retention timer, blocks that no retained version uses', async () => {
  const gcSite = await DrSiteHarness.start({ retentionMs: 0, gcIntervalMs: 100, orphanGraceMs: 0 });
  const k = await gcSite.client();
  try {
    await k.call('bucket.ensure', { bucket: 'g' });
    const kept = Buffer.from('kept block');
    const orphan = Buffer.from('never committed');
    await k.putBlocks([kept, orphan]);
    // With no grace, retention may free `kept` before the commit names it: the site then answers
    // missing blocks (never a row without its file), and the client sends it again, as the replicator does.
    for (;;) {
      try {
        await k.call('object.commit', { bucket: 'g', path: 'k', kind: 'file', meta: {}, size: kept.length, blockSize: 4096, blocks: [blockHash(kept)] });
        break;
      } catch (err) {
        if (!(err instanceof DrRpcError && err.code === -32001)) throw err;
        await k.putBlocks([kept]);
      }
    }
    await waitFor('the orphan block freed', async () =>
      (await k.call<{ missing: string[] }>('blocks.missing', { hashes: [blockHash(orphan)] })).missing.length === 1);
    assert.deepEqual((await k.call<{ missing: string[] }>('blocks.missing', { hashes: [blockHash(kept)] })).missing, []);
    const st = await k.call<{ blocks: string[] }>('object.stat', { bucket: 'g', path: 'k', blocks: true });
    assert.deepEqual(Buffer.concat(await k.getBlocks(st.blocks)), kept);
    assert.ok(gcSite.logs.some((l) => l.msg === 'retention freed blocks'));
  } finally {
    k.close();
    await gcSite.destroy();
  }
});

test('a DR site killed during an upload restarts with no partial block and no block it claims but lacks', async () => {
  const k = await site.client();
  const blocks = Array.from({ length: 60 }, () => randomBytes(16 * 1024));
  const put = k.putBlocks(blocks).catch(() => 0); // the site dies under it
  await new Promise((r) => setTimeout(r, 5));
  await site.stop('SIGKILL');
  await put;
  k.close();
  await site.startServer();
  c = await site.client();
  // Every pack is as long as its index says (an unindexed tail is cut off) and holds whole entries.
  const indexed = new Map(packRows(site).map((p) => [p.id, p.bytes]));
  const files = packFiles(site);
  assert.deepEqual(files.map((f) => f.id).sort(), [...indexed.keys()].sort(), 'no pack the index does not know');
  for (const f of files) {
    assert.equal(f.bytes.length, indexed.get(f.id), `${f.id} cut back to its indexed length`);
    packEntries(f.bytes); // parses end to end
  }
  const hashes = blocks.map(blockHash);
  const missing = new Set((await c.call<{ missing: string[] }>('blocks.missing', { hashes })).missing);
  const claimed = hashes.filter((h) => !missing.has(h));
  if (claimed.length > 0) assert.deepEqual((await c.getBlocks(claimed)).map(blockHash), claimed, 'every block it claims, it serves');
  // and the upload can simply be retried
  assert.equal(await c.putBlocks(blocks), 60);
  assert.deepEqual((await c.call<{ missing: string[] }>('blocks.missing', { hashes })).missing, []);
});

test('blocks go into a few pack files, zstd-compressed when that saves; one put call concurrent with others shares their flush', async () => {
  const k = await site.client();
  const k2 = await site.client();
  try {
    const before = site.stats();
    const text = (i: number) => Buffer.from(`${i} the quarterly report of the accounts department, with totals. `.repeat(1100)).subarray(0, 65536);
    const compressible = Array.from({ length: 64 }, (_, i) => text(i));
    const random = Array.from({ length: 16 }, () => randomBytes(65536));
    await Promise.all([k.putBlocks(compressible.slice(0, 32)), k2.putBlocks(compressible.slice(32)), k.putBlocks(random)]);
    const after = site.stats();
    assert.equal(after.blocks - before.blocks, 80);
    assert.ok(after.packs - before.packs <= 1, `${after.packs - before.packs} new packs for 80 blocks`);
    const stored = after.packBytes - before.packBytes;
    assert.ok(stored < 16 * 65536 + 64 * 65536 / 4, `stored ${stored} bytes for 80 x 64 KiB (64 of them text)`);
    assert.ok(stored > 16 * 65536, 'random blocks are stored as they are');
    const back = await k.getBlocks([...compressible, ...random].map(blockHash));
    assert.deepEqual(back, [...compressible, ...random]);
  } finally {
    k.close();
    k2.close();
  }
  // And after a restart the same bytes come back.
  await site.stop();
  await site.startServer();
  c = await site.client();
  const one = Buffer.from(`7 the quarterly report of the accounts department, with totals. `.repeat(1100)).subarray(0, 65536);
  assert.deepEqual(await c.getBlocks([blockHash(one)]), [one]);
});

test('object.commitMany commits a batch in one transaction: all or nothing; object.list takes a subtree prefix', async () => {
  const x = randomBytes(1000);
  const y = randomBytes(2000);
  await c.putBlocks([x, y]);
  const meta = { mode: 0o644, mtimeNs: '1700000000000000000' };
  const ok = await c.call<Array<{ path: string; size: number }>>('object.commitMany', {
    bucket: B,
    objects: [
      { path: 'batch/a', kind: 'file', meta, size: 1000, blockSize: 4096, blocks: [blockHash(x)] },
      { path: 'batch/b', kind: 'file', meta, size: 2000, blockSize: 4096, blocks: [blockHash(y)] },
      { path: 'batch/sub', kind: 'dir', meta: { mode: 0o755 } },
    ],
  });
  assert.deepEqual(ok.map((v) => [v.path, v.size]), [['batch/a', 1000], ['batch/b', 2000], ['batch/sub', 0]]);
  const listed = await c.call<Array<{ path: string }>>('object.list', { bucket: B, prefix: 'batch' });
  assert.deepEqual(listed.map((o) => o.path), ['batch/a', 'batch/b', 'batch/sub']);
  assert.deepEqual((await c.call<Array<{ path: string }>>('object.list', { bucket: B, prefix: 'batch/sub' })).map((o) => o.path), ['batch/sub']);

  // One object lacks its block: nothing of the batch is committed.
  const lost = randomBytes(64);
  const e = await rpcError(c.call('object.commitMany', {
    bucket: B,
    objects: [
      { path: 'batch2/ok', kind: 'file', meta, size: 1000, blockSize: 4096, blocks: [blockHash(x)] },
      { path: 'batch2/lacks', kind: 'file', meta, size: 64, blockSize: 4096, blocks: [blockHash(lost)] },
    ],
  }));
  assert.equal(e.code, -32001);
  assert.deepEqual(await c.call('object.list', { bucket: B, prefix: 'batch2' }), []);
  // A bad path anywhere in the batch: an error, nothing written.
  const bad = await rpcError(c.call('object.commitMany', {
    bucket: B, objects: [{ path: 'batch3/fine', kind: 'dir', meta: {} }, { path: '../escape', kind: 'dir', meta: {} }],
  }));
  assert.equal(bad.code, -32002);
  assert.deepEqual(await c.call('object.list', { bucket: B, prefix: 'batch3' }), []);
});

test('nothing is placed below a symlink or a file (-32006); a file committed over a directory ends its subtree; a move into itself is refused', async () => {
  await c.call('object.commit', { bucket: B, path: 'ns', kind: 'dir', meta: {} });
  await c.call('object.commit', { bucket: B, path: 'ns/link', kind: 'symlink', meta: {}, target: '/etc' });
  await c.call('object.commit', { bucket: B, path: 'ns/file', kind: 'file', meta: {}, size: 0, blockSize: 4096, blocks: [] });
  for (const path of ['ns/link/passwd', 'ns/file/below', 'ns/link/a/b']) {
    assert.equal((await rpcError(c.call('object.commit', { bucket: B, path, kind: 'dir', meta: {} }))).code, -32006, path);
  }
  assert.equal((await rpcError(c.call('object.commitMany', { bucket: B, objects: [{ path: 'ns/ok', kind: 'dir', meta: {} }, { path: 'ns/file/x', kind: 'dir', meta: {} }] }))).code, -32006);
  assert.equal(await c.call('object.stat', { bucket: B, path: 'ns/ok' }), null, 'all or nothing');
  assert.equal((await rpcError(c.call('object.move', { bucket: B, from: 'ns', to: 'ns/link/moved' }))).code, -32002, 'into itself');
  assert.equal((await rpcError(c.call('object.move', { bucket: B, from: 'ns/file', to: 'ns/link/moved' }))).code, -32006, 'below a symlink');
  await c.call('object.commit', { bucket: B, path: 'ns/sub', kind: 'dir', meta: {} });
  await c.call('object.commit', { bucket: B, path: 'ns/sub/deep', kind: 'dir', meta: {} });
  await c.call('object.commit', { bucket: B, path: 'ns', kind: 'file', meta: {}, size: 0, blockSize: 4096, blocks: [] });
  assert.deepEqual((await c.call<Array<{ path: string; kind: string }>>('object.list', { bucket: B, prefix: 'ns' })).map((o) => [o.path, o.kind]), [['ns', 'file']]);
  await c.call('object.delete', { bucket: B, path: 'ns' });
});

/** Commits, sending blocks again while a no-grace retention frees them first (as the replicator does). */
async function commitFile(k: DrClient, bucket: string, path: string, blocks: Buffer[]): Promise<void> {
  for (;;) {
    try {
      await k.call('object.commit', { bucket, path, kind: 'file', meta: {}, size: blocks.reduce((n, b) => n + b.length, 0), blockSize: 16384, blocks: blocks.map(blockHash) });
      return;
    } catch (err) {
      if (!(err instanceof DrRpcError && err.code === -32001)) throw err;
      await k.putBlocks(blocks);
    }
  }
}

test('retention rewrites packs that are mostly dead: the space comes back and every kept block still reads', async () => {
  const gcSite = await DrSiteHarness.start({ retentionMs: 0, gcIntervalMs: 200, orphanGraceMs: 1000, packBytes: 256 * 1024, repackBelow: 0.5 });
  const k = await gcSite.client();
  try {
    await k.call('bucket.ensure', { bucket: 'g' });
    const blocks = Array.from({ length: 48 }, () => randomBytes(16384));
    for (let i = 0; i < 48; i += 8) await k.putBlocks(blocks.slice(i, i + 8)); // 6 calls: packs close at 256 KiB
    await commitFile(k, 'g', 'doomed', blocks.slice(0, 40));
    await commitFile(k, 'g', 'kept', blocks.slice(44)); // 40-43: never committed, freed too
    const full = gcSite.stats();
    assert.ok(full.packs >= 3, `${full.packs} packs`);
    const doomed = await k.call<{ blocks: string[] }>('object.stat', { bucket: 'g', path: 'doomed', blocks: true });
    assert.deepEqual(await k.getBlocks(doomed.blocks), blocks.slice(0, 40)); // the site now holds read handles of these packs
    await k.call('object.delete', { bucket: 'g', path: 'doomed' });
    await waitFor('a repack', () => gcSite.logs.some((l) => l.msg === 'repack reclaimed space'), 20000);
    await waitFor('every mostly dead pack rewritten', () => gcSite.stats().packBytes < full.packBytes / 3, 20000);
    const after = gcSite.stats();
    assert.equal(after.blocks, 4, 'only the kept file\'s blocks are indexed');
    assert.ok(after.packBytes <= 4 * (16384 + 44) * 2, `${after.packBytes} bytes left in packs`);
    assert.deepEqual(packFiles(gcSite).length, after.packs, 'deleted packs are gone from disk');
    assert.deepEqual(packHandles(gcSite).filter((f) => f.endsWith('(deleted)')), [], 'and no handle keeps their space');
    const st = await k.call<{ blocks: string[] }>('object.stat', { bucket: 'g', path: 'kept', blocks: true });
    assert.deepEqual(await k.getBlocks(st.blocks), blocks.slice(44));
  } finally {
    k.close();
    await gcSite.destroy();
  }
});

test('reads keep at most 32 packs open, the least recently used closed first', async () => {
  const site = await DrSiteHarness.start({ packBytes: 65536 }); // one block per pack
  const k = await site.client();
  try {
    const blocks = Array.from({ length: 40 }, () => randomBytes(60000));
    for (const b of blocks) await k.putBlocks([b]);
    assert.equal(site.stats().packs, 40);
    for (let i = 0; i < 40; i++) assert.deepEqual(await k.getBlocks([blockHash(blocks[i])]), [blocks[i]]); // one pack at a time
    const open = packHandles(site);
    assert.ok(open.length >= 32 && open.length <= 33, `${open.length} pack handles open (32 for reads, maybe one for writing)`);
    const m = new MetaStore(join(site.dataDir, 'meta.sqlite'));
    const packOf = (i: number) => `${m.locate(blockHash(blocks[i]))?.pack}.pack`;
    try {
      for (let i = 0; i < 8; i++) assert.ok(!open.some((f) => f.endsWith(packOf(i))), `block ${i}'s pack, least recently read, is closed`);
      for (let i = 8; i < 40; i++) assert.ok(open.some((f) => f.endsWith(packOf(i))), `block ${i}'s pack is open`);
    } finally {
      m.close();
    }
    // The most recent are the ones kept: reading them again opens nothing new.
    for (let i = 39; i >= 20; i--) assert.deepEqual(await k.getBlocks([blockHash(blocks[i])]), [blocks[i]]);
    assert.deepEqual(packHandles(site).sort(), open.sort());
  } finally {
    k.close();
    await site.destroy();
  }
});

test('a pack is closed at its target size, not topped up past it: the entry that does not fit starts the next pack', async () => {
  const small = await DrSiteHarness.start({ packBytes: 256 * 1024 });
  const k = await small.client();
  try {
    // 60 KiB of random bytes each (stored as they are): four fit in 256 KiB, a fifth does not.
    const blocks = Array.from({ length: 12 }, () => randomBytes(60 * 1024));
    await k.putBlocks(blocks);
    const packs = packRows(small);
    assert.equal(packs.length, 3, `packs of ${packs.map((p) => p.bytes).join(', ')} bytes`);
    for (const p of packs) assert.equal(p.bytes, 4 * (60 * 1024 + 44), 'four entries per pack, none past the target');
    assert.deepEqual(await k.getBlocks(blocks.map(blockHash)), blocks);
  } finally {
    k.close();
    await small.destroy();
  }
});

/** A site as v1 left it: one file per block under blocks/, the v1 schema. */
function makeV1Site(dataDir: string, files: Record<string, Buffer[]>): void {
  mkdirSync(dataDir, { recursive: true });
  const db = new Database(join(dataDir, 'meta.sqlite'));
  try {
    db.exec(`CREATE TABLE buckets (name TEXT PRIMARY KEY, created INTEGER NOT NULL);
      CREATE TABLE versions (id INTEGER PRIMARY KEY AUTOINCREMENT, bucket TEXT NOT NULL, path TEXT NOT NULL, ts INTEGER NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('file', 'dir', 'symlink', 'tombstone')), meta TEXT NOT NULL, size INTEGER NOT NULL,
        block_size INTEGER NOT NULL, segments TEXT NOT NULL, target TEXT);
      CREATE INDEX versions_path ON versions (bucket, path, id);
      CREATE TABLE heads (bucket TEXT NOT NULL, path TEXT NOT NULL, version INTEGER NOT NULL, PRIMARY KEY (bucket, path));
      CREATE TABLE segments (hash TEXT PRIMARY KEY, blocks TEXT NOT NULL, refs INTEGER NOT NULL);
      CREATE TABLE blocks (hash TEXT PRIMARY KEY, size INTEGER NOT NULL, refs INTEGER NOT NULL, created INTEGER NOT NULL);`);
    db.prepare('INSERT INTO buckets VALUES (?, ?)').run('v1', Date.now());
    for (const [path, blocks] of Object.entries(files)) {
      const hashes = blocks.map(blockHash);
      blocks.forEach((b, i) => {
        const h = hashes[i];
        mkdirSync(join(dataDir, 'blocks', h.slice(0, 2), h.slice(2, 4)), { recursive: true });
        writeFileSync(join(dataDir, 'blocks', h.slice(0, 2), h.slice(2, 4), h), b);
        db.prepare('INSERT OR IGNORE INTO blocks VALUES (?, ?, 0, ?)').run(h, b.length, Date.now());
        db.prepare('UPDATE blocks SET refs = refs + 1 WHERE hash = ?').run(h);
      });
      const seg = segmentHash(hashes);
      db.prepare('INSERT INTO segments VALUES (?, ?, 1)').run(seg, JSON.stringify(hashes));
      const id = db.prepare(`INSERT INTO versions (bucket, path, ts, kind, meta, size, block_size, segments, target)
        VALUES ('v1', ?, ?, 'file', '{}', ?, 4096, ?, NULL)`).run(path, Date.now(), blocks.reduce((n, b) => n + b.length, 0), JSON.stringify([seg])).lastInsertRowid;
      db.prepare('INSERT INTO heads VALUES (?, ?, ?)').run('v1', path, id);
    }
  } finally {
    db.close();
  }
}

const looseFiles = (dataDir: string) => readdirSync(join(dataDir, 'blocks'), { recursive: true, withFileTypes: true }).filter((d) => d.isFile()).length;

test('a v1 site (one file per block) keeps serving and moves into packs in the background, every block readable throughout', async () => {
  const h = await DrSiteHarness.start();
  await h.stop();
  rmSync(h.dataDir, { recursive: true, force: true });
  const files: Record<string, Buffer[]> = {};
  for (let f = 0; f < 20; f++) files[`f${f}`] = Array.from({ length: 30 }, (_, i) => Buffer.from(`file ${f} block ${i} `.repeat(300).slice(0, 4096)));
  makeV1Site(h.dataDir, files);
  await h.startServer();
  const k = await h.client();
  try {
    let reads = 0;
    do {
      for (const [path, blocks] of Object.entries(files)) {
        const st = await k.call<{ blocks: string[] }>('object.stat', { bucket: 'v1', path, blocks: true });
        assert.deepEqual(await k.getBlocks(st.blocks, { bucket: 'v1', path }), blocks);
        reads++;
      }
    } while (!h.logs.some((l) => l.msg === 'v1 blocks moved into packs'));
    assert.ok(reads >= 20);
    assert.deepEqual({ loose: h.stats().looseBlocks, files: looseFiles(h.dataDir) }, { loose: 0, files: 0 });
    assert.equal(h.stats().blocks, 600);
    const st = await k.call<{ blocks: string[] }>('object.stat', { bucket: 'v1', path: 'f7', blocks: true });
    assert.deepEqual(await k.getBlocks(st.blocks), files.f7);
  } finally {
    k.close();
    await h.destroy();
  }
});

test('vfsx dr-site migrate moves a stopped v1 site into packs with progress, and is refused while the site runs; the site then serves the same data', async () => {
  const h = await DrSiteHarness.start();
  await h.stop();
  rmSync(h.dataDir, { recursive: true, force: true });
  const files = { 'a.txt': [Buffer.from('alpha '.repeat(700))], 'b.bin': [randomBytes(4096), randomBytes(4096)] };
  makeV1Site(h.dataDir, files);
  try {
    const r = spawnSync(process.execPath, [VFSX_BIN, 'dr-site', 'migrate', '--config', join(h.dir, 'dr.json')], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /3\/3 blocks moved into packs/);
    assert.match(r.stdout, /3 blocks moved into packs in [\d.]+ s; 0 could not be read; 0 v1 blocks left/);
    assert.equal(looseFiles(h.dataDir), 0);
    const again = spawnSync(process.execPath, [VFSX_BIN, 'dr-site', 'migrate', '--config', join(h.dir, 'dr.json'), '--json'], { encoding: 'utf8' });
    assert.equal(JSON.parse(again.stdout).moved, 0, 'a second run has nothing to do');
    await h.startServer();
    const busy = spawnSync(process.execPath, [VFSX_BIN, 'dr-site', 'migrate', '--config', join(h.dir, 'dr.json')], { encoding: 'utf8' });
    assert.notEqual(busy.status, 0);
    assert.match(busy.stderr, new RegExp(`in use by process ${h.pid}`), 'refused while the site runs');
    const k = await h.client();
    try {
      for (const [path, blocks] of Object.entries(files)) {
        const st = await k.call<{ blocks: string[] }>('object.stat', { bucket: 'v1', path, blocks: true });
        assert.deepEqual(await k.getBlocks(st.blocks), blocks);
      }
    } finally {
      k.close();
    }
  } finally {
    await h.destroy();
  }
});

/** AnonHugePages of a process, in kB. */
function anonHugeKb(pid: number | undefined): number {
  return Number(/AnonHugePages:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'))?.[1]);
}

/** GLIBC_TUNABLES as a process sees it (glibc 2.36 rewrites the variable as it parses it and leaves only its first tunable visible). */
function visibleTunables(pid: number | undefined): string[] {
  return readFileSync(`/proc/${pid}/environ`, 'utf8').split('\0').filter((e) => e.startsWith('GLIBC_TUNABLES='));
}

async function put16MiB(k: DrClient): Promise<void> {
  for (let i = 0; i < 4; i++) { // 4 x 4 MiB
    const blocks = Array.from({ length: 64 }, () => randomBytes(64 << 10));
    assert.equal(await k.putBlocks(blocks), 64);
  }
}

test('vfsx dr-site starts itself again with the malloc tunables (the same PID) and, by default, its heap off huge pages', async () => {
  // The harness spawned `node bin/vfsx.js dr-site` without them: the PID it holds must now run with them.
  const seen = visibleTunables(site.pid);
  assert.ok(seen.some((e) => e.startsWith(`GLIBC_TUNABLES=${MALLOC_TUNABLES[0]}`)), seen.join(' ') || 'no GLIBC_TUNABLES');
  assert.match(readFileSync(`/proc/${site.pid}/cmdline`, 'utf8'), /vfsx\.js\0dr-site\0/);
  await put16MiB(c);
  // Under "madvise" only glibc's hugetlb tunable puts its heap on huge pages ("always" gives them to every process).
  if (thpMode() === 'madvise') assert.equal(anonHugeKb(site.pid), 0);
});

test('VFSX_HUGE_PAGES=1 puts the site\'s heap on transparent huge pages', async (t) => {
  const mode = thpMode();
  if (mode !== 'always' && mode !== 'madvise') {
    t.skip(`the kernel offers no transparent huge pages (${mode ?? 'none'})`);
    return;
  }
  const before = process.env.VFSX_HUGE_PAGES;
  process.env.VFSX_HUGE_PAGES = '1';
  let h: DrSiteHarness;
  try {
    h = await DrSiteHarness.start();
  } finally {
    if (before === undefined) delete process.env.VFSX_HUGE_PAGES;
    else process.env.VFSX_HUGE_PAGES = before;
  }
  try {
    const seen = visibleTunables(h.pid);
    assert.ok(seen.some((e) => e.startsWith(`GLIBC_TUNABLES=${HUGE_PAGES_TUNABLE}`)), seen.join(' ') || 'no GLIBC_TUNABLES');
    const k = await h.client();
    try {
      await put16MiB(k);
    } finally {
      k.close();
    }
    assert.ok(anonHugeKb(h.pid) > 0, `AnonHugePages ${anonHugeKb(h.pid)} kB`);
  } finally {
    await h.destroy();
  }
});

test('object.list carries the block lists of files of up to blocksUpTo blocks; restore then fetches a small file in one round trip', async () => {
  const bucket = 'listed';
  await c.call('bucket.ensure', { bucket });
  const bs = 65536;
  const small = randomBytes(bs + 100); // 2 blocks
  const large = randomBytes(6 * bs - 10); // 6 blocks
  const cut = (d: Buffer) => Array.from({ length: Math.ceil(d.length / bs) }, (_, i) => d.subarray(i * bs, (i + 1) * bs));
  await c.putBlocks([...cut(small), ...cut(large)]);
  const ids = (d: Buffer) => cut(d).map((b) => blockHash(b));
  await c.call('object.commit', { bucket, path: 'empty', kind: 'file', meta: { mode: 0o600 }, size: 0, blockSize: bs, blocks: [] });
  await c.call('object.commit', { bucket, path: 'small.bin', kind: 'file', meta: { mode: 0o600 }, size: small.length, blockSize: bs, blocks: ids(small) });
  await c.call('object.commit', { bucket, path: 'large.bin', kind: 'file', meta: { mode: 0o600 }, size: large.length, blockSize: bs, blocks: ids(large) });
  await c.call('object.commit', { bucket, path: 'd', kind: 'dir', meta: { mode: 0o700 } });
  const listed = async (params: object) => Object.fromEntries((await c.call<Array<{ path: string; blocks?: string[] }>>('object.list', { bucket, ...params })).map((o) => [o.path, o.blocks]));
  assert.deepEqual(await listed({ blocksUpTo: 2 }), { empty: [], 'small.bin': ids(small), 'large.bin': undefined, d: undefined });
  assert.deepEqual(await listed({ blocksUpTo: 0 }), { empty: [], 'small.bin': undefined, 'large.bin': undefined, d: undefined });
  assert.deepEqual(await listed({}), { empty: undefined, 'small.bin': undefined, 'large.bin': undefined, d: undefined });
  assert.deepEqual((await listed({ blocks: true }))['large.bin'], ids(large));
  for (const bad of [-1, 1025, 1.5, 'x']) assert.equal((await rpcError(c.call('object.list', { bucket, blocksUpTo: bad }))).code, -32602, String(bad));

  // Restore through a client that counts its calls; then as against a site from before blocksUpTo.
  for (const oldSite of [false, true]) {
    const calls: string[] = [];
    const counting = Object.create(c) as SiteClient;
    counting.call = async <T>(method: string, params: unknown): Promise<T> => {
      calls.push(method);
      if (oldSite && method === 'object.list' && (params as { blocksUpTo?: number }).blocksUpTo !== undefined) throw new DrRpcError(-32602, 'params: unknown property blocksUpTo');
      return c.call<T>(method, params);
    };
    counting.list = async (params, onPage) => {
      calls.push('object.list');
      if (oldSite && (params as { blocksUpTo?: number }).blocksUpTo !== undefined) throw new DrRpcError(-32602, 'params: unknown property blocksUpTo');
      return c.list(params, onPage);
    };
    const dest = mkdtempSync(join(tmpdir(), 'vfsx-listed-'));
    try {
      const p = await restoreShare(counting, bucket, dest);
      assert.deepEqual([p.failed, p.refused], [[], []]);
      assert.deepEqual(readFileSync(join(dest, 'small.bin')), small);
      assert.deepEqual(readFileSync(join(dest, 'large.bin')), large);
      assert.equal(readFileSync(join(dest, 'empty')).length, 0);
      // Only the large file is stat'ed when the listing carries the small ones' blocks; every file otherwise.
      assert.equal(calls.filter((m) => m === 'object.stat').length, oldSite ? 3 : 1, calls.join(' '));
    } finally {
      rmSync(dest, { recursive: true, force: true });
    }
  }
});

test('vfsx dr-site starts itself again with its heap flags (the same PID); an option already given stands', () => {
  // The harness spawned `node bin/vfsx.js dr-site` without them.
  const argv = readFileSync(`/proc/${site.pid}/cmdline`, 'utf8').split('\0');
  for (const f of DR_SITE_NODE_FLAGS) assert.ok(argv.indexOf(f) > 0 && argv.indexOf(f) < argv.findIndex((a) => a.endsWith('vfsx.js')), argv.join(' '));
  assert.deepEqual(missingNodeFlags(['--initial-old-space-size=256', '--max-semi-space-size=16'], ['--initial_old_space_size=64']), ['--max-semi-space-size=16']);
  assert.deepEqual(missingNodeFlags(['--initial-old-space-size=256'], ['--cpu-prof']), ['--initial-old-space-size=256']);
});

test('withMallocTunables adds glibc\'s malloc tunables to GLIBC_TUNABLES once, keeps the rest and every value already set', () => {
  const all = 'glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728';
  assert.equal(withMallocTunables({}).GLIBC_TUNABLES, all);
  assert.equal(withMallocTunables({}, [HUGE_PAGES_TUNABLE, ...MALLOC_TUNABLES]).GLIBC_TUNABLES, `glibc.malloc.hugetlb=1:${all}`);
  assert.equal(withMallocTunables({ GLIBC_TUNABLES: 'glibc.malloc.arena_max=2' }).GLIBC_TUNABLES, `glibc.malloc.arena_max=2:${all}`);
  const own = { GLIBC_TUNABLES: 'glibc.malloc.hugetlb=0', X: '1' };
  // The admin's own hugetlb choice stands, even when huge pages are asked for; the thresholds are added beside it.
  assert.equal(withMallocTunables(own, [HUGE_PAGES_TUNABLE, ...MALLOC_TUNABLES]).GLIBC_TUNABLES, `glibc.malloc.hugetlb=0:${all}`);
  assert.equal(mallocTunablesSet(own), false);
  const set = { GLIBC_TUNABLES: 'glibc.malloc.trim_threshold=1:glibc.malloc.mmap_threshold=2' };
  assert.equal(withMallocTunables(set), set);
  assert.equal(mallocTunablesSet(set), true);
  assert.equal(mallocTunablesSet(set, [HUGE_PAGES_TUNABLE, ...MALLOC_TUNABLES]), false);
  assert.equal(mallocTunablesSet({ PATH: '/bin' }), false);
  assert.equal(withMallocTunables(withMallocTunables({})).GLIBC_TUNABLES, all, 'added once');
  // Huge pages only when asked for and the kernel has them.
  assert.deepEqual(wantedTunables({}), MALLOC_TUNABLES);
  assert.deepEqual(wantedTunables({ VFSX_HUGE_PAGES: '0' }), MALLOC_TUNABLES);
  const thp = thpMode() === 'always' || thpMode() === 'madvise';
  assert.deepEqual(wantedTunables({ VFSX_HUGE_PAGES: '1' }), thp ? [HUGE_PAGES_TUNABLE, ...MALLOC_TUNABLES] : MALLOC_TUNABLES);
});

test('blocks laid out behind reserved room are framed where they are: the site stores them intact (it checks every hash) and the room is used once', async () => {
  const blocks = [randomBytes(4096), randomBytes(65536), randomBytes(1)];
  const buf = allocWithRoom(blocks.reduce((a, b) => a + b.length, 0), putFrameRoom(blocks.length));
  let off = 0;
  const views = blocks.map((b) => {
    b.copy(buf, off);
    return buf.subarray(off, (off += b.length));
  });
  const copy = Buffer.from(buf);
  assert.equal(await c.putBlocks(views), 3);
  assert.deepEqual(buf, copy, 'the blocks themselves are untouched');
  assert.equal(claimRoom(views, 4), null, 'the frame took the room: a second frame of them copies');
  assert.equal(await c.putBlocks(views), 3, 'sent again, copied into a frame this time');
  assert.deepEqual(Buffer.concat(await c.getBlocks(views.map((v) => blockHash(v)))), Buffer.concat(blocks));
});
