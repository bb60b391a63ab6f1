import { describe, expect, it } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, drain, enqueue, jobRanges, migrationRow, range, testWorker, touch } from './support/engine.ts';

describe('ranges', () => {
  const db = useTestDatabase();

  it('covers [min, max] with contiguous ranges of at most batch_size rows, gaps inside ranges', async () => {
    const { pool } = db();
    // ids 1..10, a gap, 100..104, a gap, 1000
    await createItems(pool, 'items', [...range(1, 10), ...range(100, 104), 1000]);
    await enqueue(pool, { name: 'gaps', work: touch.name, table: 'items', batchSize: 4, min: 1, max: 1000 });

    await drain(testWorker(pool, { work: [touch] }));

    expect(await jobRanges(pool, 'gaps')).toEqual([
      { min: 1, max: 4, status: 2, attempts: 1 },
      { min: 5, max: 8, status: 2, attempts: 1 },
      { min: 9, max: 101, status: 2, attempts: 1 },
      { min: 102, max: 1000, status: 2, attempts: 1 },
    ]);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM items WHERE touched <> 1');
    expect(rows[0].n).toBe(0);
    expect((await migrationRow(pool, 'gaps'))?.status).toBe(MigrationStatus.finished);
  });

  it('resolves a NULL max_value to the column maximum when the migration starts', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 25));
    await enqueue(pool, { name: 'open', work: touch.name, table: 'items', batchSize: 10, max: null });
    const worker = testWorker(pool, { work: [touch] });

    await worker.runOnce();
    expect((await migrationRow(pool, 'open'))?.max_value).toBe('25');
    // Rows added after the start are outside the migration.
    await pool.query('INSERT INTO items (id) VALUES (26), (27)');
    await drain(worker);

    expect(await jobRanges(pool, 'open')).toEqual([
      { min: 1, max: 10, status: 2, attempts: 1 },
      { min: 11, max: 20, status: 2, attempts: 1 },
      { min: 21, max: 25, status: 2, attempts: 1 },
    ]);
    const { rows } = await pool.query('SELECT id::int, touched FROM items WHERE id > 24 ORDER BY id');
    expect(rows).toEqual([
      { id: 25, touched: 1 },
      { id: 26, touched: 0 },
      { id: 27, touched: 0 },
    ]);
  });

  it('honours min_value and a max_value inside the data', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    await enqueue(pool, { name: 'middle', work: touch.name, table: 'items', batchSize: 7, min: 5, max: 20 });

    await drain(testWorker(pool, { work: [touch] }));

    expect((await jobRanges(pool, 'middle')).map((r) => [r.min, r.max])).toEqual([
      [5, 11],
      [12, 18],
      [19, 20],
    ]);
    const { rows } = await pool.query('SELECT array_agg(id::int ORDER BY id) AS ids FROM items WHERE touched = 1');
    expect(rows[0].ids).toEqual(range(5, 20));
  });

  it('finishes a migration over an empty table with one empty range', async () => {
    const { pool } = db();
    await createItems(pool, 'items', []);
    await enqueue(pool, { name: 'empty', work: touch.name, table: 'items', batchSize: 10, max: null });

    const results = await drain(testWorker(pool, { work: [touch] }));

    expect(results.map((r) => r.outcome)).toEqual(['migration_started', 'job_succeeded', 'migration_finished', 'no_job']);
    expect(await jobRanges(pool, 'empty')).toEqual([{ min: 1, max: 1, status: 2, attempts: 1 }]);
    expect((await migrationRow(pool, 'empty'))?.status).toBe(MigrationStatus.finished);
  });

  it('handles ids beyond 2^53 exactly (bigint all the way)', async () => {
    const { pool } = db();
    const base = 2n ** 62n;
    await pool.query('CREATE TABLE big (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
    await pool.query('INSERT INTO big (id) SELECT $1::bigint + x FROM generate_series(0, 4) x', [base]);
    await enqueue(pool, { name: 'big', work: touch.name, table: 'big', batchSize: 2, min: base, max: null });

    await drain(testWorker(pool, { work: [touch] }));

    const { rows } = await pool.query(
      `SELECT j.min_value::text AS min, j.max_value::text AS max FROM batched_background_migration_jobs j ORDER BY j.min_value`,
    );
    expect(rows).toEqual([
      { min: String(base), max: String(base + 1n) },
      { min: String(base + 2n), max: String(base + 3n) },
      { min: String(base + 4n), max: String(base + 4n) },
    ]);
    const touched = await pool.query('SELECT count(*)::int AS n FROM big WHERE touched = 1');
    expect(touched.rows[0].n).toBe(5);
  });

  it('batches an integer column of a schema-qualified table, compared across types', async () => {
    const { pool } = db();
    await pool.query('CREATE SCHEMA app');
    await pool.query('CREATE TABLE app.events (seq int PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
    await pool.query('INSERT INTO app.events (seq) SELECT generate_series(1, 9)');
    await enqueue(pool, { name: 'qualified', work: touch.name, table: 'app.events', column: 'seq', batchSize: 5 });

    await drain(testWorker(pool, { work: [touch] }));

    expect((await jobRanges(pool, 'qualified')).map((r) => [r.min, r.max])).toEqual([
      [1, 5],
      [6, 9],
    ]);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM app.events WHERE touched = 1');
    expect(rows[0].n).toBe(9);
  });
});
