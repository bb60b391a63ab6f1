/**
 * `npm run bench:gc`: the orphan sweep at scale, through the engine.
 *
 * Seeds a registry of `--blobs` blob rows (1,000,000), `--orphans` of them (10 %) referenced by
 * no manifest and past the grace period, the rest referenced ten to a manifest; every blob has
 * its object in the store (a temporary directory; `--store s3` for the S3 API server, with fewer
 * blobs). Then one pass of gc.orphan_blobs over registry.blobs, batch `--batch-size` (1,000),
 * `--lanes` lanes (1), drained by one worker, and prints blobs deleted per second and where the
 * time went: the share of the pass's wall time with a store request in flight, and the share in
 * the jobs' database work (the jobs' time outside the store). A benchmark, not a test: no timing
 * is asserted anywhere.
 *
 *   npm run bench:gc -- [--blobs N] [--orphans N] [--batch-size N] [--lanes N] [--store fs|s3] [--json]
 *
 * With --json, one JSON object on the last line of stdout.
 */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { benchWorker } from './drain.ts';
import { createPool } from '../src/store/db.ts';
import { databaseFromEnv } from '../src/dev/embedded-postgres.ts';
import { LocalS3Server, S3RVER_CREDENTIALS } from '../src/dev/s3-server.ts';
import { migrateGcSchema, migrateSchema } from '../src/store/apply-schema.ts';
import { FilesystemBlobStore, GC_WORK, gcWork, S3BlobStore, type BlobStore } from '../src/work/gc/index.ts';

const { values: flags } = parseArgs({
  options: {
    blobs: { type: 'string' },
    orphans: { type: 'string' },
    'batch-size': { type: 'string', default: '1000' },
    lanes: { type: 'string', default: '1' },
    store: { type: 'string', default: 'fs' },
    json: { type: 'boolean', default: false },
  },
});
if (flags.store !== 'fs' && flags.store !== 's3') throw new Error('--store is fs or s3');
const BLOBS = Number(flags.blobs ?? (flags.store === 's3' ? 20_000 : 1_000_000));
const ORPHANS = Number(flags.orphans ?? Math.round(BLOBS / 10));
const BATCH = Number(flags['batch-size']);
const LANES = Number(flags.lanes);
const log = (text: string) => {
  if (!flags.json) process.stderr.write(`${text}\n`);
};

const hex = (i: number) => i.toString(16).padStart(64, '0');
const keyOf = (i: number) => `blobs/sha256/${hex(i)}`;

/** Runs `task(i)` for i in [0, count), `concurrency` at a time, logging progress. */
async function eachIndex(count: number, concurrency: number, what: string, task: (i: number) => Promise<void>) {
  let next = 0;
  let done = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let i = next++; i < count; i = next++) {
        await task(i);
        done += 1;
        if (done % 100_000 === 0)
          log(`  ${what}: ${done.toLocaleString('en')} (${((performance.now() - started) / 1000).toFixed(0)} s)`);
      }
    }),
  );
}

/** The store, timed: how long at least one of its requests was in flight, and how many there were. */
function timed(store: BlobStore) {
  let active = 0;
  let since = 0;
  const stats = { busyMs: 0, requests: 0, listMs: 0 };
  const around = async <T>(call: () => Promise<T>, list = false): Promise<T> => {
    if (active++ === 0) since = performance.now();
    stats.requests += 1;
    const began = performance.now();
    try {
      return await call();
    } finally {
      if (list) stats.listMs += performance.now() - began;
      if (--active === 0) stats.busyMs += performance.now() - since;
    }
  };
  const wrapped: BlobStore = {
    put: (key, data) => around(() => store.put(key, data)),
    delete: (key) => around(() => store.delete(key)),
    exists: (key) => around(() => store.exists(key)),
    async *list(prefix, olderThan) {
      // Only the time spent waiting for the listing counts, not the consumer's work between items.
      const iterator = store.list(prefix, olderThan)[Symbol.asyncIterator]();
      for (;;) {
        const step = await around(() => iterator.next(), true);
        if (step.done) return;
        yield step.value;
      }
    },
  };
  return { store: wrapped, stats };
}

