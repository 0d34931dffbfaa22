import type { Readable } from 'node:stream';

/** Collects a child process's JSON log lines (pino) into `sink`; other lines as {msg}. */
export function collectJsonLines(stream: Readable | null, sink: Array<Record<string, unknown>>): void {
  let buf = '';
  stream?.on('data', (chunk: Buffer) => {
    buf += chunk.toString('utf8');
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      try {
        sink.push(JSON.parse(line));
      } catch {
        sink.push({ msg: line });
      }
    }
  });
}
