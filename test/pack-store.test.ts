/**
 * The DR site's pack writer on a real directory and a real index, with the
 * pack files' handles wrapped so a test can hold or fail a flush: one
 * batch is written while the one before it is flushed, each is indexed and
 * acknowledged only after its own flush, and a failed flush indexes
 * nothing of its batch or of what was written after it to that pack.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { MetaStore } from '../src/dr-site/meta-store';
import { PackStore } from '../src/dr-site/pack-store';

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const part = () => {
  const data = randomBytes(4096);
  return { hash: sha(data), data };
};
const packFiles = (dir: string) => readdirSync(join(dir, 'packs'), { recursive: true }).map(String).filter((f) => f.endsWith('.pack')).map((f) => f.split('/').pop() as string);

/** A block read by a fresh store over the same directory and index. */
async function readBlock(dir: string, meta: MetaStore, hash: string): Promise<Buffer> {
  const s = new PackStore({ dir, meta, packBytes: 16 << 20, compression: 'none' });
  try {
    return await s.get(hash);
  } finally {
    await s.close();
  }
}
const tick = () => new Promise((r) => setImmediate(r));

/** What the store did to its pack files: writes and flushes, in order, with a hook before each flush returns. */
class Disk {
  readonly log: string[] = [];
  /** Called for the n-th flush (from 1); what it returns (or throws) is awaited before the real flush. */
  beforeFlush: (n: number) => Promise<void> = async () => undefined;
  private flushes = 0;

  open = async (path: string): Promise<FileHandle> => {
    const fh = await open(path, 'wx', 0o600);
    const disk = this;
    return new Proxy(fh, {
      get(target, prop) {
        if (prop === 'writev') {
          return async (bufs: Buffer[], pos: number) => {
            disk.log.push('write');
            return target.writev(bufs, pos);
          };
        }
        if (prop === 'datasync') {
          return async () => {
            const n = ++disk.flushes;
            disk.log.push(`flush ${n}`);
            await disk.beforeFlush(n);
            await target.datasync();
            disk.log.push(`flushed ${n}`);
          };
        }
        const v = Reflect.get(target, prop);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
  };
}

async function withStore(fn: (store: PackStore, meta: MetaStore, disk: Disk, dir: string) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'vfsx-packs-'));
  const meta = new MetaStore(join(dir, 'meta.sqlite'));
  const disk = new Disk();
  const store = new PackStore({ dir, meta, packBytes: 16 << 20, compression: 'none', openPackFile: disk.open });
  await store.init();
  try {
    await fn(store, meta, disk, dir);
  } finally {
    await store.close();
    meta.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('blocks put into an idle store go in one write, one flush and one index transaction', async () => {
  await withStore(async (store, meta, disk) => {
    const parts = Array.from({ length: 20 }, part);
    await store.putMany(parts);
    assert.deepEqual(disk.log, ['write', 'flush 1', 'flushed 1']);
    assert.equal(meta.missingBlocks(parts.map((p) => p.hash)).length, 0);
    for (const p of parts) assert.deepEqual(await store.get(p.hash), p.data);
  });
});

test('the next batch is written while the one before it is flushed; each is indexed and acknowledged after its own flush', async () => {
  await withStore(async (store, meta, disk) => {
    let release!: () => void;
    const held = new Promise<void>((r) => { release = r; });
    disk.beforeFlush = (n) => (n === 1 ? held : Promise.resolve());
    const a = [part(), part()];
    const b = [part(), part()];
    const acked: string[] = [];
    const putA = store.putMany(a).then(() => acked.push('a'));
    while (!disk.log.includes('flush 1')) await tick();
    const putB = store.putMany(b).then(() => acked.push('b'));
    while (disk.log.filter((e) => e === 'write').length < 2) await tick();
    for (let i = 0; i < 20; i++) await tick();
    // B is written during A's flush, and nothing is acknowledged or indexed before A's flush returns.
    assert.deepEqual(disk.log.slice(0, 3), ['write', 'flush 1', 'write']);
    assert.deepEqual(acked, []);
    assert.equal(meta.missingBlocks([...a, ...b].map((p) => p.hash)).length, 4);
    release();
    await Promise.all([putA, putB]);
    assert.deepEqual(acked, ['a', 'b']);
    assert.ok(disk.log.indexOf('flushed 2') > disk.log.indexOf('write'), 'B flushed after its write');
    for (const p of [...a, ...b]) assert.deepEqual(await store.get(p.hash), p.data);
  });
});

test('a failed flush fails its batch and the one written after it to the same pack; neither is indexed; the next put takes a new pack', async () => {
  await withStore(async (store, meta, disk, dir) => {
    let fail!: (err: Error) => void;
    const held = new Promise<void>((_, reject) => { fail = reject; });
    disk.beforeFlush = (n) => (n === 1 ? held : Promise.resolve());
    const a = [part(), part()];
    const b = [part()];
    const putA = store.putMany(a);
    while (!disk.log.includes('flush 1')) await tick();
    const putB = store.putMany(b);
    while (disk.log.filter((e) => e === 'write').length < 2) await tick();
    fail(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
    await assert.rejects(putA, /EIO/);
    await assert.rejects(putB, /EIO/);
    assert.equal(meta.missingBlocks([...a, ...b].map((p) => p.hash)).length, 3, 'nothing of either batch is indexed');
    const failedPack = meta.packs();
    assert.deepEqual(failedPack, [], 'the failed pack is not in the index');
    // A retry goes to a new pack and is stored.
    await store.putMany(a);
    const packs = meta.packs();
    assert.equal(packs.length, 1);
    for (const p of a) assert.deepEqual(await store.get(p.hash), p.data);
    // At the next start the pack the index never learnt of is deleted.
    await store.close();
    assert.equal(packFiles(dir).length, 2, 'the failed pack and the new one');
    const again = new PackStore({ dir, meta, packBytes: 16 << 20, compression: 'none' });
    await again.init();
    await again.close();
    assert.deepEqual(packFiles(dir), [`${packs[0].id}.pack`]);
    for (const p of a) assert.deepEqual(await readBlock(dir, meta, p.hash), p.data, 'the retried blocks stay indexed and readable');
  });
});
