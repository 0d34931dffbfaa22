/**
 * Diagnostic, not the deployed system (that is bench.ts): what background
 * work of a known size costs a plain share on this machine, whoever does it
 * and at whatever priority. A stand-in process wakes every PERIOD ms and
 * spins for SPIN us (so it takes a known share of one core at a known rate
 * of wake-ups), at nice 10 or as SCHED_IDLE, while smbclient puts 1000 x 4
 * KiB files into a plain share; rounds interleaved with no background at
 * all. The whole system's ratio in bench.ts is best read next to this one:
 * vfsx serve, vfsx replicate, Redis and the DR site are such background
 * work, and if a stand-in of similar size costs as much at the lowest
 * priority, the rest of the cost is the machine's, not the scheduler's.
 *
 *   node dist/bench/background-bench.js   (VFSX_BENCH_ROUNDS, default 5)
 */
import { execFile, spawn, ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { SMB_PASS, SMB_USER, SmbdHarness } from '../test/helpers/smbd-harness';

const ROUNDS = Number(process.env.VFSX_BENCH_ROUNDS ?? 5);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

interface Load { name: string; spinUs: number; periodMs: number; sched: 'none' | 'nice10' | 'idle' }

const LOADS: Load[] = [
  { name: 'no background', spinUs: 0, periodMs: 0, sched: 'none' },
  { name: '10% of a core, 250 wake-ups/s, nice 10', spinUs: 400, periodMs: 4, sched: 'nice10' },
  { name: '10% of a core, 1000 wake-ups/s, nice 10', spinUs: 100, periodMs: 1, sched: 'nice10' },
  { name: '40% of a core, 1000 wake-ups/s, nice 10', spinUs: 400, periodMs: 1, sched: 'nice10' },
  { name: '40% of a core, 1000 wake-ups/s, SCHED_IDLE', spinUs: 400, periodMs: 1, sched: 'idle' },
];

function startLoad(l: Load): ChildProcess | null {
  if (l.sched === 'none') return null;
  const script = `const spin=()=>{const e=process.hrtime.bigint()+${l.spinUs * 1000}n;while(process.hrtime.bigint()<e);};setInterval(spin,${l.periodMs});`;
  const argv = [process.execPath, '-e', script];
  const [cmd, ...args] = l.sched === 'idle' ? ['chrt', '--idle', '0', ...argv] : ['nice', '-n', '10', ...argv];
  return spawn(cmd, args, { stdio: 'ignore' });
}

function smbclient(port: number, cmds: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    execFile('smbclient', ['//127.0.0.1/plain', '-p', String(port), '-U', `${SMB_USER}%${SMB_PASS}`, '-c', cmds],
      { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`smbclient failed: ${stderr || stdout}`));
        else resolve(Number(process.hrtime.bigint() - t0) / 1e6);
      });
  });
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vfsx-bgbench-'));
  const small = join(dir, 'small.bin');
  await writeFile(small, randomBytes(4096));
  const smbd = await SmbdHarness.start([{ name: 'plain' }]);
  const times = new Map<string, number[]>(LOADS.map((l) => [l.name, []]));
  try {
    for (let round = 0; round < ROUNDS; round++) {
      const order = round % 2 === 0 ? LOADS : [...LOADS].reverse();
      for (const [k, l] of order.entries()) {
        const p = startLoad(l);
        try {
          await new Promise((r) => setTimeout(r, 300)); // the stand-in is up and in its rhythm
          const d = `r${round}_${k}`;
          const cmds = [`mkdir ${d}`, ...Array.from({ length: 1000 }, (_, i) => `put ${small} ${d}/f${i}`)].join('; ');
          times.get(l.name)?.push((await smbclient(smbd.port, cmds)) / 1000);
        } finally {
          p?.kill('SIGKILL');
        }
      }
      process.stderr.write(`background-bench: round ${round + 1}/${ROUNDS}\n`);
    }
  } finally {
    await smbd.stop();
    await rm(dir, { recursive: true, force: true });
  }
  const base = median(times.get(LOADS[0].name) ?? []);
  console.log(`\nBackground work against a plain share, measured ${new Date().toISOString().slice(0, 10)} on ${cpus()[0]?.model.trim()}, ${cpus().length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB RAM: 1000 x 4 KiB put with smbclient over loopback while a stand-in process spins; medians of ${ROUNDS} interleaved rounds.\n`);
  console.log('| background | 1000 x 4 KiB put | against no background |');
  console.log('|---|---|---|');
  for (const l of LOADS) {
    const m = median(times.get(l.name) ?? []);
    console.log(`| ${l.name} | ${m.toFixed(3)} ms/op | ${(base / m).toFixed(2)}x |`);
  }
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
