/**
 * Dense cuts (migrations/0012): on a unique key whose last index scan found the keys dense, ranges
 * are cut by arithmetic (start + size - 1) while the key that would end them exists, with a scan
 * every 16th range. `dense_cuts` on each job says how its end was found: NULL, a scan that found
 * the keys sparse; 0, a scan that found them dense; k, the k-th arithmetic range since.
 */
import fc from 'fast-check';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, drain, enqueue, migrationRow, range, testWorker, touch } from './support/engine.ts';

interface CutRange {
  min: bigint;
  max: bigint;
  dense: number | null;
  rows: number;
}

/** The migration's ranges in order, with how each was cut and the rows of `table` inside it. */
async function cutRanges(pool: pg.Pool, name: string, table = 'items'): Promise<CutRange[]> {
  const { rows } = await pool.query<{ min: string; max: string; dense: number | null; rows: number }>(
    `SELECT j.min_value::text AS min, j.max_value::text AS max, j.dense_cuts AS dense,
            (SELECT count(*)::int FROM ${table} t WHERE t.id BETWEEN j.min_value AND j.max_value) AS rows
     FROM batched_background_migration_jobs j JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
     WHERE m.name = $1 ORDER BY j.min_value`,
    [name],
  );
  return rows.map((r) => ({ min: BigInt(r.min), max: BigInt(r.max), dense: r.dense, rows: r.rows }));
}

async function touchedOnce(pool: pg.Pool, table = 'items'): Promise<boolean> {
  const { rows } = await pool.query<{ bad: number }>(`SELECT count(*)::int AS bad FROM ${table} WHERE touched <> 1`);
  return rows[0]!.bad === 0;
}

