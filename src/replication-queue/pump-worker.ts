/**
 * Worker-thread entry of the journal pump (started by PumpThread only).
 */
import { parentPort, workerData } from 'node:worker_threads';
import pino from 'pino';
import { lowerThisThread } from '../native/worker-threads';
import { JournalPump } from './journal-pump';

function main(): void {
  if (!parentPort) return; // not a worker: nothing to do
  const port = parentPort;
  const logger = pino({ level: workerData.logLevel, base: { svc: 'vfsx', c: 'pump' }, timestamp: pino.stdTimeFunctions.isoTime });
  // Off the verdict path: this thread yields the cores to smbd and to the service's main thread, at the replicator's niceness.
  const err = lowerThisThread((workerData.replication as { nice?: number } | undefined)?.nice ?? 0);
  if (err) logger.warn({ err }, 'could not lower the pump thread\'s priority');
  const pump = new JournalPump({ redis: workerData.redis, journal: workerData.journal, replication: workerData.replication, logger });
  pump.start();
  const report = setInterval(() => port.postMessage({ stats: { ...pump.stats, pending: pump.pending.length } }), 1000);
  port.on('message', (m) => {
    if (m === 'close') {
      clearInterval(report);
      void pump.close().finally(() => process.exit(0));
    }
  });
}

main();
