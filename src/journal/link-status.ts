/**
 * Logs every state change of a Redis link (ioredis: wait, connecting,
 * connect, ready, reconnecting, close, end) as one "old -> new" line.
 */
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';

const EVENTS = ['connect', 'ready', 'reconnecting', 'close', 'end'] as const;

export function logLinkStatus(client: Redis, link: string, logger: Logger): void {
  let last = client.status;
  for (const ev of EVENTS) {
    client.on(ev, () => {
      const now = client.status;
      if (now === last) return;
      const level = now === 'ready' || now === 'connecting' || now === 'connect' ? 'info' : 'warn';
      logger[level]({ link, from: last, to: now }, `redis link ${last} -> ${now}`);
      last = now;
    });
  }
}
