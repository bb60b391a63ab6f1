/**
 * Enqueueing migrations over keys that are not a single integer column, and with arguments:
 * enqueueMigration and enqueueMigrationSql with `column` as an array, `minKey`/`maxKey` and `args`,
 * what each refuses (before the database, and against the catalog), and `bbm enqueue`'s flags for
 * them, in process and through the compiled command.
 */
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import { enqueueMigration, enqueueMigrationSql, EnqueueError } from '../src/bbm/enqueue.ts';
import { ConfigError } from '../src/bbm/errors.ts';
import type { MigrationSpec, Work } from '../src/bbm/types.ts';
import { MigrationStatus } from '../src/store/codes.ts';
import { bbm } from './support/cli.ts';
import { useTestDatabase } from './support/database.ts';
import { touchRange } from './support/keys.ts';
import { createItems, drain, migrationRow, range, testWorker } from './support/engine.ts';
import { runBbm } from './support/processes.ts';

const LOW = '00000000-0000-0000-0000-000000000000';
const HIGH = 'ffffffff-ffff-ffff-ffff-ffffffffffff';

/** `u (id uuid PRIMARY KEY, touched)` with `rows` rows. */
async function createUuidTable(pool: pg.Pool, rows: number): Promise<void> {
  await pool.query(`CREATE TABLE u (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0)`);
  await pool.query(`INSERT INTO u SELECT FROM generate_series(1, $1::int)`, [rows]);
}

/** `c (tenant_id int, id uuid, touched)`, keyed on (tenant_id, id), tenants 0 to 6. */
async function createTenantTable(pool: pg.Pool, rows: number): Promise<void> {
  await pool.query(
    `CREATE TABLE c (tenant_id int NOT NULL, id uuid NOT NULL DEFAULT gen_random_uuid(), touched int NOT NULL DEFAULT 0,
                     PRIMARY KEY (tenant_id, id))`,
  );
  await pool.query(`INSERT INTO c (tenant_id) SELECT i % 7 FROM generate_series(1, $1::int) i`, [rows]);
}

async function storedRow(pool: pg.Pool, name: string) {
  const { rows } = await pool.query(
    `SELECT column_name, min_key, max_key, job_arguments, min_value, max_value
     FROM batched_background_migrations WHERE name = $1`,
    [name],
  );
  return rows[0];
}

const names = async (pool: pg.Pool) =>
  (await pool.query<{ name: string }>('SELECT name FROM batched_background_migrations ORDER BY id')).rows.map(
    (r) => r.name,
  );

