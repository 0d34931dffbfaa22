/**
 * Transparent huge pages for the processes that move file data (vfsx
 * replicate, dr-site, resync, verify, restore).
 *
 * They turn every byte of a file into a few short-lived buffers (read,
 * sealed, framed; received, written), and glibc's malloc hands each one
 * memory the kernel has to fault in again, 4 KiB at a time. On the virtual
 * machine vfsx is measured on a fault costs 14 us (0.25 us per 4 KiB within
 * a huge page), which made page faults about a third of an initial sync's
 * CPU: 65,000 of them in the replicator for 256 MiB. glibc backs its heap
 * with huge pages only when asked before the process starts
 * (GLIBC_TUNABLES=glibc.malloc.hugetlb=1, glibc 2.35+; the kernel must
 * allow THP as "madvise" or "always"), so a command that wants them starts
 * itself again with the tunable set, by execve(2): the same PID, so
 * systemd and the tests keep supervising and signalling the process they
 * started. The systemd units set the tunables, which skips that step.
 * VFSX_HUGE_PAGES=0 turns this off.
 *
 * Two more tunables keep the memory of one block frame for the next: a
 * frame (4 MiB) is above glibc's mmap threshold, so each one was a fresh
 * mapping whose huge pages the kernel zeroed again, and a heap top above
 * the trim threshold went back to the kernel at the next collection. With
 * the threshold at 32 MiB and the top kept up to 128 MiB, the site's
 * receive of 256 MiB spent 0.1-0.4 s less system time (4 interleaved
 * pairs; a process keeps up to 128 MiB of freed heap for reuse).
 */
import { readFileSync } from 'node:fs';
import { execve } from './addon';

/** What the data-moving processes ask of glibc's malloc (each one the admin set already stands). */
export const MALLOC_TUNABLES = ['glibc.malloc.hugetlb=1', 'glibc.malloc.mmap_threshold=33554432', 'glibc.malloc.trim_threshold=134217728'];

/** The kernel's THP mode: 'always', 'madvise', 'never', or null where there is none. */
export function thpMode(): string | null {
  try {
    return /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/** env with glibc's malloc tunables added to whatever GLIBC_TUNABLES already holds (a name already there keeps its value). */
export function withHugePages(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const t = env.GLIBC_TUNABLES ?? '';
  const named = new Set(t.split(':').map((kv) => kv.split('=')[0]));
  const add = MALLOC_TUNABLES.filter((kv) => !named.has(kv.split('=')[0]));
  if (add.length === 0) return env;
  return { ...env, GLIBC_TUNABLES: [...(t ? [t] : []), ...add].join(':') };
}

/** Whether GLIBC_TUNABLES already names every malloc tunable (this module's settings or the admin's own). */
export function hugePagesSet(env: NodeJS.ProcessEnv = process.env): boolean {
  return withHugePages(env) === env;
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
 * malloc tunables when GLIBC_TUNABLES does not name them all yet and the
 * kernel offers THP, and with the node options in `nodeFlags` it was not
 * started with (they size V8's heap, which must be set before it starts);
 * otherwise returns and the process runs as it is. Call it first thing,
 * before any work or open handle matters.
 */
export function restartWithHugePages(nodeFlags: string[] = []): void {
  if (process.platform !== 'linux') return;
  const mode = thpMode();
  const tunables = process.env.VFSX_HUGE_PAGES !== '0' && !hugePagesSet() && (mode === 'always' || mode === 'madvise');
  const flags = missingNodeFlags(nodeFlags);
  if (!tunables && flags.length === 0) return;
  // Where the C library ignores the tunable (older glibc, musl) this costs one restart and changes nothing.
  execve(process.execPath, [process.argv0, ...flags, ...process.execArgv, ...process.argv.slice(1)], tunables ? withHugePages(process.env) : process.env);
}
