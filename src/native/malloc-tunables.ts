/**
 * glibc malloc tunables for the processes that move file data (vfsx
 * replicate, dr-site, resync, verify, restore).
 *
 * They turn every byte of a file into a few short-lived buffers (read,
 * sealed, framed; received, written). A block frame (4 MiB) was above
 * glibc's mmap threshold, so each one was a fresh mapping the kernel
 * faulted in and zeroed again, 4 KiB at a time (a fault costs about 14 us
 * on the virtual machine vfsx is measured on), and a heap top above the
 * trim threshold went back to the kernel at the next collection. With the
 * threshold at 32 MiB and the top kept up to 128 MiB, a frame reuses the
 * heap the last one freed. glibc reads its tunables only when the process
 * starts, so a command that wants them starts itself again with them set,
 * by execve(2): the same PID, so systemd and the tests keep supervising
 * and signalling the process they started. The systemd units set the
 * tunables, which skips that step. VFSX_HUGE_PAGES=0 turns this off.
 *
 * Transparent huge pages for glibc's heap (glibc.malloc.hugetlb=1,
 * glibc 2.35+, THP "madvise" or "always") are opt-in: VFSX_HUGE_PAGES=1.
 * They were the default until measured as a new user meets them: a fresh
 * `vfsx resync` of 2,000 x 4 KiB + 4 x 64 MiB into a fresh, idle site took
 * 3.3-3.8 s on huge pages against 3.0-3.1 s without (3 interleaved rounds
 * of each; the site's CPU 2.0-2.2 s against 1.7-1.8 s), and a second
 * upload into the same site gained nothing from them. On a virtual machine
 * whose free memory goes back to the host (free page reporting, as here),
 * a huge page is taken from memory the host must fault in again and zero,
 * while 4 KiB pages mostly come from memory freed moments before. Huge
 * pages were faster only where the memory freed by the round before was
 * still warm (back-to-back runs in one process: 1.4-1.5 s against
 * 1.6-1.9 s).
 */
import { readFileSync } from 'node:fs';
import { execve } from './addon';

/** What the data-moving processes ask of glibc's malloc (each one the admin set already stands). */
export const MALLOC_TUNABLES = ['glibc.malloc.mmap_threshold=33554432', 'glibc.malloc.trim_threshold=134217728'];

/** Added with VFSX_HUGE_PAGES=1: glibc's heap on transparent huge pages. */
export const HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1';

/** The kernel's THP mode: 'always', 'madvise', 'never', or null where there is none. */
export function thpMode(): string | null {
  try {
    return /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/**
 * The tunables a data-moving process asks for: MALLOC_TUNABLES, and first
 * HUGE_PAGES_TUNABLE when VFSX_HUGE_PAGES=1 and the kernel offers THP.
 */
export function wantedTunables(env: NodeJS.ProcessEnv = process.env): string[] {
  const mode = thpMode();
  return env.VFSX_HUGE_PAGES === '1' && (mode === 'always' || mode === 'madvise') ? [HUGE_PAGES_TUNABLE, ...MALLOC_TUNABLES] : MALLOC_TUNABLES;
}

/** env with `wanted` added to whatever GLIBC_TUNABLES already holds (a name already there keeps its value). */
export function withMallocTunables(env: NodeJS.ProcessEnv, wanted: string[] = MALLOC_TUNABLES): NodeJS.ProcessEnv {
  const t = env.GLIBC_TUNABLES ?? '';
  const named = new Set(t.split(':').map((kv) => kv.split('=')[0]));
  const add = wanted.filter((kv) => !named.has(kv.split('=')[0]));
  if (add.length === 0) return env;
  return { ...env, GLIBC_TUNABLES: [...(t ? [t] : []), ...add].join(':') };
}

/** Whether GLIBC_TUNABLES already names every tunable in `wanted` (this module's settings or the admin's own). */
export function mallocTunablesSet(env: NodeJS.ProcessEnv = process.env, wanted: string[] = MALLOC_TUNABLES): boolean {
  return withMallocTunables(env, wanted) === env;
}

/**
 * The DR site's V8 heap: its first old-generation limit at 256 MiB rather
 * than V8's few MiB. The site's live heap is about 9 MiB, but every block
 * frame it receives is a 4 MiB buffer outside that heap whose size V8
 * weighs against the limit, so a 256 MiB upload cost some 30 full
 * collections (plus concurrent marking and sweeping: a fifth of the site's
 * CPU in perf). With this flag it cost 4-8, and the site's user CPU per
 * 256 MiB fell from a median of 0.78 s to 0.50 s (4 interleaved rounds
 * each; 128 MiB gave 0.56 s). The price: its resident peak rose by about
 * 40 MiB (median 210 to 224 MiB; the malloc tunables above keep up to
 * 128 MiB of freed heap anyway).
 */
export const DR_SITE_NODE_FLAGS = ['--initial-old-space-size=256'];

/** Which of `flags` (--name=value) node was not started with: an option given on the command line stands. */
export function missingNodeFlags(flags: string[], execArgv: string[] = process.execArgv): string[] {
  const given = new Set(execArgv.map((a) => a.split('=')[0].replaceAll('_', '-')));
  return flags.filter((f) => !given.has(f.split('=')[0].replaceAll('_', '-')));
}

/**
 * Starts this process again (execve, same PID and arguments) with the
 * malloc tunables when GLIBC_TUNABLES does not name them all yet (unless
 * VFSX_HUGE_PAGES=0), and with the node options in `nodeFlags` it was not
 * started with (they size V8's heap, which must be set before it starts);
 * otherwise returns and the process runs as it is. Call it first thing,
 * before any work or open handle matters.
 */
export function restartWithTunables(nodeFlags: string[] = []): void {
  if (process.platform !== 'linux') return;
  const wanted = wantedTunables();
  const tunables = process.env.VFSX_HUGE_PAGES !== '0' && !mallocTunablesSet(process.env, wanted);
  const flags = missingNodeFlags(nodeFlags);
  if (!tunables && flags.length === 0) return;
  // Where the C library ignores the tunables (older glibc, musl) this costs one restart and changes nothing.
  execve(process.execPath, [process.argv0, ...flags, ...process.execArgv, ...process.argv.slice(1)], tunables ? withMallocTunables(process.env, wanted) : process.env);
}
