/**
 * The change record: what the journal stores for one reported operation
 * (docs/journal.md). Names that are not valid UTF-8 are stored base64 under
 * the same key with the suffix B64 (pathB64, toB64, ...).
 */
export type Outcome = 'pending' | 'confirmed' | 'failed' | 'unknown';

export interface ChangeRecord {
  /** `${pid}-${start}-${seq}`: unique per smbd process instance and operation. */
  id: string;
  v: 1;
  instance: string;
  pid: number;
  seq: number;
  share: string;
  user: string;
  origpath: string;
  op: string;
  /** Share-relative names: path, stream, to, to_stream, from, target. */
  names: Record<string, string>;
  /** Operation arguments other than names (mode, size, times, ...). */
  args: Record<string, string | number>;
  /** Dirty byte ranges [offset, length] for close/fsync. */
  ranges?: Array<[number, number]>;
  /** Milliseconds since the epoch when the service received the report. */
  ts: number;
  outcome: Outcome;
  /** errno of a failed operation (outcome 'failed'), or of close/fsync. */
  errno?: number;
  source: 'live' | 'spool';
}

/** Where the dispatcher puts records; implemented by the replication queue. */
export interface ChangeSink {
  /** Durably records an operation about to run (awaiting its outcome); urgent: someone waits for it (write now). */
  stage(rec: ChangeRecord, urgent?: boolean): Promise<void>;
  /** Durably records the outcome of a staged operation (err 0 = it happened). */
  resolve(instance: string, seq: number, err: number): Promise<void>;
  /** Durably records an operation that already happened (close, fsync). */
  append(rec: ChangeRecord, urgent?: boolean): Promise<void>;
  /** False while a write is known to fail at once (the store is unreachable). */
  writable(): boolean;
}
