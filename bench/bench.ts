/**
 * npm run bench: per-operation overhead of vfsx on the SMB path and the
 * journal's verdict latency and ingest rate, measured side by side with a
 * plain share on the same smbd. Prints a Markdown table for the README.
 * Not a test: nothing here asserts a speed.
 */
import { sitesOf } from '../src/config/schema';
import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, openSync, readdirSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { copyFile, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, totalmem, tmpdir } from 'node:os';
import { join } from 'node:path';
import { BenchClient } from './bench-client';
import { buildFramePeer } from './bench-util';
import { createRemoteHost } from '../test/helpers/remote-host';
import { validateConfig } from '../src/config/load-config';
import { EventBus } from '../src/journal/events';
import { JournalReader } from '../src/operator/journal-reader';
import { RedisHarness } from '../test/helpers/redis-harness';
import { DrSiteHarness } from '../test/helpers/dr-site-harness';
import { ServiceHarness } from '../test/helpers/service-harness';
import { SMB_PASS, SMB_USER, SmbdHarness } from '../test/helpers/smbd-harness';

/** Six by default: every share takes every place in the order once (ORDERS), and paired ratios get a median worth the name. */
const ROUNDS = Number(process.env.VFSX_BENCH_ROUNDS ?? 6);
/** VFSX_BENCH_ONLY=journal skips the SMB workloads (for working on the service); =smb skips the journal part. */
const ONLY = process.env.VFSX_BENCH_ONLY ?? '';
/** VFSX_BENCH_WORKLOADS=REGEX runs only the SMB workloads whose name matches (e.g. "mkdir|4 KiB"). */
const WORKLOADS = new RegExp(process.env.VFSX_BENCH_WORKLOADS ?? '');
/** VFSX_BENCH_JOURNAL='{"groupCommitMs":0}' merges into the service's journal config (for A/B runs of the service). */
const JOURNAL = JSON.parse(process.env.VFSX_BENCH_JOURNAL ?? '{}') as Record<string, unknown>;
/**
 * The system as deployed (the default): replication on, `vfsx replicate` at
 * its configured lower priority, the DR site in its own network namespace
 * behind a shaped veth link (it stands for a remote machine) at nice 19, so
 * it does not take this host's cores. VFSX_BENCH_REPLICATION=0: replication off;
 * VFSX_BENCH_ENCRYPTION=off: a plaintext DR repository.
 */
const REPLICATION = process.env.VFSX_BENCH_REPLICATION !== '0';
/** VFSX_BENCH_ENCRYPTION=off: the DR repository in plaintext (an A/B of what encryption costs the whole system). */
const ENCRYPTION = process.env.VFSX_BENCH_ENCRYPTION === 'off' ? 'off' : 'on';
const LINK_MBIT = Number(process.env.VFSX_BENCH_LINK_MBIT ?? 1000);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const pct = (xs: number[], p: number) => [...xs].sort((a, b) => a - b)[Math.min(xs.length - 1, Math.floor(xs.length * p))];

function run(cmd: string, args: string[]): Promise<{ ms: number; out: string }> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { maxBuffer: 256 << 20, timeout: 900000 }, (err, stdout, stderr) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (err) reject(new Error(`${cmd} failed: ${stderr || stdout}`));
      else resolve({ ms, out: `${stdout}\n${stderr}` });
    });
  });
}

