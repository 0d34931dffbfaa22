/**
 * The native beneath-the-root calls (src/native/tree.ts), with openat2 and
 * with the O_NOFOLLOW walk older kernels get: nothing resolves through a
 * symlink or out of the tree, and a FIFO swapped in never blocks a read.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { useWalkFallback } from '../src/native/addon';
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
