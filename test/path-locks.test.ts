/** PathLocks: records of related paths keep their order; unrelated ones overlap. */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { PathLocks } from '../src/replication/path-locks';

const tick = () => new Promise((r) => setImmediate(r));

function gate(): { open: () => void; wait: Promise<void> } {
  let open!: () => void;
  const wait = new Promise<void>((r) => { open = r; });
  return { open, wait };
}

test('records of one path run one at a time, in the order they asked', async () => {
  const locks = new PathLocks();
  const log: string[] = [];
  const g = gate();
  const a = locks.run('s', ['f'], async () => { log.push('a start'); await g.wait; log.push('a end'); });
  const b = locks.run('s', ['f'], async () => { log.push('b'); });
  const c = locks.run('s', ['f'], async () => { log.push('c'); });
  await tick();
  assert.deepEqual(log, ['a start']);
  g.open();
  await Promise.all([a, b, c]);
  assert.deepEqual(log, ['a start', 'a end', 'b', 'c']);
  assert.equal(locks.size, 0);
});

test('a directory and paths below it conflict both ways; siblings, other shares and look-alike prefixes do not', async () => {
  const locks = new PathLocks();
  const started: string[] = [];
  const g = gate();
  const held = locks.run('s', ['dir'], async () => { started.push('dir'); await g.wait; });
  const below = locks.run('s', ['dir/x/y'], async () => { started.push('dir/x/y'); });
  const sibling = locks.run('s', ['dir2/x'], async () => { started.push('dir2/x'); });
  const other = locks.run('t', ['dir/x'], async () => { started.push('t:dir/x'); });
  const rename = locks.run('s', ['a', 'dir/b'], async () => { started.push('rename a -> dir/b'); });
  const root = locks.run('s', [''], async () => { started.push('root'); });
  await tick();
  assert.deepEqual(started.sort(), ['dir', 'dir2/x', 't:dir/x']);
  g.open();
  await Promise.all([held, below, sibling, other, rename, root]);
  assert.deepEqual(started.slice(3), ['dir/x/y', 'rename a -> dir/b', 'root']);
});

test('a failing record releases its paths and its error reaches the caller', async () => {
  const locks = new PathLocks();
  await assert.rejects(locks.run('s', ['f'], async () => { throw new Error('site down'); }), /site down/);
  assert.equal(await locks.run('s', ['f'], async () => 42), 42);
});
