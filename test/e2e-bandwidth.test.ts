/**
 * End to end: bandwidth limits on replication, measured where they matter,
 * at the DR site. The site runs in a network namespace of its own behind a
 * veth link (a remote host the test creates and removes); what it received
 * is read from its own /proc/PID/net/dev. Real smbd with the vfsx module,
 * real vfsx serve and vfsx replicate, real Redis, the encrypted repository.
 */
import test, { after, before } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ReplicationStack } from './helpers/replication-stack';
import { SiteMeter } from './helpers/site-meter';
import { putRandomFiles } from './helpers/smbclient';
import { waitFor } from './helpers/wait-for';

const MiB = 1024 * 1024;
const LIMIT = 4 * MiB;
let stack: ReplicationStack;

before(async () => {
  stack = await ReplicationStack.start({ share: 'bw', remote: { mbit: 1000 }, replExtra: { bwlimit: '4M' } });
});

after(async () => {
  await stack?.destroy();
});

/** Puts `n` files of `size` random bytes through SMB into `dir`. */
const putFiles = (dir: string, n: number, size: number) => putRandomFiles(stack.smbd.port, stack.share, stack.local, dir, n, size);

const mb = (b: number) => `${(b / MiB).toFixed(2)} MiB/s`;

test('a site limited to 4 MiB/s receives at most the limit +10% over any 5 s window; vfsx bwlimit lifts it while running', async () => {
  const pid = stack.dr.pid as number;
  const meter = new SiteMeter(pid, stack.remote!.iface);
  await putFiles('limited', 20, 4 * MiB); // 80 MiB: 20 s at the limit, cut short below

  // What operators see while it runs. Status's rate is the mean of the last 10 s, so it nears the
  // limit only once sending has filled most of them: polled (a loaded machine starts later), and
  // never above the limit on the way.
  let highest = 0;
  const st = await waitFor('status to show the limited rate', async () => {
    const s = JSON.parse((await stack.svc.cli(['status', '--json'])).stdout);
    highest = Math.max(highest, s.site.bandwidth.sentPerSec);
    return s.site.bandwidth.sentPerSec > LIMIT * 0.5 ? s : undefined;
  }, 15_000, 500);
  assert.equal(st.site.bandwidth.limit, LIMIT);
  assert.equal(st.site.bandwidth.source, 'config');
  assert.ok(highest < LIMIT * 1.1, `status said ${mb(highest)}`);
  const metrics = await (await fetch(`${stack.svc.httpUrl}/metrics`)).text();
  assert.match(metrics, new RegExp(`vfsx_site_bandwidth_limit_bytes_per_second\\{site="[^"]+"\\} ${LIMIT}\\b`));
  const text = (await stack.svc.cli(['status'])).stdout;
  assert.match(text, /bandwidth: limited to 4M\/s; sending [\d.]+[kM]\/s/);

  // Lifted while running: the rest goes at the link's speed.
  const tOff = Date.now();
  const off = await stack.svc.cli(['bwlimit', 'off']);
  assert.equal(off.code, 0, off.stderr);
  assert.match(off.stdout, /no limit \(set by vfsx bwlimit\)/);
  await stack.drained(120_000);
  meter.stop();

  const limited = meter.maxRate(5000, 0, tOff);
  process.stdout.write(`# limited: max ${mb(limited)} over 5 s windows (limit ${mb(LIMIT)}); total ${(meter.total / MiB).toFixed(1)} MiB; after 'off': ${mb(meter.rateAfter(tOff))}\n`);
  assert.ok(limited <= LIMIT * 1.1, `the site received ${mb(limited)} over 5 s under a ${mb(LIMIT)} limit`);
  assert.ok(limited >= LIMIT * 0.6, `the limit, not the replicator, should bound the rate: ${mb(limited)}`);
  assert.ok(meter.total >= 80 * MiB, `the site received ${meter.total} bytes for 80 MiB of files`);
  // Measured from the command on, the replicator's take-up (within a second) included: measured from a
  // second later, a rest that had gone in under a second left only its last few hundred KiB to measure.
  assert.ok(meter.rateAfter(tOff) > LIMIT * 2, 'after vfsx bwlimit off the rest went faster than the limit');

  // Back to the configured limit.
  const back = await stack.svc.cli(['bwlimit', 'config', '--json']);
  const b = JSON.parse(back.stdout);
  assert.equal(b.source, 'config');
  assert.equal(b.limit, LIMIT);
  assert.equal(b.override, null);
  await stack.converged('limited');
});

