/**
 * The native beneath-the-root calls (src/native/tree.ts), with openat2 and
 * with the O_NOFOLLOW walk older kernels get: nothing resolves through a
 * symlink or out of the tree, and a FIFO swapped in never blocks a read.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { closeSync, fsyncSync, lstatSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createHash, randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { readCached, useWalkFallback } from '../src/native/addon';
import { readBlocks, streamBlocks, targetOf } from '../src/replication/source-tree';
import { nameFromBytes } from '../src/protocol/byte-names';
import { Slots } from '../src/replication/slots';
import { Tree } from '../src/native/tree';

const dir = mkdtempSync(join(tmpdir(), 'vfsx-tree-'));
after(() => {
  useWalkFallback(false);
  rmSync(dir, { recursive: true, force: true });
});

const code = (f: () => unknown): string => {
  try {
    f();
  } catch (err) {
    return String((err as { code?: string }).code);
  }
  return 'no error';
};

for (const mode of ['openat2', 'walk'] as const) {
  test(`${mode}: reads and writes stay beneath the root and never follow a symlink`, () => {
    useWalkFallback(mode === 'walk');
    const base = join(dir, mode);
    const root = join(base, 'root');
    const out = join(base, 'out');
    mkdirSync(join(root, 'd'), { recursive: true });
    mkdirSync(out);
    writeFileSync(join(out, 'secret'), 'secret');
    writeFileSync(join(root, 'd', 'f'), 'inside');
    symlinkSync(out, join(root, 'link'));
    symlinkSync(join(out, 'secret'), join(root, 'd', 'flink'));
    execFileSync('mkfifo', [join(root, 'fifo')]);
    const t = Tree.open(root);
    try {
      assert.equal(t.stat('d/f')?.kind, 'file');
      assert.equal(t.stat('link')?.kind, 'symlink');
      assert.equal(t.stat('link')?.target?.toString(), out);
      assert.equal(t.stat('link/secret'), null, 'below a symlink is not in the tree');
      assert.equal(t.stat('d/f/x'), null, 'below a file is not in the tree');
      assert.equal(code(() => t.openRead('link/secret')), 'ELOOP');
      assert.equal(code(() => t.openRead('d/flink')), 'ELOOP');
      assert.equal(code(() => t.openRead('fifo')), 'EINVAL', 'a FIFO is refused, not waited on');
      for (const bad of ['../out/secret', 'd/../../out/secret', '/etc/passwd', 'd//f', './d/f', '']) {
        assert.equal(code(() => t.openRead(bad)), 'EINVAL', bad);
      }
      assert.notEqual(code(() => t.mkdir('link/made', 0o755)), 'no error');
      assert.notEqual(code(() => t.createExclusive('link/made', 0o600)), 'no error');
      assert.notEqual(code(() => t.symlink('link/made', '/')), 'no error');
      assert.equal(code(() => t.chmod('d/flink', 0o777)), 'ELOOP', 'chmod would follow the link');
      assert.notEqual(code(() => t.rename('d/f', 'link/f')), 'no error');
      assert.equal(code(() => t.mkdir('d/f', 0o755)), 'ENOTDIR', 'a file is in the way');
      assert.equal(t.mkdir('d', 0o755), false, 'already a directory');
      t.utimes('d/flink', '1000000000123456789');
      assert.equal(t.stat('d/flink')?.mtimeNs, '1000000000123456789');
      const scanned = new Map(t.scan('d', true) ?? []);
      assert.deepEqual([...scanned.keys()].sort(), ['f', 'flink']);
      assert.equal(scanned.get('flink')?.kind, 'symlink');
      assert.equal(scanned.get('flink')?.target?.toString(), join(out, 'secret'));
      assert.equal(scanned.get('f')?.size, 6);
      assert.deepEqual(scanned.get('f')?.xattrs, {});
      assert.equal(t.scan('link', true), null, 'a symlink is not scanned through');
      assert.deepEqual(readdirSync(out), ['secret']);
      assert.equal(readFileSync(join(out, 'secret'), 'utf8'), 'secret');
    } finally {
      t.close();
      t.close(); // safe twice
    }
  });
}

test('scan and scanAsync list every entry as lstat sees it, with targets, xattrs and odd names; scanAsync runs on the thread pool and through its own descriptor', async () => {
  const root = join(dir, 'scan');
  mkdirSync(join(root, 'sub'), { recursive: true });
  const names = ['plain.txt', 'a b %#&', 'été 東京 🎉', 'new\nline', 'x'.repeat(240)];
  names.forEach((n, i) => writeFileSync(join(root, n), Buffer.alloc(i * 1000, 7)));
  writeFileSync(Buffer.concat([Buffer.from(`${root}/bad`), Buffer.from([0xff, 0xfe])]), 'b');
  symlinkSync('/etc/passwd', join(root, 'link'));
  execFileSync('mkfifo', [join(root, 'fifo')]);
  const t = Tree.open(root);
  try {
    t.setXattr('plain.txt', 'user.DOSATTRIB', Buffer.from([0, 1, 2, 0xff]));
    t.setXattr('plain.txt', 'user.empty', Buffer.alloc(0));
    t.setXattr('sub', 'user.dir', Buffer.from('d'));
    t.utimes('plain.txt', '-1500000000'); // before 1970
    const sync = t.scan('', true);
    const viaPool = await t.scanAsync('', true);
    assert.deepEqual(viaPool, sync);
    const got = new Map(sync ?? []);
    // A name that is not UTF-8 comes escaped (src/protocol/byte-names.ts), never as U+FFFD.
    assert.deepEqual([...got.keys()].sort(), [...names, 'bad\udcff\udcfe', 'fifo', 'link', 'sub'].sort());
    for (const [name, e] of got) {
      const st = lstatSync(name.startsWith('bad') ? Buffer.concat([Buffer.from(`${root}/bad`), Buffer.from([0xff, 0xfe])]) : join(root, name), { bigint: true });
      assert.deepEqual(
        [e.mode, e.uid, e.gid, e.size, e.ino, e.dev, e.mtimeNs, e.ctimeNs],
        [Number(st.mode) & 0o7777, Number(st.uid), Number(st.gid), Number(st.size), String(st.ino), String(st.dev), String(st.mtimeNs), String(st.ctimeNs)],
        name,
      );
      assert.equal(e.kind, st.isFile() ? 'file' : st.isDirectory() ? 'dir' : st.isSymbolicLink() ? 'symlink' : 'other', name);
      assert.equal(e.xattrs !== undefined, e.kind === 'file' || e.kind === 'dir', `${name}: xattrs read for files and directories only`);
    }
    assert.equal(got.get('plain.txt')?.mtimeNs, '-1500000000');
    assert.deepEqual(got.get('plain.txt')?.xattrs, { 'user.DOSATTRIB': Buffer.from([0, 1, 2, 0xff]), 'user.empty': Buffer.alloc(0) });
    assert.deepEqual(got.get('sub')?.xattrs, { 'user.dir': Buffer.from('d') });
    assert.equal(got.get('link')?.target?.toString(), '/etc/passwd');
    assert.equal(t.scan('', false)?.find(([n]) => n === 'plain.txt')?.[1].xattrs, undefined, 'no xattrs unless asked');
    assert.deepEqual(await t.scanAsync('sub', true), []);
    assert.equal(await t.scanAsync('link', true), null, 'a symlink is not scanned through');
    assert.equal(await t.scanAsync('plain.txt', true), null);
    assert.equal(await t.scanAsync('gone', true), null);
  } finally {
    t.close();
  }

  // A large directory: the event loop turns while the pool reads it, and a
  // tree closed meanwhile (its descriptor's number taken by another
  // directory) does not change what the scan reads.
  const big = join(dir, 'big');
  mkdirSync(big);
  for (let i = 0; i < 20_000; i++) closeSync(openSync(join(big, `f${i}`), 'w'));
  const other = join(dir, 'other');
  mkdirSync(other);
  writeFileSync(join(other, 'not-this'), '');
  const bt = Tree.open(big);
  let turns = 0;
  let done = false;
  const spin = () => {
    if (done) return;
    turns++;
    setImmediate(spin);
  };
  setImmediate(spin);
  const pending = bt.scanAsync('', true);
  bt.close();
  const intruder = Tree.open(other); // likely the same descriptor number
  try {
    const entries = await pending;
    done = true;
    assert.equal(entries?.length, 20_000);
    assert.ok(entries?.every(([n]) => n.startsWith('f')), 'the closed tree was read, not what took its descriptor');
    assert.ok(turns > 0, 'the event loop ran while the directory was read');
  } finally {
    done = true;
    intruder.close();
  }
});

/** Writes `data` to path durably, then drops its pages from the cache (dd's nocache: posix_fadvise DONTNEED). */
function coldFile(path: string, data: Buffer): void {
  writeFileSync(path, data);
  const fd = openSync(path, 'r+');
  fsyncSync(fd);
  closeSync(fd);
  execFileSync('dd', [`if=${path}`, 'iflag=nocache', 'count=0', 'status=none']);
}

