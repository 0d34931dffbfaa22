/**
 * The DR site's JSON-RPC methods over the block and metadata stores.
 * Every method is idempotent: a retried call is harmless.
 */
import { VfsxError } from '../errors/vfsx-error';
import { PackStore } from './pack-store';
import { MetaStore, ObjectVersion, SEGMENT_BLOCKS } from './meta-store';
import { checkObjectPath, checkTarget } from './object-path';

export interface BinaryPart {
  hash: string;
  data: Buffer;
}

/** What a method returns: a JSON result, or a JSON result plus binary blocks. */
export type MethodResult = { result: unknown; binary?: BinaryPart[] };

type Params = Record<string, unknown>;

/**
 * Block ids a page of a listing carries at most (about 17 MiB of JSON),
 * unless one file alone has more: a listing with every block (verify
 * --content) of a large share goes in many pieces, never one string larger
 * than V8 can make (512 MiB: about 8 million ids, a 500 GiB share).
 */
const LIST_PAGE_BLOCKS = 262_144;

function publicVersion(v: ObjectVersion | null, blocks?: string[]): unknown {
  if (!v) return null;
  const { id, path, ts, kind, meta, size, blockSize, target } = v;
  return { version: id, path, ts, kind, meta, size, blockSize, target, ...(blocks ? { blocks } : {}) };
}

export class DrSiteMethods {
  readonly blocks: PackStore;
  readonly meta: MetaStore;
  /**
   * Blocks retention is deleting now (files first, then rows). Until it is
   * done they count as missing: a commit naming one is refused (the client
   * sends it again) and a put of one waits, so no row ever outlives its file.
   */
  private freeing = new Set<string>();
  private freed: Promise<void> = Promise.resolve();

  constructor(blocks: PackStore, meta: MetaStore) {
    this.blocks = blocks;
    this.meta = meta;
  }

  private bucket(p: Params): string {
    const b = p.bucket as string;
    if (!this.meta.bucketExists(b)) throw new VfsxError('VFSX_ERR_DR_NOT_FOUND', `no bucket ${b} (call bucket.ensure)`);
    return b;
  }

  /** Whether the repository is encrypted (cached: only repo.init changes it, through this object). */
  private sealed: boolean | null = null;

  private encrypted(): boolean {
    this.sealed ??= this.meta.keyCheck() !== null;
    return this.sealed;
  }

  private commitOne(bucket: string, p: Params) {
    const path = checkObjectPath(p.path);
    // An encrypted repository holds only sealed metadata, a plaintext one none: never a mix.
    const sealedMeta = Object.keys(p.meta as object).length === 1 && typeof (p.meta as { enc?: unknown }).enc === 'string';
    if (this.encrypted() !== sealedMeta) {
      throw new VfsxError('VFSX_ERR_DR_REPO_STATE', this.encrypted() ? 'the repository is encrypted: metadata must come sealed' : 'the repository is not encrypted: sealed metadata refused');
    }
    const kind = p.kind as 'file' | 'dir' | 'symlink';
    const blocks = kind === 'file' ? ((p.blocks as string[]) ?? []) : [];
    // A patch commit names the version's segments, spelling out only those that changed.
    const segments = kind === 'file' ? (p.segments as string[] | undefined) : undefined;
    const newSegments = segments ? ((p.newSegments as string[][]) ?? []) : [];
    this.checkNotFreeing(blocks);
    this.checkNotFreeing(newSegments.flat());
    return this.meta.commit(bucket, path, {
      kind, meta: p.meta as object, size: kind === 'file' ? (p.size as number) ?? 0 : 0,
      blockSize: (p.blockSize as number) ?? 0, target: kind === 'symlink' ? checkTarget(p.target) : null,
      ...(segments ? { segments } : {}),
    }, blocks, newSegments);
  }

