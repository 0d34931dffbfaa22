/** Redis Stream ids ("ms-seq") compared and stepped without floating point. */
export function parseId(id: string): [bigint, bigint] {
  const [ms, seq] = id.split('-');
  return [BigInt(ms), BigInt(seq ?? '0')];
}

export function compareIds(a: string, b: string): number {
  const [am, as] = parseId(a);
  const [bm, bs] = parseId(b);
  if (am !== bm) return am < bm ? -1 : 1;
  return as === bs ? 0 : as < bs ? -1 : 1;
}

/**
 * The (kind, value) pairs of one journal stream entry: an entry holds every
 * record ('r', JSON) and outcome ('o', "id err") of one group commit.
 */
export function* entryPairs(fields: string[]): Generator<[string, string]> {
  for (let i = 0; i + 1 < fields.length; i += 2) yield [fields[i], fields[i + 1]];
}

/** The smallest id greater than id. */
export function nextId(id: string): string {
  const [ms, seq] = parseId(id);
  return `${ms}-${seq + 1n}`;
}

/**
 * The pump's checkpoint field `held`: per share, how many records it holds
 * for their settle window and the oldest one's time. Anything unreadable
 * counts as nothing held.
 */
export function heldSummary(field: string | undefined): Record<string, [number, number]> {
  if (!field) return {};
  try {
    const v = JSON.parse(field) as unknown;
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return {};
    const out: Record<string, [number, number]> = {};
    for (const [share, x] of Object.entries(v)) {
      if (Array.isArray(x) && typeof x[0] === 'number' && typeof x[1] === 'number') out[share] = [x[0], x[1]];
    }
    return out;
  } catch {
    return {};
  }
}
