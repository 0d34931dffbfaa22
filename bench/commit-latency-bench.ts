/**
 * npm run bench (part 3): close -> committed latency at a steady 100 closes/s.
 * A real smbd + vfsx, vfsx serve with replication, Redis and the DR site over
 * WebSocket on loopback; libsmbclient writes and closes 4 KiB files (500
 * names, rewritten in turn) at the rate. Latency is from the service
 * receiving the close to the DR site committing it, taken from the
 * replicator's `committed` events. Prints a Markdown table; asserts nothing.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { EventBus } from '../src/journal/events';
import { validateConfig } from '../src/config/load-config';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { RedisHarness } from '../test/helpers/redis-harness';
import { REPO, ServiceHarness } from '../test/helpers/service-harness';
import { SMB_PASS, SMB_USER, SmbdHarness } from '../test/helpers/smbd-harness';

const RATE = 100;
const SECONDS = 30;

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
}

async function main(): Promise<void> {
  const redis = await RedisHarness.start();
  const dr = await DrSiteHarness.start();
  const svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    extra: { replication: { enabled: true, ...dr.replication } },
  });
  await svc.start();
  const smbd = await SmbdHarness.start([{ name: 'bench', vfsx: { socket: svc.socket, spool: svc.spool } }]);
  const latencies: number[] = [];
  const stop = await EventBus.subscribe(validateConfig(svc.config).redis, (e) => {
    if (e.type === 'committed' && e.op === 'close' && e.latencyMs !== undefined) latencies.push(e.latencyMs);
  });
  try {
    const out = await new Promise<string>((resolve, reject) => execFile('/usr/bin/python3',
      [join(REPO, 'bench/closer.py'), `smb://127.0.0.1:${smbd.port}/bench`, SMB_USER, SMB_PASS, String(RATE), String(SECONDS), '4096'],
      { timeout: (SECONDS + 120) * 1000 }, (err, stdout, stderr) => (err ? reject(new Error(stderr)) : resolve(stdout))));
    const [closes, took] = out.trim().split(' ').map(Number);
    const deadline = Date.now() + 60000;
    while (latencies.length < closes && Date.now() < deadline) await new Promise((r) => setTimeout(r, 200));
    const p50 = pct(latencies, 50);
    const p99 = pct(latencies, 99);
    console.log(`\n### Close -> committed at the DR site (${new Date().toISOString().slice(0, 10)})\n`);
    console.log(`${closes} closes of 4 KiB files in ${took.toFixed(1)} s (${(closes / took).toFixed(1)} closes/s) through libsmbclient; replication.concurrency 8.\n`);
    console.log('| figure | measured | target |');
    console.log('|---|---|---|');
    console.log(`| close -> committed p50 | ${p50} ms | <= 50 ms |`);
    console.log(`| close -> committed p99 | ${p99} ms | <= 1000 ms |`);
    console.log(`| max | ${Math.max(...latencies)} ms | |`);
    console.log(`| commits seen / closes | ${latencies.length} / ${closes} | |`);
  } finally {
    await stop();
    await smbd.destroy();
    await svc.destroy();
    await dr.destroy();
    await redis.stop();
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
