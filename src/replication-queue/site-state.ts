/**
 * The Redis state of one DR site as the journal feeds it: its queue, its
 * order of batches, RPO sets, link and share state. `vfsx site remove`
 * drops it all for a site taken out of the configuration.
 */
import { Queue } from 'bullmq';
import IORedis, { type Redis } from 'ioredis';
import type { VfsxConfig } from '../config/schema';
import { closeConnection, queueNameOf, redisOptions, stateKeys } from '../journal/redis-connection';

/**
 * Marks a site for a full sync: a scrub pass of every share (as for a new
 * site, src/replication/scrubber.ts), its scrub history voided so that
 * every share gets that pass. For a site that missed changes (replication
 * was off, or the site recovered an older index).
 */
export async function markForFullSync(conn: Redis, prefix: string, site: string): Promise<void> {
  const sk = stateKeys(prefix, site);
  const p = conn.pipeline();
  for (const share of await conn.smembers(sk.shares)) p.hdel(sk.scrub(share), 'lastMetadataAt', 'lastContentAt');
  p.hset(sk.site, 'initialSync', 'pending');
  for (const [err] of (await p.exec()) ?? []) if (err) throw err;
}

/** Stops feeding `site` and drops its queue and state (not the DR site's data). */
export async function dropSite(config: Pick<VfsxConfig, 'redis' | 'journal'>, site: string): Promise<{ jobs: number; keys: number }> {
  const conn = new IORedis(redisOptions(config.redis, { maxRetriesPerRequest: 1, connectTimeout: 3000 }));
  conn.on('error', () => undefined);
  const queue = new Queue(queueNameOf(config.journal.queueName, site), { connection: conn.duplicate(), prefix: config.redis.prefix });
  queue.on('error', () => undefined);
  try {
    const p = config.redis.prefix;
    const sk = stateKeys(p, site);
    // First out of the set the pump reads, so nothing new is queued for it.
    await conn.srem(sk.sites, site);
    const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
    const jobs = Object.values(counts).reduce((a, b) => a + b, 0);
    await queue.obliterate({ force: true });
    const at = site === 'default' ? '' : `@${site}`;
    const patterns = [`${p}:rpo${at}:*`, `${p}:order${at}:*`, `${p}:state:share${at}:*`, `${p}:state:scrub${at}:*`, `${p}:state:left-out${at}:*`];
    const keys = [sk.site, sk.totals, sk.replicators, sk.latency, sk.siteBwlimit, sk.siteBwBucket];
    for (const pat of patterns) {
      let cursor = '0';
      do {
        const [next, found] = await conn.scan(cursor, 'MATCH', pat, 'COUNT', 1000);
        cursor = next;
        keys.push(...found);
      } while (cursor !== '0');
    }
    const n = keys.length > 0 ? await conn.del(...keys) : 0;
    return { jobs, keys: n };
  } finally {
    await queue.close().catch(() => undefined);
    await closeConnection(conn);
  }
}
