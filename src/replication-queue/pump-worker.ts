/**
 * Worker-thread entry of the journal pump (started by PumpThread only).
 */
import { parentPort, workerData } from 'node:worker_threads';
import pino from 'pino';
import { JournalPump } from './journal-pump';

function main(): void {
  if (!parentPort) return; // not a worker: nothing to do
  const port = parentPort;
  const logger = pino({ level: workerData.logLevel, base: { svc: 'vfsx', c: 'pump' }, timestamp: pino.stdTimeFunctions.isoTime });
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
