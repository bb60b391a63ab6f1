/**
 * `npm run demo:gc`: the registry GC pack on a real PostgreSQL and a temporary directory as the
 * blob store (`npm run demo:gc -- --store s3`: a real S3 API server on 127.0.0.1, through the
 * AWS SDK). Seeds a registry with pushed images, some orphaned, stale, expired, deleted or in a
 * deleted namespace, runs the sweeps on short schedules, and prints what was freed.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { Registry } from 'prom-client';
import { Worker } from '../src/bbm/worker.ts';
import { migrationStatusName } from '../src/store/codes.ts';
import { createPool } from '../src/store/db.ts';
import { startEmbeddedPostgres } from '../src/dev/embedded-postgres.ts';
import { setTagExpiry, setTtlPolicy } from '../src/store/gc/registry.ts';
import { LocalS3Server, S3RVER_CREDENTIALS } from '../src/dev/s3-server.ts';
import { migrateGcSchema, migrateSchema } from '../src/store/apply-schema.ts';
import {
  createGcMetrics,
  FilesystemBlobStore,
  gcSchedules,
  gcWork,
  S3BlobStore,
  type BlobStore,
} from '../src/work/gc/index.ts';
import {
  deleteNamespace,
  deleteRepository,
  openUpload,
  pull,
  pushBlob,
  pushImage,
} from '../src/dev/registry-client.ts';
import { table } from '../src/cli/format.ts';

const say = (text: string) => process.stdout.write(`${text}\n`);
const layer = (text: string) => new TextEncoder().encode(text.repeat(2_000));

async function storeSize(store: BlobStore): Promise<{ objects: number; bytes: number }> {
  let objects = 0;
  let bytes = 0;
  for await (const object of store.list('')) {
    objects += 1;
    bytes += object.size;
  }
  return { objects, bytes };
}

async function main(): Promise<void> {
  const { values: flags } = parseArgs({ options: { store: { type: 'string', default: 'fs' } } });
  if (flags.store !== 'fs' && flags.store !== 's3') throw new Error('--store is fs or s3');
  say('starting an embedded PostgreSQL…');
  const cluster = await startEmbeddedPostgres();
  const root = await mkdtemp(path.join(tmpdir(), 'bbm-gc-demo-'));
  let s3: LocalS3Server | undefined;
  let store: BlobStore;
  let where: string;
  if (flags.store === 's3') {
    say('starting an S3 API server (s3rver) on 127.0.0.1…');
    s3 = await LocalS3Server.start();
    const bucket = await s3.createBucket('registry');
    store = new S3BlobStore({ bucket, endpoint: s3.endpoint, credentials: S3RVER_CREDENTIALS });
    where = `bucket ${bucket} at ${s3.endpoint}`;
  } else {
    store = new FilesystemBlobStore(root);
    where = root;
  }
  const pool = createPool({ connectionString: cluster.connectionString(), max: 4 });
  try {
    await migrateSchema(pool);
    await migrateGcSchema(pool);

    say(`seeding a registry (blob store: ${where})…`);
    for (let v = 1; v <= 3; v += 1) {
      await pushImage(pool, store, {
        repository: 'shop/web',
        tag: `v${v}`,
        layers: [layer('debian base'), layer(`web ${v}`)],
      });
    }
    const cache = await pushImage(pool, store, {
      repository: 'cache/node',
      tag: '18',
      layers: [layer('debian base'), layer('node 18')],
    });
    await pushImage(pool, store, {
      repository: 'cache/node',
      tag: '20',
      layers: [layer('debian base'), layer('node 20')],
    });
    await setTtlPolicy(pool, cache.repositoryId, { enabled: true, ttlDays: 14 });
    await pool.query(`UPDATE registry.manifests SET last_pulled_at = now() - interval '30 days' WHERE id = $1`, [
      cache.manifestId,
    ]);
    await pushImage(pool, store, { repository: 'team/retired', tag: 'latest', layers: [layer('retired app')] });
    await deleteRepository(pool, 'team/retired');
    await pushImage(pool, store, { repository: 'oldco/app', tag: 'v1', layers: [layer('oldco app')] });
    await pushImage(pool, store, { repository: 'oldco/db', tag: 'v1', layers: [layer('oldco db')] });
    await deleteNamespace(pool, 'oldco');
    const preview = await pushImage(pool, store, {
      repository: 'shop/web',
      tag: 'pr-42',
      layers: [layer('debian base'), layer('web preview')],
    });
    await setTagExpiry(pool, preview.repositoryId, 'pr-42', new Date(Date.now() - 60_000));
    for (let i = 0; i < 5; i += 1) await pushBlob(pool, store, layer(`abandoned push ${i}`));
    const stale = await openUpload(pool, store, 'shop/web', layer('half uploaded'));
    await openUpload(pool, store, 'shop/web', layer('uploading right now'));
    await pool.query(`UPDATE registry.uploads SET last_activity_at = now() - interval '2 days' WHERE id = $1`, [
      stale.id,
    ]);
    // As if everything had been pushed hours ago: past the orphan grace period.
    await pool.query(`UPDATE registry.blobs SET created_at = now() - interval '3 hours'`);

    const before = await storeSize(store);
    say(`  ${before.objects} objects, ${(before.bytes / 1024).toFixed(0)} KiB in the store`);
    say(
      '  cache/node:18 was last pulled 30 days ago (TTL 14 days); team/retired is deleted, and so is the namespace oldco;',
    );
    say('  shop/web:pr-42 expired a minute ago; 5 blobs are orphans; 1 upload is stale');

    const registry = new Registry();
    const metrics = createGcMetrics(registry);
    const worker = new Worker({
      pool,
      work: gcWork({ store, metrics }),
      schedules: gcSchedules({
        every: {
          orphanBlobs: '2s',
          staleUploads: '2s',
          ttlExpire: '2s',
          expiredCleanup: '2s',
          deletedRepositories: '2s',
          deletedNamespaces: '2s',
          expiredTags: '2s',
        },
      }),
      scheduleCheckMs: 500,
      intervalMs: 100,
      maxIntervalMs: 500,
      startupJitterMs: 0,
      logger: pino({ level: process.env.BBM_LOG_LEVEL ?? 'warn' }),
    });
    say('running the sweeps every 2 s for 7 s (expiry and deletion orphan blobs that a later orphan pass frees)…');
    const running = worker.run();
    await new Promise((resolve) => setTimeout(resolve, 7_000));
    await worker.stop();
    await running;

    const after = await storeSize(store);
    const { rows: passes } = await pool.query<{ name: string; status: number }>(
      `SELECT name, status FROM batched_background_migrations ORDER BY id`,
    );
    say(`\n${passes.length} passes ran:`);
    say(
      table(
        ['PASS', 'STATUS'],
        passes.map((p) => [p.name, migrationStatusName(p.status)]),
      ),
    );
    const counters = await registry.getMetricsAsJSON();
    const deleted = counters.find((m) => m.name === 'bbm_gc_deleted_total')?.values ?? [];
    const plural = (kind: string | number | undefined, n: number) =>
      n === 1 ? String(kind) : kind === 'repository' ? 'repositories' : `${kind}s`;
    say(`\nfreed: ${deleted.map((v) => `${v.value} ${plural(v.labels.kind, v.value)}`).join(', ')}`);
    say(
      `store: ${before.objects} → ${after.objects} objects, ${(before.bytes / 1024).toFixed(0)} → ${(after.bytes / 1024).toFixed(0)} KiB`,
    );
    say(
      `still served: shop/web:v1 ${(await pull(pool, 'shop/web', 'v1')) ? 'yes' : 'NO'}, cache/node:20 ${(await pull(pool, 'cache/node', '20')) ? 'yes' : 'NO'};` +
        ` gone: cache/node:18 ${(await pull(pool, 'cache/node', '18')) ? 'NO' : 'yes'}, team/retired ${(await pull(pool, 'team/retired', 'latest')) ? 'NO' : 'yes'},` +
        ` oldco/app ${(await pull(pool, 'oldco/app', 'v1')) ? 'NO' : 'yes'}, shop/web:pr-42 ${(await pull(pool, 'shop/web', 'pr-42')) ? 'NO' : 'yes'}`,
    );
  } finally {
    await pool.end();
    await s3?.stop();
    await cluster.stop();
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`demo failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
