/**
 * Per-path ordering for a replicator that runs several records at once.
 * A record holds its paths; two records conflict when one path equals, or
 * lies below, the other (a directory rename must not overlap work inside
 * the directory, a file's commit must not overlap its parent's). Grants are
 * first come, first served: a request waits for every conflicting holder
 * AND every earlier conflicting waiter, so records of one path keep their
 * journal order while unrelated paths proceed in parallel.
 */

const related = (a: string, b: string): boolean =>
  a === b || a === '' || b === '' || b.startsWith(`${a}/`) || a.startsWith(`${b}/`);

interface Entry {
  key: string;
  paths: string[];
  done: Promise<void>;
}

export class PathLocks {
  private readonly entries: Entry[] = [];

  /** Runs `fn` once no earlier entry for a related path (in `key`'s namespace, e.g. the share) is still unfinished. */
  async run<T>(key: string, paths: string[], fn: () => Promise<T>): Promise<T> {
    const waits = this.entries
      .filter((e) => e.key === key && e.paths.some((p) => paths.some((q) => related(p, q))))
      .map((e) => e.done);
    let release!: () => void;
    const entry: Entry = { key, paths, done: new Promise<void>((r) => { release = r; }) };
    this.entries.push(entry);
    try {
      await Promise.all(waits);
      return await fn();
    } finally {
      this.entries.splice(this.entries.indexOf(entry), 1);
      release();
    }
  }

  get size(): number {
    return this.entries.length;
  }
}
