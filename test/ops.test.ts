import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { OPERATIONS } from '../src/config/schema';
import { validateConfig } from '../src/config/load-config';
import { VfsxError } from '../src/errors/vfsx-error';
import { OP_TABLE, parseArgs } from '../src/ops/op-table';
import { Policy } from '../src/ops/policy';
import { REPO } from './helpers/service-harness';

test('the op table, the config schema and the C hooks name the same operations', () => {
  const names = new Set<string>();
  const dir = join(REPO, 'native');
  for (const f of readdirSync(dir).filter((n) => n.endsWith('.c'))) {
    const src = readFileSync(join(dir, f), 'utf8');
    for (const m of src.matchAll(/(?:report_begin|begin_at|begin_content)\([^"\n;{]*"([a-z]+)"/g)) names.add(m[1]);
    for (const m of src.matchAll(/\? "([a-z]+)" : "([a-z]+)"/g)) names.add(m[1]).add(m[2]);
  }
  assert.deepEqual([...names].sort(), [...OPERATIONS].sort());
  assert.deepEqual([...OP_TABLE.keys()].sort(), [...OPERATIONS].sort());
});

const args = (o: Record<string, string>) => new Map(Object.entries(o).map(([k, v]) => [k, Buffer.from(v)]));

test('the C module orders operations as the config schema does (verdict masks index them)', () => {
  const src = readFileSync(join(REPO, 'native/vfsx_msg.c'), 'utf8');
  const table = /vfsx_op_names\[VFSX_N_OPS\] = \{([^}]*)\}/.exec(src)?.[1] ?? '';
  assert.deepEqual([...table.matchAll(/"([a-z]+)"/g)].map((m) => m[1]), [...OPERATIONS]);
});

test('only the operations some deny rule can match need a verdict', () => {
  assert.deepEqual(new Policy([]).verdictOps(), []);
  assert.deepEqual(new Policy([
    { action: 'allow', errno: 'EACCES', users: ['root'] },
    { action: 'deny', errno: 'EACCES', ops: ['rename', 'create'], extensions: ['.x'] },
  ]).verdictOps(), ['create', 'rename']);
  assert.equal(new Policy([{ action: 'deny', errno: 'EROFS', paths: ['ro/**'] }]).verdictOps(), '*');
});

test('arguments are validated per operation', () => {
  const h = OP_TABLE.get('rename')!;
  const ok = parseArgs(h, args({ seq: '1', share: 's', path: 'a', to: 'b:c' }));
  assert.deepEqual(ok.names, { path: 'a', to: 'b:c' });
  assert.throws(() => parseArgs(h, args({ seq: '1', share: 's', path: 'a' })), /missing to/);
  assert.throws(() => parseArgs(h, args({ seq: '1', share: 's', path: 'a', to: 'b', evil: '1' })), /unknown argument/);
  const c = parseArgs(OP_TABLE.get('close')!, args({ seq: '1', share: 's', path: 'f', flags: 'ct', ranges: '0+10;100+5', err: '0' }));
  assert.deepEqual(c.ranges, [[0, 10], [100, 5]]);
  assert.throws(() => parseArgs(OP_TABLE.get('chmod')!, args({ seq: '1', share: 's', path: 'f', mode: '999' })), /bad mode/);
});

test('names that are not valid UTF-8 are kept losslessly as base64', () => {
  const m = new Map([['seq', Buffer.from('1')], ['share', Buffer.from('s')], ['path', Buffer.from([0x61, 0xff, 0xfe])]]);
  const p = parseArgs(OP_TABLE.get('unlink')!, m);
  assert.equal(p.names.path, undefined);
  assert.deepEqual(Buffer.from(p.names.pathB64, 'base64'), Buffer.from([0x61, 0xff, 0xfe]));
});

test('policy: first matching rule decides, extensions and globs match case-insensitively', () => {
  const cfg = validateConfig({
    policy: {
      rules: [
        { name: 'allow admin', action: 'allow', users: ['admin'] },
        { name: 'ransomware', action: 'deny', extensions: ['.locked', 'crypt'], ops: ['create', 'rename'] },
        { name: 'archive ro', action: 'deny', shares: ['data'], paths: ['archive/**'], errno: 'EROFS' },
      ],
    },
  });
  const p = new Policy(cfg.policy.rules);
  assert.deepEqual(p.evaluate({ share: 'data', user: 'bob', op: 'create', paths: ['x/Y.LOCKED'] }), { errno: 13, rule: 'ransomware' });
  assert.deepEqual(p.evaluate({ share: 'data', user: 'bob', op: 'rename', paths: ['a.txt', 'a.crypt'] }), { errno: 13, rule: 'ransomware' });
  assert.equal(p.evaluate({ share: 'data', user: 'bob', op: 'unlink', paths: ['a.locked'] }), null);
  assert.equal(p.evaluate({ share: 'data', user: 'admin', op: 'create', paths: ['a.locked'] }), null);
  assert.deepEqual(p.evaluate({ share: 'DATA', user: 'bob', op: 'mkdir', paths: ['Archive/2024'] }), { errno: 30, rule: 'archive ro' });
  assert.equal(p.evaluate({ share: 'other', user: 'bob', op: 'mkdir', paths: ['archive/2024'] }), null);
  assert.equal(p.evaluate({ share: 'data', user: 'bob', op: 'mkdir', paths: ['archived'] }), null);
});

test('config: defaults for every key, every error listed, unknown keys refused, result frozen', () => {
  const c = validateConfig({});
  assert.equal(c.socket.path, '/run/vfsx/vfsx.sock');
  assert.deepEqual(c.socket.allowedUids, [0]);
  assert.equal(c.redis.host, '127.0.0.1');
  assert.ok(Object.isFrozen(c.redis));
  assert.throws(
    () => validateConfig({ socket: { path: 5 }, redis: { port: 0 }, bogus: 1 }),
    (e: unknown) => e instanceof VfsxError && e.code === 'VFSX_ERR_CONFIG_INVALID'
      && /socket\/path/.test(e.message) && /redis\/port/.test(e.message) && /bogus/.test(e.message),
  );
  assert.throws(() => new Policy([{ action: 'deny', errno: 'ENOPE' }]), /unknown errno/);
  // The settle window must stay well inside the RPO target.
  assert.equal(validateConfig({ replication: { settleMs: 2500 }, alerts: { rpoThresholdMs: 10000 } }).replication.settleMs, 2500);
  assert.throws(() => validateConfig({ replication: { settleMs: 5000 }, alerts: { rpoThresholdMs: 10000 } }), /settleMs \(5000\) must be at most a quarter/);
});