test('names that are not UTF-8: stat, open, rename, symlink and mkdir by their escaped strings reach those bytes; a name with a NUL is refused', () => {
  const root = join(dir, 'bytes');
  mkdirSync(root);
  const latin = Buffer.from('caf\xe9.txt', 'latin1');
  writeFileSync(Buffer.concat([Buffer.from(`${root}/`), latin]), 'latin-1');
  writeFileSync(join(root, 'café.txt'), 'utf-8'); // the same name in UTF-8: another file
  const t = Tree.open(root);
  try {
    const esc = nameFromBytes(latin);
    assert.equal(esc, 'caf\udce9.txt');
    assert.equal(t.stat(esc)?.size, 7);
    assert.equal(t.stat('café.txt')?.size, 5);
    const fd = t.openRead(esc);
    assert.equal(readFileSync(fd, 'utf8'), 'latin-1');
    closeSync(fd);
    const dirName = nameFromBytes(Buffer.from([0x64, 0xff]));
    assert.equal(t.mkdir(dirName, 0o755), true);
    t.rename(esc, `${dirName}/${esc}`);
    t.symlink('ln', nameFromBytes(Buffer.from([0x2e, 0x2f, 0xfe])));
    const onDisk = readdirSync(root, { encoding: 'buffer' }).map((b) => b.toString('hex')).sort();
    assert.deepEqual(onDisk, [Buffer.from('café.txt'), Buffer.from([0x64, 0xff]), Buffer.from('ln')].map((b) => b.toString('hex')).sort());
    assert.deepEqual(t.scan(dirName)?.map(([n]) => n), [esc]);
    assert.deepEqual(t.stat('ln')?.target, Buffer.from([0x2e, 0x2f, 0xfe]));
    assert.equal(targetOf(t.stat('ln')!), './\udcfe');
    assert.throws(() => t.stat('a\0b'), /NUL/);
    assert.throws(() => t.stat('a\ud800'), (e: unknown) => (e as { code?: string }).code === 'VFSX_ERR_BAD_NAME');
  } finally {
    t.close();
  }
});

