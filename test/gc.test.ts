/**
 * The registry GC pack's sweeps, on real Postgres, each against both blob stores: a temporary
 * directory, and a real S3 API server on 127.0.0.1 through the AWS SDK.
 */
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { Registry } from 'prom-client';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { Work } from '../src/bbm/types.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { setTtlPolicy } from '../src/store/gc/registry.ts';
import {
  createGcMetrics,
  GC_WORK,
  gcWork,
  NamespaceDeletedError,
  setTagExpiry,
  type BlobStore,
} from '../src/work/gc/index.ts';
import {
  blobKey,
  deleteNamespace,
  deleteRepository,
  openUpload,
  pull,
  pushBlob,
  pushImage,
} from '../src/dev/registry-client.ts';
import { useTestDatabase } from './support/database.ts';
import { drain, enqueue, migrationRow, testWorker } from './support/engine.ts';
import { runBbm, startBbm, waitFor } from './support/processes.ts';
import { storeKinds, useS3Server, type StoreUnderTest } from './support/blob-stores.ts';

const GC_CONFIG = fileURLToPath(new URL('./fixtures/gc.config.ts', import.meta.url));

const bytes = (text: string) => new TextEncoder().encode(text);

/** Runs one pass of a sweep over its whole table, as its schedule would enqueue it. */
async function sweep(
  pool: pg.Pool,
  work: Work[],
  name: keyof typeof GC_WORK,
  table: string,
  batchSize = 2,
): Promise<void> {
  await enqueue(pool, {
    name: `${GC_WORK[name]}@${Date.now()}-${Math.random()}`,
    work: GC_WORK[name],
    table,
    batchSize,
  });
  await drain(testWorker(pool, { work, maxAttempts: 1 }));
}

const age = (pool: pg.Pool, table: string, column: string, interval: string, where = 'true') =>
  pool.query(`UPDATE registry.${table} SET ${column} = now() - interval '${interval}' WHERE ${where}`);

const s3 = useS3Server();

