/**
 * Builds ioredis connection options from the configuration.
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

/** Keys of the journal that are not BullMQ's. */
export function journalKeys(prefix: string): { pending: (instance: string) => string; instances: string; failed: string } {
  return {
    pending: (instance: string) => `${prefix}:pending:${instance}`,
    instances: `${prefix}:pending-instances`,
    failed: `${prefix}:failed-ops`,
  };
}
