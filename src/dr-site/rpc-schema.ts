/**
 * The published JSON-RPC interface of the DR site: one params schema per
 * method (docs/dr-site.md). Every request is validated against it.
 */
const bucket = { type: 'string', pattern: '^[A-Za-z0-9._-]{1,64}$' } as const;
/** Sealed names of an encrypted repository are longer than the plaintext (src/repository/repo-cipher.ts). */
const path = { type: 'string', minLength: 1, maxLength: 16384 } as const;
const hash = { type: 'string', pattern: '^[0-9a-f]{64}$' } as const;
const meta = {
  type: 'object',
  additionalProperties: false,
  properties: {
    mode: { type: 'integer', minimum: 0, maximum: 0o177777 },
    uid: { type: 'integer', minimum: 0 },
    gid: { type: 'integer', minimum: 0 },
    mtimeNs: { type: 'string', pattern: '^-?[0-9]{1,30}$' },
    dosAttrs: { type: 'integer', minimum: 0 },
    xattrs: { type: 'object', additionalProperties: { type: 'string', maxLength: 1 << 20 }, maxProperties: 256 },
    /** An encrypted repository's sealed metadata (then the only property). */
    enc: { type: 'string', maxLength: 1 << 25 },
  },
} as const;
const at = { type: 'integer', minimum: 0 } as const;

const commitProps = {
  path, meta,
  kind: { enum: ['file', 'dir', 'symlink'] },
  size: { type: 'integer', minimum: 0 },
  blockSize: { type: 'integer', minimum: 512, maximum: 1 << 26 },
  blocks: { type: 'array', items: hash, maxItems: 1 << 22 },
  /** A patch commit: the version's segment list (instead of blocks)... */
  segments: { type: 'array', items: hash, maxItems: 1 << 14 },
  /** ...and the block lists of segments the site may not have. */
  newSegments: { type: 'array', maxItems: 1024, items: { type: 'array', items: hash, minItems: 1, maxItems: 256 } },
  target: { type: 'string', maxLength: 4096 },
} as const;

const keyRecord = {
  type: 'object',
  additionalProperties: false,
  required: ['id', 'created', 'label', 'kdf', 'wrapped'],
  properties: {
    id: { type: 'string', pattern: '^[0-9a-f]{16}$' },
    created: { type: 'integer', minimum: 0 },
    label: { type: 'string', maxLength: 128 },
    kdf: {
      type: 'object', additionalProperties: false, required: ['name', 'N', 'r', 'p', 'salt'],
      properties: { name: { const: 'scrypt' }, N: { type: 'integer' }, r: { type: 'integer' }, p: { type: 'integer' }, salt: { type: 'string', maxLength: 128 } },
    },
    wrapped: { type: 'string', maxLength: 512 },
  },
} as const;

/** A commit names its blocks or its segments, never both. */
const BLOCKS_AND_SEGMENTS = { properties: { blocks: {}, segments: {} }, required: ['blocks', 'segments'] } as const;

const obj = (properties: Record<string, unknown>, required: string[]) =>
  ({ type: 'object', additionalProperties: false, properties, required }) as const;

