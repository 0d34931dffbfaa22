/**
 * `vfsx journal`: prints change records for people (a line each) or for
 * scripts (--json: one JSON record per line).
 */
import { sitesOf } from '../config/schema';
import type { VfsxConfig } from '../config/schema';
import type { ChangeRecord } from '../ops/change-record';
import { JournalReader } from '../operator/journal-reader';

export interface JournalCommandOptions {
  share?: string;
  json: boolean;
  follow: boolean;
  pending: boolean;
  all: boolean;
  failed: boolean;
}

/** A name as typed: quoted when it holds blanks, quotes, '=' or control bytes. */
const shown = (v: string) => (/[\s"=\x00-\x1f\x7f]/.test(v) ? JSON.stringify(v) : v);

function human(r: ChangeRecord): string {
  const names = Object.entries(r.names).map(([k, v]) => (k === 'path' ? shown(v) : `${k}=${shown(v)}`));
  const args = Object.entries(r.args).map(([k, v]) => `${k}=${v}`);
  const ranges = r.ranges ? [`ranges=${r.ranges.map(([o, l]) => `${o}+${l}`).join(';')}`] : [];
  const outcome = r.outcome === 'confirmed' ? '' : ` [${r.outcome}${r.errno ? ` errno=${r.errno}` : ''}]`;
  return `${new Date(r.ts).toISOString()} ${r.share} ${r.user} ${r.op} ${[...names, ...args, ...ranges].join(' ')}${outcome}`;
}

export async function journalCommand(config: VfsxConfig, o: JournalCommandOptions): Promise<number> {
  const reader = new JournalReader({ redis: config.redis, queueName: config.journal.queueName, sites: sitesOf(config.replication).map((s) => s.name) });
  const print = (r: ChangeRecord) => {
    if (o.share !== undefined && r.share !== o.share) return;
    process.stdout.write(`${o.json ? JSON.stringify(r) : human(r)}\n`);
  };
  try {
    if (o.follow) await reader.follow(print);
    for (const r of o.failed ? await reader.failed() : o.pending ? await reader.pending() : await reader.queued(o.all)) print(r);
    if (o.follow) {
      await new Promise<void>((resolve) => {
        process.once('SIGINT', resolve);
        process.once('SIGTERM', resolve);
      });
    }
    return 0;
  } finally {
    await reader.close();
  }
}
