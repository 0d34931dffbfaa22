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
 * started. The systemd units set the tunable, which skips that step.
 * VFSX_HUGE_PAGES=0 turns this off.
 */
import { readFileSync } from 'node:fs';
import { execve } from './addon';

export const HUGE_PAGES_TUNABLE = 'glibc.malloc.hugetlb=1';

/** The kernel's THP mode: 'always', 'madvise', 'never', or null where there is none. */
export function thpMode(): string | null {
  try {
    return /\[(\w+)\]/.exec(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'))?.[1] ?? null;
  } catch {
    return null;
  }
}

/** env with glibc's huge-page tunable added to whatever GLIBC_TUNABLES already holds. */
export function withHugePages(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const t = env.GLIBC_TUNABLES;
  if (t && /(^|:)glibc\.malloc\.hugetlb=/.test(t)) return env;
  return { ...env, GLIBC_TUNABLES: t ? `${t}:${HUGE_PAGES_TUNABLE}` : HUGE_PAGES_TUNABLE };
}

/** Whether GLIBC_TUNABLES already says what malloc does with huge pages (this module's setting or the admin's own). */
export function hugePagesSet(env: NodeJS.ProcessEnv = process.env): boolean {
  return withHugePages(env) === env;
}

/**
 * Starts this process again (execve, same PID and arguments) with the
 * huge-page tunable when GLIBC_TUNABLES does not say yet what malloc does
 * with huge pages and the kernel offers THP; otherwise returns and the
 * process runs as it is. Call it first thing, before any work or open
 * handle matters.
 */
export function restartWithHugePages(): void {
  if (process.platform !== 'linux' || process.env.VFSX_HUGE_PAGES === '0' || hugePagesSet()) return;
  const mode = thpMode();
  if (mode !== 'always' && mode !== 'madvise') return;
  // Where the C library ignores the tunable (older glibc, musl) this costs one restart and changes nothing.
  execve(process.execPath, [process.argv0, ...process.execArgv, ...process.argv.slice(1)], withHugePages(process.env));
}