test('readCached reads what the page cache holds without waiting for the disk, and -1 for a file that is not cached', () => {
  const f = join(dir, 'cached.bin');
  const data = randomBytes(16 << 10);
  writeFileSync(f, data);
  const fd = openSync(f, 'r');
  try {
    const buf = Buffer.alloc(data.length);
    assert.equal(readCached(fd, buf, 0), data.length);
    assert.deepEqual(buf, data);
    assert.equal(readCached(fd, Buffer.alloc(10), data.length), 0, 'at the end of the file');
    assert.equal(readCached(fd, Buffer.alloc(100), data.length - 10), 10, 'a short read at the end');
  } finally {
    closeSync(fd);
  }
  coldFile(f, data);
  const cold = openSync(f, 'r');
  try {
    assert.equal(readCached(cold, Buffer.alloc(4096), 0), -1, 'not cached: the caller must not wait on the disk');
  } finally {
    closeSync(cold);
  }
  assert.throws(() => readCached(-1, Buffer.alloc(1), 0), RangeError);
  assert.throws(() => readCached(0, Buffer.alloc(1), -5), RangeError);
  assert.throws(() => (readCached as (...a: unknown[]) => number)(0, 'x', 0), TypeError);
});

test('a small file not in the page cache is read on the thread pool, whole and unchanged', async () => {
  const root = join(dir, 'coldtree');
  mkdirSync(root, { recursive: true });
  const data = randomBytes(40 << 10);
  coldFile(join(root, 'small.bin'), data);
  const probe = openSync(join(root, 'small.bin'), 'r');
  try {
    assert.equal(readCached(probe, Buffer.alloc(4096), 0), -1, 'the file is cold');
  } finally {
    closeSync(probe);
  }
  const t = Tree.open(root);
  try {
    const sha = async (run: Buffer, bs: number) => {
      const ids: string[] = [];
      for (let o = 0; o < run.length; o += bs) ids.push(createHash('sha256').update(run.subarray(o, o + bs)).digest('hex'));
      return ids;
    };
    const fb = await readBlocks(t, 'small.bin', 16 << 10, null, sha);
    assert.equal(fb.count, 3);
    assert.deepEqual(Buffer.concat([0, 1, 2].map((i) => (fb.read.get(i) as [string, Buffer])[1])), data);
    assert.equal(fb.entry.size, data.length);
  } finally {
    t.close();
  }
});

