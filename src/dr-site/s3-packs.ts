/**
 * Closed packs in S3-compatible object storage (drSite.storage.backend
 * "s3"): one object per pack under `prefix`, read back by byte range. The
 * AWS SDK v3 client with a custom endpoint and path-style addressing, as
 * Ceph's radosgw, MinIO and most stores want; the SDK's default CRC32
 * checksums are off (not every S3-compatible store accepts them) and a
 * single PUT carries Content-MD5 instead, which every store checks. Packs
 * above `multipartBytes` go up in parts (@aws-sdk/lib-storage).
 *
 * Every call is retried here, with backoff, for as long as the caller
 * allows: a restarting gateway refuses connections for a second or two, and
 * the SDK's own retries give up on that.
 */
import { createHash } from 'node:crypto';
import type * as S3 from '@aws-sdk/client-s3';
import type * as Storage from '@aws-sdk/lib-storage';
import type { DrStorageConfig } from '../config/schema';
import { VfsxError } from '../errors/vfsx-error';

/** Where closed packs go when they are not kept on the local disk. */
export interface PackRemote {
  /** Stores a closed pack (idempotent: the same id holds the same bytes). */
  put(id: string, data: Buffer): Promise<void>;
  /** `length` bytes of a pack from `offset`. */
  getRange(id: string, offset: number, length: number): Promise<Buffer>;
  delete(id: string): Promise<void>;
  /** The ids of every pack stored. */
  list(): Promise<string[]>;
  /** Copies of the site's index (index-snapshots.ts): stored under a name, read back, listed, deleted. */
  putIndex(name: string, data: Buffer): Promise<void>;
  getIndex(name: string): Promise<Buffer>;
  listIndex(): Promise<string[]>;
  deleteIndex(name: string): Promise<void>;
  readonly where: string;
  close(): void;
}

export interface S3PacksOptions {
  endpoint: string;
  region: string;
  bucket: string;
  prefix: string;
  accessKeyId: string;
  secretAccessKey: string;
  forcePathStyle: boolean;
  multipartBytes: number;
  /** How long one call keeps retrying before it fails (uploads run in the background and pass Infinity). */
  retryForMs: number;
  log?: (msg: string, o: object) => void;
}

const PACK_ID = /^[0-9a-f]{32}$/;
/** An index copy: its time (ms, zero-padded, so names sort by time) and a random tag. */
export const INDEX_NAME = /^[0-9]{15}-[0-9a-f]{8}\.sqlite\.zst$/;

/**
 * The SDK, loaded by the first S3Packs: a site on local disk (and every
 * other vfsx command) does not spend the 0.1 s and 4 MiB of heap it takes.
 */
let sdk: { s3: typeof S3; storage: typeof Storage } | undefined;
function loadSdk(): { s3: typeof S3; storage: typeof Storage } {
  /* eslint-disable @typescript-eslint/no-var-requires */
  sdk ??= { s3: require('@aws-sdk/client-s3') as typeof S3, storage: require('@aws-sdk/lib-storage') as typeof Storage };
  /* eslint-enable @typescript-eslint/no-var-requires */
  return sdk;
}

export class S3Packs implements PackRemote {
  private readonly sdk = loadSdk().s3;
  private readonly s3: S3.S3Client;
  private closed = false;

  constructor(private readonly o: S3PacksOptions) {
    // The SDK warns once that releases after January 2027 need Node 22; the version is pinned (package.json).
    process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
    this.s3 = new this.sdk.S3Client({
      endpoint: o.endpoint, region: o.region, forcePathStyle: o.forcePathStyle,
      credentials: { accessKeyId: o.accessKeyId, secretAccessKey: o.secretAccessKey },
      requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED',
      maxAttempts: 2,
    });
  }

  get where(): string {
    return `s3 ${this.o.endpoint}/${this.o.bucket}/${this.o.prefix}`;
  }

  private key(id: string): string {
    return `${this.o.prefix}packs/${id}`;
  }

  /** Whether the bucket answers with these credentials (start-up check, fails at once). */
  async check(): Promise<void> {
    try {
      await this.s3.send(new this.sdk.HeadBucketCommand({ Bucket: this.o.bucket }));
    } catch (err) {
      throw new VfsxError('VFSX_ERR_CONFIG_INVALID', `drSite.storage.s3: bucket ${this.o.bucket} at ${this.o.endpoint}: ${describe(err)}`);
    }
  }

  private async retry<T>(what: string, fn: () => Promise<T>, forMs = this.o.retryForMs): Promise<T> {
    const until = Date.now() + forMs;
    for (let attempt = 0; ; attempt++) {
      try {
        return await fn();
      } catch (err) {
        if (this.closed || !retryable(err) || Date.now() >= until) {
          throw new VfsxError('VFSX_ERR_DR_STORAGE', `${what} at ${this.where}: ${describe(err)}`);
        }
        if (attempt === 2) this.o.log?.('object storage not answering, retrying', { what, err: describe(err) });
        await new Promise((r) => setTimeout(r, Math.min(5000, 100 * 2 ** Math.min(attempt, 6))));
      }
    }
  }

