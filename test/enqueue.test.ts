/** Enqueueing from application code: enqueueMigration on pools and clients, in the caller's transaction, and its SQL text. */
import { sql } from 'drizzle-orm';
import { drizzle } from 'drizzle-orm/node-postgres';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../src/bbm/errors.ts';
import { enqueueMigration, enqueueMigrationSql, EnqueueError } from '../src/bbm/enqueue.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { createItems, drain, migrationRow, range, testWorker, touch } from './support/engine.ts';

const spec = { name: 'fill', work: 'test.touch', table: 'items', column: 'id', batchSize: 10 };
const names = async (pool: { query: (q: string) => Promise<{ rows: Array<{ name: string }> }> }) =>
  (await pool.query('SELECT name FROM batched_background_migrations ORDER BY id')).rows.map((r) => r.name);

describe('enqueueMigration', () => {
  const db = useTestDatabase();

  it('on a pool: checks the target, inserts, and a worker then runs the migration', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 25));
    const { id } = await enqueueMigration(pool, {
      ...spec,
      min: 3n,
      max: 22,
      lanes: 2,
      targetJobMs: 100,
      minBatchSize: 5,
      maxBatchSize: 50,
    });
    expect(typeof id).toBe('bigint');
    const row = (await pool.query('SELECT * FROM batched_background_migrations WHERE name = $1', ['fill'])).rows[0];
    expect(row).toMatchObject({
      id: String(id),
      status: MigrationStatus.active,
      min_value: '3',
      max_value: '22',
      max_parallel_jobs: 2,
      target_job_ms: 100,
      min_batch_size: 5,
      max_batch_size: 50,
    });
    await drain(testWorker(pool, { work: [touch] }));
    expect((await migrationRow(pool, 'fill'))?.status).toBe(MigrationStatus.finished);
    const touched = await pool.query<{ id: number; touched: number }>('SELECT id, touched FROM items ORDER BY id');
    expect(touched.rows.map((r) => r.touched)).toEqual(range(1, 25).map((id) => (id >= 3 && id <= 22 ? 1 : 0)));
  });

  it("inside the caller's transaction: commits and rolls back with it", async () => {
    const { pool } = db();
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      // The table is created in the same transaction: the catalog check sees it.
      await client.query('CREATE TABLE items (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
      await enqueueMigration(client, spec);
      await client.query('ROLLBACK');
      expect(await names(pool)).toEqual([]);

      await client.query('BEGIN');
      await client.query('CREATE TABLE items (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
      await enqueueMigration(client, spec);
      expect(await names(pool)).toEqual([]); // not visible before the caller commits
      await client.query('COMMIT');
      expect(await names(pool)).toEqual(['fill']);
    } finally {
      client.release();
    }
  });

  it("a refusal inside the caller's transaction leaves that transaction usable and writes nothing", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 5));
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await enqueueMigration(client, spec);
      await expect(enqueueMigration(client, spec)).rejects.toMatchObject({
        name: 'EnqueueError',
        code: 'duplicate_name',
      });
      await expect(enqueueMigration(client, { ...spec, name: 'other', table: 'nope' })).rejects.toMatchObject({
        code: 'invalid_table',
      });
      await expect(enqueueMigration(client, { ...spec, name: 'other', column: 'touched' })).rejects.toMatchObject({
        code: 'invalid_column',
      });
      await client.query('INSERT INTO items (id) VALUES (100)');
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    expect(await names(pool)).toEqual(['fill']);
    expect((await pool.query('SELECT count(*)::int AS n FROM items')).rows[0].n).toBe(6);
  });

  it("inside a drizzle transaction on the same client (the README's pattern): commits with it, rolls back with it", async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 5));
    const client = await pool.connect();
    try {
      await drizzle(client).transaction(async (tx) => {
        await tx.execute(sql`ALTER TABLE items ADD COLUMN email_lower text`);
        await enqueueMigration(client, { ...spec, lanes: 2 });
      });
      await expect(
        drizzle(client).transaction(async (tx) => {
          await tx.execute(sql`ALTER TABLE items ADD COLUMN other text`);
          await enqueueMigration(client, { ...spec, name: 'second' });
          throw new Error('the schema migration fails after enqueueing');
        }),
      ).rejects.toThrow(/schema migration fails/);
    } finally {
      client.release();
    }
    expect(await names(pool)).toEqual(['fill']);
    const columns = await pool.query<{ column_name: string }>(
      "SELECT column_name FROM information_schema.columns WHERE table_name = 'items' ORDER BY ordinal_position",
    );
    expect(columns.rows.map((r) => r.column_name)).toEqual(['id', 'v', 'touched', 'email_lower']);
  });

  it('on a client outside a transaction: one of its own, atomic', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 5));
    const client = await pool.connect();
    try {
      await enqueueMigration(client, spec);
      expect(await names(pool)).toEqual(['fill']); // committed: another connection sees it
      await expect(enqueueMigration(client, { ...spec, name: 'x', table: 'nope' })).rejects.toBeInstanceOf(
        EnqueueError,
      );
      // No transaction left open on the client.
      expect(
        (await client.query<{ open: boolean }>('SELECT pg_current_xact_id_if_assigned() IS NOT NULL AS open')).rows[0]!
          .open,
      ).toBe(false);
    } finally {
      client.release();
    }
    expect(await names(pool)).toEqual(['fill']);
  });

  it('with check: false, inserts a migration whose table does not exist yet; it fails with invalid_table when it starts', async () => {
    const { pool } = db();
    await enqueueMigration(pool, { ...spec, table: 'later' }, { check: false });
    expect(await names(pool)).toEqual(['fill']);
    await drain(testWorker(pool, { work: [touch] }));
    expect(await migrationRow(pool, 'fill')).toMatchObject({ status: MigrationStatus.failed, failure_error_code: 1 });
  });

  it.each([
    ['an empty name', { name: ' ' }, /name must be a non-empty string/],
    ['a malformed work name', { work: 'bad name' }, /not a valid work name/],
    ['a zero batch size', { batchSize: 0 }, /batchSize must be an integer from 1/],
    ['a fractional batch size', { batchSize: 2.5 }, /batchSize must be an integer/],
    ['too many lanes', { lanes: 257 }, /lanes must be an integer from 1 to 256/],
    ['max below min', { min: 10, max: 3 }, /max 3 is below min 10/],
    ['an unsafe number bound', { max: 2 ** 60 }, /max must be a bigint or a safe integer/],
    ['a bound past int8', { max: 2n ** 63n }, /max must be a bigint/],
    [
      'maxBatchSize below minBatchSize',
      { minBatchSize: 10, maxBatchSize: 5 },
      /maxBatchSize 5 is below minBatchSize 10/,
    ],
  ])('refuses %s before touching the database', async (_, change, message) => {
    const { pool } = db();
    await expect(enqueueMigration(pool, { ...spec, ...change })).rejects.toThrow(message);
    await expect(enqueueMigration(pool, { ...spec, ...change })).rejects.toBeInstanceOf(ConfigError);
    expect(() => enqueueMigrationSql({ ...spec, ...change })).toThrow(message);
    expect(await names(pool)).toEqual([]);
  });
});

