/**
 * What only object storage does: listings in pages, throttling, an endpoint that is down. Against
 * a real S3 API server (s3rver) on 127.0.0.1, reached through the AWS SDK, and a proxy in front of
 * it that answers 503 SlowDown when told to. The sweeps' behaviour on both stores is gc.test.ts.
 */
import { utimes } from 'node:fs/promises';
import type pg from 'pg';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { BlobStoreError, GC_WORK, gcWork, S3BlobStore, type BlobStore } from '../src/work/gc/index.ts';
import { blobKey, pushBlob, pushImage } from '../src/dev/registry-client.ts';
import { useTestDatabase } from './support/database.ts';
import { drain, enqueue, migrationRow, testWorker } from './support/engine.ts';
import { freePort } from '../src/dev/embedded-postgres.ts';
import { S3RVER_CREDENTIALS } from '../src/dev/s3-server.ts';
import { FaultyProxy, useS3Server } from './support/blob-stores.ts';

const bytes = (text: string) => new TextEncoder().encode(text);
const s3 = useS3Server();

async function keysOf(store: BlobStore, prefix: string, olderThan?: Date): Promise<string[]> {
  const keys = [];
  for await (const object of store.list(prefix, olderThan)) keys.push(object.key);
  return keys.sort();
}

/** One pass of the orphan sweep over registry.blobs, each job one attempt. */
async function sweepOrphans(pool: pg.Pool, store: BlobStore, logger = pino({ level: 'silent' })): Promise<string> {
  const name = `${GC_WORK.orphanBlobs}@${Date.now()}-${Math.random()}`;
  await enqueue(pool, { name, work: GC_WORK.orphanBlobs, table: 'registry.blobs', batchSize: 100 });
  await drain(testWorker(pool, { work: gcWork({ store, orphanGraceMs: 0 }), maxAttempts: 1, logger }));
  return name;
}