describe('dense cuts', () => {
  const db = useTestDatabase();

  it('cuts dense keys by arithmetic, with a scan every 16th range, into the ranges a scan would cut', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 400));
    await enqueue(pool, { name: 'dense', work: touch.name, table: 'items', batchSize: 10 });

    await drain(testWorker(pool, { work: [touch] }));

    const ranges = await cutRanges(pool, 'dense');
    expect(ranges.map((r) => [r.min, r.max])).toEqual(
      range(0, 39).map((i) => [BigInt(i * 10 + 1), BigInt(i * 10 + 10)]),
    );
    expect(ranges.map((r) => r.dense)).toEqual(range(0, 39).map((i) => i % 16));
    expect(await touchedOnce(pool)).toBe(true);
  });

  it('goes back to the scan where the key ending a range is missing, and to arithmetic after a dense scan', async () => {
    const { pool } = db();
    // 1..50, a gap, 200..260.
    await createItems(pool, 'items', [...range(1, 50), ...range(200, 260)]);
    await enqueue(pool, { name: 'gap', work: touch.name, table: 'items', batchSize: 10 });

    await drain(testWorker(pool, { work: [touch] }));

    expect(await cutRanges(pool, 'gap')).toEqual([
      { min: 1n, max: 10n, dense: 0, rows: 10 },
      { min: 11n, max: 20n, dense: 1, rows: 10 },
      { min: 21n, max: 30n, dense: 2, rows: 10 },
      { min: 31n, max: 40n, dense: 3, rows: 10 },
      { min: 41n, max: 50n, dense: 4, rows: 10 },
      // 60 is missing: the scan finds the 10th key from 51, across the gap, and calls it sparse.
      { min: 51n, max: 209n, dense: null, rows: 10 },
      { min: 210n, max: 219n, dense: 0, rows: 10 },
      { min: 220n, max: 229n, dense: 1, rows: 10 },
      { min: 230n, max: 239n, dense: 2, rows: 10 },
      { min: 240n, max: 249n, dense: 3, rows: 10 },
      { min: 250n, max: 259n, dense: 4, rows: 10 },
      // The last range ends at max_value (260) without a probe.
      { min: 260n, max: 260n, dense: 5, rows: 1 },
    ]);
    expect(await touchedOnce(pool)).toBe(true);
  });

  it('always scans a column whose index is not unique, and keys a few percent sparse', async () => {
    const { pool } = db();
    await pool.query('CREATE TABLE items (id bigint NOT NULL, touched int NOT NULL DEFAULT 0)');
    await pool.query('CREATE INDEX ON items (id)');
    await pool.query('INSERT INTO items (id) SELECT generate_series(1, 100)');
    await createItems(
      pool,
      'sparse',
      range(1, 110).filter((id) => id % 10 !== 0),
    );
    await enqueue(pool, { name: 'not unique', work: touch.name, table: 'items', batchSize: 10 });
    await enqueue(pool, { name: 'sparse', work: touch.name, table: 'sparse', batchSize: 10 });

    await drain(testWorker(pool, { work: [touch] }));

    const notUnique = await cutRanges(pool, 'not unique');
    expect(notUnique).toHaveLength(10);
    expect(notUnique.every((r) => r.dense === null && r.rows === 10)).toBe(true);
    // 10 keys per 11 (one in ten missing) is sparser than 1.0625: every range is scanned, and full.
    const sparse = await cutRanges(pool, 'sparse', 'sparse');
    expect(sparse.every((r) => r.dense === null)).toBe(true);
    expect(sparse.map((r) => r.rows)).toEqual([...Array<number>(9).fill(10), 9]);
    expect(await touchedOnce(pool)).toBe(true);
    expect(await touchedOnce(pool, 'sparse')).toBe(true);
  });

  it.each([
    { end: 'top', first: 2n ** 63n - 95n },
    { end: 'bottom', first: -(2n ** 63n) },
  ])('cuts by arithmetic up to the $end of bigint without overflowing', async ({ first }) => {
    const { pool } = db();
    await pool.query('CREATE TABLE items (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
    // 95 keys: the last range is clamped to max_value.
    await pool.query('INSERT INTO items (id) SELECT $1::bigint + g FROM generate_series(0, 94) g', [first]);
    await enqueue(pool, {
      name: 'edge',
      work: touch.name,
      table: 'items',
      batchSize: 10,
      min: first,
      max: first + 94n,
    });

    await testWorker(pool, { work: [touch], concurrency: 2 }).run({ untilDone: true });

    const ranges = await cutRanges(pool, 'edge');
    expect(ranges.map((r) => r.dense)).toEqual(range(0, 9));
    expect(ranges.map((r) => r.rows)).toEqual([...Array<number>(9).fill(10), 5]);
    expect(ranges.at(-1)!.max).toBe(first + 94n);
    expect((await migrationRow(pool, 'edge'))?.status).toBe(MigrationStatus.finished);
    expect(await touchedOnce(pool)).toBe(true);
  });

  it('keeps the signature 0.6 workers call: their cuts scan, and 0 means nothing was cut', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 200));
    const id = await enqueue(pool, { name: 'old', work: touch.name, table: 'items', batchSize: 10 });
    expect((await testWorker(pool, { work: [touch] }).runOnce()).outcome).toBe('migration_started');
    const oldCut = async () =>
      (
        await pool.query<{ n: number }>(
          `SELECT bbm_cut_range($1::bigint, 'public', 'items', 'id', 'items', 'id', $2, NULL::integer) AS n`,
          [id, touch.name],
        )
      ).rows[0]!.n;
    const finishAll = () => pool.query('UPDATE batched_background_migration_jobs SET status = 2');

    // Sixteen may wait in one lane at a fixed size: sixteen ranges, then none while they do.
    expect(await oldCut()).toBe(16);
    expect(await oldCut()).toBe(0);
    await finishAll();
    expect(await oldCut()).toBe(4);
    await finishAll();
    // None left: 0, as 0.6 workers expect (0.7 gets NULL).
    expect(await oldCut()).toBe(0);
    const ranges = await cutRanges(pool, 'old');
    expect(ranges.map((r) => [r.min, r.max, r.dense])).toEqual(
      range(0, 19).map((k) => [BigInt(10 * k + 1), BigInt(10 * k + 10), null]),
    );
  });

  it('property: over keys dense in runs with gaps, ranges tile [min, max], hold at most batch_size rows, and run once', async () => {
    const { pool } = db();
    await pool.query('CREATE TABLE items (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
    const runs = fc.array(
      fc.record({ gap: fc.integer({ min: 1, max: 60 }), length: fc.integer({ min: 1, max: 80 }) }),
      {
        minLength: 1,
        maxLength: 6,
      },
    );
    let pass = 0;
    await fc.assert(
      fc.asyncProperty(
        runs,
        fc.integer({ min: 1, max: 25 }),
        fc.integer({ min: 1, max: 3 }),
        fc.integer({ min: 0, max: 20 }),
        async (keyRuns, batchSize, lanes, deletedPerMille) => {
          pass += 1;
          await pool.query('TRUNCATE items, batched_background_migrations, batched_background_migration_jobs');
          const ids: number[] = [];
          let next = 0;
          for (const { gap, length } of keyRuns) {
            next += gap;
            for (let i = 0; i < length; i += 1) ids.push(next + i);
            next += length;
          }
          // A few keys missing here and there, as deletes leave them.
          const kept = ids.filter((id) => (id * 7919) % 1000 >= deletedPerMille);
          await pool.query('INSERT INTO items (id) SELECT unnest($1::bigint[])', [kept]);
          const name = `p${pass}`;
          await pool.query(
            `INSERT INTO batched_background_migrations (name, table_name, column_name, job_signature_name, min_value, max_value, batch_size, max_parallel_jobs)
             VALUES ($1, 'items', 'id', $2, 1, $3, $4, $5)`,
            [name, touch.name, next, batchSize, lanes],
          );

          await testWorker(pool, { work: [touch], concurrency: lanes, intervalMs: 5 }).run({ untilDone: true });

          expect((await migrationRow(pool, name))?.status).toBe(MigrationStatus.finished);
          const ranges = await cutRanges(pool, name);
          expect(ranges[0]!.min).toBe(1n);
          expect(ranges.at(-1)!.max).toBe(BigInt(next));
          for (let i = 1; i < ranges.length; i += 1) expect(ranges[i]!.min).toBe(ranges[i - 1]!.max + 1n);
          for (const [i, r] of ranges.entries()) {
            expect(r.rows).toBeLessThanOrEqual(batchSize);
            // Ended on a key that exists (probed), unless it is the last range.
            if (r.dense !== null && r.dense > 0 && i < ranges.length - 1) expect(r.rows).toBeGreaterThan(0);
            if (r.dense !== null && r.dense > 0) expect(ranges[i - 1]!.dense).toBe(r.dense - 1);
          }
          expect(await touchedOnce(pool)).toBe(true);
        },
      ),
      { numRuns: 25 },
    );
  });
});
