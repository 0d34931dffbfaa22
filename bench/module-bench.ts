/**
 * Diagnostic, not the deployed system (that is bench.ts): the vfsx module's
 * own cost in smbd. The vfsx share talks to bench/frame_peer.c sink, a C
 * stand-in for `vfsx serve` that answers the hello with the README policy's
 * rules (as serve would, folded reports on), acknowledges everything and
 * records nothing. Side by side with a plain share on the same smbd, rounds
 * interleaved. If the vfsx share is as fast as the plain one here but not in
 * bench.ts, the cost is in the service side of the system, not in smbd.
 *
 *   node dist/bench/module-bench.js   (VFSX_BENCH_ROUNDS, default 3)
 */
import { execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { Policy } from '../src/ops/policy';
import { encodeHelloReply, PROTOCOL_FOLDS } from '../src/protocol/reply';
import { SMB_PASS, SMB_USER, SmbdHarness } from '../test/helpers/smbd-harness';
import { buildFramePeer } from './bench-util';

const ROUNDS = Number(process.env.VFSX_BENCH_ROUNDS ?? 3);
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function smbclient(port: number, share: string, cmds: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    execFile('smbclient', [`//127.0.0.1/${share}`, '-p', String(port), '-U', `${SMB_USER}%${SMB_PASS}`, '-c', cmds],
      { maxBuffer: 64 << 20 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`smbclient failed: ${stderr || stdout}`));
        else resolve(Number(process.hrtime.bigint() - t0) / 1e6);
      });
  });
}

async function main(): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'vfsx-modbench-'));
  const bin = buildFramePeer(dir);
  // The hello answer serve gives a folding module under the README's policy.
  const policy = new Policy([{ name: 'ransomware', action: 'deny', errno: 'EACCES', ops: ['create', 'rename'], extensions: ['.locked', '.crypt'] }]);
  const hello = encodeHelloReply(PROTOCOL_FOLDS, policy.verdictOps(), policy.localRules()).subarray(4).toString('latin1');
  const socket = join(dir, 'sink.sock');
  const sink = spawn(bin, ['sink', socket, hello], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((r) => sink.stdout?.once('data', r));
  await mkdir(join(dir, 'spool'));
  const smbd = await SmbdHarness.start([{ name: 'plain' }, { name: 'vfsx', vfsx: { socket, spool: join(dir, 'spool') } }]);
  const small = join(dir, 'small.bin');
  await writeFile(small, randomBytes(4096));
  const workloads: Array<[string, number, (i: number) => { prep?: string; timed: string }]> = [
    ['1000 x mkdir', 1000, (i) => ({ timed: Array.from({ length: 1000 }, (_, k) => `mkdir m${i}_${k}`).join('; ') })],
    ['1000 x 4 KiB put', 1000, (i) => ({ timed: [`mkdir p${i}`, ...Array.from({ length: 1000 }, (_, k) => `put ${small} p${i}/f${k}`)].join('; ') })],
    ['500 x (rename + delete)', 500, (i) => ({
      prep: [`mkdir r${i}`, ...Array.from({ length: 500 }, (_, k) => `put ${small} r${i}/f${k}`)].join('; '),
      timed: Array.from({ length: 500 }, (_, k) => `rename r${i}/f${k} r${i}/g${k}; del r${i}/g${k}`).join('; '),
    })],
  ];
  const rows: string[] = [];
  try {
    for (const [name, ops, make] of workloads) {
      const r: Record<string, number[]> = { plain: [], vfsx: [] };
      for (let i = 0; i < ROUNDS; i++) {
        for (const share of i % 2 === 0 ? ['plain', 'vfsx'] : ['vfsx', 'plain']) {
          const w = make(i);
          if (w.prep) await smbclient(smbd.port, share, w.prep);
          r[share].push((await smbclient(smbd.port, share, w.timed)) / ops);
        }
      }
      const p = median(r.plain);
      const v = median(r.vfsx);
      rows.push(`| ${name} | ${p.toFixed(3)} ms/op | ${v.toFixed(3)} ms/op | ${(p / v).toFixed(2)}x |`);
      process.stderr.write(`module-bench: ${name}: plain ${r.plain.map((x) => x.toFixed(3)).join(' ')}, vfsx ${r.vfsx.map((x) => x.toFixed(3)).join(' ')}\n`);
    }
  } finally {
    await smbd.destroy();
    sink.kill();
    await rm(dir, { recursive: true, force: true });
  }
  const samba = execFileSync('smbd', ['--version'], { encoding: 'utf8' }).trim();
  process.stdout.write([
    `The module alone, measured ${new Date().toISOString().slice(0, 10)} on ${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} cores, ` +
      `${Math.round(totalmem() / 2 ** 30)} GiB RAM, ${samba}: the vfsx share's service is a C stand-in that records nothing ` +
      `(bench/frame_peer.c sink); medians of ${ROUNDS} interleaved rounds.`,
    '',
    '| workload | plain share | vfsx, service stand-in | vfsx / plain |',
    '|---|---|---|---|',
    ...rows,
    '',
  ].join('\n'));
}

main().catch((err) => {
  process.stderr.write(`${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
