/**
 * pg-bbm on a real Citus cluster (a coordinator and two workers, support/citus.ts): every
 * statement of the engine over a hash-distributed table, a table distributed by another column
 * than the batching key, a reference table and a Citus local table, enqueued as the README says;
 * and exactly once, across worker processes and a SIGKILL, and across a crash between the
 * worker node's commit and the coordinator's. Skipped without Citus unless BBM_REQUIRE_CITUS is set.
 */
import { fileURLToPath } from 'node:url';
import type pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { JobStatus, MigrationStatus } from '../src/store/codes.ts';
import { createPool } from '../src/store/db.ts';
import { bbm } from './support/cli.ts';
import { citusAvailable, startCitus, type CitusCluster } from './support/citus.ts';
import { runBbm } from './support/processes.ts';

const CONFIG = fileURLToPath(new URL('./fixtures/citus.config.ts', import.meta.url));

const available = citusAvailable();

/** How each kind of Citus table is made from a plain one. */
interface TableKind {
  kind: string;
  /** Columns and keys; every kind has an `id bigint` batching column and a `touched int` counter. */
  columns: string;
  /** Indexes besides the primary key. */
  indexes?: string;
  /** The Citus call that turns `$t` into its kind. */
  citus: string;
  /** Rows, as a SELECT over g (1 .. n). */
  rows: string;
}

const KINDS: TableKind[] = [
  {
    kind: 'a hash-distributed table, by its id',
    columns: 'id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0',
    citus: "SELECT create_distributed_table('$t', 'id')",
    rows: 'SELECT g FROM g',
  },
  {
    kind: 'a table distributed by another column (tenant) than the batching key',
    // Citus takes no unique index without the distribution column: id has a plain one.
    columns: 'tenant int NOT NULL, id bigint NOT NULL, touched int NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id)',
    indexes: 'CREATE INDEX ON $t (id)',
    citus: "SELECT create_distributed_table('$t', 'tenant')",
    rows: 'SELECT g % 7, g FROM g',
  },
  {
    kind: 'a reference table',
    columns: 'id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0',
    citus: "SELECT create_reference_table('$t')",
    rows: 'SELECT g FROM g',
  },
  {
    kind: 'a Citus local table',
    columns: 'id bigint PRIMARY KEY, touched int NOT NULL DEFAULT 0',
    citus: "SELECT citus_add_local_table_to_metadata('$t')",
    rows: 'SELECT g FROM g',
  },
];

/** A table of `kind` named `name`, holding ids 1 .. n less every 9th (holes: ranges are cut by the index). */
async function createTable(pool: pg.Pool, name: string, kind: TableKind, n: number): Promise<void> {
  const at = (text: string) => text.replaceAll('$t', name);
  await pool.query(`CREATE TABLE ${name} (${kind.columns})`);
  if (kind.indexes) await pool.query(at(kind.indexes));
  await pool.query(at(kind.citus));
  await pool.query(
    `INSERT INTO ${name} WITH g AS (SELECT g FROM generate_series(1, ${n}) g WHERE g % 9 <> 4) ${kind.rows}`,
  );
}