test('Slots: units taken in order, a large request not overtaken, given back once, at most the capacity', async () => {
  const s = new Slots(10);
  const order: string[] = [];
  const a = await s.acquire(6);
  const big = s.acquire(8).then((r) => { order.push('big'); return r; });
  const small = s.acquire(2).then((r) => { order.push('small'); return r; });
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, [], '4 units are free, but the 8 waits first in line and the 2 behind it');
  a();
  a(); // given back once only
  const rb = await big;
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(order, ['big', 'small']);
  rb();
  const rs = await small;
  rs();
  const all = await s.acquire(25); // more than the capacity takes all of it
  let more = false;
  const next = s.acquire(1).then((r) => { more = true; return r; });
  await new Promise((r) => setImmediate(r));
  assert.equal(more, false);
  all();
  (await next)();
});

test('streamBlocks: files streamed at once share one memory budget, which comes back when a chunk is handled or fails', { timeout: 60000 }, async () => {
  const root = join(dir, 'budget');
  mkdirSync(root, { recursive: true });
  for (const f of ['a', 'b', 'c']) writeFileSync(join(root, f), randomBytes(6 << 20));
  const t = Tree.open(root);
  const budget = new Slots(2 << 20); // one chunk's reservation
  const sha = async (run: Buffer, bs: number) => {
    const ids: string[] = [];
    for (let o = 0; o < run.length; o += bs) ids.push(createHash('sha256').update(run.subarray(o, o + bs)).digest('hex'));
    return ids;
  };
  try {
    // 1 MiB chunks (each holds up to 2 MiB of the budget: a chunk ends at the run that fills it), handled slowly.
    let out = 0;
    let peak = 0;
    const got = new Map<string, Buffer[]>();
    const handle = (f: string) => async (chunk: Array<[number, string, Buffer]>) => {
      const bytes = chunk.reduce((n, [, , b]) => n + b.length, 0);
      out += bytes;
      peak = Math.max(peak, out);
      await new Promise((r) => setTimeout(r, 5));
      out -= bytes;
      got.set(f, [...(got.get(f) ?? []), ...chunk.map(([, , b]) => b)]);
    };
    await Promise.all(['a', 'b', 'c'].map((f) => streamBlocks(t, f, 64 << 10, null, sha, handle(f), 1 << 20, budget)));
    for (const f of ['a', 'b', 'c']) assert.deepEqual(Buffer.concat(got.get(f) ?? []), readFileSync(join(root, f)), f);
    assert.ok(peak > 0 && peak <= 2 << 20, `peak ${peak} bytes handed over at once`);
    // Without the budget the three files hold more at once: the test can tell.
    peak = 0;
    await Promise.all(['a', 'b', 'c'].map((f) => streamBlocks(t, f, 64 << 10, null, sha, handle(f), 1 << 20)));
    assert.ok(peak > 2 << 20, `peak ${peak} bytes without a budget`);
    // A chunk whose handling fails gives its bytes back, and so does the chunk read after it.
    await assert.rejects(streamBlocks(t, 'a', 64 << 10, null, sha, async () => { throw new Error('site gone'); }, 1 << 20, budget), /site gone/);
    const whole = await Promise.race([budget.acquire(2 << 20), new Promise<null>((r) => setTimeout(() => r(null), 1000))]);
    assert.ok(whole, 'the whole budget is free again');
    whole();
  } finally {
    t.close();
  }
});