describe('S3BlobStore', () => {
  const db = useTestDatabase();
  let proxy: FaultyProxy;
  const stores: S3BlobStore[] = [];
  beforeEach(async () => {
    proxy = new FaultyProxy(s3.server.port);
    await proxy.start();
  });
  afterEach(async () => {
    await Promise.all(stores.splice(0).map((store) => store.close()));
    await proxy.stop();
  });
  /** A store on a fresh bucket, reached through the proxy. */
  const proxied = async (options: { prefix?: string; maxAttempts?: number } = {}) => {
    const { store, bucket } = await s3.newStore({ endpoint: proxy.endpoint, ...options });
    stores.push(store);
    return { store, bucket };
  };

  it('lists a prefix completely past the 1,000 keys of one page, relative to its own prefix, and filters by age', async () => {
    const { store, bucket } = await proxied({ prefix: 'registry/' });
    const keys = Array.from({ length: 2_100 }, (_, i) => `blobs/sha256/${String(i).padStart(5, '0')}`);
    for (let i = 0; i < keys.length; i += 100) {
      await Promise.all(keys.slice(i, i + 100).map((key) => store.put(key, bytes(key))));
    }
    await store.put('uploads/u1', bytes('staged'));
    const old = new Date(Date.now() - 86_400_000);
    for (const key of keys.slice(0, 3)) await utimes(s3.server.objectPath(bucket, `registry/${key}`), old, old);
    const before = proxy.requests;

    expect(await keysOf(store, 'blobs/')).toEqual(keys);
    // Three pages of at most 1,000 keys each.
    expect(proxy.requests - before).toBe(3);
    expect(await keysOf(store, '')).toHaveLength(2_101);
    expect(await keysOf(store, 'blobs/', new Date(Date.now() - 3_600_000))).toEqual(keys.slice(0, 3));
    expect(await store.exists('registry/blobs/sha256/00000')).toBe(false);
    expect(await store.exists('blobs/sha256/00000')).toBe(true);
  });

  it('rides out an endpoint that answers 503 SlowDown a few times: the sweep retries and loses nothing', async () => {
    const { pool } = db();
    const { store } = await proxied();
    const image = await pushImage(pool, store, { repository: 'app', tag: 'v1', layers: [bytes('base')] });
    const orphans = [];
    for (let i = 0; i < 6; i += 1) orphans.push(await pushBlob(pool, store, bytes(`orphan ${i}`)));
    proxy.failNext('DELETE', 3);

    const name = await sweepOrphans(pool, store);

    expect(proxy.failed).toBe(3);
    expect((await migrationRow(pool, name))?.status).toBe(MigrationStatus.finished);
    const { rows } = await pool.query('SELECT digest FROM registry.blobs ORDER BY id');
    expect(rows.map((r) => r.digest)).toEqual(image.blobs.map((b) => b.digest));
    expect(await keysOf(store, 'blobs/')).toEqual(image.blobs.map((b) => blobKey(b.digest)));
  });

  it('fails a job clearly when the endpoint is down, deletes no row, logs no credential, and the next pass finishes', async () => {
    const { pool } = db();
    const { store: live, bucket } = await proxied();
    const image = await pushImage(pool, live, { repository: 'app', tag: 'v1', layers: [bytes('base')] });
    for (let i = 0; i < 4; i += 1) await pushBlob(pool, live, bytes(`orphan ${i}`));
    const secret = 'wJalrXUtnFEMI-never-to-be-logged';
    const down = new S3BlobStore({
      bucket,
      // Nothing listens there: an endpoint that is down.
      endpoint: `http://127.0.0.1:${await freePort()}`,
      credentials: { accessKeyId: 'AKIA-TEST', secretAccessKey: secret },
      maxAttempts: 2,
    });
    stores.push(down);
    const lines: string[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => lines.push(line) });

    const failed = await sweepOrphans(pool, down, logger);

    const row = await migrationRow(pool, failed);
    expect(row?.status).toBe(MigrationStatus.failed);
    expect(row?.failure_message).toMatch(
      /S3 DeleteObject of "blobs\/sha256\/[0-9a-f]+" in bucket bbm-[0-9a-f]+ at http:\/\/127\.0\.0\.1:\d+ failed after 2 attempts: .*ECONNREFUSED/,
    );
    expect((await pool.query('SELECT count(*)::int AS n FROM registry.blobs')).rows[0].n).toBe(5);
    expect(await keysOf(live, 'blobs/')).toHaveLength(5);
    expect(lines.join('')).toContain('ECONNREFUSED');
    expect(lines.join('')).not.toContain(secret);
    expect(row?.failure_message).not.toContain(secret);

    await sweepOrphans(pool, live);

    const { rows } = await pool.query('SELECT digest FROM registry.blobs ORDER BY id');
    expect(rows.map((r) => r.digest)).toEqual(image.blobs.map((b) => b.digest));
    expect(await keysOf(live, 'blobs/')).toEqual(image.blobs.map((b) => blobKey(b.digest)));
  });

  it('answers false for a missing object, and throws a BlobStoreError naming the request for a missing bucket', async () => {
    const { store } = await proxied();
    expect(await store.exists('blobs/none')).toBe(false);
    await store.delete('blobs/none');
    const nowhere = new S3BlobStore({
      bucket: 'bbm-no-such-bucket',
      endpoint: s3.server.endpoint,
      credentials: S3RVER_CREDENTIALS,
    });
    stores.push(nowhere);
    const error = await nowhere.put('blobs/x', bytes('x')).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BlobStoreError);
    expect(error).toMatchObject({ operation: 'PutObject', key: 'blobs/x', status: 404 });
    expect((error as Error).message).toMatch(/S3 PutObject of "blobs\/x" in bucket bbm-no-such-bucket .*NoSuchBucket/);
  });

  it('refuses bad options before any request', () => {
    expect(() => new S3BlobStore({ bucket: '' })).toThrow(/bucket is required/);
    expect(() => new S3BlobStore({ bucket: 'b', prefix: 'no-slash' })).toThrow(/prefix must end with/);
    expect(() => new S3BlobStore({ bucket: 'b', prefix: '../' })).toThrow(/invalid object key/);
    expect(() => new S3BlobStore({ bucket: 'b', maxConcurrency: 0 })).toThrow(/maxConcurrency/);
  });
});