interface Row {
  name: string;
  unit: string;
  plain: number;
  vfsx: number;
  strict: number;
  higherIsBetter: boolean;
  /** min and max per share across rounds */
  spread: Record<string, [number, number]>;
  /**
   * Ratios to the plain share paired by round (each round's vfsx against the
   * same round's plain run): median, min, max. The machine's speed drifts
   * between rounds on a VM; within a round both shares see the same drift.
   */
  paired: Record<string, [number, number, number]>;
  /** CPU seconds per 1000 operations on the vfsx share: vfsx serve, vfsx replicate, Redis (null: not measured). */
  cpu: { serve: number; replicate: number; redis: number } | null;
  /** The same over the third column's rounds, when it is a VFSX_BENCH_ALT share (an A/B of module settings). */
  altCpu: { serve: number; replicate: number; redis: number } | null;
  /** Wake-ups (context switches of every thread) per operation on the vfsx share: vfsx serve, vfsx replicate, Redis. */
  wakes: { serve: number; replicate: number; redis: number } | null;
  /** change -> committed at the site during the vfsx rounds (ms). */
  commit: { p50: number; p99: number; n: number } | null;
}

/** Context switches (voluntary and not) of every thread of a process so far: how often it was woken or preempted. */
function wakeUps(pid: number | undefined): number {
  if (!pid) return 0;
  let n = 0;
  try {
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      const st = readFileSync(`/proc/${pid}/task/${t}/status`, 'latin1');
      for (const m of st.matchAll(/^(?:non)?voluntary_ctxt_switches:\s+(\d+)$/gm)) n += Number(m[1]);
    }
  } catch {
    // the process or a thread went away meanwhile
  }
  return n;
}

