import { describe, expect, it } from 'vitest';
import { migrationReports } from '../src/bbm/status.ts';
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

    expect(results.map((r) => r.outcome)).toEqual([
      'migration_started',
      'job_succeeded',
      'migration_finished',
      'no_job',
    ]);
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

  describe.each([
    { type: 'smallint', min: -(2n ** 15n), max: 2n ** 15n - 1n },
    { type: 'integer', min: -(2n ** 31n), max: 2n ** 31n - 1n },
    { type: 'bigint', min: -(2n ** 63n), max: 2n ** 63n - 1n },
  ])('over the whole domain of a $type column', ({ type, min, max }) => {
    it('runs rows at both ends of the type exactly once, from min_value at the type minimum, and status still adds up', async () => {
      const { pool } = db();
      await pool.query(`CREATE TABLE ends (id ${type} PRIMARY KEY, touched int NOT NULL DEFAULT 0)`);
      const ids = [
        ...Array.from({ length: 40 }, (_, i) => min + BigInt(i)),
        -3n,
        0n,
        7n,
        ...Array.from({ length: 40 }, (_, i) => max - BigInt(i)),
      ];
      await pool.query('INSERT INTO ends (id) SELECT unnest($1::bigint[])', [ids.map(String)]);
      // max_value NULL: resolved to the column's maximum, here the type's.
      await enqueue(pool, { name: 'ends', work: touch.name, table: 'ends', batchSize: 7, min, max: null });

      await testWorker(pool, { work: [touch], concurrency: 2 }).run({ untilDone: true });

      const row = await migrationRow(pool, 'ends');
      expect(row).toMatchObject({ status: MigrationStatus.finished, max_value: String(max) });
      const touched = await pool.query('SELECT array_agg(DISTINCT touched) AS t, count(*)::int AS n FROM ends');
      expect(touched.rows[0]).toEqual({ t: [1], n: ids.length });
      const jobs = await pool.query<{ min: string; max: string }>(
        'SELECT min_value::text AS min, max_value::text AS max FROM batched_background_migration_jobs ORDER BY min_value',
      );
      expect(BigInt(jobs.rows[0]!.min)).toBe(min);
      expect(BigInt(jobs.rows.at(-1)!.max)).toBe(max);
      for (let i = 1; i < jobs.rows.length; i += 1)
        expect(BigInt(jobs.rows[i]!.min)).toBe(BigInt(jobs.rows[i - 1]!.max) + 1n);
      // The widths of these ranges sum past 2^63 for bigint: status reads them as numeric.
      const [report] = await migrationReports(pool, { name: 'ends' });
      expect(report).toMatchObject({ status: 'finished', progress: 1, finishedPrefixEnd: max });
    });
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
