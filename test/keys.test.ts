/**
 * Batching on keys that are not a single integer column (docs/keys.md): uuid, text in a non-C
 * collation, timestamps that repeat, numeric, and composite keys. Each migration is inserted by
 * plain SQL with only the key's name, drained by workers in several lanes, and checked in SQL:
 * every row touched exactly once, and the ranges tiling the key space (ordered, disjoint, no row
 * between two of them).
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import type { Job, JobKey, Work } from '../src/bbm/types.ts';
import { useTestDatabase } from './support/database.ts';
import { drain, migrationRow, testWorker } from './support/engine.ts';
import { resolveTarget, type Target } from '../src/store/catalog.ts';
import { cutRangeStatement } from '../src/store/jobs.ts';
import { LOCK_NAMESPACE, QUIET_LOCK_KEY } from '../src/store/locks.ts';
import { atomically } from '../src/store/tx.ts';

const db = useTestDatabase();

/** Touches the range's rows through the ready predicate, so it works for every key. */
const touchRange: Work<JobKey> = {
  name: 'keys.touch',
  async do(job) {
    const { rowCount } = await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.range.sql}`, [
      ...job.range.params,
    ]);
    return rowCount ?? 0;
  },
};

/** Touches with BETWEEN on job.start and job.end, as integer-key work functions are written. */
const touchBetween: Work<string> = {
  name: 'keys.between',
  async do(job: Job<string>) {
    const { rowCount } = await job.query(
      `UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.column} BETWEEN $1 AND $2`,
      [job.start, job.end],
    );
    return rowCount ?? 0;
  },
};

async function insertMigration(
  pool: pg.Pool,
  name: string,
  table: string,
  column: string,
  work: string,
  batchSize = 50,
) {
  await pool.query(
    `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
     VALUES ($1, $2, $3, $4, $5, 3)`,
    [name, batchSize, work, table, column],
  );
}

/**
 * Every row touched once, and the finished ranges tile the key: each range's first key is the
 * first row after the previous range's last key, in the key's own order.
 */
async function expectTiled(pool: pg.Pool, table: string, name: string, key: string, types: string[]): Promise<void> {
  const { rows: touched } = await pool.query(`SELECT touched, count(*)::int AS n FROM ${table} GROUP BY touched`);
  expect(touched).toEqual([{ touched: 1, n: expect.any(Number) }]);
  expect((await migrationRow(pool, name))?.status).toBe(2);
  const row = (json: string) => types.map((t, i) => `(${json}->>${i})::${t}`).join(', ');
  const { rows } = await pool.query(
    `WITH r AS (
       SELECT j.min_key, j.max_key, j.status, lag(j.max_key) OVER (ORDER BY j.min_value) AS prev
       FROM batched_background_migration_jobs j JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
       WHERE m.name = $1)
     SELECT count(*)::int AS ranges,
            count(*) FILTER (WHERE r.status <> 3 AND r.status <> 2)::int AS unfinished,
            count(*) FILTER (WHERE (${row('r.min_key')}) > (${row('r.max_key')}))::int AS reversed,
            count(*) FILTER (WHERE r.prev IS NOT NULL AND (${row('r.min_key')}) <= (${row('r.prev')}))::int AS overlapping,
            count(*) FILTER (WHERE r.prev IS NOT NULL AND EXISTS (
              SELECT 1 FROM ${table} t WHERE (${key}) > (${row('r.prev')}) AND (${key}) < (${row('r.min_key')})))::int AS gaps
     FROM r`,
    [name],
  );
  expect(rows[0]).toMatchObject({ unfinished: 0, reversed: 0, overlapping: 0, gaps: 0 });
  expect(rows[0].ranges).toBeGreaterThan(2);
}

describe('keys', () => {
  it('batches a uuid key named by itself, with BETWEEN on job.start and job.end', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO u SELECT FROM generate_series(1, 1000)`);
    await insertMigration(pool, 'uuid', 'u', 'id', touchBetween.name);
    await drain(testWorker(pool, { work: [touchBetween], concurrency: 1 }));
    await expectTiled(pool, 'u', 'uuid', 'id', ['uuid']);
  });

  it('batches text in a non-C collation, in that collation', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE t (code text COLLATE "und-x-icu" PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(
      `INSERT INTO t (code) SELECT w || i FROM generate_series(1, 200) i, unnest(ARRAY['a', 'B', 'é', 'E', 'z', 'Ä']) w`,
    );
    await insertMigration(pool, 'text', 't', 'code', touchRange.name, 37);
    await drain(testWorker(pool, { work: [touchRange], concurrency: 1 }));
    await expectTiled(pool, 't', 'text', 'code', ['text COLLATE "und-x-icu"']);
  });

  it('batches a composite key (tenant_id, id uuid) in lanes', async () => {
    const { pool } = db();
    await pool.query(
      `CREATE TABLE c (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant_id, id))`,
    );
    await pool.query(`INSERT INTO c (tenant_id) SELECT i % 7 FROM generate_series(1, 1500) i`);
    await insertMigration(pool, 'composite', 'c', 'tenant_id,id', touchRange.name, 64);
    const workers = [1, 2].map(() => testWorker(pool, { work: [touchRange], concurrency: 2 }));
    await Promise.all(workers.map((w) => drain(w)));
    await expectTiled(pool, 'c', 'composite', '(tenant_id, id)', ['int', 'uuid']);
  });

  it('batches a char(n) key without cutting its values to one character', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE ch (code char(6) PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO ch (code) SELECT lpad(i::text, 6, 'x') FROM generate_series(1, 500) i`);
    await insertMigration(pool, 'char', 'ch', 'code', touchBetween.name, 40);
    await drain(testWorker(pool, { work: [touchBetween], concurrency: 1 }));
    await expectTiled(pool, 'ch', 'char', 'code', ['bpchar']);
  });

  it('batches a timestamptz key that repeats: every row of a repeated key in one range', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE e (at timestamptz NOT NULL, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`CREATE INDEX ON e (at)`);
    await pool.query(
      `INSERT INTO e (at) SELECT '2026-01-01'::timestamptz + (i / 7) * interval '1 second' FROM generate_series(1, 700) i`,
    );
    await insertMigration(pool, 'ts', 'e', 'at', touchRange.name, 20);
    await drain(testWorker(pool, { work: [touchRange], concurrency: 1 }));
    await expectTiled(pool, 'e', 'ts', 'at', ['timestamptz']);
  });

  it('hands a take the keys of the range it locked, also when the range was cut while the take waited', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE rc (k text PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO rc (k) SELECT 'k' || lpad(g::text, 3, '0') FROM generate_series(1, 15) g`);
    await insertMigration(pool, 'race', 'rc', 'k', touchRange.name, 5);
    const worker = testWorker(pool, { work: [touchRange], concurrency: 1 });
    expect((await worker.runOnce()).outcome).toBe('migration_started');

    // A quiet round (commit probes) holds the quiet lock: the next take waits for it inside the
    // take, its statement begun; meanwhile another lane cuts the first ranges.
    const quiet = await pool.connect();
    await quiet.query('BEGIN');
    await quiet.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, QUIET_LOCK_KEY]);
    const run = worker.runOnce();
    await expect
      .poll(
        async () =>
          (await pool.query(`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND NOT granted`))
            .rows[0].n,
      )
      .toBe(1);
    const target = (await atomically(pool, (client) => resolveTarget(client, 'rc', 'k'))) as Target;
    const validated = { target, tableName: 'rc', columnName: 'k', jobSignatureName: touchRange.name };
    await pool.query(cutRangeStatement({ migrationId: 1n, validated, size: null, statementTimeoutMs: 0 }));
    await quiet.query('ROLLBACK');
    quiet.release();

    const result = await run;
    expect(result).toMatchObject({ outcome: 'job_succeeded', job: { rows: 5, startKey: ['k001'], endKey: ['k005'] } });
    await drain(worker);
    await expectTiled(pool, 'rc', 'race', 'k', ['text']);
  });
});
