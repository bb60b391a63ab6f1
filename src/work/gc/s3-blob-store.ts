/**
 * A blob store on any S3-compatible object storage (AWS S3, MinIO, Ceph, Cloudflare R2), over the
 * AWS SDK's S3 client: an optional peer dependency, imported the first time the store is used.
 *
 * Four operations, four requests: PutObject, DeleteObject (idempotent in S3: deleting a missing
 * key succeeds), HeadObject, and ListObjectsV2 followed page by page. Retries are the SDK's
 * standard mode (exponential backoff with jitter on throttling, 5xx and network errors), with
 * more attempts than its default; requests in flight are capped per store, because one store is
 * shared by every lane of every sweep in the process. A request that still fails becomes a
 * BlobStoreError that names the operation, key, bucket and endpoint, never the credentials.
 */
import type * as S3Sdk from '@aws-sdk/client-s3';
import type { S3Client, S3ClientConfig } from '@aws-sdk/client-s3';
import { checkKey, type BlobStore, type StoredObject } from './blob-store.ts';

export interface S3BlobStoreOptions {
  bucket: string;
  /** A key prefix inside the bucket (e.g. `registry/`): the store's keys live below it. */
  prefix?: string;
  /** The endpoint of an S3-compatible service (`http://minio:9000`); omitted for AWS. */
  endpoint?: string;
  /** The region; the SDK's chain (AWS_REGION, profile) when omitted, `us-east-1` for a custom endpoint. */
  region?: string;
  /**
   * Path-style addressing (`endpoint/bucket/key`) instead of virtual-hosted (`bucket.endpoint/key`),
   * as MinIO and most self-hosted services need [true with an endpoint, false without].
   */
  forcePathStyle?: boolean;
  /** Static credentials; omitted, the SDK's usual chain (environment, profile, instance role, web identity). */
  credentials?: { accessKeyId: string; secretAccessKey: string; sessionToken?: string };
  /** Attempts per request, the first included, with backoff between them [5]. */
  maxAttempts?: number;
  /** Requests in flight at once from this store [16]. */
  maxConcurrency?: number;
  /** Anything else for the S3 client (`requestHandler`, `logger`, …), applied last. */
  clientConfig?: Record<string, unknown>;
}

/** An object-storage request that failed for good (after the SDK's retries). */
export class BlobStoreError extends Error {
  override readonly name = 'BlobStoreError';

  constructor(
    readonly operation: string,
    readonly key: string,
    message: string,
    /** The HTTP status of the last attempt; undefined when none came back (the endpoint is unreachable). */
    readonly status: number | undefined,
    options: { cause: unknown },
  ) {
    super(message, options);
  }
}

/** What the SDK's errors carry, as far as this store reads them. */
interface SdkError {
  name?: string;
  message?: string;
  code?: string;
  $metadata?: { httpStatusCode?: number; attempts?: number };
}

const NOT_FOUND = new Set(['NotFound', 'NoSuchKey']);

/** Caps the requests in flight; the rest wait in order. */
class Limiter {
  #active = 0;
  readonly #waiting: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  async run<T>(task: () => Promise<T>): Promise<T> {
    if (this.#active >= this.limit) await new Promise<void>((resolve) => this.#waiting.push(resolve));
    this.#active += 1;
    try {
      return await task();
    } finally {
      this.#active -= 1;
      this.#waiting.shift()?.();
    }
  }
}

type S3Module = typeof S3Sdk;

async function loadSdk(): Promise<S3Module> {
  try {
    return await import('@aws-sdk/client-s3');
  } catch (cause) {
    throw new Error('S3BlobStore needs the AWS SDK: run `npm install @aws-sdk/client-s3`', { cause });
  }
}

export class S3BlobStore implements BlobStore {
  readonly bucket: string;
  readonly prefix: string;
  readonly #options: S3BlobStoreOptions;
  readonly #limiter: Limiter;
  /** Where errors say the bucket is: the endpoint's origin only (no user info, no path). */
  readonly #where: string;
  #sdk: Promise<{ sdk: S3Module; client: S3Client }> | undefined;

  constructor(options: S3BlobStoreOptions) {
    const { bucket, prefix = '', maxConcurrency = 16, maxAttempts = 5 } = options;
    if (!bucket) throw new TypeError('S3BlobStore: bucket is required');
    if (prefix !== '' && !prefix.endsWith('/')) throw new TypeError('S3BlobStore: prefix must end with "/"');
    if (prefix !== '') checkKey(prefix.slice(0, -1));
    if (!Number.isSafeInteger(maxConcurrency) || maxConcurrency < 1)
      throw new TypeError('S3BlobStore: maxConcurrency must be a positive integer');
    if (!Number.isSafeInteger(maxAttempts) || maxAttempts < 1)
      throw new TypeError('S3BlobStore: maxAttempts must be a positive integer');
    this.bucket = bucket;
    this.prefix = prefix;
    this.#options = options;
    this.#limiter = new Limiter(maxConcurrency);
    this.#where = options.endpoint ? new URL(options.endpoint).origin : 'AWS';
  }