describe.each(storeKinds(s3))('the GC pack on the $name store', (kind) => {
  const db = useTestDatabase();
  let under: StoreUnderTest;
  let store: BlobStore;
  beforeEach(async () => {
    under = await kind.open();
    store = under.store;
  });
  afterEach(async () => {
    await under.cleanup();
  });

  it('deletes orphaned blobs past the grace period, object then row, and keeps young and referenced ones', async () => {
    const { pool } = db();
    const registry = new Registry();
    const work = gcWork({ store, metrics: createGcMetrics(registry) });
    const kept = await pushImage(pool, store, {
      repository: 'app',
      tag: 'v1',
      layers: [bytes('base'), bytes('app v1')],
    });
    const oldOrphan = await pushBlob(pool, store, bytes('abandoned layer'));
    const youngOrphan = await pushBlob(pool, store, bytes('layer of a push in flight'));
    await age(pool, 'blobs', 'created_at', '2 hours', `id <> ${youngOrphan.id}`);

    await sweep(pool, work, 'orphanBlobs', 'registry.blobs');

    expect(await store.exists(blobKey(oldOrphan.digest))).toBe(false);
    expect(await store.exists(blobKey(youngOrphan.digest))).toBe(true);
    for (const blob of kept.blobs) expect(await store.exists(blobKey(blob.digest))).toBe(true);
    const { rows } = await pool.query('SELECT digest FROM registry.blobs ORDER BY id');
    expect(rows.map((r) => r.digest)).toEqual([...kept.blobs.map((b) => b.digest), youngOrphan.digest]);
    const metrics = await registry.getMetricsAsJSON();
    const value = (name: string) => metrics.find((m) => m.name === name)?.values[0]?.value;
    expect(value('bbm_gc_deleted_total')).toBe(1);
    expect(value('bbm_gc_bytes_freed_total')).toBe('abandoned layer'.length);
  });

  it('keeps an orphan that a push is referencing at the very moment of the sweep', async () => {
    const { pool } = db();
    const work = gcWork({ store, orphanGraceMs: 0 });
    const layer = await pushBlob(pool, store, bytes('shared base'));
    const repositoryId = (await pool.query(`INSERT INTO registry.repositories (name) VALUES ('app') RETURNING id`))
      .rows[0].id;
    const push = await pool.connect();
    try {
      // The push links the blob to its manifest and has not committed yet.
      await push.query('BEGIN');
      const manifest = await push.query(
        `INSERT INTO registry.manifests (repository_id, digest) VALUES ($1, 'sha256:m') RETURNING id`,
        [repositoryId],
      );
      await push.query('INSERT INTO registry.manifest_blobs (manifest_id, blob_id) VALUES ($1, $2)', [
        manifest.rows[0].id,
        layer.id,
      ]);

      await sweep(pool, work, 'orphanBlobs', 'registry.blobs');

      await push.query('COMMIT');
    } finally {
      push.release();
    }
    expect(await store.exists(blobKey(layer.digest))).toBe(true);
    expect((await pool.query('SELECT count(*)::int AS n FROM registry.blobs')).rows[0].n).toBe(1);
  });

  it('never deletes the object of a referenced blob when a sweep dies mid-job, and finishes the job when run again', async () => {
    const { pool } = db();
    const image = await pushImage(pool, store, { repository: 'app', tag: 'v1', layers: [bytes('a'), bytes('b')] });
    const orphans = [];
    for (let i = 0; i < 6; i += 1) orphans.push(await pushBlob(pool, store, bytes(`orphan ${i}`)));
    await age(pool, 'blobs', 'created_at', '2 hours');
    // A store that fails after two deletions: the job dies with objects gone and rows still there.
    let left = 2;
    const dying: BlobStore = {
      put: (key, data) => store.put(key, data),
      exists: (key) => store.exists(key),
      list: (prefix, olderThan) => store.list(prefix, olderThan),
      delete: async (key) => {
        if (left-- <= 0) throw new Error('killed mid-job');
        await store.delete(key);
      },
    };
    await sweep(pool, gcWork({ store: dying }), 'orphanBlobs', 'registry.blobs', 100);
    expect((await pool.query('SELECT count(*)::int AS n FROM registry.blobs')).rows[0].n).toBe(8);
    for (const blob of image.blobs) expect(await store.exists(blobKey(blob.digest))).toBe(true);

    await sweep(pool, gcWork({ store }), 'orphanBlobs', 'registry.blobs', 100);

    const { rows } = await pool.query('SELECT digest FROM registry.blobs ORDER BY id');
    expect(rows.map((r) => r.digest)).toEqual(image.blobs.map((b) => b.digest));
    const objects = [];
    for await (const object of store.list('blobs/')) objects.push(object.key);
    expect(objects.sort()).toEqual(image.blobs.map((b) => blobKey(b.digest)).sort());
    expect(await pull(pool, 'app', 'v1')).toMatchObject({ digest: image.digest });
  });

  it('reaps upload sessions idle longer than a day, with their staging objects, and keeps live ones', async () => {
    const { pool } = db();
    const stale = await openUpload(pool, store, 'app', bytes('half a layer'));
    const live = await openUpload(pool, store, 'app', bytes('a layer on its way'));
    await age(pool, 'uploads', 'last_activity_at', '25 hours', `id = ${stale.id}`);

    await sweep(pool, gcWork({ store }), 'staleUploads', 'registry.uploads');

    expect(await store.exists(stale.key)).toBe(false);
    expect(await store.exists(live.key)).toBe(true);
    const { rows } = await pool.query('SELECT id FROM registry.uploads');
    expect(rows.map((r) => BigInt(r.id))).toEqual([live.id]);
  });

  it('expires manifests past their repository TTL (enabled policies only), never serves them, then cleans them up', async () => {
    const { pool } = db();
    const work = gcWork({ store, orphanGraceMs: 0 });
    const old = await pushImage(pool, store, {
      repository: 'cache',
      tag: 'old',
      layers: [bytes('shared'), bytes('old only')],
    });
    const fresh = await pushImage(pool, store, {
      repository: 'cache',
      tag: 'fresh',
      layers: [bytes('shared'), bytes('fresh only')],
    });
    const disabled = await pushImage(pool, store, { repository: 'keep', tag: 'v1', layers: [bytes('kept')] });
    const unpoliced = await pushImage(pool, store, { repository: 'free', tag: 'v1', layers: [bytes('free')] });
    await setTtlPolicy(pool, old.repositoryId, { enabled: true, ttlDays: 7 });
    await setTtlPolicy(pool, disabled.repositoryId, { enabled: false, ttlDays: 1 });
    await age(pool, 'manifests', 'last_pulled_at', '10 days', `id <> ${fresh.manifestId}`);
    await age(pool, 'blobs', 'created_at', '10 days');

    await sweep(pool, work, 'ttlExpire', 'registry.manifests');

    expect(await pull(pool, 'cache', 'old')).toBeNull();
    expect(await pull(pool, 'cache', old.digest)).toBeNull();
    expect(await pull(pool, 'cache', 'fresh')).not.toBeNull();
    expect(await pull(pool, 'keep', 'v1')).not.toBeNull();
    expect(await pull(pool, 'free', 'v1')).not.toBeNull();
    expect(await store.exists(blobKey(old.blobs[1]!.digest))).toBe(true);

    await sweep(pool, work, 'expiredCleanup', 'registry.manifests');
    await sweep(pool, work, 'orphanBlobs', 'registry.blobs');

    const manifests = await pool.query('SELECT id FROM registry.manifests ORDER BY id');
    expect(manifests.rows.map((r) => BigInt(r.id))).toEqual([
      fresh.manifestId,
      disabled.manifestId,
      unpoliced.manifestId,
    ]);
    const tags = await pool.query('SELECT name FROM registry.tags ORDER BY id');
    expect(tags.rows.map((r) => r.name)).toEqual(['fresh', 'v1', 'v1']);
    expect(await store.exists(blobKey(old.blobs[1]!.digest))).toBe(false);
    expect(await store.exists(blobKey(old.blobs[0]!.digest))).toBe(true);
  });

  it('removes everything under a deleted repository and leaves its blobs to the orphan sweep', async () => {
    const { pool } = db();
    const work = gcWork({ store, orphanGraceMs: 0 });
    const gone = await pushImage(pool, store, {
      repository: 'gone',
      tag: 'v1',
      layers: [bytes('shared'), bytes('gone only')],
    });
    await pushImage(pool, store, { repository: 'gone', tag: 'v2', layers: [bytes('gone v2')] });
    await pushImage(pool, store, { repository: 'stays', tag: 'v1', layers: [bytes('shared')] });
    const upload = await openUpload(pool, store, 'gone', bytes('staged'));
    await deleteRepository(pool, 'gone');
    expect(await pull(pool, 'gone', 'v1')).toBeNull();

    await sweep(pool, work, 'deletedRepositories', 'registry.manifests', 1);

    const repositories = await pool.query('SELECT name FROM registry.repositories ORDER BY id');
    expect(repositories.rows.map((r) => r.name)).toEqual(['stays']);
    const counts =
      await pool.query(`SELECT (SELECT count(*)::int FROM registry.manifests) AS manifests, (SELECT count(*)::int FROM registry.tags) AS tags,
                                            (SELECT count(*)::int FROM registry.uploads) AS uploads, (SELECT count(*)::int FROM registry.deleted_repositories) AS markers,
                                            (SELECT count(*)::int FROM registry.blobs) AS blobs`);
    expect(counts.rows[0]).toEqual({ manifests: 1, tags: 1, uploads: 0, markers: 0, blobs: 3 });
    expect(await store.exists(upload.key)).toBe(false);
    expect(await store.exists(blobKey(gone.blobs[1]!.digest))).toBe(true);

    await sweep(pool, work, 'orphanBlobs', 'registry.blobs');

    expect((await pool.query('SELECT count(*)::int AS n FROM registry.blobs')).rows[0].n).toBe(1);
    expect(await store.exists(blobKey(gone.blobs[1]!.digest))).toBe(false);
    expect(await store.exists(blobKey(gone.blobs[0]!.digest))).toBe(true);
    expect(await pull(pool, 'stays', 'v1')).not.toBeNull();
  });

  it('deletes a namespace: nothing under it served or pushed at once, its repositories through their own sweep, then it', async () => {
    const { pool } = db();
    const registry = new Registry();
    const work = gcWork({ store, orphanGraceMs: 0, metrics: createGcMetrics(registry) });
    const web = await pushImage(pool, store, {
      repository: 'acme/web',
      tag: 'v1',
      layers: [bytes('shared'), bytes('web')],
    });
    await pushImage(pool, store, { repository: 'acme/api', tag: 'v1', layers: [bytes('api')] });
    const upload = await openUpload(pool, store, 'acme/web', bytes('staged'));
    await pushImage(pool, store, { repository: 'other/app', tag: 'v1', layers: [bytes('shared')] });

    await deleteNamespace(pool, 'acme');
    // A push that checked the namespace just before it was deleted, and created its repository after.
    await pool.query(
      `INSERT INTO registry.repositories (name, namespace_id) SELECT 'acme/raced', id FROM registry.namespaces WHERE name = 'acme'`,
    );

    expect(await pull(pool, 'acme/web', 'v1')).toBeNull();
    expect(await pull(pool, 'acme/web', web.digest)).toBeNull();
    await expect(pushImage(pool, store, { repository: 'acme/new', tag: 'v1', layers: [bytes('x')] })).rejects.toThrow(
      NamespaceDeletedError,
    );
    expect(await pull(pool, 'other/app', 'v1')).not.toBeNull();

    // Its repositories still hold manifests: the namespace stays, only the raced (empty) repository goes.
    await sweep(pool, work, 'deletedNamespaces', 'registry.namespaces', 1);
    const names = async (table: string) =>
      (await pool.query(`SELECT name FROM registry.${table} ORDER BY name`)).rows.map((r) => r.name);
    expect(await names('namespaces')).toEqual(['acme', 'other']);
    expect(await names('repositories')).toEqual(['acme/api', 'acme/web', 'other/app']);

    await sweep(pool, work, 'deletedRepositories', 'registry.manifests', 1);
    await sweep(pool, work, 'deletedNamespaces', 'registry.namespaces', 1);
    await sweep(pool, work, 'orphanBlobs', 'registry.blobs');

    expect(await names('namespaces')).toEqual(['other']);
    expect(await names('repositories')).toEqual(['other/app']);
    const left = await pool.query(`SELECT (SELECT count(*)::int FROM registry.manifests) AS manifests,
      (SELECT count(*)::int FROM registry.tags) AS tags, (SELECT count(*)::int FROM registry.uploads) AS uploads,
      (SELECT count(*)::int FROM registry.deleted_repositories) AS markers, (SELECT count(*)::int FROM registry.blobs) AS blobs`);
    expect(left.rows[0]).toEqual({ manifests: 1, tags: 1, uploads: 0, markers: 0, blobs: 1 });
    expect(await store.exists(upload.key)).toBe(false);
    expect(await store.exists(blobKey(web.blobs[1]!.digest))).toBe(false);
    expect(await store.exists(blobKey(web.blobs[0]!.digest))).toBe(true);
    expect(await pull(pool, 'other/app', 'v1')).not.toBeNull();
    const deleted = (await registry.getMetricsAsJSON()).find((m) => m.name === 'bbm_gc_deleted_total')!.values;
    const count = (kind: string) => deleted.find((v) => v.labels.kind === kind)?.value;
    expect([count('namespace'), count('repository')]).toEqual([1, 3]);
  });

  it('expires tags: not served past their expiry, deleted by the sweep, and a manifest no live tag names goes the expiry way', async () => {
    const { pool } = db();
    const registry = new Registry();
    const work = gcWork({ store, orphanGraceMs: 0, metrics: createGcMetrics(registry) });
    const a = await pushImage(pool, store, { repository: 'app', tag: 'v1', layers: [bytes('shared'), bytes('a')] });
    await pushImage(pool, store, { repository: 'app', tag: 'stable', layers: [bytes('shared'), bytes('a')] });
    const b = await pushImage(pool, store, { repository: 'app', tag: 'v2', layers: [bytes('shared'), bytes('b')] });
    const c = await pushImage(pool, store, { repository: 'app', tag: 'v3', layers: [bytes('c')] });
    const past = new Date(Date.now() - 60_000);
    expect(await setTagExpiry(pool, a.repositoryId, 'v1', past)).toBe(true);
    await setTagExpiry(pool, a.repositoryId, 'v2', past);
    await setTagExpiry(pool, a.repositoryId, 'stable', new Date(Date.now() + 3_600_000));
    await setTagExpiry(pool, a.repositoryId, 'v3', past);
    await setTagExpiry(pool, a.repositoryId, 'v3', null);
    expect(await setTagExpiry(pool, a.repositoryId, 'nope', past)).toBe(false);

    // Before any sweep: an expired tag is not served.
    expect(await pull(pool, 'app', 'v1')).toBeNull();
    expect(await pull(pool, 'app', 'v2')).toBeNull();
    expect(await pull(pool, 'app', 'stable')).toMatchObject({ digest: a.digest });
    expect(await pull(pool, 'app', 'v3')).toMatchObject({ digest: c.digest });

    await sweep(pool, work, 'expiredTags', 'registry.tags', 1);

    const tags = await pool.query('SELECT name FROM registry.tags ORDER BY name');
    expect(tags.rows.map((r) => r.name)).toEqual(['stable', 'v3']);
    const expired = await pool.query('SELECT id FROM registry.manifests WHERE expired_at IS NOT NULL');
    expect(expired.rows.map((r) => BigInt(r.id))).toEqual([b.manifestId]);
    expect(await pull(pool, 'app', b.digest)).toBeNull();

    await sweep(pool, work, 'expiredCleanup', 'registry.manifests');
    await sweep(pool, work, 'orphanBlobs', 'registry.blobs');

    expect(await store.exists(blobKey(b.blobs[1]!.digest))).toBe(false);
    for (const blob of [...a.blobs, ...c.blobs]) expect(await store.exists(blobKey(blob.digest))).toBe(true);
    expect(await pull(pool, 'app', 'stable')).toMatchObject({ digest: a.digest });
    const deleted = (await registry.getMetricsAsJSON()).find((m) => m.name === 'bbm_gc_deleted_total')!.values;
    expect(deleted.find((v) => v.labels.kind === 'tag')?.value).toBe(2);
  });

  it('deletes at most its capacity of expired manifests per pass, and the rest in the next pass', async () => {
    const { pool } = db();
    const work = gcWork({ store, expiredDeletesPerPass: 3 });
    for (let i = 0; i < 5; i += 1)
      await pushImage(pool, store, { repository: 'cache', tag: `t${i}`, layers: [bytes(`layer ${i}`)] });
    await pool.query('UPDATE registry.manifests SET expired_at = now()');

    await sweep(pool, work, 'expiredCleanup', 'registry.manifests', 2);

    expect((await pool.query('SELECT count(*)::int AS n FROM registry.manifests')).rows[0].n).toBe(2);
    const reported = await pool.query(
      'SELECT array_agg(row_count ORDER BY min_value) AS rows FROM batched_background_migration_jobs',
    );
    expect(reported.rows[0].rows.map(Number)).toEqual([2, 1, 0]);

    await sweep(pool, work, 'expiredCleanup', 'registry.manifests', 2);

    expect((await pool.query('SELECT count(*)::int AS n FROM registry.manifests')).rows[0].n).toBe(0);
  });

  it('deletes stray objects no row points at (a push or upload that died half way), once old enough', async () => {
    const { pool } = db();
    const image = await pushImage(pool, store, { repository: 'app', tag: 'v1', layers: [bytes('kept')] });
    await store.put('blobs/sha256/deadbeef', bytes('a push died before its row'));
    await store.put('blobs/sha256/cafebabe', bytes('a push writing right now'));
    await store.put('uploads/0b5e55ed', bytes('an upload died before its row'));
    const past = new Date(Date.now() - 3 * 86_400_000);
    for (const key of ['blobs/sha256/deadbeef', 'uploads/0b5e55ed', blobKey(image.blobs[0]!.digest)]) {
      await under.age(key, past);
    }

    await sweep(pool, gcWork({ store }), 'orphanBlobs', 'registry.blobs');
    await sweep(pool, gcWork({ store }), 'staleUploads', 'registry.uploads');

    const objects = [];
    for await (const object of store.list('')) objects.push(object.key);
    expect(objects.sort()).toEqual([blobKey(image.blobs[0]!.digest), 'blobs/sha256/cafebabe'].sort());
  });

  it('lists in key order as S3 does (a-c before a/…), after a given key, and only objects older than asked', async () => {
    // S3 lists in byte order, so blobs/a-c comes before blobs/a/…; s3rver walks its directories
    // instead and lists it after them, so that one key is asked of the filesystem store only.
    const tricky = kind.name === 'filesystem' ? ['blobs/a-c'] : [];
    for (const key of ['blobs/b', 'blobs/a/c/d', ...tricky, 'blobs/a/b', 'uploads/u']) await store.put(key, bytes(key));
    await under.age('blobs/a/b', new Date(Date.now() - 86_400_000));
    const keys = async (...args: [string, Date?, string?]) => {
      const found = [];
      for await (const object of store.list(...args)) found.push(object.key);
      return found;
    };

    expect(await keys('blobs/')).toEqual([...tricky, 'blobs/a/b', 'blobs/a/c/d', 'blobs/b']);
    expect(await keys('blobs/', undefined, 'blobs/a/b')).toEqual(['blobs/a/c/d', 'blobs/b']);
    expect(await keys('blobs/', undefined, 'blobs/a/')).toEqual(['blobs/a/b', 'blobs/a/c/d', 'blobs/b']);
    expect(await keys('', undefined, 'blobs/b')).toEqual(['uploads/u']);
    expect(await keys('blobs/', new Date(Date.now() - 3_600_000))).toEqual(['blobs/a/b']);
  });

  it('looks at a bounded number of objects per pass for strays, each pass continuing where the last stopped', async () => {
    const { pool } = db();
    const image = await pushImage(pool, store, {
      repository: 'app',
      tag: 'v1',
      layers: [bytes('kept 1'), bytes('kept 2')],
    });
    const strays = ['blobs/sha256/s1', 'blobs/sha256/s2', 'blobs/sha256/s3', 'blobs/sha256/s4', 'blobs/sha256/s5'];
    for (const key of strays) await store.put(key, bytes(key));
    const past = new Date(Date.now() - 3 * 86_400_000);
    for (const key of [...strays, ...image.blobs.map((b) => blobKey(b.digest))]) await under.age(key, past);
    const work = gcWork({ store, strayScanPerPass: 3 });
    const left = async () => {
      const found = [];
      for await (const object of store.list('blobs/')) found.push(object.key);
      return found.filter((key) => strays.includes(key)).length;
    };

    // 7 objects in key order: the two kept blobs' (sha256/<hex>) sort before s1…s5.
    await sweep(pool, work, 'orphanBlobs', 'registry.blobs', 100);
    expect(await left()).toBe(4);
    await sweep(pool, work, 'orphanBlobs', 'registry.blobs', 100);
    expect(await left()).toBe(1);
    await sweep(pool, work, 'orphanBlobs', 'registry.blobs', 100);
    expect(await left()).toBe(0);
    const cursor = await pool.query(`SELECT after_key FROM registry.stray_scan_cursors WHERE prefix = 'blobs/'`);
    expect(cursor.rows).toEqual([{ after_key: '' }]);
    for (const blob of image.blobs) expect(await store.exists(blobKey(blob.digest))).toBe(true);
  });

  it('refuses object keys that could leave the store', async () => {
    await expect(store.put('../escape', bytes('x'))).rejects.toThrow(/invalid object key/);
    await expect(store.delete('/etc/passwd')).rejects.toThrow(/invalid object key/);
    await expect(store.exists('a/../../b')).rejects.toThrow(/invalid object key/);
    await expect(store.delete('blobs/never/was')).resolves.toBeUndefined();
  });

  it('is finished by its schedules like any migration', async () => {
    const { pool } = db();
    await pushImage(pool, store, { repository: 'app', tag: 'v1', layers: [bytes('x')] });
    await enqueue(pool, {
      name: 'gc.orphan_blobs@now',
      work: GC_WORK.orphanBlobs,
      table: 'registry.blobs',
      batchSize: 10,
    });
    await drain(testWorker(pool, { work: gcWork({ store }) }));
    expect((await migrationRow(pool, 'gc.orphan_blobs@now'))?.status).toBe(MigrationStatus.finished);
  });

  it('a sweep process SIGKILLed mid-job deletes no referenced object, and once resumed leaves no orphaned row or object', async () => {
    const { pool, url } = db();
    const image = await pushImage(pool, store, { repository: 'app', tag: 'v1', layers: [bytes('base'), bytes('app')] });
    for (let i = 0; i < 8; i += 1) await pushBlob(pool, store, bytes(`orphan ${i}`));
    await enqueue(pool, {
      name: 'gc.orphan_blobs@killed',
      work: GC_WORK.orphanBlobs,
      table: 'registry.blobs',
      batchSize: 100,
    });
    const countObjects = async () => {
      let n = 0;
      for await (const _ of store.list('blobs/')) n += 1;
      return n;
    };
    const env = { DATABASE_URL: url, ...under.env };
    const victim = startBbm(['run', '--config', GC_CONFIG], { ...env, BBM_TEST_GC_DELETE_DELAY_MS: '200' });
    await waitFor(async () => (await countObjects()) <= 8, 'the sweep to be half way through the objects');

    victim.child.kill('SIGKILL');
    await victim.exited;

    // The job's row deletions rolled back with it; referenced objects were never touched.
    expect((await pool.query('SELECT count(*)::int AS n FROM registry.blobs')).rows[0].n).toBe(10);
    for (const blob of image.blobs) expect(await store.exists(blobKey(blob.digest))).toBe(true);
    expect(await countObjects()).toBeLessThan(10);

    const resumed = await runBbm(['run', '--config', GC_CONFIG, '--until-done'], env);

    expect(resumed.code, resumed.output).toBe(0);
    expect((await migrationRow(pool, 'gc.orphan_blobs@killed'))?.status).toBe(MigrationStatus.finished);
    const { rows } = await pool.query('SELECT digest FROM registry.blobs ORDER BY id');
    expect(rows.map((r) => r.digest)).toEqual(image.blobs.map((b) => b.digest));
    const objects = [];
    for await (const object of store.list('')) objects.push(object.key);
    expect(objects.sort()).toEqual(image.blobs.map((b) => blobKey(b.digest)).sort());
  });
});