  /** Blocks asked for by object (bucket, path, at) must be blocks of that object. */
  private checkBlocksOf(p: Params, hashes: string[]): void {
    const bucket = this.bucket(p);
    const path = checkObjectPath(p.path);
    const v = p.at === undefined ? this.meta.head(bucket, path) : this.meta.at(bucket, path, p.at as number);
    // With a span, only the segments it covers are read: a large file's whole list per call made a
    // restore quadratic (a 64 GiB file has a million ids; a restore asks 16,384 times).
    const span = p.span as { first: number; count: number } | undefined;
    let has: Set<string>;
    if (v && v.kind === 'file' && span) {
      const s0 = Math.floor(span.first / SEGMENT_BLOCKS);
      const s1 = Math.min(Math.floor((span.first + span.count - 1) / SEGMENT_BLOCKS), v.segments.length - 1);
      const idx = Array.from({ length: Math.max(0, s1 - s0 + 1) }, (_, i) => s0 + i);
      const off = span.first - s0 * SEGMENT_BLOCKS;
      has = new Set(this.meta.segmentBlocks(v, idx).flat().slice(off, off + span.count));
    } else {
      has = new Set(v && v.kind === 'file' ? this.meta.blocksOf(v) : []);
    }
    const foreign = hashes.filter((h) => !has.has(h));
    if (foreign.length > 0) throw new VfsxError('VFSX_ERR_DR_FORBIDDEN', `${foreign.length} of the blocks asked for are not blocks of ${bucket}/${path}`);
  }

  /** Deletes blocks retention found unreferenced; see `freeing`. */
  async free(hashes: string[]): Promise<void> {
    let done = () => undefined as void;
    this.freed = new Promise((r) => { done = r; });
    this.freeing = new Set(hashes);
    try {
      await this.blocks.freeLoose(hashes); // v1 files first: a crash leaves rows, never dangling refs
      this.meta.forgetBlocks(hashes); // packed bytes stay until repack
    } finally {
      this.freeing = new Set();
      done();
    }
  }

  private missing(hashes: string[]): string[] {
    const gone = this.meta.missingBlocks(hashes);
    if (this.freeing.size === 0) return gone;
    return [...new Set([...gone, ...hashes.filter((h) => this.freeing.has(h))])];
  }

  private checkNotFreeing(blocks: string[]): void {
    const m = blocks.filter((h) => this.freeing.has(h));
    if (m.length > 0) throw new VfsxError('VFSX_ERR_DR_MISSING_BLOCKS', `${m.length} blocks are missing`, { cause: [...new Set(m)] });
  }