async function main() {
  const { url, stop: stopDatabase } = await databaseFromEnv();
  const root = await mkdtemp(path.join(tmpdir(), 'bbm-bench-gc-'));
  let s3: LocalS3Server | undefined;
  const pool = createPool({ connectionString: url, max: LANES + 3 });
  try {
    await migrateSchema(pool);
    await migrateGcSchema(pool);
    log(`seeding ${BLOBS.toLocaleString('en')} blob rows, ${ORPHANS.toLocaleString('en')} of them orphaned…`);
    await pool.query(`INSERT INTO registry.repositories (name) VALUES ('bench')`);
    await pool.query(
      `INSERT INTO registry.blobs (digest, size, storage_key, created_at)
       SELECT 'sha256:' || lpad(to_hex(i), 64, '0'), 16, 'blobs/sha256/' || lpad(to_hex(i), 64, '0'), now() - interval '1 day'
       FROM generate_series(0, $1::int - 1) i`,
      [BLOBS],
    );
    // Blob rows are ids 1..BLOBS; orphans are spread evenly, the rest referenced ten to a manifest.
    const every = Math.max(1, Math.floor(BLOBS / Math.max(1, ORPHANS)));
    await pool.query(
      `INSERT INTO registry.manifests (repository_id, digest)
       SELECT r.id, 'sha256:m' || g FROM registry.repositories r, generate_series(0, ($1::int - 1) / 10) g`,
      [BLOBS],
    );
    await pool.query(
      `INSERT INTO registry.manifest_blobs (manifest_id, blob_id)
       SELECT m.min_id + (b.id - 1) / 10, b.id FROM registry.blobs b, (SELECT min(id) AS min_id FROM registry.manifests) m
       WHERE NOT (b.id % $1 = 0 AND b.id / $1 <= $2)`,
      [every, ORPHANS],
    );
    const orphans = Number(
      (
        await pool.query(
          `SELECT count(*) AS n FROM registry.blobs b WHERE NOT EXISTS (SELECT 1 FROM registry.manifest_blobs mb WHERE mb.blob_id = b.id)`,
        )
      ).rows[0].n,
    );
    await pool.query('VACUUM ANALYZE registry.blobs, registry.manifest_blobs, registry.manifests');

    let base: BlobStore;
    if (flags.store === 's3') {
      s3 = await LocalS3Server.start();
      base = new S3BlobStore({
        bucket: await s3.createBucket(),
        endpoint: s3.endpoint,
        credentials: S3RVER_CREDENTIALS,
      });
      const data = new Uint8Array(16);
      await eachIndex(BLOBS, 32, 'objects', (i) => base.put(keyOf(i), data));
    } else {
      base = new FilesystemBlobStore(root);
      const directory = path.join(root, 'blobs', 'sha256');
      await mkdir(directory, { recursive: true });
      const data = new Uint8Array(16);
      // Straight to the files (the store's put writes aside and renames: the same bytes, slower).
      await eachIndex(BLOBS, 64, 'objects', (i) => writeFile(path.join(directory, hex(i)), data));
    }
    log(
      `seeded: ${orphans.toLocaleString('en')} orphans; sweeping with batch ${BATCH}, ${LANES} lane(s), ${flags.store} store…`,
    );

    const { store, stats } = timed(base);
    const jobMs: number[] = [];
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
       VALUES ('bench_gc', $1, $2, 'registry.blobs', 'id', $3)`,
      [BATCH, GC_WORK.orphanBlobs, LANES],
    );
    const worker = benchWorker(pool, {
      work: gcWork({ store, orphanGraceMs: 3_600_000 }),
      lanes: LANES,
      health: false,
      jobDurationsMs: jobMs,
    });
    const started = performance.now();
    await worker.run({ untilDone: true });
    const wallMs = performance.now() - started;
    await worker.close();

    const left = Number((await pool.query('SELECT count(*) AS n FROM registry.blobs')).rows[0].n);
    const deleted = BLOBS - left;
    const jobTotalMs = jobMs.reduce((a, b) => a + b, 0);
    const round3 = (x: number) => Math.round(x * 1000) / 1000;
    const result = {
      store: flags.store,
      blobs: BLOBS,
      orphans,
      deleted,
      batchSize: BATCH,
      lanes: LANES,
      jobs: jobMs.length,
      seconds: round3(wallMs / 1000),
      blobsDeletedPerSec: Math.round(deleted / (wallMs / 1000)),
      storeRequests: stats.requests,
      listingShare: round3(stats.listMs / wallMs),
      storeShare: round3(stats.busyMs / wallMs),
      databaseShare: round3(Math.max(0, jobTotalMs / LANES - stats.busyMs) / wallMs),
    };
    if (deleted !== orphans) throw new Error(`deleted ${deleted} blobs, expected the ${orphans} orphans`);
    if (flags.json) {
      process.stdout.write(`${JSON.stringify(result)}\n`);
      return;
    }
    log(
      `\ndeleted ${deleted.toLocaleString('en')} orphaned blobs (objects and rows) of ${BLOBS.toLocaleString('en')} in ${result.seconds} s: ` +
        `${result.blobsDeletedPerSec.toLocaleString('en')} blobs/s over ${result.jobs} jobs`,
    );
    log(
      `time: ${Math.round(result.storeShare * 100)} % with a store request in flight (${stats.requests.toLocaleString('en')} requests), ` +
        `${Math.round(result.databaseShare * 100)} % in the jobs' database work, the rest in the engine between jobs; ` +
        `listing the store for stray objects: ${Math.round(result.listingShare * 100)} %`,
    );
  } finally {
    await pool.end();
    await s3?.stop();
    await stopDatabase();
    await rm(root, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:gc failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
