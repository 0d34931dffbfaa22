/** Builds and runs native/test/msg_driver.c (the module's encoder, without Samba). */
import { execFileSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO } from './service-harness';

let bin: string | undefined;

export function msgDriver(args: string[]): Buffer {
  if (!bin) {
    bin = join(mkdtempSync(join(tmpdir(), 'vfsx-cdrv-')), 'msg_driver');
    execFileSync('gcc', ['-O1', '-Wall', '-Werror', '-o', bin,
      join(REPO, 'native/test/msg_driver.c'), join(REPO, 'native/vfsx_msg.c')]);
  }
  return execFileSync(bin, args);
}