  async call(method: string, p: Params, binary: BinaryPart[]): Promise<MethodResult> {
    switch (method) {
      case 'bucket.ensure':
        this.meta.ensureBucket(p.bucket as string);
        return { result: { bucket: p.bucket } };
      case 'blocks.missing':
        return { result: { missing: this.missing(p.hashes as string[]) } };
      case 'blocks.put':
        // Every block verified, appended to the open pack with the blocks of
        // concurrent calls, one fdatasync, then indexed: the site never
        // claims a block it lacks.
        if (binary.some((b) => this.freeing.has(b.hash))) await this.freed;
        // In an encrypted repository ids are keyed hashes the site cannot check: it keeps a checksum of the sealed bytes.
        await this.blocks.putMany(binary, this.encrypted());
        return { result: { stored: binary.length } };
      case 'segments.put': {
        const segments = p.segments as string[][];
        this.checkNotFreeing(segments.flat());
        return { result: { stored: this.meta.putSegments(segments) } };
      }
      case 'blocks.get': {
        const hashes = p.hashes as string[];
        if (p.path !== undefined) this.checkBlocksOf(p, hashes);
        const missing = this.missing(hashes);
        if (missing.length > 0) throw new VfsxError('VFSX_ERR_DR_MISSING_BLOCKS', `${missing.length} blocks are missing`, { cause: missing });
        const parts = (await this.blocks.getMany(hashes)).map((data, i) => ({ hash: hashes[i], data }));
        return { result: { blocks: parts.map((b) => ({ hash: b.hash, size: b.data.length })) }, binary: parts };
      }
      case 'object.commit': {
        const bucket = this.bucket(p);
        return { result: publicVersion(this.commitOne(bucket, p)) };
      }
      case 'object.commitMany': {
        const bucket = this.bucket(p);
        const objects = p.objects as Params[];
        // Paths are checked before anything is written; one transaction for all.
        for (const o of objects) checkObjectPath(o.path);
        const vs = this.meta.transaction(() => objects.map((o) => this.commitOne(bucket, o)));
        return { result: vs.map((v) => publicVersion(v)) };
      }
      case 'object.delete':
        return { result: { ended: this.meta.delete(this.bucket(p), checkObjectPath(p.path)) } };
      case 'object.deleteMany': {
        const bucket = this.bucket(p);
        const paths = (p.paths as unknown[]).map((x) => checkObjectPath(x));
        return { result: { ended: this.meta.transaction(() => paths.map((x) => this.meta.delete(bucket, x))) } };
      }
      case 'object.move':
        return { result: { moved: this.meta.move(this.bucket(p), checkObjectPath(p.from), checkObjectPath(p.to)) } };
      case 'object.stat': {
        const bucket = this.bucket(p);
        const path = checkObjectPath(p.path);
        const v = p.at === undefined ? this.meta.head(bucket, path) : this.meta.at(bucket, path, p.at as number);
        const out = publicVersion(v, v && p.blocks && v.kind === 'file' ? this.meta.blocksOf(v) : undefined);
        // The segment list, and the block lists of the segments asked for: what a patch commit starts from.
        if (v && v.kind === 'file' && Array.isArray(p.segments)) {
          return { result: { ...(out as object), segments: v.segments, segmentBlocks: this.meta.segmentBlocks(v, p.segments as number[]) } };
        }
        return { result: out };
      }
      case 'object.list': {
        const prefix = p.prefix === undefined || p.prefix === '' ? undefined : checkObjectPath(p.prefix);
        const upTo = p.blocks === true ? Infinity : typeof p.blocksUpTo === 'number' ? p.blocksUpTo : -1;
        const withBlocks = (v: ObjectVersion) => v.kind === 'file' && (v.blockSize > 0 ? Math.ceil(v.size / v.blockSize) : 0) <= upTo;
        if (typeof p.limit !== 'number') {
          return { result: this.meta.list(this.bucket(p), p.at as number | undefined, prefix).map((v) => publicVersion(v, withBlocks(v) ? this.meta.blocksOf(v) : undefined)) };
        }
        // A page: at most `limit` objects and about LIST_PAGE_BLOCKS block ids (one larger file alone may exceed it).
        const vs = this.meta.list(this.bucket(p), p.at as number | undefined, prefix, { after: p.after as string | undefined, limit: p.limit + 1 });
        const objects: unknown[] = [];
        let ids = 0;
        for (const v of vs) {
          if (objects.length === p.limit || (objects.length > 0 && ids >= LIST_PAGE_BLOCKS)) break;
          const blocks = withBlocks(v) ? this.meta.blocksOf(v) : undefined;
          ids += blocks?.length ?? 0;
          objects.push(publicVersion(v, blocks));
        }
        return { result: { objects, next: objects.length < vs.length ? vs[objects.length - 1].path : null } };
      }
      case 'object.versions':
        return { result: this.meta.versions(this.bucket(p), checkObjectPath(p.path)).map((v) => ({ version: v.id, ts: v.ts, kind: v.kind, size: v.size })) };
      case 'repo.info': {
        const check = this.meta.keyCheck();
        const recoveredAt = Number(this.meta.repoValue('recoveredAt') ?? 0);
        return { result: { format: 2, encrypted: check !== null, empty: this.meta.isEmpty(), check, keys: this.meta.keyRecords(), ...(recoveredAt > 0 ? { recoveredAt } : {}) } };
      }
      case 'repo.init':
        this.meta.initEncryption(p.check as string, p.key as { id: string });
        this.sealed = true;
        return { result: { encrypted: true } };
      case 'repo.keyAdd':
        this.meta.addKey(p.key as { id: string });
        return { result: { id: (p.key as { id: string }).id } };
      case 'repo.keyRemove':
        return { result: { removed: this.meta.removeKey(p.id as string) } };
      default:
        throw new Error(`no implementation for ${method}`);
    }
  }
}
