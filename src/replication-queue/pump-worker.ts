/**
 * Worker-thread entry of the journal pump (started by PumpThread only).
 */
import { parentPort, workerData } from 'node:worker_threads';
import pino from 'pino';
import { JournalPump } from './journal-pump';
import { Replicator } from './replicator';

function main(): void {
  if (!parentPort) return; // not a worker: nothing to do
  const port = parentPort;
  const logger = pino({ level: workerData.logLevel, base: { svc: 'vfsx', c: 'pump' }, timestamp: pino.stdTimeFunctions.isoTime });
  const pump = new JournalPump({ redis: workerData.redis, journal: workerData.journal, logger });
  pump.start();
  const replicator = workerData.replication.enabled
    ? new Replicator({ redis: workerData.redis, queueName: workerData.journal.queueName, replication: workerData.replication, logger: logger.child({ c: 'replicator' }) })
    : null;
  replicator?.start();
  const report = setInterval(() => port.postMessage({
    stats: { ...pump.stats, pending: pump.pending.length },
    replication: replicator ? { ...replicator.stats } : null,
    latencies: replicator?.takeLatencies() ?? [],
  }), 1000);
  port.on('message', (m) => {
    if (m === 'close') {
      clearInterval(report);
      void Promise.allSettled([pump.close(), replicator?.close()]).finally(() => process.exit(0));
    }
  });
}

main();
