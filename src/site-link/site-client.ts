/**
 * What the replication engine, verify and restore need of a DR site: the
 * plain client (src/site-link/dr-client.ts) or the same calls
 * through an encrypted repository's cipher (sealed-site.ts).
 */
export interface BlockScope {
  bucket: string;
  path: string;
  at?: number;
  /** Where the blocks are in the object's block list (at most 65,536 from `first`): the site checks only those. */
  span?: { first: number; count: number };
}

export interface SiteClient {
  /** True when everything goes to the site sealed with the repository's keys. */
  readonly encrypted: boolean;
  call<T = unknown>(method: string, params: unknown): Promise<T>;
  /** object.list a page at a time (each handed to onPage before the next is asked for); call('object.list') joins them. */
  list(params: object, onPage: (objects: unknown[]) => void | Promise<void>): Promise<void>;
  /** The id the site knows a block by (sha256, or a keyed HMAC in an encrypted repository). */
  blockId(data: Buffer): string;
  /** The ids of a run's blocks (blockSize bytes each, the last may be shorter); large runs are hashed on the thread pool. */
  blockIds(run: Buffer, blockSize: number): Promise<string[]>;
  putBlocks(blocks: Buffer[], ids?: string[]): Promise<number>;
  /** Blocks by id, each checked against its id (and opened) before it is returned. */
  getBlocks(ids: string[], where?: BlockScope): Promise<Buffer[]>;
  /** Objects the last listings left out because they failed authentication (and forgets them). */
  takeUnreadable(): string[];
  onClose(fn: () => void): void;
  close(): void;
}
