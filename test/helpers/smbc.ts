/** Runs test/helpers/smbc_ops.py: libsmbclient writes at an offset and truncates. */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { REPO } from './service-harness';
import { SMB_PASS, SMB_USER } from './smbd-harness';

function run(port: number, share: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('/usr/bin/python3', [join(REPO, 'test/helpers/smbc_ops.py'), `smb://127.0.0.1:${port}/${share}`, SMB_USER, SMB_PASS, ...args],
      { timeout: 60000 }, (err, _out, stderr) => (err ? reject(new Error(`smbc_ops ${args.join(' ')}: ${stderr}`)) : resolve()));
  });
}

export const smbcWrite = (port: number, share: string, name: string, offset: number, data: Buffer) =>
  run(port, share, ['write', name, String(offset), data.toString('hex')]);

export const smbcTruncate = (port: number, share: string, name: string, size: number) =>
  run(port, share, ['truncate', name, String(size)]);
