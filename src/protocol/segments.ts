/**
 * How the DR site groups a file's block list: segments of SEGMENT_BLOCKS
 * block ids, each named by the SHA-256 of its ids. The site stores
 * versions as segment lists; a client that changes a few blocks of a large
 * file commits the segment list with only the changed segments spelt out
 * (docs/dr-site.md, "Patch commits"), and an encrypted repository binds a
 * version's sealed metadata to its segment list.
 */
import { createHash } from 'node:crypto';

export const SEGMENT_BLOCKS = 256;

export function segmentHash(blocks: string[]): string {
  return createHash('sha256').update(blocks.join('\n')).digest('hex');
}

/** A whole block list's segment hashes, in order. */
export function segmentsOf(blocks: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < blocks.length; i += SEGMENT_BLOCKS) out.push(segmentHash(blocks.slice(i, i + SEGMENT_BLOCKS)));
  return out;
}