  async put(id: string, data: Buffer): Promise<void> {
    await this.retry(`upload of pack ${id}`, async () => {
      if (data.length > this.o.multipartBytes) {
        const up = new (loadSdk().storage.Upload)({
          client: this.s3, queueSize: 4, partSize: Math.max(5 << 20, Math.ceil(this.o.multipartBytes / 2)), leavePartsOnError: false,
          params: { Bucket: this.o.bucket, Key: this.key(id), Body: data },
        });
        await up.done();
      } else {
        const md5 = createHash('md5').update(data).digest('base64');
        await this.s3.send(new this.sdk.PutObjectCommand({ Bucket: this.o.bucket, Key: this.key(id), Body: data, ContentMD5: md5, ContentLength: data.length }));
      }
    }, Infinity);
  }

  async getRange(id: string, offset: number, length: number): Promise<Buffer> {
    return this.retry(`read of pack ${id}`, async () => {
      const r = await this.s3.send(new this.sdk.GetObjectCommand({ Bucket: this.o.bucket, Key: this.key(id), Range: `bytes=${offset}-${offset + length - 1}` }));
      const body = Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
      if (body.length !== length) throw new VfsxError('VFSX_ERR_DR_DAMAGED', `pack ${id} gave ${body.length} of ${length} bytes at ${offset}`);
      return body;
    });
  }

  async delete(id: string): Promise<void> {
    await this.retry(`delete of pack ${id}`, () => this.s3.send(new this.sdk.DeleteObjectCommand({ Bucket: this.o.bucket, Key: this.key(id) })));
  }

  async list(): Promise<string[]> {
    return (await this.listUnder('packs/')).filter((id) => PACK_ID.test(id));
  }

  private indexKey(name: string): string {
    if (!INDEX_NAME.test(name)) throw new VfsxError('VFSX_ERR_DR_STORAGE', `not an index copy's name: ${name}`);
    return `${this.o.prefix}index/${name}`;
  }

  async putIndex(name: string, data: Buffer): Promise<void> {
    const md5 = createHash('md5').update(data).digest('base64');
    await this.retry(`upload of index copy ${name}`, () => this.s3.send(new this.sdk.PutObjectCommand({
      Bucket: this.o.bucket, Key: this.indexKey(name), Body: data, ContentMD5: md5, ContentLength: data.length,
    })));
  }

  async getIndex(name: string): Promise<Buffer> {
    return this.retry(`read of index copy ${name}`, async () => {
      const r = await this.s3.send(new this.sdk.GetObjectCommand({ Bucket: this.o.bucket, Key: this.indexKey(name) }));
      return Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
    });
  }

  async listIndex(): Promise<string[]> {
    return (await this.listUnder('index/')).filter((n) => INDEX_NAME.test(n)).sort();
  }

  async deleteIndex(name: string): Promise<void> {
    await this.retry(`delete of index copy ${name}`, () => this.s3.send(new this.sdk.DeleteObjectCommand({ Bucket: this.o.bucket, Key: this.indexKey(name) })));
  }

  /** Names of the objects under `<prefix><dir>`. */
  private async listUnder(dir: string): Promise<string[]> {
    const out: string[] = [];
    let token: string | undefined;
    do {
      const r = await this.retry(`listing of ${dir}`, () => this.s3.send(new this.sdk.ListObjectsV2Command({ Bucket: this.o.bucket, Prefix: `${this.o.prefix}${dir}`, ContinuationToken: token })));
      for (const c of r.Contents ?? []) out.push((c.Key ?? '').slice(`${this.o.prefix}${dir}`.length));
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  close(): void {
    this.closed = true;
    this.s3.destroy();
  }
}

function describe(err: unknown): string {
  const e = err as { name?: string; message?: string; code?: string; $metadata?: { httpStatusCode?: number } };
  const status = e.$metadata?.httpStatusCode;
  return `${e.name ?? e.code ?? 'error'}${status ? ` (HTTP ${status})` : ''}: ${e.message ?? String(err)}`;
}

/** Connection failures, timeouts, throttling and 5xx are worth another try; a refusal (403, 404) is not. */
function retryable(err: unknown): boolean {
  if (err instanceof VfsxError) return err.code !== 'VFSX_ERR_DR_DAMAGED';
  const e = err as { $metadata?: { httpStatusCode?: number }; $retryable?: unknown; code?: string; name?: string };
  const status = e.$metadata?.httpStatusCode;
  if (status === undefined) return true; // no answer: refused, reset, timed out
  return status >= 500 || status === 429 || status === 408 || e.$retryable !== undefined;
}

/** The object storage drSite.storage names, checked to answer; undefined for the local backend. */
export async function packRemoteOf(storage: DrStorageConfig, log?: (msg: string, o: object) => void): Promise<S3Packs | undefined> {
  if (storage.backend !== 's3') return undefined;
  const c = storage.s3;
  if (!c) throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'drSite.storage.backend "s3" needs drSite.storage.s3 (endpoint, bucket)');
  const accessKeyId = c.accessKeyId ?? process.env.AWS_ACCESS_KEY_ID;
  const secretAccessKey = c.secretAccessKey ?? process.env.AWS_SECRET_ACCESS_KEY;
  if (!accessKeyId || !secretAccessKey) {
    throw new VfsxError('VFSX_ERR_CONFIG_INVALID', 'drSite.storage.s3: give accessKeyId and secretAccessKey (or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)');
  }
  const remote = new S3Packs({ ...c, accessKeyId, secretAccessKey, retryForMs: 30000, log });
  try {
    await remote.check();
  } catch (err) {
    remote.close();
    throw err;
  }
  return remote;
}