describe('enqueueMigration over keys', () => {
  const db = useTestDatabase();

  it('enqueues a uuid key bounded by minKey and maxKey; a worker touches exactly the rows between them', async () => {
    const { pool } = db();
    await createUuidTable(pool, 600);
    const { rows } = await pool.query<{ id: string }>('SELECT id FROM u ORDER BY id');
    const minKey = rows[100]!.id;
    const maxKey = rows[449]!.id;
    await enqueueMigration(pool, {
      name: 'uuid',
      work: touchRange.name,
      table: 'u',
      column: 'id',
      batchSize: 40,
      minKey,
      maxKey,
    });
    expect(await storedRow(pool, 'uuid')).toMatchObject({ column_name: 'id', min_key: minKey, max_key: maxKey });
    await drain(testWorker(pool, { work: [touchRange] }));
    expect((await migrationRow(pool, 'uuid'))?.status).toBe(MigrationStatus.finished);
    const touched = await pool.query<{ id: string; touched: number }>('SELECT id, touched FROM u ORDER BY id');
    expect(touched.rows.map((r) => r.touched)).toEqual(range(0, 599).map((i) => (i >= 100 && i <= 449 ? 1 : 0)));
  });

  it('enqueues a composite key given as an array, its bounds as arrays in column order', async () => {
    const { pool } = db();
    await createTenantTable(pool, 700);
    await enqueueMigration(pool, {
      name: 'tenants',
      work: touchRange.name,
      table: 'c',
      column: ['tenant_id', 'id'],
      batchSize: 30,
      lanes: 2,
      minKey: [2, LOW],
      maxKey: [4n, HIGH],
    });
    expect(await storedRow(pool, 'tenants')).toMatchObject({
      column_name: 'tenant_id,id',
      min_key: [2, LOW],
      max_key: [4, HIGH],
    });
    await drain(testWorker(pool, { work: [touchRange], concurrency: 2 }));
    expect((await migrationRow(pool, 'tenants'))?.status).toBe(MigrationStatus.finished);
    const { rows } = await pool.query(
      'SELECT tenant_id, min(touched) AS lo, max(touched) AS hi FROM c GROUP BY tenant_id ORDER BY tenant_id',
    );
    expect(rows.map((r) => [r.tenant_id, r.lo, r.hi])).toEqual(
      range(0, 6).map((t) => (t >= 2 && t <= 4 ? [t, 1, 1] : [t, 0, 0])),
    );
  });

  it('hands args to the work function as job.args, on every job, exactly as given', async () => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 30));
    const args = {
      label: `it's a \\ "quoted" ünïcode 💡 value`,
      limits: { low: -1.5, high: 2 ** 53 - 1 },
      flags: [true, false, null],
      nested: { empty: {}, list: [] },
    };
    const seen: unknown[] = [];
    const record: Work = {
      name: 'args.record',
      async do(job) {
        seen.push(job.args);
      },
    };
    await enqueueMigration(pool, {
      name: 'with_args',
      work: record.name,
      table: 'items',
      column: 'id',
      batchSize: 10,
      args,
    });
    expect((await storedRow(pool, 'with_args'))?.job_arguments).toEqual(args);
    await drain(testWorker(pool, { work: [record] }));
    expect(seen).toEqual([args, args, args]);

    // Without args, job.args is an empty object (the column's default).
    seen.length = 0;
    await enqueueMigration(pool, { name: 'no_args', work: record.name, table: 'items', column: 'id', batchSize: 30 });
    await drain(testWorker(pool, { work: [record] }));
    expect(seen).toEqual([{}]);
  });

  it('writes through enqueueMigrationSql the same row, args and keys included, whatever standard_conforming_strings', async () => {
    const { pool } = db();
    await createTenantTable(pool, 50);
    const spec: MigrationSpec = {
      name: 'sql',
      work: touchRange.name,
      table: 'c',
      column: ['tenant_id', 'id'],
      batchSize: 10,
      minKey: [1, LOW],
      maxKey: [5, HIGH],
      args: { note: `it's a \\ back\\slash`, n: 3 },
    };
    const text = enqueueMigrationSql(spec);
    // JSON's escape of the backslash, escaped again in an E'' literal.
    expect(text).toContain(String.raw`E'{"note":"it''s a \\\\ back\\\\slash","n":3}'::jsonb`);
    const client = await pool.connect();
    try {
      await client.query('SET standard_conforming_strings = off');
      await client.query(text);
    } finally {
      await client.query('RESET standard_conforming_strings');
      client.release();
    }
    await enqueueMigration(pool, { ...spec, name: 'twin' });
    const [viaSql, viaCode] = await Promise.all([storedRow(pool, 'sql'), storedRow(pool, 'twin')]);
    expect(viaSql).toEqual(viaCode);
    expect(viaSql).toMatchObject({ min_key: [1, LOW], job_arguments: { note: `it's a \\ back\\slash`, n: 3 } });
  });

  const spec = { name: 'bad', work: 'test.touch', table: 'items', column: 'id', batchSize: 10 };
  const cyclic: Record<string, unknown> = { a: 1 };
  cyclic.self = { back: cyclic };
  class Money {
    cents = 5;
  }
  // A hole at index 1 (a literal `[1, , 3]` is what the lint forbids).
  const sparse: number[] = [1];
  sparse[2] = 3;

  it.each([
    ['an empty column list', { column: [] }, /column must be a column name or a non-empty array of them, got \[\]/],
    ['an empty column in the list', { column: ['tenant_id', ' '] }, /column\[1\] must be a non-empty string, got " "/],
    ['a column holding a comma', { column: ['tenant_id', 'a,b'] }, /column\[1\] "a,b" holds a comma/],
    [
      'a column named twice',
      { column: ['id', 'tenant_id', 'id'] },
      /column\[2\] "id" names a column the key already has/,
    ],
    ['args that are an array', { args: [1, 2] }, /args must be a plain JSON object, got \[1,2\]/],
    ['args that are null', { args: null }, /args must be a plain JSON object, got null/],
    ['a function in args', { args: { f: () => 1 } }, /args\.f is a function, which JSON leaves out/],
    ['an undefined value in args', { args: { a: { b: undefined } } }, /args\.a\.b is undefined, which JSON leaves out/],
    ['undefined in an array of args', { args: { list: [1, undefined] } }, /args\.list\[1\] is undefined/],
    ['a bigint in args', { args: { big: 10n } }, /args\.big is a bigint \(10n\), which JSON has no form for/],
    ['NaN in args', { args: { x: NaN } }, /args\.x is NaN, which JSON has no form for/],
    ['Infinity in args', { args: { 'a b': [-Infinity] } }, /args\["a b"\]\[0\] is -Infinity/],
    ['a Date in args', { args: { at: new Date(0) } }, /args\.at is a Date, .*\(give date\.toISOString\(\)\)/],
    ['a Map as args', { args: new Map() }, /args is a Map, which JSON\.stringify does not write as it is/],
    ['a class instance in args', { args: { price: new Money() } }, /args\.price is a Money/],
    ['a cycle in args', { args: cyclic }, /args\.self\.back refers back to an object that holds it/],
    ['a sparse array in args', { args: { list: sparse } }, /args\.list\[1\] is an empty slot of a sparse array/],
    ['a NUL in args', { args: { s: 'a\0b' } }, /args\.s holds a NUL character/],
    ['an unsafe integer in args', { args: { id: 2 ** 60 } }, /args\.id is 1152921504606847000, an integer past 2\^53/],
    ['an empty minKey', { minKey: [] }, /minKey is an empty array/],
    [
      'an object in minKey',
      { minKey: { a: 1 } },
      /minKey must be a string, a number, a bigint or a boolean .*got \{"a":1\}/,
    ],
    ['null in maxKey', { maxKey: [null] }, /maxKey\[0\] must be a string, a number, a bigint or a boolean .*got null/],
    ['a Date as minKey', { minKey: new Date(0) }, /minKey must be .* got a Date \(give date\.toISOString\(\)\)/],
    ['NaN in maxKey', { maxKey: NaN }, /maxKey is NaN/],
    ['an unsafe integer in minKey', { minKey: 2 ** 60 }, /minKey is 1152921504606847000, an integer past 2\^53/],
    [
      'min together with minKey',
      { min: 1, minKey: 'a' },
      /min and max bound a single integer column, minKey and maxKey any other key/,
    ],
    [
      'max on a key of several columns',
      { column: 'tenant_id,id', max: 5 },
      /a key of several columns \(tenant_id,id\) is bounded by minKey and maxKey/,
    ],
    [
      'a lone value for a key of two columns',
      { column: ['tenant_id', 'id'], minKey: 3 },
      /minKey 3 has 1 value; the key "tenant_id,id" has 2 columns: give one value per column/,
    ],
    [
      'three values for a key of two columns',
      { column: 'tenant_id, id', maxKey: [1, 'a', 'b'] },
      /maxKey \[1, "a", "b"\] has 3 values; the key "tenant_id, id" has 2 columns/,
    ],
  ])('refuses %s before touching the database', async (_, change, message) => {
    const { pool } = db();
    const bad = { ...spec, ...change } as MigrationSpec;
    await expect(enqueueMigration(pool, bad)).rejects.toThrow(message);
    await expect(enqueueMigration(pool, bad, { check: false })).rejects.toBeInstanceOf(ConfigError);
    expect(() => enqueueMigrationSql(bad)).toThrow(message);
    expect(await names(pool)).toEqual([]);
  });

  it.each([
    [
      'minKey on an integer key',
      { table: 'items', column: 'id', minKey: 5 },
      /minKey and maxKey bound a key that is not a single integer column; public\.items\.id is one: give min and max/,
    ],
    [
      'min on a uuid key',
      { table: 'u', column: 'id', min: 5 },
      /min and max bound a single integer column; the column public\.u\.id \(uuid\) is bounded by minKey and maxKey/,
    ],
    [
      'a minKey that is not a uuid',
      { table: 'u', column: 'id', minKey: 'nope' },
      /minKey "nope" is not a value of uuid: invalid input syntax for type uuid: "nope" \(the column public\.u\.id\)/,
    ],
    [
      'a maxKey whose first value is not an integer',
      { table: 'c', column: ['tenant_id', 'id'], maxKey: ['one', HIGH] },
      /maxKey \["one", "f{8}-.*"\] is not an array of 2 values of integer, uuid: invalid input syntax for type integer: "one"/,
    ],
    [
      'a maxKey below the minKey',
      { table: 'c', column: ['tenant_id', 'id'], minKey: [3, LOW], maxKey: [2, HIGH] },
      /maxKey \[2, "f{8}-.*"\] is below minKey \[3, "0{8}-.*"\] in the order of the key \(tenant_id, id\) of public\.c/,
    ],
  ])('refuses %s against the catalog (invalid_column), writing nothing', async (_, change, message) => {
    const { pool } = db();
    await createItems(pool, 'items', range(1, 5));
    await createUuidTable(pool, 5);
    await createTenantTable(pool, 5);
    const bad = { ...spec, ...change } as MigrationSpec;
    const error = await enqueueMigration(pool, bad).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(EnqueueError);
    expect(error).toMatchObject({ code: 'invalid_column', message: expect.stringMatching(message) });
    expect(await names(pool)).toEqual([]);
    // Without the check it is written; a worker then refuses it when it starts.
    await enqueueMigration(pool, bad, { check: false });
    expect(await names(pool)).toEqual(['bad']);
  });

  it("a refusal of bounds inside the caller's transaction leaves that transaction usable", async () => {
    const { pool } = db();
    await createUuidTable(pool, 5);
    const client = await pool.connect();
    try {
      await client.query('BEGIN');
      await expect(enqueueMigration(client, { ...spec, table: 'u', minKey: 'not-a-uuid' })).rejects.toMatchObject({
        code: 'invalid_column',
      });
      await enqueueMigration(client, { ...spec, name: 'good', table: 'u', minKey: LOW });
      await client.query('COMMIT');
    } finally {
      client.release();
    }
    expect(await names(pool)).toEqual(['good']);
  });
});

