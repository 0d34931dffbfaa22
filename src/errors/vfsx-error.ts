/**
 * The one error class of vfsx. `code` is stable (VFSX_ERR_<AREA>_<WHAT>);
 * messages may change. The original error, if any, is kept as `cause`.
 */
export type VfsxErrorCode =
  | 'VFSX_ERR_PROTOCOL_FRAME_TOO_LARGE'
  | 'VFSX_ERR_PROTOCOL_EMPTY_FRAME'
  | 'VFSX_ERR_PROTOCOL_MALFORMED'
  | 'VFSX_ERR_PROTOCOL_NO_HELLO'
  | 'VFSX_ERR_PROTOCOL_VERSION'
  | 'VFSX_ERR_OPS_UNKNOWN_OP'
  | 'VFSX_ERR_OPS_BAD_ARGS'
  | 'VFSX_ERR_CONFIG_INVALID'
  | 'VFSX_ERR_CONFIG_READ'
  | 'VFSX_ERR_JOURNAL_UNAVAILABLE'
  | 'VFSX_ERR_JOURNAL_TIMEOUT'
  | 'VFSX_ERR_SOCKET_IN_USE'
  | 'VFSX_ERR_NATIVE_ADDON'
  /** A name string with a lone surrogate that stands for no byte (src/protocol/byte-names.ts). */
  | 'VFSX_ERR_BAD_NAME'
  | 'VFSX_ERR_DR_HASH_MISMATCH'
  | 'VFSX_ERR_DR_MISSING_BLOCKS'
  | 'VFSX_ERR_DR_INVALID_PATH'
  | 'VFSX_ERR_DR_NOT_FOUND'
  | 'VFSX_ERR_DR_CONFLICT'
  | 'VFSX_ERR_DR_BAD_BLOCK'
  | 'VFSX_ERR_DR_NOT_A_DIRECTORY'
  | 'VFSX_ERR_DR_FORBIDDEN'
  | 'VFSX_ERR_DR_DAMAGED'
  | 'VFSX_ERR_DR_BUSY'
  /** The DR site's object storage does not answer (or refuses): retry later. */
  | 'VFSX_ERR_DR_STORAGE'
  | 'VFSX_ERR_DR_BAD_REPLY'
  | 'VFSX_ERR_DR_REPO_STATE'
  | 'VFSX_ERR_REPO_KEY'
  | 'VFSX_ERR_REPO_PASSPHRASE'
  | 'VFSX_ERR_RESTORE_DEST_NOT_EMPTY'
  | 'VFSX_ERR_REPL_TORN'
  /** A file with more blocks than the DR site takes (site-sync.ts, MAX_FILE_BLOCKS). */
  | 'VFSX_ERR_REPL_TOO_LARGE'
  | 'VFSX_ERR_REPL_SITE_DOWN'
  /** A tree sync that left some paths out (each failed on its own: too large, a name the site cannot hold, unreadable); the rest is synced. */
  | 'VFSX_ERR_REPL_PARTIAL';

export class VfsxError extends Error {
  readonly code: VfsxErrorCode;

  constructor(code: VfsxErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'VfsxError';
    this.code = code;
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

const RETRYABLE_SYSCALL_CODES = new Set([
  'EAGAIN', 'ECONNRESET', 'ECONNREFUSED', 'ETIMEDOUT', 'EPIPE', 'EHOSTUNREACH', 'ENOTCONN',
]);

/**
 * The one place that decides whether an error may go away by itself (retry it)
 * or is final (a protocol violation, a bad argument, a missing source file).
 */
export function isRetryable(err: unknown): boolean {
  if (err instanceof VfsxError) {
    return err.code === 'VFSX_ERR_JOURNAL_UNAVAILABLE' || err.code === 'VFSX_ERR_JOURNAL_TIMEOUT'
      || err.code === 'VFSX_ERR_REPL_TORN' || err.code === 'VFSX_ERR_REPL_SITE_DOWN';
  }
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && RETRYABLE_SYSCALL_CODES.has(code)) return true;
  const msg = err instanceof Error ? err.message : '';
  return /Connection is closed|Stream isn't writeable|connect ECONNREFUSED/.test(msg);
}