test('a timetable switches the limit mid-run: 1 MiB/s until the next minute, then none', async () => {
  // A bad timetable is refused and changes nothing.
  const bad = await stack.svc.cli(['bwlimit', '08:00,quick']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /not a rate/);

  // At least 20 s of the limited part: start early enough in a minute.
  const sec = new Date().getSeconds();
  if (sec > 40) await new Promise((r) => setTimeout(r, (61 - sec) * 1000));
  const now = new Date();
  const hhmm = (d: Date) => `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
  const next = new Date(now.getTime() + 60_000);
  const switchAt = new Date(next.getFullYear(), next.getMonth(), next.getDate(), next.getHours(), next.getMinutes()).getTime();
  const set = await stack.svc.cli(['bwlimit', `${hhmm(now)},1M ${hhmm(next)},off`, '--json']);
  assert.equal(set.code, 0, set.stderr);
  assert.equal(JSON.parse(set.stdout).limit, MiB);

  // More than the limited part can carry, so the switch happens mid-transfer.
  const meter = new SiteMeter(stack.dr.pid as number, stack.remote!.iface);
  const limitedSecs = (switchAt - Date.now()) / 1000;
  const files = Math.ceil((limitedSecs + 16) / 2);
  await putFiles('timetable', files, 2 * MiB);
  await stack.drained(180_000);
  meter.stop();

  const before = meter.maxRate(5000, 0, switchAt - 500);
  const afterSwitch = meter.rateAfter(switchAt + 250);
  process.stdout.write(`# timetable: ${limitedSecs.toFixed(0)} s at 1 MiB/s: max ${mb(before)} over 5 s; after the switch ${mb(afterSwitch)}\n`);
  assert.ok(before <= MiB * 1.1, `the site received ${mb(before)} over 5 s under the timetable's 1 MiB/s`);
  assert.ok(before >= MiB * 0.6, `the limit should bound the rate: ${mb(before)}`);
  assert.ok(afterSwitch > MiB * 3, `after the timetable's switch to off the rest went faster: ${mb(afterSwitch)}`);
  await stack.svc.cli(['bwlimit', 'config']);
  await stack.converged('timetable');
});

test('vfsx resync beside the replicator keeps to the limit together with it: the site receives at most the limit +10%', async () => {
  const set = await stack.svc.cli(['bwlimit', 'config']);
  assert.equal(set.code, 0, set.stderr);
  await stack.drained(120_000);
  // Files no record describes (made on disk, not through SMB): only the resync sends them.
  const direct = join(stack.root, 'resynced');
  await mkdir(direct);
  for (let i = 0; i < 4; i++) await writeFile(join(direct, `d${i}.bin`), randomBytes(4 * MiB));
  const meter = new SiteMeter(stack.dr.pid as number, stack.remote!.iface);
  const t0 = Date.now();
  // 16 MiB through SMB for the replicator and 16 MiB for the resync, at once.
  await putFiles('beside', 4, 4 * MiB);
  const r = await stack.svc.cli(['resync', stack.share, '--source', stack.root, '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /bandwidth limit: 4M/);
  await stack.drained(120_000);
  meter.stop();
  const max = meter.maxRate(5000, t0);
  process.stdout.write(`# resync beside the replicator: max ${mb(max)} over 5 s windows (limit ${mb(LIMIT)}); ${(meter.total / MiB).toFixed(1)} MiB in ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
  assert.ok(max <= LIMIT * 1.1, `the site received ${mb(max)} over 5 s from a resync and the replicator under a ${mb(LIMIT)} limit`);
  assert.ok(meter.total >= 28 * MiB, `the site received ${meter.total} bytes for 32 MiB of new files`);
  await stack.converged('resync beside the replicator');
});