describe('bbm enqueue with keys and args', () => {
  const db = useTestDatabase();
  const flags = ['--work', 'test.touch', '--table', 'c', '--batch-size', '10', '--column', 'tenant_id,id'];
  const spec: MigrationSpec = { name: 'fill', work: 'test.touch', table: 'c', column: 'tenant_id,id', batchSize: 10 };

  it('--dry-run prints the INSERT with --args, --min-key and --max-key, in process and as the compiled command', async () => {
    const args = [
      'enqueue',
      '--dry-run',
      '--name',
      'fill',
      ...flags,
      '--args',
      `{"from": "a", "to": "it's"}`,
      '--min-key',
      `[1, "${LOW}"]`,
      '--max-key',
      `[3, "${HIGH}"]`,
    ];
    const expected = enqueueMigrationSql({
      ...spec,
      args: { from: 'a', to: "it's" },
      minKey: [1, LOW],
      maxKey: [3, HIGH],
    });
    expect(expected).toMatch(/min_key, max_key, job_arguments\)/);
    expect(await bbm(args, { DATABASE_URL: '' })).toEqual({ code: 0, err: '', out: `${expected}\n` });
    expect(await runBbm(args, { DATABASE_URL: '' })).toEqual({ code: 0, output: `${expected}\n` });
  });

  it.each([
    [['--args', '{from: 1}'], /^bbm enqueue: --args must be JSON, got "\{from: 1\}": .+/],
    [['--min-key', "'abc'"], /^bbm enqueue: --min-key must be JSON, got "'abc'"/],
    [['--max-key', ''], /^bbm enqueue: --max-key must be JSON, got ""/],
    [['--args', '[1]'], /^bbm enqueue: args must be a plain JSON object, got \[1\]/],
    [
      ['--args', '{"id": 12345678901234567890}'],
      /--args: the number 12345678901234567890 has more significant digits than a JavaScript number keeps \(15\); give it as a string, "12345678901234567890"/,
    ],
    [
      ['--min-key', '[1.00000000000000000001, "x"]'],
      /--min-key: the number 1\.00000000000000000001 has more significant digits/,
    ],
    [['--max-key', '0.30000000000000000001'], /--max-key: the number 0\.30000000000000000001 has more/],
    [['--min-key', '{"a": 1}'], /^bbm enqueue: minKey must be a string, a number, a bigint or a boolean/],
    [['--min-key', '[1]'], /minKey \[1\] has 1 value; the key "tenant_id,id" has 2 columns/],
  ])('refuses %j with exit 2, with or without a database', async (extra, message) => {
    const { url } = db();
    for (const env of [{ DATABASE_URL: '' }, { DATABASE_URL: url }]) {
      const dryRun = env.DATABASE_URL === '' ? ['--dry-run'] : [];
      const result = await bbm(['enqueue', ...dryRun, '--name', 'fill', ...flags, ...extra], env);
      expect(result).toMatchObject({ code: 2, out: '' });
      expect(result.err).toMatch(message);
    }
    expect(await names(db().pool)).toEqual([]);
  });

  it('enqueues with --args and --min-key, checked against the catalog, and says what it enqueued', async () => {
    const { pool, url } = db();
    await createTenantTable(pool, 20);
    const result = await bbm(
      ['enqueue', '--name', 'fill', ...flags, '--args', '{"n": 1}', '--min-key', `[2, "${LOW}"]`],
      { DATABASE_URL: url },
    );
    expect(result).toMatchObject({ code: 0, err: '' });
    expect(result.out).toMatch(
      new RegExp(
        `^enqueued fill \\(id \\d+\\): test\\.touch over c\\.tenant_id,id \\[\\[2,"${LOW}"\\]\\.\\.last\\] in batches of 10`,
      ),
    );
    expect(await storedRow(pool, 'fill')).toMatchObject({ min_key: [2, LOW], max_key: null, job_arguments: { n: 1 } });

    const refused = await bbm(['enqueue', '--name', 'other', ...flags, '--min-key', '["x", "y"]'], {
      DATABASE_URL: url,
    });
    expect(refused).toMatchObject({ code: 1, out: '' });
    expect(refused.err).toMatch(
      /^bbm enqueue: invalid_column: minKey \["x", "y"\] is not an array of 2 values of integer, uuid: .*; nothing was written\n$/,
    );
    expect(await names(pool)).toEqual(['fill']);
  });
});
