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
import { isTarget, resolveTarget } from '../src/store/catalog.ts';
import { ErrorCode, JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { cutRangeStatement } from '../src/store/jobs.ts';
import { LOCK_NAMESPACE, QUIET_LOCK_KEY } from '../src/store/locks.ts';
import { drain, migrationRow, testWorker } from './support/engine.ts';
import {
  COMPOSITE_RANGES,
  COMPOSITE_TENANTS_SQL,
  createKeyLog,
  expectTiled,
  insertKeyMigration,
  keyLogged,
  touchRange,
} from './support/keys.ts';
import { waitFor } from './support/processes.ts';

const db = useTestDatabase();

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

describe('keys', () => {
  it('batches a uuid key named by itself, with BETWEEN on job.start and job.end', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO u SELECT FROM generate_series(1, 1000)`);
    await insertMigration(pool, 'uuid', 'u', 'id', touchBetween.name);
    await drain(testWorker(pool, { work: [touchBetween], concurrency: 1 }));
    await expectTiled(pool, { table: 'u', columns: ['id'], types: ['uuid'] }, 'uuid', { minRanges: 3 });
  });

  it('batches text in a non-C collation, in that collation', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE t (code text COLLATE "und-x-icu" PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(
      `INSERT INTO t (code) SELECT w || i FROM generate_series(1, 200) i, unnest(ARRAY['a', 'B', 'é', 'E', 'z', 'Ä']) w`,
    );
    await insertMigration(pool, 'text', 't', 'code', touchRange.name, 37);
    await drain(testWorker(pool, { work: [touchRange], concurrency: 1 }));
    await expectTiled(pool, { table: 't', columns: ['code'], types: ['text COLLATE "und-x-icu"'] }, 'text', {
      minRanges: 3,
    });
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
    await expectTiled(pool, { table: 'c', columns: ['tenant_id', 'id'], types: ['int', 'uuid'] }, 'composite', {
      minRanges: 3,
    });
  });

  it("cuts a composite key in ranges of batch size across its first column's values, large and small; a range within one value names it in job.range", async () => {
    const { pool } = db();
    await pool.query(
      `CREATE TABLE cv (tenant int NOT NULL, id int NOT NULL, touched int NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id))`,
    );
    await pool.query(`INSERT INTO cv (tenant, id) ${COMPOSITE_TENANTS_SQL}`);
    const predicates: Array<{ start: readonly string[]; end: readonly string[]; sql: string }> = [];
    const recording: Work<readonly string[]> = {
      name: 'keys.recording',
      async do(job) {
        predicates.push({ start: job.start, end: job.end, sql: job.range.sql });
        const { rowCount } = await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.range.sql}`, [
          ...job.range.params,
        ]);
        return rowCount ?? 0;
      },
    };
    await insertMigration(pool, 'values', 'cv', 'tenant,id', recording.name, 10);
    await drain(testWorker(pool, { work: [recording], concurrency: 1 }));

    await expectTiled(pool, { table: 'cv', columns: ['tenant', 'id'], types: ['int', 'int'] }, 'values');
    const { rows } = await pool.query<{ n: number }>(
      `SELECT (SELECT count(*)::int FROM cv WHERE (tenant, id) BETWEEN ((j.min_key->>0)::int, (j.min_key->>1)::int)
                                                        AND ((j.max_key->>0)::int, (j.max_key->>1)::int)) AS n
       FROM batched_background_migration_jobs j ORDER BY j.min_value`,
    );
    expect(rows.map(({ n }) => n)).toEqual([10, 10, 10, 10, 10, 10, 10, 10, 9]);
    expect(
      predicates.map(({ start, end, sql }) => [
        `${start.join(':')}-${end.join(':')}`,
        sql.startsWith('"tenant" = $1::integer AND "id" >= $2::integer AND "id" <= $3::integer'),
      ]),
    ).toEqual(COMPOSITE_RANGES);
  });

  it('batches a char(n) key without cutting its values to one character', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE ch (code char(6) PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO ch (code) SELECT lpad(i::text, 6, 'x') FROM generate_series(1, 500) i`);
    await insertMigration(pool, 'char', 'ch', 'code', touchBetween.name, 40);
    await drain(testWorker(pool, { work: [touchBetween], concurrency: 1 }));
    await expectTiled(pool, { table: 'ch', columns: ['code'], types: ['bpchar'] }, 'char', { minRanges: 3 });
  });

  it('batches a citext key (case-insensitive order) and a key on a descending index', async () => {
    const { pool } = db();
    await pool.query('CREATE EXTENSION citext');
    await pool.query(`CREATE TABLE ci (name citext PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(
      `INSERT INTO ci (name) SELECT w || i FROM generate_series(1, 100) i, unnest(ARRAY['a', 'B', 'c']) w`,
    );
    await insertMigration(pool, 'citext', 'ci', 'name', touchRange.name, 29);
    await pool.query(`CREATE TABLE de (id uuid NOT NULL, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`CREATE INDEX ON de (id DESC)`);
    await pool.query(`INSERT INTO de SELECT gen_random_uuid() FROM generate_series(1, 300)`);
    await insertMigration(pool, 'desc', 'de', 'id', touchRange.name, 29);
    await drain(testWorker(pool, { work: [touchRange] }));
    await expectTiled(pool, { table: 'ci', columns: ['name'], types: ['citext'] }, 'citext', { minRanges: 3 });
    await expectTiled(pool, { table: 'de', columns: ['id'], types: ['uuid'] }, 'desc', { minRanges: 3 });
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
    await expectTiled(pool, { table: 'e', columns: ['at'], types: ['timestamptz'] }, 'ts', { minRanges: 3 });
  });

  it("bounds a text key by its first and last keys in the column's collation, not the database's", async () => {
    const { pool } = db();
    // In und-x-icu 'a…' sorts first and 'Z…' last; in byte order (and in the database's "C"), 'Z' < 'a'.
    await pool.query(`CREATE TABLE t (code text COLLATE "und-x-icu" PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(
      `INSERT INTO t (code) SELECT w || i FROM generate_series(1, 50) i, unnest(ARRAY['a', 'm', 'Z']) w`,
    );
    await insertMigration(pool, 'ends', 't', 'code', touchRange.name, 20);
    await drain(testWorker(pool, { work: [touchRange], concurrency: 1 }));
    const { rows } = await pool.query(
      `SELECT min_key = (SELECT jsonb_build_array(min(code)) FROM t) AS first,
              max_key = (SELECT jsonb_build_array(max(code)) FROM t) AS last, max_key->>0 AS max_key
       FROM batched_background_migrations`,
    );
    expect(rows).toEqual([{ first: true, last: true, max_key: expect.stringMatching(/^Z/) }]);
    await expectTiled(pool, { table: 't', columns: ['code'], types: ['text COLLATE "und-x-icu"'] }, 'ends', {
      minRanges: 8,
    });
  });
});

describe('a range cut while a take waits', () => {
  it('is run, not taken for the empty range of an empty key space', async () => {
    const { pool } = db();
    await createKeyLog(pool);
    const work = keyLogged('keys.logged');
    await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO u SELECT FROM generate_series(1, 20)`);
    const id = await insertKeyMigration(pool, {
      name: 'raced',
      table: 'u',
      column: 'id',
      work: work.name,
      batchSize: 5,
    });
    const worker = testWorker(pool, { work: [work] });
    expect((await worker.runOnce()).outcome).toBe('migration_started');
    // The take waits behind the quiet lock (as behind a worker measuring commits), its statement begun
    // before the ranges below are cut and committed, its function's queries after.
    const quiet = await pool.connect();
    await quiet.query('BEGIN');
    await quiet.query('SELECT pg_advisory_xact_lock($1, $2)', [LOCK_NAMESPACE, QUIET_LOCK_KEY]);
    const run = worker.runOnce();
    await waitFor(async () => {
      const { rows } = await pool.query(
        `SELECT 1 FROM pg_stat_activity
         WHERE wait_event_type = 'Lock' AND query LIKE '%bbm_take_job%' AND datname = current_database()`,
      );
      return rows.length > 0;
    }, 'the take to wait');
    const cutter = await pool.connect();
    await cutter.query('BEGIN');
    const target = await resolveTarget(cutter, 'u', 'id');
    if (!isTarget(target)) throw new Error(target.message);
    const validated = { target, tableName: 'u', columnName: 'id', jobSignatureName: work.name };
    await cutter.query(cutRangeStatement({ migrationId: id, validated, size: null, statementTimeoutMs: 0 }));
    await cutter.query('COMMIT');
    cutter.release();
    await quiet.query('COMMIT');
    quiet.release();

    expect(await run).toMatchObject({ outcome: 'job_succeeded', job: { rows: 5 } });
    await drain(worker);

    await expectTiled(pool, { table: 'u', columns: ['id'], types: ['uuid'] }, 'raced', { log: true, minRanges: 4 });
  });
});

describe('key bounds', () => {
  /** A table of each kind: `u` (uuid), `c` (int, uuid), `i` (bigint), `t` (text in und-x-icu), each with a few rows. */
  async function tables(pool: pg.Pool): Promise<void> {
    await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO u SELECT FROM generate_series(1, 20)`);
    await pool.query(
      `CREATE TABLE c (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                       PRIMARY KEY (tenant_id, id))`,
    );
    await pool.query(`INSERT INTO c (tenant_id) SELECT i % 3 FROM generate_series(1, 20) i`);
    await pool.query(`CREATE TABLE i (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO i SELECT generate_series(1, 20)`);
    await pool.query(`CREATE TABLE t (code text COLLATE "und-x-icu" PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    await pool.query(`INSERT INTO t (code) SELECT w || i FROM generate_series(1, 9) i, unnest(ARRAY['a', 'm', 'Z']) w`);
  }

  it.each([
    [
      'a min_key that is not a uuid',
      'u',
      'id',
      { min_key: '"not-a-uuid"' },
      /min_key "not-a-uuid" is not a value of uuid: invalid input syntax for type uuid/,
    ],
    ['a max_key that is not a uuid', 'u', 'id', { max_key: '["0000"]' }, /max_key \["0000"\] is not a value of uuid/],
    [
      'a max_key that is an object',
      'u',
      'id',
      { max_key: '[{"a": 1}]' },
      /max_key \[\{"a": 1\}\] is not a value of uuid/,
    ],
    [
      'a composite min_key of one value',
      'c',
      'tenant_id,id',
      { min_key: '[1]' },
      /min_key \[1\] is not an array of 2 values of integer, uuid/,
    ],
    [
      'a composite max_key whose int does not cast',
      'c',
      'tenant_id,id',
      { max_key: `["x", "${'0'.repeat(8)}-0000-0000-0000-${'0'.repeat(12)}"]` },
      /max_key .* is not an array of 2 values of integer, uuid: invalid input syntax for type integer/,
    ],
    [
      'a max_value on a uuid key',
      'u',
      'id',
      { max_value: 100 },
      /max_value bounds an integer key; a key of uuid is bounded by min_key and max_key/,
    ],
    [
      'a min_value on a uuid key',
      'u',
      'id',
      { min_value: 5 },
      /min_value bounds an integer key; a key of uuid is bounded by min_key and max_key/,
    ],
    [
      // In und-x-icu 'a' < 'Z'; in byte order the other way round.
      "a min_key after the max_key in the column's collation",
      't',
      'code',
      { min_key: '"Z1"', max_key: '["a1"]' },
      /min_key "Z1" is after max_key \["a1"\] in the key's order/,
    ],
    [
      'a min_key on an integer key',
      'i',
      'id',
      { min_key: '5' },
      /min_key and max_key bound a key that is not a single integer column/,
    ],
  ])('fail a migration with %s: invalid_column, no work done', async (_, table, column, bounds, message) => {
    const { pool } = db();
    await tables(pool);
    const names = Object.keys(bounds);
    await pool.query(
      `INSERT INTO batched_background_migrations
         (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs, ${names.join(', ')})
       VALUES ('bad', 5, $1, $2, $3, 2, ${names.map((n, i) => (n.endsWith('_key') ? `$${i + 4}::jsonb` : `$${i + 4}::bigint`)).join(', ')})`,
      [touchRange.name, table, column, ...Object.values(bounds)],
    );

    await drain(testWorker(pool, { work: [touchRange], concurrency: 2 }));

    expect(await migrationRow(pool, 'bad')).toMatchObject({
      status: MigrationStatus.failed,
      failure_error_code: ErrorCode.invalid_column,
      failure_message: expect.stringMatching(message),
    });
    const { rows } = await pool.query(
      `SELECT (SELECT count(*) FROM batched_background_migration_jobs)::int AS jobs,
              (SELECT count(*) FROM ${table} WHERE touched > 0)::int AS touched`,
    );
    expect(rows[0]).toEqual({ jobs: 0, touched: 0 });
  });

  it('run only the rows within min_key and max_key, given as lone values or arrays', async () => {
    const { pool } = db();
    await tables(pool);
    const { rows: keys } = await pool.query<{ id: string }>('SELECT id FROM u ORDER BY id');
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, min_key, max_key)
       VALUES ('uuid', 3, $1, 'u', 'id', to_jsonb($2::text), jsonb_build_array($3::text)),
              ('composite', 3, $1, 'c', 'tenant_id,id', '[1, "00000000-0000-0000-0000-000000000000"]', '[1, "ffffffff-ffff-ffff-ffff-ffffffffffff"]'),
              ('text', 3, $1, 't', 'code', '"a5"', '"Z3"')`,
      [touchRange.name, keys[4]!.id, keys[14]!.id],
    );

    await drain(testWorker(pool, { work: [touchRange], concurrency: 2 }));

    await expectTiled(pool, { table: 'u', columns: ['id'], types: ['uuid'] }, 'uuid', {
      inside: `id BETWEEN '${keys[4]!.id}' AND '${keys[14]!.id}'`,
      minRanges: 4,
    });
    await expectTiled(pool, { table: 'c', columns: ['tenant_id', 'id'], types: ['int', 'uuid'] }, 'composite', {
      inside: 'tenant_id = 1',
      minRanges: 2,
    });
    // From a5 to Z3 in und-x-icu: a5..a9, every m, Z1..Z3.
    await expectTiled(pool, { table: 't', columns: ['code'], types: ['text COLLATE "und-x-icu"'] }, 'text', {
      inside: `code >= 'a5' AND code <= 'Z3'`,
      minRanges: 5,
    });
    expect((await pool.query(`SELECT count(*)::int AS n FROM t WHERE touched = 1`)).rows[0].n).toBe(17);
  });

  it('run no row for bounds around no row: a max_key before the first key, a min_key after the last', async () => {
    const { pool } = db();
    await tables(pool);
    await pool.query(
      `INSERT INTO batched_background_migrations (name, batch_size, job_signature_name, table_name, column_name, min_key, max_key)
       VALUES ('before', 3, $1, 't', 'code', NULL, '"0"'), ('after', 3, $1, 't', 'code', '"Zz"', NULL)`,
      [touchRange.name],
    );

    await drain(testWorker(pool, { work: [touchRange], concurrency: 2 }));

    const space = { table: 't', columns: ['code'], types: ['text COLLATE "und-x-icu"'] };
    for (const name of ['before', 'after']) await expectTiled(pool, space, name, { inside: 'false' });
    const { rows } = await pool.query(
      `SELECT m.name, j.min_key, j.max_key FROM batched_background_migration_jobs j
       JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id ORDER BY m.name`,
    );
    expect(rows).toEqual([
      { name: 'after', min_key: ['Zz'], max_key: ['Zz'] },
      { name: 'before', min_key: ['0'], max_key: ['0'] },
    ]);
  });

  it('finish a migration over an empty table with one empty range, without calling the work', async () => {
    const { pool } = db();
    await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
    let calls = 0;
    const counted: Work<JobKey> = { name: 'keys.counted', do: async () => void (calls += 1) };
    await insertMigration(pool, 'empty', 'u', 'id', counted.name, 10);

    const results = await drain(testWorker(pool, { work: [counted], concurrency: 2 }));

    expect(calls).toBe(0);
    expect(results.map((r) => r.outcome)).toEqual([
      'migration_started',
      'job_succeeded',
      'migration_finished',
      'no_job',
    ]);
    const { rows } = await pool.query(
      'SELECT min_key, max_key, status FROM batched_background_migration_jobs UNION ALL SELECT min_key, max_key, status FROM batched_background_migrations',
    );
    expect(rows).toEqual([
      { min_key: null, max_key: null, status: JobStatus.finished },
      { min_key: null, max_key: null, status: MigrationStatus.finished },
    ]);
    await expectTiled(pool, { table: 'u', columns: ['id'], types: ['uuid'] }, 'empty');
  });

  it('are read once, at the start, into their canonical form: a moving "now" and a DMY date stay what the start read', async () => {
    const { pool } = db();
    await pool.query(
      `CREATE TABLE e (at timestamptz NOT NULL, id int NOT NULL, touched int NOT NULL DEFAULT 0, PRIMARY KEY (at, id))`,
    );
    await pool.query(
      `INSERT INTO e (at, id) SELECT now() + (i - 50) * interval '1 hour', i FROM generate_series(1, 100) i`,
    );
    await insertMigration(pool, 'until_now', 'e', 'at,id', touchRange.name, 7);
    await pool.query(`UPDATE batched_background_migrations SET max_key = '["now", 0]', min_key = '["01/02/2000", 0]'`);
    const { rows: dates } = await pool.query(`SELECT '01/02/2000'::date = '2000-01-02'::date AS mdy`);
    expect(dates[0].mdy).toBe(true);

    await drain(testWorker(pool, { work: [touchRange] }));

    // Rows after the start's "now" stay untouched; the stored bounds are timestamps, not words.
    const { rows } = await pool.query(
      `SELECT count(*) FILTER (WHERE touched = 1)::int AS touched, count(*) FILTER (WHERE touched = 0)::int AS left,
              (SELECT max_key->>0 FROM batched_background_migrations) <> 'now' AS fixed,
              (SELECT (min_key->>0)::timestamptz = '2000-01-02' FROM batched_background_migrations) AS min_read
       FROM e`,
    );
    expect(rows[0]).toMatchObject({ fixed: true, min_read: true });
    expect(rows[0].touched).toBeGreaterThanOrEqual(49);
    expect(rows[0].touched + rows[0].left).toBe(100);
    expect(rows[0].left).toBeGreaterThanOrEqual(49);
  });
});
