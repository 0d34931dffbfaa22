/**
 * A counting semaphore whose holders may take several units at once (a
 * task slot, or bytes of memory). Waiters are served in order: a large
 * request is not overtaken by smaller ones behind it.
 */
export class Slots {
  private free: number;
  private readonly waiting: Array<{ n: number; wake: () => void }> = [];

  constructor(private readonly capacity: number) {
    this.free = capacity;
  }

  /**
   * Waits until n units (at most the capacity) are free and takes them; the
   * function returned gives them back (once, however often it is called).
   */
  async acquire(n = 1): Promise<() => void> {
    const take = Math.max(0, Math.min(n, this.capacity));
    if (this.waiting.length === 0 && this.free >= take) this.free -= take;
    else await new Promise<void>((wake) => this.waiting.push({ n: take, wake }));
    let held = true;
    return () => {
      if (!held) return;
      held = false;
      this.free += take;
      while (this.waiting.length > 0 && this.free >= this.waiting[0].n) {
        const w = this.waiting.shift() as { n: number; wake: () => void };
        this.free -= w.n;
        w.wake();
      }
    };
  }

  async with<T>(fn: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await fn();
    } finally {
      release();
    }
  }
}
