/** Reads the journal of a test service with the product's own reader. */
import { JournalReader } from '../../src/operator/journal-reader';
import type { ChangeRecord } from '../../src/ops/change-record';
import { validateConfig } from '../../src/config/load-config';
import type { ServiceHarness } from './service-harness';
import { waitFor } from './wait-for';

async function withReader<T>(svc: ServiceHarness, f: (r: JournalReader) => Promise<T>): Promise<T> {
  const cfg = validateConfig(svc.config);
  const r = new JournalReader({ redis: cfg.redis, queueName: cfg.journal.queueName });
  try {
    return await f(r);
  } finally {
    await r.close();
  }
}

export const readJournal = (svc: ServiceHarness): Promise<ChangeRecord[]> => withReader(svc, (r) => r.queued());

/** Operations that failed or were refused (`vfsx journal --failed`), oldest first. */
export const readFailed = (svc: ServiceHarness): Promise<ChangeRecord[]> => withReader(svc, (r) => r.failed());

/** Waits until the journal holds records matching pred, and returns them. */
export async function waitForRecords(
  svc: ServiceHarness,
  what: string,
  pred: (recs: ChangeRecord[]) => boolean,
  timeoutMs = 15000,
): Promise<ChangeRecord[]> {
  return waitFor(what, async () => {
    const recs = await readJournal(svc);
    return pred(recs) ? recs : undefined;
  }, timeoutMs, 100);
}
