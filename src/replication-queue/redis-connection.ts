/**
 * ioredis connection options and the journal's own keys.
 */
import type { RedisOptions } from 'ioredis';
import type { VfsxConfig } from '../config/schema';

export function redisOptions(cfg: VfsxConfig['redis'], extra: RedisOptions = {}): RedisOptions {
  const base: RedisOptions = cfg.path
    ? { path: cfg.path, db: cfg.db }
    : { host: cfg.host, port: cfg.port, db: cfg.db };
  if (cfg.password) base.password = cfg.password;
  return {
    ...base,
    // Capped exponential backoff with jitter; ioredis reconnects by itself.
    retryStrategy: (times: number) => Math.min(2000, 50 * 2 ** Math.min(times, 6)) * (0.5 + Math.random() / 2),
    ...extra,
  };
}

export interface JournalKeys {
  /** The Redis Stream every report is appended to, in arrival order. */
  stream: string;
  /** Hash: cursor (last stream id handled) and low (oldest id still needed). */
  cursor: string;
  /** Capped list of records whose operation failed (audit). */
  failed: string;
}

export function journalKeys(prefix: string): JournalKeys {
  return { stream: `${prefix}:journal`, cursor: `${prefix}:journal:cursor`, failed: `${prefix}:failed-ops` };
}
