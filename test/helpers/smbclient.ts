/** Runs real smbclient commands against a test smbd. */
import { execFile } from 'node:child_process';
import { SMB_PASS, SMB_USER } from './smbd-harness';

export interface SmbResult {
  code: number;
  stdout: string;
  stderr: string;
  /** Every NT_STATUS_* smbclient printed. */
  statuses: string[];
}

export function smbclient(port: number, share: string, commands: string, extraArgs: string[] = [], timeoutMs = 120000): Promise<SmbResult> {
  return new Promise((resolve) => {
    execFile(
      'smbclient',
      [`//127.0.0.1/${share}`, '-p', String(port), '-U', `${SMB_USER}%${SMB_PASS}`, '-c', commands, ...extraArgs],
      { timeout: timeoutMs, maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        const all = `${stdout}\n${stderr}`;
        resolve({
          code: err ? ((err as { code?: number }).code ?? 1) : 0,
          stdout,
          stderr,
          statuses: all.match(/NT_STATUS_[A-Z_]+/g) ?? [],
        });
      },
    );
  });
}

/** Quotes a name for smbclient's command parser. */
export function q(name: string): string {
  return `"${name}"`;
}
