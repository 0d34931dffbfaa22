/**
 * Splits a byte stream into length-prefixed frames (4-byte big-endian length,
 * then the payload). Buffers bytes and yields only whole frames, whatever the
 * chunking of the stream.
 */
import { VfsxError } from '../errors/vfsx-error';

export interface FrameDecoderOptions {
  /** Largest payload accepted, in bytes. */
  maxFrameBytes: number;
}

export class FrameDecoder {
  private readonly maxFrameBytes: number;
  private chunks: Buffer[] = [];
  private buffered = 0;

  constructor(options: FrameDecoderOptions) {
    this.maxFrameBytes = options.maxFrameBytes;
  }

  /** Bytes held back waiting for the rest of a frame. */
  get pendingBytes(): number {
    return this.buffered;
  }

  /** Adds bytes and returns every frame now complete. Throws on a frame that breaks the rules. */
  push(chunk: Buffer): Buffer[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Buffer[] = [];
    let buf = this.chunks.length === 1 ? this.chunks[0] : Buffer.concat(this.chunks, this.buffered);
    let off = 0;
    while (buf.length - off >= 4) {
      const len = buf.readUInt32BE(off);
      if (len === 0) {
        throw new VfsxError('VFSX_ERR_PROTOCOL_EMPTY_FRAME', 'empty frame');
      }
      if (len > this.maxFrameBytes) {
        throw new VfsxError(
          'VFSX_ERR_PROTOCOL_FRAME_TOO_LARGE',
          `frame of ${len} bytes exceeds the limit of ${this.maxFrameBytes}`,
        );
      }
      if (buf.length - off < 4 + len) break;
      frames.push(buf.subarray(off + 4, off + 4 + len));
      off += 4 + len;
    }
    if (off > 0) buf = buf.subarray(off);
    this.chunks = buf.length > 0 ? [buf] : [];
    this.buffered = buf.length;
    return frames;
  }
}

/** Wraps a payload in a frame. */
export function encodeFrame(payload: Buffer | string): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'latin1') : payload;
  const out = Buffer.allocUnsafe(4 + body.length);
  out.writeUInt32BE(body.length, 0);
  body.copy(out, 4);
  return out;
}
