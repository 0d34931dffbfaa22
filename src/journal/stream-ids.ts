/** Redis Stream ids ("ms-seq") compared and stepped without floating point. */
export function parseId(id: string): [bigint, bigint] {
  const [ms, seq] = id.split('-');
  return [BigInt(ms), BigInt(seq ?? '0')];
}

/**
 * Orders two stream ids. The pump compares ids for every record it holds;
 * parsing both into BigInts took 0.65 s of its thread per 350,000 records.
 * Ids are decimal without leading zeros, so a longer part is a larger one
 * and parts of one length order as strings.
 */
export function compareIds(a: string, b: string): number {
  if (a === b) return 0;
  const da = a.indexOf('-');
  const db = b.indexOf('-');
  const ms = compareDecimal(a, 0, da < 0 ? a.length : da, b, 0, db < 0 ? b.length : db);
  if (ms !== 0) return ms;
  return compareDecimal(a, da < 0 ? a.length : da + 1, a.length, b, db < 0 ? b.length : db + 1, b.length);
}

/** Compares the decimals a[a0, a1) and b[b0, b1) (empty is 0; no leading zeros). */
function compareDecimal(a: string, a0: number, a1: number, b: string, b0: number, b1: number): number {
  const la = a1 > a0 && !(a1 - a0 === 1 && a.charCodeAt(a0) === 48) ? a1 - a0 : 0;
  const lb = b1 > b0 && !(b1 - b0 === 1 && b.charCodeAt(b0) === 48) ? b1 - b0 : 0;
  if (la !== lb) return la < lb ? -1 : 1;
  for (let i = 0; i < la; i++) {
    const x = a.charCodeAt(a0 + i);
    const y = b.charCodeAt(b0 + i);
    if (x !== y) return x < y ? -1 : 1;
  }
  return 0;
}

/** The field of a journal stream entry that holds a whole group commit (packBatch). */
export const BATCH_FIELD = 'b';

/**
 * One group commit as one field value: a line per report, its kind ('r' for
 * a record, 'o' for an outcome) then its value. JSON never holds a raw
 * newline and an outcome is "id errno", so the lines split back exactly.
 */
export function packBatch(lines: string[]): string {
  return lines.join('\n');
}

/**
 * The (kind, value) pairs of one journal stream entry: an entry holds every
 * record ('r', JSON) and outcome ('o', "id err") of one group commit, packed
 * in its BATCH_FIELD, or (entries written before 2026-12-05) as field/value pairs.
 */
export function* entryPairs(fields: string[]): Generator<[string, string]> {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] !== BATCH_FIELD) {
      yield [fields[i], fields[i + 1]];
      continue;
    }
    const packed = fields[i + 1];
    for (let at = 0; at < packed.length;) {
      let nl = packed.indexOf('\n', at);
      if (nl < 0) nl = packed.length;
      if (nl > at) yield [packed[at], packed.slice(at + 1, nl)];
      at = nl + 1;
    }
  }
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

/**
 * A top-level field of a record's JSON (journal 'r' values, written by
 * JSON.stringify) without parsing the whole record: status reads count
 * thousands of them. Inside a JSON string every quote is escaped, so
 * `"key":` can only be the key itself. Falls back to a full parse when the
 * text is not as expected. A record's keys come in the order OpDispatcher
 * builds them: id and share before names and args (objects whose keys vary),
 * ts after them and followed by no object, so the first "id"/"share" and the
 * last "ts" are the record's own.
 */
export function recordField(json: string, key: 'id' | 'share' | 'ts'): string | number | undefined {
  const at = key === 'ts' ? json.lastIndexOf(`"${key}":`) : json.indexOf(`"${key}":`);
  if (at >= 0) {
    const from = at + key.length + 3;
    if (json[from] === '"') {
      let end = json.indexOf('"', from + 1);
      while (end > 0 && json[end - 1] === '\\') end = json.indexOf('"', end + 1);
      if (end > 0) {
        const raw = json.slice(from, end + 1);
        if (!raw.includes('\\')) return raw.slice(1, -1);
      }
    } else {
      const m = /^-?\d+/.exec(json.slice(from, from + 24));
      if (m) return Number(m[0]);
    }
  }
  try {
    const v = (JSON.parse(json) as Record<string, unknown>)[key];
    return typeof v === 'string' || typeof v === 'number' ? v : undefined;
  } catch {
    return undefined;
  }
}