export const RPC_PARAMS: Record<string, object> = {
  'bucket.ensure': obj({ bucket }, ['bucket']),
  'blocks.missing': obj({ hashes: { type: 'array', items: hash, maxItems: 100000 } }, ['hashes']),
  'blocks.put': obj({ blocks: { type: 'array', maxItems: 4096, items: obj({ hash, size: { type: 'integer', minimum: 0 } }, ['hash', 'size']) } }, ['blocks']),
  /** With bucket and path (and at), only blocks of that object are served: what a scoped token must send. */
  // span: where in the object's block list the hashes are (first index, count): the site then checks only those blocks.
  'blocks.get': obj({
    hashes: { type: 'array', items: hash, maxItems: 4096 }, bucket, path, at,
    span: obj({ first: { type: 'integer', minimum: 0 }, count: { type: 'integer', minimum: 1, maximum: 65536 } }, ['first', 'count']),
  }, ['hashes']),
  'object.commit': { ...obj({ bucket, ...commitProps }, ['bucket', 'path', 'kind', 'meta']), not: BLOCKS_AND_SEGMENTS },
  /**
   * Segments (block lists of up to 256 ids) stored ahead of the commit that
   * names them: how a file too large for one message commits (its segment
   * list, after its segments in pieces). Every block must be stored.
   */
  'segments.put': obj({ segments: { type: 'array', minItems: 1, maxItems: 1024, items: { type: 'array', items: hash, minItems: 1, maxItems: 256 } } }, ['segments']),
  /** Several commits in one transaction (one fsync): what a resync of many small files sends. */
  'object.commitMany': obj({
    bucket,
    objects: { type: 'array', minItems: 1, maxItems: 512, items: { ...obj(commitProps, ['path', 'kind', 'meta']), not: BLOCKS_AND_SEGMENTS } },
  }, ['bucket', 'objects']),
  'object.delete': obj({ bucket, path }, ['bucket', 'path']),
  /** Several deletes in one transaction: what a batch of removed files sends. */
  'object.deleteMany': obj({ bucket, paths: { type: 'array', minItems: 1, maxItems: 512, items: path } }, ['bucket', 'paths']),
  'object.move': obj({ bucket, from: path, to: path }, ['bucket', 'from', 'to']),
  /** With segments (indexes): the file's segment list and the block lists of those segments. */
  'object.stat': obj({ bucket, path, at, blocks: { type: 'boolean' }, segments: { type: 'array', maxItems: 1024, items: { type: 'integer', minimum: 0 } } }, ['bucket', 'path']),
  /** With blocks: every file's block list too (a content verify in one call). */
  // blocksUpTo: each file of at most that many blocks comes with its block list (blocks: every file's).
  /**
   * Without `limit`: every object, as a list (clients before paging). With
   * `limit`: { objects, next }, at most `limit` objects after `after`, and
   * `next` the `after` of the next page (null at the end).
   */
  'object.list': obj({
    bucket, at, prefix: { type: 'string', maxLength: 16384 }, blocks: { type: 'boolean' }, blocksUpTo: { type: 'integer', minimum: 0, maximum: 1024 },
    after: { type: 'string', maxLength: 16384 }, limit: { type: 'integer', minimum: 1, maximum: 100000 },
  }, ['bucket']),
  'object.versions': obj({ bucket, path }, ['bucket', 'path']),
  /** The repository: format, whether encrypted, its key records (passphrase-wrapped, safe to hand out). */
  'repo.info': obj({}, []),
  /** Makes an empty repository encrypted with its first key (and the master key's check value). */
  'repo.init': obj({ key: keyRecord, check: { type: 'string', pattern: '^[0-9a-f]{64}$' } }, ['key', 'check']),
  'repo.keyAdd': obj({ key: keyRecord }, ['key']),
  'repo.keyRemove': obj({ id: { type: 'string', pattern: '^[0-9a-f]{16}$' } }, ['id']),
};

/** JSON-RPC error codes: the standard ones, and the site's own (stable). */
export const RPC_ERRORS = {
  PARSE_ERROR: -32700,
  INVALID_REQUEST: -32600,
  METHOD_NOT_FOUND: -32601,
  INVALID_PARAMS: -32602,
  INTERNAL: -32603,
  MISSING_BLOCKS: -32001,
  INVALID_PATH: -32002,
  NOT_FOUND: -32003,
  HASH_MISMATCH: -32004,
  NO_BUCKET: -32005,
  /** The object would be below something the bucket has as a file or symlink. */
  NOT_A_DIRECTORY: -32006,
  /** The client's token does not allow this method on this bucket. */
  FORBIDDEN: -32007,
  /** A block the site holds fails its checks (bit rot, a damaged pack): never served. */
  DAMAGED: -32008,
  /** The repository is not in the state the call needs (already encrypted, holds plaintext, last key). */
  REPO_STATE: -32009,
  /** The site's object storage does not answer: try again later. */
  STORAGE: -32010,
} as const;