describe('enqueueMigrationSql', () => {
  const db = useTestDatabase();

  it('is an INSERT that writes the row enqueueMigration writes, names with quotes and backslashes intact', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    const odd = `it's a \\ "name"; DROP TABLE items; --`;
    const text = enqueueMigrationSql({
      ...spec,
      name: odd,
      min: -(2n ** 63n),
      max: 2n ** 63n - 1n,
      paused: true,
      lanes: 3,
    });
    expect(text).toMatch(/^INSERT INTO batched_background_migrations \(/);
    const inserted = await pool.query<{ id: string }>(text);
    await enqueueMigration(pool, {
      ...spec,
      name: 'twin',
      min: -(2n ** 63n),
      max: 2n ** 63n - 1n,
      paused: true,
      lanes: 3,
    });
    const rows = (await pool.query('SELECT * FROM batched_background_migrations ORDER BY id')).rows;
    expect(rows.map((r) => r.name)).toEqual([odd, 'twin']);
    const comparable = ({ id: _id, name: _name, created_at: _c, updated_at: _u, ...rest }: Record<string, unknown>) =>
      rest;
    expect(comparable(rows[0])).toEqual(comparable(rows[1]));
    expect(rows[0]).toMatchObject({
      id: inserted.rows[0]!.id,
      status: MigrationStatus.paused,
      min_value: '-9223372036854775808',
      max_value: '9223372036854775807',
    });
    expect((await pool.query('SELECT count(*)::int AS n FROM items')).rows[0].n).toBe(30);
  });

  it('reads the same under standard_conforming_strings off', async () => {
    const { pool } = db();
    const client = await pool.connect();
    try {
      await client.query('SET standard_conforming_strings = off');
      await client.query(enqueueMigrationSql({ ...spec, name: "a\\b'c" }));
    } finally {
      await client.query('RESET standard_conforming_strings');
      client.release();
    }
    expect(await names(pool)).toEqual(["a\\b'c"]);
  });

  it('is what `bbm enqueue --dry-run` prints, with no database at all', async () => {
    const result = await bbm(
      [
        'enqueue',
        '--dry-run',
        '--name',
        'fill',
        '--work',
        'test.touch',
        '--table',
        'items',
        '--column',
        'id',
        '--batch-size',
        '10',
        '--lanes',
        '2',
      ],
      {
        DATABASE_URL: '',
      },
    );
    expect(result).toMatchObject({ code: 0, err: '', out: `${enqueueMigrationSql({ ...spec, lanes: 2 })}\n` });
  });
});
