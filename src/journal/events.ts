/**
 * Replication events over Redis pub/sub, so any number of watchers
 * (`vfsx events`, the dashboard, alert hooks) can follow them. Events other
 * than `committed` are also kept in a capped list for late joiners.
 */
import IORedis, { ChainableCommander, Redis } from 'ioredis';
import type { VfsxConfig } from '../config/schema';
import { closeConnection, redisOptions, stateKeys } from './redis-connection';

export const EVENT_TYPES = [
  'committed', 'failed', 'site-down', 'site-up', 'fail-open', 'rpo-threshold-crossed', 'rpo-recovered', 'scrub-finished', 'scrub-repaired',
  'left-out',
] as const;
export type EventType = (typeof EVENT_TYPES)[number];
/** The events alert hooks may react to by default. */
export const ALERT_EVENTS: EventType[] = ['site-down', 'site-up', 'fail-open', 'rpo-threshold-crossed', 'rpo-recovered', 'left-out'];

export interface VfsxEvent {
  type: EventType;
  /** ms since the epoch. */
  at: number;
  share?: string;
  site?: string;
  path?: string;
  op?: string;
  /** committed: ms from the service receiving the change to the site committing it. */
  latencyMs?: number;
  error?: string;
  rpoAgeMs?: number;
  thresholdMs?: number;
  files?: number;
  records?: number;
  /** scrub-finished: which pass, what it found and repaired (leftOut: differences the site cannot take). */
  scrub?: 'metadata' | 'content';
  differences?: number;
  repaired?: number;
  leftOut?: number;
  /** scrub-repaired: the difference found. */
  what?: string;
}

const KEEP_RECENT = 200;

export class EventBus {
  private readonly conn: Redis;
  private readonly keys: ReturnType<typeof stateKeys>;

  constructor(redis: VfsxConfig['redis'], conn?: Redis) {
    this.conn = conn ?? new IORedis(redisOptions(redis, { maxRetriesPerRequest: 1 }));
    this.keys = stateKeys(redis.prefix);
  }

  /** Publishes one event; never throws (events are best effort, the journal is the record). */
  async publish(ev: VfsxEvent): Promise<void> {
    await this.addTo(this.conn.pipeline(), ev).exec().catch(() => undefined);
  }

  /** Adds an event's commands to a caller's pipeline (one round trip with the caller's own writes). */
  addTo(p: ChainableCommander, ev: VfsxEvent): ChainableCommander {
    const json = JSON.stringify(ev);
    p.publish(this.keys.events, json);
    if (ev.type !== 'committed') p.lpush(this.keys.recent, json).ltrim(this.keys.recent, 0, KEEP_RECENT - 1);
    return p;
  }

  /** Notes spool files ingested (fail-open happened) for `vfsx status`. */
  async spoolIngested(files: number): Promise<void> {
    await this.conn.pipeline().hincrby(this.keys.failOpen, 'files', files).hset(this.keys.failOpen, 'lastAt', Date.now()).exec().catch(() => undefined);
  }

  async recent(n = 50): Promise<VfsxEvent[]> {
    return (await this.conn.lrange(this.keys.recent, 0, n - 1)).map((s) => JSON.parse(s) as VfsxEvent);
  }

  /** Calls onEvent for every event from now on; the returned function unsubscribes. */
  static async subscribe(redis: VfsxConfig['redis'], onEvent: (ev: VfsxEvent) => void): Promise<() => Promise<void>> {
    const sub = new IORedis(redisOptions(redis, { maxRetriesPerRequest: null }));
    const channel = stateKeys(redis.prefix).events;
    sub.on('error', () => undefined); // reconnects by itself, and resubscribes
    sub.on('message', (_ch: string, msg: string) => {
      try {
        onEvent(JSON.parse(msg) as VfsxEvent);
      } catch {
        // not ours
      }
    });
    await sub.subscribe(channel);
    return async () => {
      await closeConnection(sub);
    };
  }

  async close(): Promise<void> {
    await closeConnection(this.conn);
  }
}