/** Every row touched once, every range finished, ranges contiguous, the migration finished. */
async function expectDoneOnce(pool: pg.Pool, table: string, name: string): Promise<void> {
  const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM ${table} GROUP BY touched`);
  expect(rows, name).toEqual([{ touched: 1, n: expect.any(Number) }]);
  const jobs = await pool.query<{ min: string; max: string; status: number }>(
    `SELECT j.min_value AS min, j.max_value AS max, j.status FROM batched_background_migration_jobs j
     JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id WHERE m.name = $1 ORDER BY j.min_value`,
    [name],
  );
  expect(jobs.rows.every((j) => j.status === JobStatus.finished)).toBe(true);
  for (let i = 1; i < jobs.rows.length; i += 1) {
    expect(BigInt(jobs.rows[i]!.min), `range ${i}`).toBe(BigInt(jobs.rows[i - 1]!.max) + 1n);
  }
  const migration = await pool.query('SELECT status FROM batched_background_migrations WHERE name = $1', [name]);
  expect(migration.rows[0]?.status).toBe(MigrationStatus.finished);
}

describe.skipIf(!available)('on Citus', () => {
  let citus: CitusCluster;
  let pool: pg.Pool;
  const env = () => ({ DATABASE_URL: citus.url });

  beforeAll(async () => {
    citus = await startCitus();
    pool = createPool({ connectionString: citus.url, max: 6 });
    const migrated = await runBbm(['migrate'], env());
    expect(migrated, migrated.output).toMatchObject({ code: 0 });
  }, 120_000);

  afterAll(async () => {
    await pool?.end();
    await citus?.stop();
  });

  describe('every statement of the engine', () => {
    it.each(KINDS.map((kind, i) => ({ ...kind, table: `t${i}` })))(
      '$kind: enqueued with the README INSERT, started, cut, taken, split, swept, finished',
      { timeout: 120_000 },
      async (kind) => {
        const { table } = kind;
        await createTable(pool, table, kind, 2_000);
        const name = `touch_${table}`;
        // The README's INSERT, with the optional columns left out: no status, no max_value.
        await pool.query(
          `INSERT INTO batched_background_migrations
             (name, min_value, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
           VALUES ($1, 1, 100, 'citus.touch', $2, 'id', 2)`,
          [name, `public.${table}`],
        );

        const drained = await runBbm(['run', '--until-done', '--concurrency', '2', '--config', CONFIG], {
          ...env(),
          BBM_TEST_SLOW_ID: '1000',
        });

        expect(drained, drained.output).toMatchObject({ code: 0 });
        await expectDoneOnce(pool, table, name);
        const { rows } = await pool.query<{ max_value: string; verified: boolean; split: number }>(
          `SELECT m.max_value, m.verified_at IS NOT NULL AS verified,
                  (SELECT count(*)::int FROM batched_background_migration_jobs j
                   WHERE j.batched_background_migration_id = m.id AND j.batch_size < m.batch_size) AS split
           FROM batched_background_migrations m WHERE m.name = $1`,
          [name],
        );
        // The start found the last id (2,000, not a hole); the range holding id 1,000 timed out
        // and was split (halves of 50, then 25); the final sweep checked every range.
        expect(rows[0]).toMatchObject({ max_value: '2000', verified: true });
        expect(rows[0]!.split).toBeGreaterThanOrEqual(2);
        const status = await bbm(['status', '--json', '--name', name], env());
        expect(status.code, status.err).toBe(0);
        expect(JSON.parse(status.out)).toMatchObject([{ name, status: 'finished' }]);
      },
    );

    it('a key of two columns (tenant, id) over a table distributed by tenant: started and cut on its index, split by its middle key', async () => {
      const kind = KINDS[1]!;
      await createTable(pool, 'tk', kind, 2_000);
      await pool.query(
        `INSERT INTO batched_background_migrations
           (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs)
         VALUES ('touch_tk', 100, 'citus.touch', 'public.tk', 'tenant,id', 2)`,
      );

      const drained = await runBbm(['run', '--until-done', '--concurrency', '2', '--config', CONFIG], {
        ...env(),
        BBM_TEST_SLOW_ID: '1000',
      });

      expect(drained, drained.output).toMatchObject({ code: 0 });
      const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM tk GROUP BY touched`);
      expect(rows).toEqual([{ touched: 1, n: 1778 }]);
      const migration = await pool.query(
        `SELECT status, min_key, max_key FROM batched_background_migrations WHERE name = 'touch_tk'`,
      );
      expect(migration.rows[0]).toEqual({ status: MigrationStatus.finished, min_key: [0, 7], max_key: [6, 1994] });
      // The range holding (1000 % 7, 1000) timed out and was split by its middle key.
      const split = await pool.query(
        `SELECT count(*)::int AS n FROM batched_background_migration_jobs WHERE batch_size < 100 AND max_key IS NOT NULL`,
      );
      expect(split.rows[0].n).toBeGreaterThanOrEqual(2);
    });

    it('bbm enqueue, rehearse, status and finalize over a hash-distributed table', async () => {
      await createTable(pool, 'te', KINDS[0]!, 3_000);
      const enqueued = await bbm(
        [
          'enqueue',
          ...['--name', 'touch_te', '--work', 'citus.touch', '--table', 'public.te', '--column', 'id'],
          ...['--batch-size', '200', '--lanes', '2', '--config', CONFIG],
        ],
        env(),
      );
      expect(enqueued.code, enqueued.err).toBe(0);
      const rehearsed = await bbm(['rehearse', '--name', 'touch_te', '--config', CONFIG], env());
      expect(rehearsed.code, rehearsed.err + rehearsed.out).toBe(0);
      // A rehearsal is rolled back.
      expect((await pool.query('SELECT count(*)::int AS n FROM te WHERE touched > 0')).rows[0].n).toBe(0);

      const finalized = await bbm(['finalize', '--name', 'touch_te', '--config', CONFIG], env());

      expect(finalized.code, finalized.err + finalized.out).toBe(0);
      await expectDoneOnce(pool, 'te', 'touch_te');
      const status = await bbm(['status', '--json', '--name', 'touch_te'], env());
      expect(JSON.parse(status.out)).toMatchObject([{ name: 'touch_te', status: 'finished' }]);
    });
  });
});