/** CPU seconds (user + system, every thread) a process has used. */
function cpuSeconds(pid: number | undefined): number {
  if (!pid) return 0;
  try {
    const st = readFileSync(`/proc/${pid}/stat`, 'latin1');
    const f = st.slice(st.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
  } catch {
    return 0;
  }
}
const SHARES = ['plain', 'vfsx', 'strict'];
const ORDERS = [[0, 1, 2], [2, 1, 0], [1, 2, 0], [0, 2, 1], [2, 0, 1], [1, 0, 2]].map((o) => o.map((k) => SHARES[k]));
const ALT = process.env.VFSX_BENCH_ALT ? process.env.VFSX_BENCH_ALT.split(';').map((l) => l.trim()) : null;

/** What main() started, stopped in reverse order however it ends (a failed start must not leave processes behind). */
const teardown: Array<() => unknown> = [];

async function main(): Promise<void> {
  try {
    await benchAll();
  } finally {
    for (const step of teardown.reverse()) {
      try {
        await step();
      } catch (err) {
        process.stderr.write(`bench teardown: ${String(err)}\n`);
      }
    }
  }
}

async function benchAll(): Promise<void> {
  const redis = await RedisHarness.start();
  teardown.push(() => redis.stop());
  const remote = REPLICATION ? createRemoteHost(LINK_MBIT) : null;
  if (remote) teardown.push(() => remote.remove());
  const dr = remote ? await DrSiteHarness.start({}, { netns: remote.netns, host: remote.host, nice: 19 }) : null;
  if (dr) teardown.push(() => dr.destroy());
  // The policy an admin would start with: ransomware names refused on create and rename.
  const svc = await ServiceHarness.create({
    redisSocket: redis.socket,
    policy: [{ name: 'ransomware', action: 'deny', ops: ['create', 'rename'], extensions: ['.locked', '.crypt'] }],
    // The journal's and replication's defaults, as the README sets the system up (the harness tunes them for tests).
    extra: { journal: JOURNAL, ...(dr ? { replication: { enabled: true, ...dr.replication, encryption: ENCRYPTION } } : {}) },
  });
  // The spool scan at its deployed default (the harness scans every 100 ms for tests).
  teardown.push(() => svc.destroy());
  Object.assign(svc.config.spool as object, { scanIntervalMs: 1000 });
  await svc.rewriteConfig();
  await svc.start();
  const smbd = await SmbdHarness.start([
    { name: 'plain' },
    { name: 'vfsx', vfsx: { socket: svc.socket, spool: svc.spool } },
    // VFSX_BENCH_ALT="vfsx:PARAM = VALUE; ..." (for working on the module): the third column is a vfsx share with
    // those smb.conf lines instead of the strict share, side by side in the same rounds.
    ALT === null
      ? { name: 'strict', vfsx: { socket: svc.socket, spool: svc.spool, strict: true } }
      : { name: 'strict', vfsx: { socket: svc.socket, spool: svc.spool }, extra: ALT },
  ]);
  teardown.push(() => smbd.destroy());
  const local = await mkdtemp(join(tmpdir(), "vfsx-bench-"));
  teardown.push(() => rm(local, { recursive: true, force: true }));
  const rows: Row[] = [];
  const cfg = validateConfig(svc.config);
  const reader = new JournalReader({ redis: cfg.redis, queueName: cfg.journal.queueName, sites: sitesOf(cfg.replication).map((s) => s.name) });
  // Replication must not spill from a vfsx round into the next round's timing: wait (untimed) until it caught up.
  const drained = async () => {
    if (!REPLICATION) return;
    for (const until = Date.now() + 600_000; Date.now() < until;) {
      const b = await reader.backlog();
      if (b.queued + b.pending + b.unpumped === 0) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('replication did not catch up within 10 minutes');
  };
  const commits: number[] = [];
  let recording = false;
  const unsubscribe = REPLICATION ? await EventBus.subscribe(cfg.redis, (e) => {
    if (recording && e.type === 'committed' && e.latencyMs !== undefined) commits.push(e.latencyMs);
  }) : null;
  const smb = (share: string, cmds: string) =>
    run('smbclient', [`//127.0.0.1/${share}`, '-p', String(smbd.port), '-U', `${SMB_USER}%${SMB_PASS}`, '-c', cmds]);
  try {
    // Side by side: each round measures plain then vfsx (alternating order).
    const sideBySide = async (name: string, unit: string, higher: boolean, once: (share: string, round: number, mark: () => Promise<void>) => Promise<number>, rounds = ROUNDS, ops = 0) => {
      if (!WORKLOADS.test(name)) return;
      const r: Record<string, number[]> = { plain: [], vfsx: [], strict: [] };
      // serve, replicate, Redis: CPU seconds and wake-ups over the vfsx rounds.
      const pids = () => [svc.pid, svc.replicatorPid, redis.pid];
      const sample = () => [...pids().map(cpuSeconds), ...pids().map(wakeUps)];
      const used = [0, 0, 0, 0, 0, 0];
      const usedAlt = [0, 0, 0];
      commits.length = 0;
      for (let i = 0; i < rounds; i++) {
        // Every share takes every position in turn (the 6 orders of 3): on this VM the first run after a
        // cache drop and the run after another share's differ, and a fixed middle place biased one column.
        const order = ORDERS[i % ORDERS.length];
        for (const share of order) {
          await drained();
          // CPU of serve and replicate from the start of a vfsx round until replication caught up with it.
          let c0 = sample();
          recording = share === 'vfsx';
          // A workload's untimed preparation calls mark() when the measured part starts.
          const mark = async () => {
            await drained();
            c0 = sample();
          };
          r[share].push(await once(share, i, mark));
          await drained();
          recording = false;
          if (share === 'vfsx') sample().forEach((v, k) => { used[k] += v - c0[k]; });
          if (share === 'strict' && ALT !== null) sample().slice(0, 3).forEach((v, k) => { usedAlt[k] += v - c0[k]; });
        }
      }
      const spread = Object.fromEntries(SHARES.map((x) => [x, [Math.min(...r[x]), Math.max(...r[x])] as [number, number]]));
      const paired = Object.fromEntries(SHARES.map((x) => {
        const q = r[x].map((v, k) => (higher ? v / r.plain[k] : r.plain[k] / v));
        return [x, [median(q), Math.min(...q), Math.max(...q)] as [number, number, number]];
      }));
      const n = rounds * ops;
      const perK = (u: number[]) => ({ serve: (u[0] / n) * 1000, replicate: (u[1] / n) * 1000, redis: (u[2] / n) * 1000 });
      const cpu = ops > 0 ? perK(used) : null;
      const altCpu = ops > 0 && ALT !== null ? perK(usedAlt) : null;
      const wakes = ops > 0 ? { serve: used[3] / n, replicate: used[4] / n, redis: used[5] / n } : null;
      const commit = commits.length > 0 ? { p50: pct(commits, 0.5), p99: pct(commits, 0.99), n: commits.length } : null;
      rows.push({ name, unit, plain: median(r.plain), vfsx: median(r.vfsx), strict: median(r.strict), higherIsBetter: higher, spread, paired, cpu, altCpu, wakes, commit });
      process.stderr.write(`bench: ${name}: ${SHARES.map((x) => `${x} ${median(r[x]).toFixed(3)}`).join(' ')} ${unit}\n`);
    };

    if (ONLY !== 'journal') await smbWorkloads();
    async function smbWorkloads(): Promise<void> {
    await sideBySide('1000 x mkdir', 'ms/op', false, async (share, i) => {
      const cmds = Array.from({ length: 1000 }, (_, k) => `mkdir m${i}_${k}`).join('; ');
      return (await smb(share, cmds)).ms / 1000;
    }, ROUNDS, 1000);

    const small = join(local, 'small.bin');
    await writeFile(small, randomBytes(4096));
    await sideBySide('1000 x 4 KiB put', 'ms/op', false, async (share, i) => {
      const cmds = [`mkdir p${i}`, ...Array.from({ length: 1000 }, (_, k) => `put ${small} p${i}/f${k}`)].join('; ');
      return (await smb(share, cmds)).ms / 1000;
    }, ROUNDS, 1000);

    await sideBySide('500 x (rename + delete)', 'ms/op', false, async (share, i, mark) => {
      // The 500 files are put first, untimed, and replicated before the timed part.
      const before = commits.length;
      await smb(share, [`mkdir r${i}`, ...Array.from({ length: 500 }, (_, k) => `put ${small} r${i}/f${k}`)].join('; '));
      await mark();
      commits.length = before; // only the storm's commits count
      const cmds = Array.from({ length: 500 }, (_, k) => `rename r${i}/f${k} r${i}/g${k}; del r${i}/g${k}`).join('; ');
      return (await smb(share, cmds)).ms / 500;
    }, ROUNDS, 500);

    const big = join(local, 'big.bin');
    const fd = openSync(big, 'w');
    const chunk = randomBytes(8 << 20);
    for (let i = 0; i < 32; i++) writeSync(fd, chunk);
    closeSync(fd);
    await sideBySide('256 MiB put', 'MiB/s', true, async (share) => {
      settle(); // the previous round's file must not be written back during this one
      const { ms } = await smb(share, `put ${big} big.bin`);
      await rm(join(smbd.sharePath(share), 'big.bin'));
      return 256 / (ms / 1000);
    }, Math.max(ROUNDS, 5)); // disk-bound and noisy on a VM: more rounds

    // Reading a file the server has in its page cache (one just written, say): smbd's own path, no disk.
    await sideBySide('256 MiB get (cached)', 'MiB/s', true, async (share) => {
      const there = join(smbd.sharePath(share), 'big.bin');
      await copyFile(big, there); // untimed, not through SMB: nothing to report or replicate
      execFileSync('sync');
      try {
        const { ms } = await smb(share, 'get big.bin /dev/null');
        return 256 / (ms / 1000);
      } finally {
        await rm(there);
      }
    }, Math.max(ROUNDS, 5));

    await sideBySide('smbtorture smb2.bench.path-contention-shared (5 s)', 'opens/s', true, async (share) => {
      const { out } = await run('smbtorture', [`//127.0.0.1/${share}`, '-p', String(smbd.port), '-U', `${SMB_USER}%${SMB_PASS}`,
        'smb2.bench.path-contention-shared', '--option=torture:timelimit=5']);
      const rates = [...out.matchAll(/open\[num\/s=(\d+)/g)].map((m) => Number(m[1]));
      return rates.reduce((a, b) => a + b, 0) / Math.max(1, rates.length);
    });
    }

    if (ONLY === 'smb') {
      printReport(rows, null);
      return;
    }
    // Verdict latency as smbd sees it: a C client with the module's own encoder and a blocking socket
    // (bench/frame_peer.c), sequential create reports the policy judges, every other one strict.
    // First a default share's verdicts alone, then every other report strict (whose
    // durable writes the plain verdicts between them share the service and Redis with).
    const rttBin = buildFramePeer(local);
    await verdictRtt(rttBin, svc.socket, 3000); // a running service is warm (JIT)
    const alone = await verdictRtt(rttBin, svc.socket, 10000, true);
    const lat = [...alone.plain, ...alone.strict];
    const measured = await verdictRtt(rttBin, svc.socket, 20000);
    const mixedLat = measured.plain;
    const strictLat = measured.strict;

    // Ingest of reports that wait for verdicts: 64 connections, 5 seconds.
    const conns = await Promise.all(Array.from({ length: 64 }, () => BenchClient.connect(svc.socket)));
    let verdicts = 0;
    const until = Date.now() + 5000;
    let t0 = Date.now();
    await Promise.all(conns.map(async (k, i) => {
      await k.hello(100000 + i);
      for (let seq = 1; Date.now() < until; seq++) {
        const v = await k.create(seq, `in/${i}/${seq}`);
        if (v !== `transparent:${seq}`) throw new Error(`unexpected verdict ${v}`);
        k.done(seq);
        verdicts++;
      }
      await k.allAcked();
      k.close();
    }));
    const ingest = verdicts / ((Date.now() - t0) / 1000);

    // Ingest of async reports (mkdir + outcome, pipelined in windows of 200), counted once acknowledged.
    const aconns = await Promise.all(Array.from({ length: 16 }, () => BenchClient.connect(svc.socket)));
    let reports = 0;
    const auntil = Date.now() + 5000;
    t0 = Date.now();
    await Promise.all(aconns.map(async (k, i) => {
      await k.hello(200000 + i);
      for (let seq = 1; Date.now() < auntil;) {
        for (let w = 0; w < 200; w++, seq++) k.postMkdir(seq, `as/${i}/${seq}`);
        await k.allAcked();
        reports += 200;
      }
      k.close();
    }));
    const asyncIngest = reports / ((Date.now() - t0) / 1000);

    const floor = await echoFloor(rttBin);
    printReport(rows, { p50: pct(lat, 0.5), p99: pct(lat, 0.99), p999: pct(lat, 0.999), mixedP50: pct(mixedLat, 0.5), mixedP99: pct(mixedLat, 0.99), strictP50: pct(strictLat, 0.5), strictP99: pct(strictLat, 0.99), ingest, asyncIngest, floor });
  } finally {
    await unsubscribe?.();
    await reader.close();
    await smbd.destroy();
    await svc.stop(); // graceful, so VFSX_CHILD_NODE_ARGS=--cpu-prof profiles get written
  }
}

/**
 * n verdict round trips through the socket; latencies in microseconds of the
 * odd (plain) and even (strict, unless plainOnly) reports.
 */
async function verdictRtt(bin: string, socket: string, n: number, plainOnly = false): Promise<{ plain: number[]; strict: number[] }> {
  const { out } = await run(bin, ['client', socket, String(n), ...(plainOnly ? ['plain'] : [])]);
  return JSON.parse(out.trim().split('\n')[0]) as { plain: number[]; strict: number[] };
}

/**
 * Baseline: the same C client against a bare C frame echo server in another
 * process: what one Unix-socket round trip between two processes costs here.
 */
async function echoFloor(bin: string): Promise<{ p50: number; p99: number; p999: number }> {
  const dir = await mkdtemp(join(tmpdir(), 'vfsx-echo-'));
  const path = join(dir, 'echo.sock');
  const child = spawn(bin, ['echo', path], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => child.stdout?.once('data', r));
  try {
    await verdictRtt(bin, path, 3000);
    const { plain, strict } = await verdictRtt(bin, path, 20000);
    const lat = [...plain, ...strict];
    return { p50: pct(lat, 0.5), p99: pct(lat, 0.99), p999: pct(lat, 0.999) };
  } finally {
    child.kill();
    await rm(dir, { recursive: true, force: true });
  }
}

/** Flushes dirty pages and drops clean ones, so every large run starts alike. */
function settle(): void {
  execFileSync('sync');
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  } catch {
    /* not permitted here: sync alone */
  }
}

function machine(): string {
  const cpu = cpus()[0]?.model ?? 'unknown CPU';
  const samba = execFileSync('smbd', ['--version'], { encoding: 'utf8' }).trim();
  const kernel = execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim();
  return `${cpu}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Linux ${kernel}, ${samba}, Node ${process.version}`;
}

function printReport(rows: Row[], j: { p50: number; p99: number; p999: number; mixedP50: number; mixedP99: number; strictP50: number; strictP99: number; ingest: number; asyncIngest: number; floor: { p50: number; p99: number; p999: number } } | null): void {
  const date = new Date().toISOString().slice(0, 10);
  const out: string[] = [];
  const system = REPLICATION
    ? `the whole system: vfsx serve, vfsx replicate (nice 10, I/O best-effort 7), Redis, the DR site in its own network namespace behind a veth link shaped to ${LINK_MBIT} Mbit/s each way (tc tbf), run at nice 19 because it stands for a remote machine`
    : 'replication off (vfsx serve and Redis only)';
  out.push(`Measured ${date} on ${machine()}; ${system}; SMB over loopback with smbclient; medians of ${ROUNDS} interleaved rounds (256 MiB put: ${Math.max(ROUNDS, 5)}, caches dropped before each); replication caught up (untimed) after every round.`, '');
  if (ALT !== null) out.push(`The "vfsx strict" columns are a vfsx share with: ${ALT.join('; ')}.`, '');
  out.push('| workload | plain share | vfsx | vfsx / plain | vfsx / plain paired by round: median (min-max) | vfsx strict | strict / plain | CPU s per 1000 ops: serve / replicate / Redis | wake-ups per op: serve / replicate / Redis | change -> committed p50 / p99 |', '|---|---|---|---|---|---|---|---|---|---|');
  for (const r of rows) {
    const ratio = (v: number) => (r.higherIsBetter ? v / r.plain : r.plain / v).toFixed(2);
    const f = (v: number) => `${v.toFixed(r.unit === 'ms/op' ? 3 : 0)} ${r.unit}`;
    const three = (c: NonNullable<Row['cpu']>) => `${c.serve.toFixed(2)} / ${c.replicate.toFixed(2)} / ${c.redis.toFixed(2)}`;
    const cpu = r.cpu ? `${three(r.cpu)}${r.altCpu ? ` (third column: ${three(r.altCpu)})` : ''}` : '';
    const wakes = r.wakes ? `${r.wakes.serve.toFixed(1)} / ${r.wakes.replicate.toFixed(1)} / ${r.wakes.redis.toFixed(1)}` : '';
    const commit = r.commit ? `${Math.round(r.commit.p50)} / ${Math.round(r.commit.p99)} ms` : '';
    const pair = (x: string) => `${r.paired[x][0].toFixed(2)}x (${r.paired[x][1].toFixed(2)}-${r.paired[x][2].toFixed(2)})`;
    out.push(`| ${r.name} | ${f(r.plain)} | ${f(r.vfsx)} | ${ratio(r.vfsx)}x | ${pair('vfsx')} | ${f(r.strict)} | ${ratio(r.strict)}x | ${cpu} | ${wakes} | ${commit} |`);
  }
  for (const r of rows) {
    const noisy = SHARES.filter((x) => {
      const [lo, hi] = r.spread[x];
      return (hi - lo) / (r as unknown as Record<string, number>)[x] > 0.25;
    });
    if (noisy.length > 0) {
      const f = (v: number) => v.toFixed(r.unit === 'ms/op' ? 3 : 0);
      out.push('', `${r.name} varied by more than 25% across rounds (min-max): ${SHARES.map((x) => `${x} ${f(r.spread[x][0])}-${f(r.spread[x][1])}`).join(', ')} ${r.unit}.`);
    }
  }
  if (j) {
    out.push('', '| journal (warm service) | vfsx serve + Redis | baseline: bare C frame echo | |', '|---|---|---|---|');
    out.push(`| verdict latency (report -> policy -> verdict), p50 | ${j.p50.toFixed(0)} us | ${j.floor.p50.toFixed(0)} us | ${(j.p50 / j.floor.p50).toFixed(1)}x the floor |`);
    out.push(`| verdict latency, p99 | ${j.p99.toFixed(0)} us | ${j.floor.p99.toFixed(0)} us | ${(j.p99 / j.floor.p99).toFixed(1)}x the floor |`);
    out.push(`| verdict latency, p99.9 | ${j.p999.toFixed(0)} us | ${j.floor.p999.toFixed(0)} us | ${(j.p999 / j.floor.p999).toFixed(1)}x the floor |`);
    out.push(`| verdict latency between strict reports, p50 | ${j.mixedP50.toFixed(0)} us | ${j.floor.p50.toFixed(0)} us | ${(j.mixedP50 / j.floor.p50).toFixed(1)}x the floor |`);
    out.push(`| verdict latency between strict reports, p99 | ${j.mixedP99.toFixed(0)} us | ${j.floor.p99.toFixed(0)} us | ${(j.mixedP99 / j.floor.p99).toFixed(1)}x the floor |`);
    out.push(`| strict verdict latency (report -> durable record -> verdict), p50 | ${j.strictP50.toFixed(0)} us | ${j.floor.p50.toFixed(0)} us | ${(j.strictP50 / j.floor.p50).toFixed(1)}x the floor |`);
    out.push(`| strict verdict latency, p99 | ${j.strictP99.toFixed(0)} us | ${j.floor.p99.toFixed(0)} us | ${(j.strictP99 / j.floor.p99).toFixed(1)}x the floor |`);
    out.push(`| journal ingest, reports waiting for verdicts, 64 connections | ${Math.round(j.ingest)} ops/s | | |`);
    out.push(`| journal ingest, async reports (op + outcome) acknowledged, 16 connections | ${Math.round(j.asyncIngest)} ops/s | | |`);
  }
  out.push('', 'Ratios are speed relative to the plain share (1.00x = no overhead; higher is better). "vfsx / plain" divides the',
    'medians; "paired by round" takes each round\'s vfsx run against the same round\'s plain run (the VM\'s speed drifts',
    'between rounds, less within one), then the median and range of those ratios. Wake-ups: context switches of every',
    'thread of the process, per operation.',
    'vfsx: default settings with the ransomware policy (deny .locked/.crypt on create and rename), which the module',
    'applies itself, so nothing waits for the service. vfsx strict: vfsx:strict = yes, every create and rename waits',
    'for its verdict, and the verdict for the durable record in Redis. The journal rows measure the service\'s',
    'verdict path directly: the latency rows with a C client that encodes and waits as the module does',
    '(bench/frame_peer.c, 10,000 round trips of each kind) when the policy is not simple enough for the module:',
    'a default share\'s verdicts alone, then 10,000 more with a strict report between each two;',
    'the ingest rows with Node clients, many connections at once.');
  process.stdout.write(out.join('\n') + '\n');
}

main().catch((err) => {
  process.stderr.write(`bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