  /** The SDK and a client, made on first use. */
  #client(): Promise<{ sdk: S3Module; client: S3Client }> {
    this.#sdk ??= loadSdk().then((sdk) => {
      const { endpoint, region, credentials, forcePathStyle, maxAttempts = 5, clientConfig } = this.#options;
      const resolvedRegion = region ?? (endpoint !== undefined ? 'us-east-1' : undefined);
      const config: S3ClientConfig = {
        maxAttempts,
        retryMode: 'standard',
        ...(endpoint !== undefined && {
          endpoint,
          // Checksums beyond what S3 requires trip up several S3-compatible services.
          requestChecksumCalculation: 'WHEN_REQUIRED',
          responseChecksumValidation: 'WHEN_REQUIRED',
        }),
        forcePathStyle: forcePathStyle ?? endpoint !== undefined,
        ...(resolvedRegion !== undefined && { region: resolvedRegion }),
        ...(credentials !== undefined && { credentials }),
        ...clientConfig,
      };
      return { sdk, client: new sdk.S3Client(config) };
    });
    // A failed import is not cached: the next call says so again.
    this.#sdk.catch(() => (this.#sdk = undefined));
    return this.#sdk;
  }

  /** Sends one request through the limiter; a failure becomes a BlobStoreError (`notFound` maps 404 to a value). */
  async #send<T>(
    operation: string,
    key: string,
    request: (sdk: S3Module, client: S3Client) => Promise<T>,
    notFound?: () => T,
  ): Promise<T> {
    const { sdk, client } = await this.#client();
    try {
      return await this.#limiter.run(() => request(sdk, client));
    } catch (thrown) {
      const error = thrown as SdkError;
      const status = error.$metadata?.httpStatusCode;
      if (notFound && (status === 404 || NOT_FOUND.has(error.name ?? ''))) return notFound();
      const attempts = error.$metadata?.attempts;
      const reason = [error.name, error.code, error.message].filter(Boolean).join(': ') || String(thrown);
      // The SDK's error carries the raw response and the signed request headers: logs, Sentry and
      // job rows get only its name, code and message.
      const cause = Object.assign(new Error(reason), { name: error.name ?? 'Error', code: error.code });
      throw new BlobStoreError(
        operation,
        key,
        `S3 ${operation} of ${JSON.stringify(key)} in bucket ${this.bucket} at ${this.#where} failed` +
          `${attempts ? ` after ${attempts} attempt${attempts === 1 ? '' : 's'}` : ''}` +
          `${status ? ` (HTTP ${status})` : ''}: ${reason}`,
        status,
        { cause },
      );
    }
  }

  #key(key: string): string {
    return this.prefix + checkKey(key);
  }

  async put(key: string, data: Uint8Array): Promise<void> {
    const Key = this.#key(key);
    await this.#send('PutObject', key, (sdk, client) =>
      client.send(new sdk.PutObjectCommand({ Bucket: this.bucket, Key, Body: data, ContentLength: data.byteLength })),
    );
  }

  async delete(key: string): Promise<void> {
    const Key = this.#key(key);
    await this.#send('DeleteObject', key, (sdk, client) =>
      client.send(new sdk.DeleteObjectCommand({ Bucket: this.bucket, Key })),
    );
  }

  async exists(key: string): Promise<boolean> {
    const Key = this.#key(key);
    return this.#send(
      'HeadObject',
      key,
      async (sdk, client) => {
        await client.send(new sdk.HeadObjectCommand({ Bucket: this.bucket, Key }));
        return true;
      },
      () => false,
    );
  }

  async *list(prefix: string, olderThan?: Date, startAfter?: string): AsyncIterable<StoredObject> {
    if (prefix !== '') checkKey(prefix.replace(/\/$/, ''));
    const Prefix = this.prefix + prefix;
    const StartAfter = startAfter === undefined ? undefined : this.prefix + startAfter;
    let ContinuationToken: string | undefined;
    do {
      const page = await this.#send('ListObjectsV2', prefix, (sdk, client) =>
        client.send(
          new sdk.ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix,
            ...(ContinuationToken ? { ContinuationToken } : StartAfter !== undefined && { StartAfter }),
          }),
        ),
      );
      for (const object of page.Contents ?? []) {
        if (object.Key === undefined || !object.Key.startsWith(this.prefix)) continue;
        const modifiedAt = object.LastModified ?? new Date(0);
        if (olderThan && modifiedAt >= olderThan) continue;
        yield { key: object.Key.slice(this.prefix.length), size: object.Size ?? 0, modifiedAt };
      }
      ContinuationToken = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (ContinuationToken);
  }

  /** Closes the client's connections (a worker shutting down). */
  async close(): Promise<void> {
    const made = this.#sdk;
    this.#sdk = undefined;
    if (made) (await made.catch(() => undefined))?.client.destroy();
  }
}
