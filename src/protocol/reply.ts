/**
 * Replies from the service to the module (docs/protocol.md).
 */
import { encodeFrame } from './frame-decoder';

export const PROTOCOL_VERSION = 2;
/**
 * The hello answer's version to a module that offers folded reports
 * (`fold=1`): a report that carries its own outcome (`err=`) instead of a
 * later "done" frame. Modules that do not offer it get PROTOCOL_VERSION.
 */
export const PROTOCOL_FOLDS = 3;
/**
 * The hello answer's version to a module that offers folded reports and
 * metadata on content reports (`fold=1,meta=1`): DOS attributes and times
 * set through a handle may ride on its close or fsync report (`attrs=`,
 * `mtime=`, ...) instead of setdosattr and utimes reports of their own.
 */
export const PROTOCOL_META = 4;

export type Verdict =
  | { kind: 'transparent' }
  | { kind: 'fail'; errno: number }
  | { kind: 'unavailable' };

export function encodeVerdict(seq: number, v: Verdict): Buffer {
  switch (v.kind) {
    case 'transparent':
      return encodeFrame(`transparent:${seq}`);
    case 'fail':
      return encodeFrame(`fail:${seq}:${v.errno}`);
    case 'unavailable':
      return encodeFrame(`unavailable:${seq}`);
  }
}

/**
 * The hello answer; ops: what the policy may deny (they wait for verdicts),
 * rules: the policy for the module to apply itself (Policy.localRules).
 */
export function encodeHelloReply(version: number, ops: string[] | '*', rules: string | null = null): Buffer {
  return encodeFrame(`hello:${version}:${ops === '*' ? '*' : ops.join(',')}${rules ? `:${rules}` : ''}`);
}

/** Everything up to and including frame n of this connection is durable. */
export function encodeAck(n: number): Buffer {
  return encodeFrame(`ack:${n}`);
}
