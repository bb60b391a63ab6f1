/**
 * Property: whatever migration rows are inserted by plain SQL (names, identifiers, bounds, batch
 * sizes, lanes, statuses, work names of every kind), a worker run until done stops by itself;
 * each row the table accepted ends finished, failed with a named code, paused, or waiting for a
 * work function no worker has; every finished migration's ranges tile [min_value, max_value] and
 * each ran exactly once; a table no row may name (by injection or otherwise) is untouched; and a
 * sound migration beside them finishes.
 *
 * And for keys that are not a single integer column (an int and a bigint, uuid, text in und-x-icu,
 * "C" or the database's collation, numeric of mixed scales, timestamptz that repeats), of any
 * values, repeated where the key is not unique, with or without min_key and max_key, in any batch
 * size and lanes: a worker drains the migration, every row within the bounds is touched once and
 * no other, and the ranges tile the key.
 */
import fc from 'fast-check';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import type { Work } from '../src/bbm/types.ts';
import { ErrorCode, MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { testWorker } from './support/engine.ts';
import { createKeyLog, expectTiled, insertKeyMigration, keyLogged, keyOf, keyRowOf } from './support/keys.ts';

const MAX = 2n ** 63n - 1n;
const MIN = -(2n ** 63n);

/** Logs every range it runs, in the job's transaction, so a range run twice shows. */
const logged: Work = {
  name: 'test.logged',
  async do(job) {
    await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.column} BETWEEN $1 AND $2`, [
      job.start,
      job.end,
    ]);
    await job.query('INSERT INTO job_log (migration_id, range_start, range_end) VALUES ($1, $2, $3)', [
      job.migration.id,
      job.start,
      job.end,
    ]);
  },
};
const failing: Work = {
  name: 'test.failing',
  async do() {
    throw new Error('this work always fails');
  },
};
const KNOWN_WORK = new Set([logged.name, failing.name]);

/** Mostly rows that can run, so the engine's paths are walked, and a share of every kind of bad one. */
const often = <T>(good: fc.Arbitrary<T>, bad: fc.Arbitrary<T>, weight = 4) =>
  fc.oneof({ arbitrary: good, weight }, { arbitrary: bad, weight: 1 });
const row = fc.record({
  name: fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom('m', ' ', "it's", 'a;b', '"q"')),
  table: often(
    fc.constantFrom('items', 'public.items', '"items"', 'ITEMS'),
    fc.oneof(
      fc.constantFrom('other', 'nope', 'items; drop table sentinel', 'pg_class', 'a.b.c.d', 'items_view', ''),
      fc.string({ maxLength: 10 }),
    ),
  ),
  column: often(
    fc.constant('id'),
    fc.oneof(fc.constantFrom('v', 'touched', 'ID', 'nope', 'id; drop table sentinel', ''), fc.string({ maxLength: 6 })),
  ),
  work: often(
    fc.constantFrom(logged.name, logged.name, failing.name),
    fc.constantFrom('not.deployed', 'bad name', 'x'.repeat(201), ''),
  ),
  min: often(
    fc.bigInt({ min: -30n, max: 270n }),
    fc.oneof(fc.constantFrom(MIN, MAX), fc.bigInt({ min: MIN, max: MAX })),
  ),
  max: often(
    fc.oneof(fc.constant(null), fc.bigInt({ min: -30n, max: 300n })),
    fc.oneof(fc.constantFrom(MIN, MAX), fc.bigInt({ min: MIN, max: MAX })),
  ),
  batchSize: often(fc.integer({ min: 1, max: 40 }), fc.constantFrom(-1, 0, 1_000_000, 2_147_483_647)),
  lanes: often(fc.integer({ min: 1, max: 4 }), fc.constantFrom(0, 257)),
  status: fc.constantFrom(0, 1, 1, 1, 1, 2, 3, 4, 4, 7),
  strategy: often(fc.constantFrom(null, 'serial_key_set'), fc.constant('other')),
});

async function reset(pool: pg.Pool): Promise<void> {
  await pool.query('TRUNCATE batched_background_migrations, batched_background_migration_jobs, job_log');
  await pool.query('UPDATE items SET touched = 0');
  await pool.query('UPDATE sound_items SET touched = 0');
}

describe('SQL-inserted migration rows', () => {
  const db = useTestDatabase();

  it('end finished, failed with a code, paused or waiting; ranges run once; nothing else changes; a sound migration finishes', async () => {
    const { pool } = db();
    await pool.query(
      'CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, touched int NOT NULL DEFAULT 0)',
    );
    await pool.query(`INSERT INTO items (id, v) SELECT x, x FROM generate_series(-20, 260) x WHERE x % 7 <> 3`);
    await pool.query(`INSERT INTO items (id) VALUES (${MIN}), (${MAX}), (${MAX - 1n})`);
    await pool.query('CREATE TABLE other (id int PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
    await pool.query('CREATE VIEW items_view AS SELECT * FROM items');
    await pool.query('CREATE TABLE sentinel (note text NOT NULL)');
    await pool.query(`INSERT INTO sentinel VALUES ('untouched')`);
    await pool.query('CREATE TABLE sound_items (id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0)');
    await pool.query('INSERT INTO sound_items (id) SELECT generate_series(1, 150)');
    await pool.query('CREATE TABLE job_log (migration_id bigint, range_start bigint, range_end bigint)');

    await fc.assert(
      fc.asyncProperty(fc.array(row, { minLength: 1, maxLength: 6 }), async (rows) => {
        await reset(pool);
        const accepted: Array<{ id: string; status: number; work: string }> = [];
        for (const r of rows) {
          try {
            const { rows: inserted } = await pool.query<{ id: string }>(
              `INSERT INTO batched_background_migrations
                 (name, table_name, column_name, job_signature_name, min_value, max_value, batch_size, max_parallel_jobs, status, batching_strategy)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id`,
              [r.name, r.table, r.column, r.work, r.min, r.max, r.batchSize, r.lanes, r.status, r.strategy],
            );
            accepted.push({ id: inserted[0]!.id, status: r.status, work: r.work });
          } catch (error) {
            // Refused at the door (a CHECK or the unique name): nothing to run.
            expect((error as { code?: string }).code).toMatch(/^23/);
          }
        }
        await pool.query(
          `INSERT INTO batched_background_migrations (name, table_name, column_name, job_signature_name, batch_size, max_parallel_jobs)
           VALUES ('sound ' || gen_random_uuid(), 'sound_items', 'id', $1, 17, 2)`,
          [logged.name],
        );

        const worker = testWorker(pool, {
          work: [logged, failing],
          concurrency: 2,
          maxAttempts: 2,
          maxRunErrors: 2,
          runErrorHoldMs: 10,
          intervalMs: 5,
          maxIntervalMs: 40,
        });
        const stalled = new Promise<'stalled'>((resolve) => setTimeout(() => resolve('stalled'), 20_000).unref());
        const ended = await Promise.race([worker.run({ untilDone: true }).then(() => 'ended' as const), stalled]);
        if (ended === 'stalled') await worker.stop({ abort: true });
        expect(ended).toBe('ended');

        // The sound migration finished, every row once.
        const sound = await pool.query(`SELECT status FROM batched_background_migrations WHERE name LIKE 'sound %'`);
        expect(sound.rows).toEqual([{ status: MigrationStatus.finished }]);
        expect((await pool.query('SELECT array_agg(DISTINCT touched) AS t FROM sound_items')).rows[0].t).toEqual([1]);

        const codes = new Set<number>(Object.values(ErrorCode));
        for (const migration of accepted) {
          const {
            rows: [m],
          } = await pool.query(
            'SELECT status, failure_error_code, min_value::text AS min, max_value::text AS max FROM batched_background_migrations WHERE id = $1',
            [migration.id],
          );
          switch (m.status) {
            case MigrationStatus.finished: {
              // Finished by the engine: its ranges tile [min, max], each logged exactly once.
              if (migration.status === MigrationStatus.finished) break;
              const { rows: jobs } = await pool.query(
                `SELECT min_value::text AS min, max_value::text AS max, status FROM batched_background_migration_jobs
                 WHERE batched_background_migration_id = $1 ORDER BY min_value`,
                [migration.id],
              );
              expect(jobs.every((j) => j.status === 2)).toBe(true);
              expect(jobs[0]?.min).toBe(m.min);
              expect(jobs.at(-1)?.max).toBe(m.max);
              for (let i = 1; i < jobs.length; i += 1) expect(BigInt(jobs[i].min)).toBe(BigInt(jobs[i - 1].max) + 1n);
              const twice = await pool.query(
                'SELECT range_start FROM job_log WHERE migration_id = $1 GROUP BY range_start HAVING count(*) > 1',
                [migration.id],
              );
              expect(twice.rows).toEqual([]);
              break;
            }
            case MigrationStatus.failed:
              if (migration.status !== MigrationStatus.failed) expect(codes.has(m.failure_error_code)).toBe(true);
              break;
            case MigrationStatus.paused:
              expect(migration.status).toBe(MigrationStatus.paused);
              break;
            default:
              // Still runnable only when it waits for a work function this worker lacks.
              expect(KNOWN_WORK.has(migration.work)).toBe(false);
          }
        }
        expect((await pool.query('SELECT note FROM sentinel')).rows).toEqual([{ note: 'untouched' }]);
      }),
      { numRuns: 40, endOnFailure: true },
    );
  }, 240_000);
});

/** Logs every range it runs, as keys (key_log), touching its rows through job.range. */
const keyTouch = keyLogged('test.key_touch');

/** The kinds of key the property draws from: its columns, their SQL, and a generator of its values as text. */
interface KeyKind {
  kind: string;
  columns: string[];
  /** The columns' definitions, given the text collation (null: the database's default). */
  ddl: (collation: string | null) => string;
  types: (collation: string | null) => string[];
  /** The columns' values from `v`, one of the generated texts. */
  insert: string;
  value: fc.Arbitrary<string>;
  /** A key that always repeats (a non-unique index), or may be unique. */
  repeats: boolean;
}

/** A numeric of scale 0 to 3 as its text: 150 at scale 2 is 1.50, 15 at scale 1 is 1.5 (equal, not alike). */
const decimal = ([n, scale]: [number, number]): string => {
  const digits = String(Math.abs(n)).padStart(scale + 1, '0');
  return `${n < 0 ? '-' : ''}${digits.slice(0, digits.length - scale)}${scale > 0 ? `.${digits.slice(-scale)}` : ''}`;
};
const textUnit = fc.constantFrom('a', 'A', 'á', 'Ä', 'b', 'B', 'é', 'E', 'e', 'ß', 's', 'z', 'Z', 'Œ', '-', ' ', '1');
const KEY_KINDS: KeyKind[] = [
  {
    kind: 'int, bigint',
    columns: ['a', 'b'],
    ddl: () => 'a int NOT NULL, b bigint NOT NULL',
    types: () => ['int', 'bigint'],
    insert: `split_part(v, ':', 1)::int, split_part(v, ':', 2)::bigint`,
    value: fc
      .tuple(fc.integer({ min: -3, max: 3 }), fc.oneof(fc.bigInt({ min: -6n, max: 6n }), fc.constantFrom(MIN, MAX)))
      .map(([a, b]) => `${a}:${b}`),
    repeats: false,
  },
  {
    kind: 'uuid',
    columns: ['k'],
    ddl: () => 'k uuid NOT NULL',
    types: () => ['uuid'],
    insert: 'v::uuid',
    value: fc.oneof(
      fc.uuid(),
      fc.constantFrom('00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff'),
    ),
    repeats: false,
  },
  {
    kind: 'text',
    columns: ['k'],
    ddl: (collation) => `k text ${collation === null ? '' : `COLLATE "${collation}"`} NOT NULL`,
    types: (collation) => [`text COLLATE "${collation ?? 'default'}"`],
    insert: 'v',
    value: fc.string({ unit: textUnit, maxLength: 4 }),
    repeats: false,
  },
  {
    kind: 'numeric',
    columns: ['k'],
    ddl: () => 'k numeric NOT NULL',
    types: () => ['numeric'],
    insert: 'v::numeric',
    value: fc.oneof(
      {
        arbitrary: fc.tuple(fc.integer({ min: -300, max: 300 }), fc.integer({ min: 0, max: 3 })).map(decimal),
        weight: 4,
      },
      fc.constantFrom(
        '123456789012345678901234567890.123456789',
        '-0.000000000000000000001',
        '1.5',
        '1.50',
        '10',
        '-3',
      ),
    ),
    repeats: false,
  },
  {
    kind: 'timestamptz',
    columns: ['k'],
    ddl: () => 'k timestamptz NOT NULL',
    types: () => ['timestamptz'],
    insert: `'2026-01-01 00:00:00+00'::timestamptz + v::bigint * interval '1 microsecond'`,
    value: fc
      .tuple(fc.integer({ min: 0, max: 6 }), fc.constantFrom(0, 1, 123456))
      .map(([s, us]) => String(s * 500_000 + us)),
    repeats: true,
  },
];

/** What the table, the migration, its ranges and the log held: for the message of a failed case. */
async function keyState(pool: pg.Pool, list: string): Promise<string> {
  const rows = async (text: string) => JSON.stringify((await pool.query(text)).rows);
  return [
    `rows: ${await rows(`SELECT to_jsonb(pk) - 'touched' AS key, touched FROM pk ORDER BY ${list}`)}`,
    `migration: ${await rows('SELECT min_key, max_key, status, failure_message FROM batched_background_migrations')}`,
    `ranges: ${await rows('SELECT min_key, max_key, status, attempts FROM batched_background_migration_jobs ORDER BY min_value')}`,
    `logged: ${await rows('SELECT first_key, last_key, rows, lane FROM key_log')}`,
  ].join('\n');
}

const keyCase = fc
  .record({
    kind: fc.constantFrom(...KEY_KINDS),
    collation: fc.constantFrom<string | null>('und-x-icu', 'C', null),
    unique: fc.boolean(),
    /** How many of the first values are inserted again (a unique key keeps one of each). */
    repeated: fc.nat({ max: 20 }),
    batchSize: fc.integer({ min: 1, max: 15 }),
    lanes: fc.integer({ min: 1, max: 3 }),
    /** Bounds, as places (percent) in the sorted candidates: the table's keys and a few others. */
    bounds: fc.option(
      fc.record({ which: fc.constantFrom('both', 'min', 'max'), at: fc.nat({ max: 100 }), span: fc.nat({ max: 100 }) }),
      { freq: 3 },
    ),
  })
  .chain((c) =>
    fc.record({
      c: fc.constant(c),
      values: fc.array(c.kind.value, { maxLength: 60 }),
      others: fc.array(c.kind.value, { maxLength: 3 }),
    }),
  );

describe('keys of every kind', () => {
  const db = useTestDatabase();

  it('drained in lanes: every row once, ranges tiling the key (bounds honoured), finished', async () => {
    const { pool } = db();
    await createKeyLog(pool);

    await fc.assert(
      fc.asyncProperty(keyCase, async ({ c, values, others }) => {
        const { kind, collation } = c;
        await pool.query('DROP TABLE IF EXISTS pk, cand');
        await pool.query('TRUNCATE batched_background_migrations, batched_background_migration_jobs, key_log');
        const list = kind.columns.join(', ');
        await pool.query(`CREATE TABLE pk (${kind.ddl(collation)}, touched int NOT NULL DEFAULT 0)`);
        const unique = c.unique && !kind.repeats;
        await pool.query(`CREATE ${unique ? 'UNIQUE ' : ''}INDEX ON pk (${list})`);
        const rows = [...values, ...values.slice(0, c.repeated)];
        await pool.query(
          `INSERT INTO pk (${list}) SELECT ${kind.insert} FROM unnest($1::text[]) v ON CONFLICT DO NOTHING`,
          [rows],
        );
        // Bounds: keys of the table or others, in the key's order (the candidates have its collation).
        const given: { min_key?: string; max_key?: string } = {};
        if (c.bounds) {
          await pool.query(`CREATE TABLE cand (LIKE pk INCLUDING DEFAULTS)`);
          await pool.query(`INSERT INTO cand (${list}) SELECT ${kind.insert} FROM unnest($1::text[]) v`, [
            [...values, ...others],
          ]);
          const { rows: sorted } = await pool.query<{ bound: string }>(
            `SELECT DISTINCT ON (${list}) jsonb_build_array(${list})::text AS bound FROM cand ORDER BY ${list}`,
          );
          if (sorted.length > 0) {
            const lo = Math.floor((c.bounds.at * (sorted.length - 1)) / 100);
            const hi = lo + Math.floor((c.bounds.span * (sorted.length - 1 - lo)) / 100);
            if (c.bounds.which !== 'max') given.min_key = sorted[lo]!.bound;
            if (c.bounds.which !== 'min') given.max_key = sorted[hi]!.bound;
          }
        }
        await insertKeyMigration(
          pool,
          {
            name: 'keyed',
            table: 'pk',
            column: kind.columns.join(','),
            work: keyTouch.name,
            batchSize: c.batchSize,
            lanes: c.lanes,
          },
          given,
        );

        const worker = testWorker(pool, { work: [keyTouch], concurrency: 3, intervalMs: 5, maxIntervalMs: 40 });
        const stalled = new Promise<'stalled'>((resolve) => setTimeout(() => resolve('stalled'), 20_000).unref());
        const ended = await Promise.race([worker.run({ untilDone: true }).then(() => 'ended' as const), stalled]);
        if (ended === 'stalled') await worker.stop({ abort: true });
        expect(ended).toBe('ended');

        const space = { table: 'pk', columns: kind.columns, types: kind.types(collation) };
        const literal = (json: string) => `'${json.replace(/'/g, "''")}'::jsonb`;
        const key = keyOf(space);
        const inside = [
          ...(given.min_key ? [`${key} >= ${keyRowOf(space, literal(given.min_key))}`] : []),
          ...(given.max_key ? [`${key} <= ${keyRowOf(space, literal(given.max_key))}`] : []),
        ];
        try {
          await expectTiled(pool, space, 'keyed', { log: true, inside: inside.join(' AND ') || 'true' });
        } catch (error) {
          throw new Error(`${(error as Error).message}\n${await keyState(pool, list)}`, { cause: error });
        }
        const twice = await pool.query(
          'SELECT first_key FROM key_log GROUP BY first_key, last_key HAVING count(*) > 1',
        );
        expect(twice.rows).toEqual([]);
        if (unique) {
          // Each range of a unique key holds batch size keys, the last one what is left.
          const { rows: sizes } = await pool.query<{ n: number }>(
            `SELECT (SELECT count(*)::int FROM pk WHERE ${key} >= ${keyRowOf(space, 'j.min_key')}
                                                  AND ${key} <= ${keyRowOf(space, 'j.max_key')}) AS n
             FROM batched_background_migration_jobs j ORDER BY j.min_value`,
          );
          expect(sizes.slice(0, -1).filter(({ n }) => n !== c.batchSize)).toEqual([]);
        }
      }),
      { numRuns: 30, endOnFailure: true },
    );
  }, 240_000);
});
