/**
 * Room reserved in front of a buffer of blocks for the header of the frame
 * that will carry them: a `blocks.put` frame ([u32 length][JSON][blocks])
 * can then be laid out around the blocks where they are, instead of every
 * block being copied into a new frame (measured: 70 ms of the replicator's
 * main thread per 256 MiB sent). The room is used once; a buffer without
 * room, or blocks not back to back behind it, are framed by copying.
 */

/** ArrayBuffer -> bytes reserved in front of the view handed out. */
const reserved = new WeakMap<ArrayBufferLike, number>();

/** A new buffer of `size` bytes (not zero-filled) with `room` bytes reserved in front of it. */
export function allocWithRoom(size: number, room: number): Buffer {
  const whole = Buffer.allocUnsafeSlow(room + size);
  if (room > 0) reserved.set(whole.buffer, room);
  return whole.subarray(room);
}

/**
 * When `blocks` lie back to back right behind reserved room of at least
 * `head` bytes: one view of the head's place followed by every block (the
 * caller writes the head into its first `head` bytes), and the room is
 * used up. Otherwise null.
 */
export function claimRoom(blocks: Buffer[], head: number): Buffer | null {
  if (blocks.length === 0) return null;
  const ab = blocks[0].buffer;
  const room = reserved.get(ab);
  if (room === undefined || head > room || blocks[0].byteOffset !== room) return null;
  let end = room;
  for (const b of blocks) {
    if (b.buffer !== ab || b.byteOffset !== end) return null;
    end += b.length;
  }
  reserved.delete(ab);
  return Buffer.from(ab, room - head, head + end - room);
}

/** Room enough for the head of a `blocks.put` frame of n blocks (the JSON request with a 64-hex id and a size per block). */
export function putFrameRoom(n: number): number {
  return 4 + 128 + 100 * n;
}
