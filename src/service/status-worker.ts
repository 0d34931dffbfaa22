/**
 * Worker-thread entry of the status reader (started by StatusThread only).
 * Reads one at a time, in the order asked; at the replicator's niceness,
 * since it is off the verdict path like the journal pump.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { lowerThisThread } from '../native/worker-threads';
import { StatusReader } from '../operator/status';
import type { StatusReply } from './status-thread';

function main(): void {
  if (!parentPort) return; // not a worker: nothing to do
  const port = parentPort;
  const config = workerData.config as ConstructorParameters<typeof StatusReader>[0];
  // Where lowering is not allowed, it reads at the service's priority: no worse than before it had a thread.
  lowerThisThread((config.replication as { nice?: number }).nice ?? 0);
  const reader = new StatusReader(config);
  let chain: Promise<void> = Promise.resolve();
  port.on('message', (m: { id?: number; close?: boolean }) => {
    if (m.close) {
      void chain.then(() => reader.close()).finally(() => process.exit(0));
      return;
    }
    const id = Number(m.id);
    chain = chain.then(async () => {
      let reply: StatusReply;
      try {
        reply = { id, status: await reader.read() };
      } catch (err) {
        reply = { id, error: err instanceof Error ? err.message : String(err) };
      }
      port.postMessage(reply);
    });
  });
}

main();
