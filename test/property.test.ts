/**
 * Property: whatever migration rows are inserted by plain SQL (names, identifiers, bounds, batch
 * sizes, lanes, statuses, work names of every kind), a worker run until done stops by itself;
 * each row the table accepted ends finished, failed with a named code, paused, or waiting for a
 * work function no worker has; every finished migration's ranges tile [min_value, max_value] and
 * each ran exactly once; a table no row may name (by injection or otherwise) is untouched; and a
 * sound migration beside them finishes.
 */
import fc from 'fast-check';
import type pg from 'pg';
import { describe, expect, it } from 'vitest';
import type { Work } from '../src/bbm/types.ts';
import { ErrorCode, MigrationStatus } from '../src/store/codes.ts';
import { useTestDatabase } from './support/database.ts';
import { testWorker } from './support/engine.ts';

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
