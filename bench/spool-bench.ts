/**
 * npm run bench (part 5): what smbd pays while the service is down and the
 * module spools every change (fail-open, `on_failure = allow`), side by side
 * with a plain share on the same smbd. The spool is made durable with one
 * fdatasync per burst (SPOOL_SYNC_MS in native/vfsx_link.c).
 * Prints a Markdown table. Asserts nothing.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SMB_PASS, SMB_USER, SmbdHarness } from '../test/helpers/smbd-harness';

const ROUNDS = Number(process.env.VFSX_BENCH_ROUNDS ?? 3);
const SHARES = ['plain', 'spooling'] as const;
const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

function smbclient(port: number, share: string, cmds: string): Promise<number> {
  const t0 = process.hrtime.bigint();
  return new Promise((resolve, reject) => {
    execFile('smbclient', [`//127.0.0.1/${share}`, '-p', String(port), '-U', `${SMB_USER}%${SMB_PASS}`, '-c', cmds], { maxBuffer: 64 << 20 },
      (err) => (err ? reject(err) : resolve(Number(process.hrtime.bigint() - t0) / 1e6)));
  });
}

async function main(): Promise<void> {
  const local = await mkdtemp(join(tmpdir(), 'vfsx-spool-bench-'));
  const spool = join(local, 'spool');
  // No service listens on this socket: every change goes to the spool.
  const smbd = await SmbdHarness.start([
    { name: 'plain' },
    { name: 'spooling', vfsx: { socket: join(local, 'no-service.sock'), spool } },
  ]);
  try {
    const small = join(local, 'small.bin');
    await writeFile(small, randomBytes(4096));
    const workloads: Array<[string, (i: number) => string, number]> = [
      ['smbclient mkdir storm (2000)', (i) => Array.from({ length: 2000 }, (_, k) => `mkdir m${i}_${k}`).join('; '), 2000],
      ['1000 x 4 KiB put', (i) => [`mkdir p${i}`, ...Array.from({ length: 1000 }, (_, k) => `put ${small} p${i}/f${k}`)].join('; '), 1000],
    ];
    const lines = ['| workload, service stopped | plain share | vfsx, spooling | spooling / plain |', '|---|---|---|---|'];
    for (const [name, cmds, ops] of workloads) {
      const r: Record<string, number[]> = { plain: [], spooling: [] };
      for (let i = 0; i < ROUNDS; i++) {
        for (const share of i % 2 === 0 ? SHARES : [...SHARES].reverse()) r[share].push((await smbclient(smbd.port, share, cmds(i))) / ops);
      }
      const p = median(r.plain);
      const s = median(r.spooling);
      lines.push(`| ${name} | ${p.toFixed(3)} ms/op | ${s.toFixed(3)} ms/op | ${(p / s).toFixed(2)}x |`);
    }
    const files = readdirSync(spool).filter((n) => n.endsWith('.spool'));
    lines.push('', `Spool files written: ${files.length} (every change of the spooling share went there, each burst flushed with fdatasync).`);
    process.stdout.write(`\n${lines.join('\n')}\n`);
  } finally {
    await smbd.destroy();
    await rm(local, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`spool bench failed: ${err instanceof Error ? err.stack : String(err)}\n`);
  process.exitCode = 1;
});
