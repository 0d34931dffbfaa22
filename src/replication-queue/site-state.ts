/**
 * The Redis state of one DR site as the journal feeds it: its queue, its
 * order of batches, RPO sets, link and share state. `vfsx site remove`
 * drops it all for a site taken out of the configuration.
 */
import { Queue } from 'bullmq';
import IORedis from 'ioredis';
import type { VfsxConfig } from '../config/schema';
import { queueNameOf, redisOptions, stateKeys } from '../journal/redis-connection';

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
    const patterns = [`${p}:rpo${at}:*`, `${p}:order${at}:*`, `${p}:state:share${at}:*`, `${p}:state:scrub${at}:*`];
    const keys = [sk.site, sk.totals, sk.replicators, sk.latency, sk.siteBwlimit];
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
    await conn.quit().catch(() => conn.disconnect());
  }
}
