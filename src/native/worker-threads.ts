/**
 * What the service's worker threads (the journal pump, the status reader)
 * share: lowering their own CPU priority, and being stopped.
 */
import { getPriority, setPriority } from 'node:os';
import type { Worker } from 'node:worker_threads';

/**
 * Lowers the calling thread (pid 0 is the calling thread on Linux) to
 * `nice` unless it already runs that low; the error when not allowed.
 */
export function lowerThisThread(nice: number): Error | null {
  try {
    if (getPriority(0) < nice) setPriority(0, nice);
    return null;
  } catch (err) {
    return err as Error;
  }
}

/** Asks a worker to stop with `message`; terminates it if it has not exited after graceMs. */
export function stopWorker(w: Worker | null, message: unknown, graceMs = 5000): Promise<void> {
  return new Promise<void>((resolve) => {
    if (!w) return resolve();
    const timer = setTimeout(() => void w.terminate(), graceMs);
    w.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    w.postMessage(message);
  });
}
