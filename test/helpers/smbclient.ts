/** Runs real smbclient commands against a test smbd. */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
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

/**
 * Writes `n` files of `size` random bytes under `local` and puts them
 * through SMB into the new directory `dir` of the share, in one session;
 * throws when smbclient fails.
 */
export async function putRandomFiles(port: number, share: string, local: string, dir: string, n: number, size: number): Promise<void> {
  const cmds = [`mkdir ${dir}`];
  for (let i = 0; i < n; i++) {
    const f = join(local, `${dir}-${i}.bin`);
    await writeFile(f, randomBytes(size));
    cmds.push(`put ${f} ${dir}/f${i}.bin`);
  }
  const r = await smbclient(port, share, cmds.join('; '));
  if (r.code !== 0) throw new Error(`smbclient failed: ${r.stdout}${r.stderr}`);
}
