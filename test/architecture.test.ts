/**
 * The folders are the architecture: no import cycles, and lower layers never
 * import higher ones. Checked with madge on the TypeScript sources.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import madge from 'madge';
import { REPO } from './helpers/service-harness';

const LAYERS = ['errors', 'protocol', 'config', 'native', 'dr-site', 'repository', 'ops', 'journal', 'replication-queue', 'site-link', 'replication', 'operator', 'socket-server', 'service', 'cli'];
/** The folders that talk to Redis (bullmq, ioredis) and to the DR site (ws): the journal, the queue, the link, the engine, the operator views. */
const REDIS_AND_SITE = ['journal/', 'replication-queue/', 'site-link/', 'replication/', 'operator/'];

const layerOf = (file: string): number => {
  const i = LAYERS.indexOf(file.split('/')[0]);
  assert.ok(i >= 0, `${file} is in no known layer`);
  return i;
};

test('src has no import cycles and no layer imports a higher one', async () => {
  const res = await madge(join(REPO, 'src'), {
    fileExtensions: ['ts'],
    tsConfig: join(REPO, 'tsconfig.json'),
    detectiveOptions: { ts: { skipTypeImports: false } },
  });
  assert.deepEqual(res.circular(), []);
  const graph = res.obj();
  assert.ok(Object.keys(graph).length >= 20, 'madge found the sources');
  const violations: string[] = [];
  for (const [file, deps] of Object.entries(graph)) {
    for (const dep of deps) {
      if (layerOf(dep) > layerOf(file)) violations.push(`${file} -> ${dep}`);
    }
  }
  assert.deepEqual(violations, []);
});

test('only the journal, queue, site link, replication and operator folders import bullmq, ioredis or ws (the DR site serves ws)', async () => {
  const res = await madge(join(REPO, 'src'), { fileExtensions: ['ts'], includeNpm: true, tsConfig: join(REPO, 'tsconfig.json') });
  const bad: string[] = [];
  for (const [file, deps] of Object.entries(res.obj())) {
    if (REDIS_AND_SITE.some((f) => file.startsWith(f))) continue;
    const allowed = file.startsWith('dr-site/') ? /node_modules\/(bullmq|ioredis)\// : /node_modules\/(bullmq|ioredis|ws)\//;
    for (const d of deps) if (allowed.test(d)) bad.push(`${file} -> ${d}`);
  }
  assert.deepEqual(bad, []);
});
