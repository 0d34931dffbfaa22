/** What the benchmarks share: timing, medians, dropping caches, big random files, the mixed tree. */
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/** Milliseconds since `t0` (process.hrtime.bigint()). */
/**
 * The environment for baseline tools (rsync): without the huge-page tunable
 * the bench process restarted itself with, as they run on a machine.
 */
export function baselineEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  delete env.GLIBC_TUNABLES;
  return env;
}

export const ms = (t0: bigint): number => Number(process.hrtime.bigint() - t0) / 1e6;

export const median = (xs: number[]): number => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];

/** Flushes dirty pages and drops the page cache, so each round reads from disk. */
export function settle(): void {
  execFileSync('sync');
  try {
    writeFileSync('/proc/sys/vm/drop_caches', '3\n');
  } catch {
    /* sync alone */
  }
}

/** A file of `mib` MiB of random bytes (8 MiB chunks, each one different). */
export function bigFile(path: string, mib: number): void {
  const fd = openSync(path, 'w');
  const chunk = randomBytes(8 << 20);
  for (let i = 0; i < mib / 8; i++) writeSync(fd, chunk.map((b) => b ^ i));
  closeSync(fd);
}

/** The mixed tree of issue 12: 2,000 x 4 KiB in small/ and 4 x 64 MiB; returns its size in MiB. */
export function mixedTree(src: string): number {
  mkdirSync(join(src, 'small'), { recursive: true });
  for (let i = 0; i < 2000; i++) writeFileSync(join(src, 'small', `f${i}.bin`), randomBytes(4096));
  for (let i = 0; i < 4; i++) bigFile(join(src, `large${i}.bin`), 64);
  return (2000 * 4096 + 4 * 64 * 2 ** 20) / 2 ** 20;
}

/** Compiles bench/frame_peer.c (a C client, echo or service stand-in on the bridge socket) into dir. */
export function buildFramePeer(dir: string): string {
  const bin = join(dir, 'frame_peer');
  execFileSync('gcc', ['-O2', '-Wall', '-Werror', '-o', bin, join(__dirname, '../../bench/frame_peer.c'),
    join(__dirname, '../../native/vfsx_msg.c'), '-lpthread']);
  return bin;
}
