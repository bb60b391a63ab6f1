/**
 * The built-in copy: `copyColumn({ name, from, to })` on any key, and `copyColumnWork`
 * (`bbm.copy_column`), which reads its columns from each migration's arguments and refuses bad
 * ones with what is wrong (the attempt fails with that message).
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { enqueueMigration } from '../src/bbm/enqueue.ts';
import type { MigrationSpec } from '../src/bbm/types.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { copyColumn, copyColumnWork } from '../src/work/copy-column.ts';
import { useTestDatabase } from './support/database.ts';
import { drain, migrationRow, testWorker } from './support/engine.ts';

const db = useTestDatabase();

/** `u (id uuid PRIMARY KEY, a int, b bigint)`: a = 1..rows, b NULL. */
async function createUuidTable(pool: pg.Pool, rows: number): Promise<void> {
  await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), a int NOT NULL, "B c" bigint)`);
  await pool.query(`INSERT INTO u (a) SELECT i FROM generate_series(1, $1::int) i`, [rows]);
}

/** `items (id bigint PRIMARY KEY, a int, b bigint)`: a = id, b NULL. */
async function createIntegerTable(pool: pg.Pool, rows: number): Promise<void> {
  await pool.query(`CREATE TABLE items (id bigint PRIMARY KEY, a int NOT NULL, "B c" bigint)`);
  await pool.query(`INSERT INTO items (id, a) SELECT i, i FROM generate_series(1, $1::int) i`, [rows]);
}

async function copied(pool: pg.Pool, table: string): Promise<{ copied: number; other: number }> {
  const { rows } = await pool.query(
    `SELECT count(*) FILTER (WHERE "B c" = a)::int AS copied, count(*) FILTER (WHERE "B c" IS DISTINCT FROM a)::int AS other FROM ${table}`,
  );
  return rows[0];
}

/** The rows the migration's jobs reported changing, in total. */
async function reportedRows(pool: pg.Pool, name: string): Promise<number> {
  const { rows } = await pool.query(
    `SELECT coalesce(sum(j.row_count), 0)::int AS n FROM batched_background_migration_jobs j
     JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id WHERE m.name = $1`,
    [name],
  );
  return rows[0].n;
}

const base = { work: copyColumnWork.name, batchSize: 64 };

describe('copyColumn', () => {
  it('copies over a uuid key, in lanes', async () => {
    const { pool } = db();
    await createUuidTable(pool, 500);
    const work = copyColumn({ name: 'u.copy_a', from: 'a', to: 'B c' });
    await enqueueMigration(pool, { name: 'copy', work: work.name, table: 'u', column: 'id', batchSize: 64, lanes: 2 });
    await drain(testWorker(pool, { work: [work], concurrency: 2 }));
    expect((await migrationRow(pool, 'copy'))?.status).toBe(MigrationStatus.finished);
    expect(await copied(pool, 'u')).toEqual({ copied: 500, other: 0 });
  });

  it('still copies over an integer key', async () => {
    const { pool } = db();
    await createIntegerTable(pool, 300);
    const work = copyColumn({ name: 'items.copy_a', from: 'a', to: 'B c' });
    await enqueueMigration(pool, {
      name: 'copy',
      work: work.name,
      table: 'items',
      column: 'id',
      batchSize: 64,
      min: 11,
    });
    await drain(testWorker(pool, { work: [work] }));
    expect(await copied(pool, 'items')).toEqual({ copied: 290, other: 10 });
  });

  it('checks its ranges as it writes them: into another type, the value cast as the copy assigns it', async () => {
    const { pool } = db();
    await pool.query('CREATE TABLE prices (id bigint PRIMARY KEY, f float8 NOT NULL, n numeric(10, 2))');
    await pool.query('INSERT INTO prices (id, f) SELECT i, i + 0.125 FROM generate_series(1, 50) i');
    const work = copyColumn({ name: 'prices.copy_f', from: 'f', to: 'n' });
    await enqueueMigration(pool, { name: 'copy', work: work.name, table: 'prices', column: 'id', batchSize: 20 });
    await drain(testWorker(pool, { work: [work], maxAttempts: 1 }));
    expect((await migrationRow(pool, 'copy'))?.status).toBe(MigrationStatus.finished);
    const { rows } = await pool.query('SELECT count(*)::int AS n FROM prices WHERE n = round(f::numeric, 2)');
    expect(rows[0].n).toBe(50);
  });
});

describe('copyColumnWork (bbm.copy_column)', () => {
  it('is named bbm.copy_column', () => {
    expect(copyColumnWork.name).toBe('bbm.copy_column');
  });

  it('copies the columns its arguments name, over a uuid key', async () => {
    const { pool } = db();
    await createUuidTable(pool, 500);
    await enqueueMigration(pool, { ...base, name: 'copy', table: 'u', column: 'id', args: { from: 'a', to: 'B c' } });
    await drain(testWorker(pool, { work: [copyColumnWork] }));
    expect((await migrationRow(pool, 'copy'))?.status).toBe(MigrationStatus.finished);
    expect(await copied(pool, 'u')).toEqual({ copied: 500, other: 0 });
    expect(await reportedRows(pool, 'copy')).toBe(500);
  });

  it('copies over an integer key; skips unchanged rows unless skipUnchanged is false', async () => {
    const { pool } = db();
    await createIntegerTable(pool, 300);
    await pool.query('UPDATE items SET "B c" = a WHERE id <= 100');
    await enqueueMigration(pool, {
      ...base,
      name: 'skip',
      table: 'items',
      column: 'id',
      args: { from: 'a', to: 'B c' },
    });
    await drain(testWorker(pool, { work: [copyColumnWork] }));
    expect(await copied(pool, 'items')).toEqual({ copied: 300, other: 0 });
    expect(await reportedRows(pool, 'skip')).toBe(200);

    const args = { from: 'a', to: 'B c', skipUnchanged: false };
    await enqueueMigration(pool, { ...base, name: 'all', table: 'items', column: 'id', args });
    await drain(testWorker(pool, { work: [copyColumnWork] }));
    expect(await reportedRows(pool, 'all')).toBe(300);
  });

  it.each([
    [
      'no arguments',
      undefined,
      /bbm\.copy_column: argument from must be a column name \(a non-empty string\), got nothing \(job_arguments \{\}\)/,
    ],
    ['a number for from', { from: 1, to: 'B c' }, /argument from must be a column name \(a non-empty string\), got 1/],
    ['an empty to', { from: 'a', to: '' }, /argument to must be a column name \(a non-empty string\), got ""/],
    ['the same column twice', { from: 'a', to: 'a' }, /arguments from and to name the same column/],
    [
      'a misspelt argument',
      { from: 'a', to: 'B c', skip_unchanged: false },
      /unknown argument "skip_unchanged"; it takes from, to, skipUnchanged/,
    ],
    [
      'a skipUnchanged that is not a boolean',
      { from: 'a', to: 'B c', skipUnchanged: 'no' },
      /argument skipUnchanged must be true or false, got "no"/,
    ],
    [
      'a column the table lacks',
      { from: 'a', to: 'b' },
      /bbm\.copy_column: column "b" does not exist in "public"\."items"/,
    ],
    [
      'two columns the table lacks, one of them a system column',
      { from: 'ctid', to: 'x"; DROP TABLE items; --' },
      /column "ctid" and column "x\\"; DROP TABLE items; --" do not exist in "public"\."items"/,
    ],
  ])('fails the attempt on %s, saying what is wrong', async (_, args, message) => {
    const { pool } = db();
    await createIntegerTable(pool, 20);
    const spec: MigrationSpec = { ...base, name: 'bad', table: 'items', column: 'id' };
    await enqueueMigration(pool, args === undefined ? spec : { ...spec, args });
    await drain(testWorker(pool, { work: [copyColumnWork], maxAttempts: 1 }));
    const { rows } = await pool.query<{ failure_message: string }>(
      'SELECT failure_message FROM batched_background_migration_jobs WHERE failure_message IS NOT NULL',
    );
    expect(rows).toEqual([{ failure_message: expect.stringMatching(message) }]);
    expect((await migrationRow(pool, 'bad'))?.status).toBe(MigrationStatus.failed);
    expect(await copied(pool, 'items')).toEqual({ copied: 0, other: 20 });
  });
});
