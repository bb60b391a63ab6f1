/** Helpers shared by the engine tests: enqueueing by SQL, quiet workers, draining. */
import { pino } from 'pino';
import type pg from 'pg';
import { expect } from 'vitest';
import { Worker } from '../../src/bbm/worker.ts';
import type { RunResult, Work, WorkerParams } from '../../src/bbm/types.ts';
import { JobStatus, MigrationStatus } from '../../src/store/codes.ts';
import { cutRangeStatement, parseCut } from '../../src/store/jobs.ts';

export const quiet = pino({ level: 'silent' });

/** The work function most tests use: counts, per row, how often a job covered it (`touched`). */
export const touch: Work = {
  name: 'test.touch',
  async do(job) {
    await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.column} BETWEEN $1 AND $2`, [
      job.start,
      job.end,
    ]);
  },
};

export interface EnqueueRow {
  name: string;
  work: string;
  table: string;
  column?: string;
  batchSize: number;
  min?: number | bigint;
  max?: number | bigint | null;
  status?: number;
  batchingStrategy?: string | null;
}

/** Enqueues a migration exactly as the README tells users to: a plain INSERT. */
export async function enqueue(db: pg.Pool, row: EnqueueRow): Promise<bigint> {
  const result = await db.query<{ id: string }>(
    `INSERT INTO batched_background_migrations
       (name, min_value, max_value, batch_size, status, job_signature_name, table_name, column_name, batching_strategy)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id`,
    [
      row.name,
      row.min ?? 1,
      row.max ?? null,
      row.batchSize,
      row.status ?? 1,
      row.work,
      row.table,
      row.column ?? 'id',
      row.batchingStrategy ?? null,
    ],
  );
  return BigInt(result.rows[0]!.id);
}

/**
 * Cuts ranges of migration `id` over `items`.id worked by `touch`, as a runner's cut does
 * (bbm_cut_range); how many it cut (0 when enough wait, null when none is left to cut).
 */
export async function cutItems(db: pg.Pool, id: bigint): Promise<number | null> {
  const target = { schema: 'public', table: 'items', column: 'id', unique: true, key: null };
  const validated = { target, tableName: 'items', columnName: 'id', jobSignatureName: touch.name };
  const cut = parseCut(
    await db.query(cutRangeStatement({ migrationId: id, validated, size: null, statementTimeoutMs: 0 })),
  );
  if (cut === undefined) throw new Error('bbm_cut_range returned no result');
  return cut;
}

export function testWorker(pool: pg.Pool, params: Omit<WorkerParams, 'pool'>): Worker {
  // Health holds off unless a test asks: they are tested on their own (health.test.ts), and a vacuum
  // that autovacuum happens to start on a test's table must not hold that test for 30 s.
  return new Worker({
    intervalMs: 20,
    maxIntervalMs: 100,
    startupJitterMs: 0,
    logger: quiet,
    health: false,
    ...params,
    pool,
  });
}

/** Runs until nothing runnable is left; fails the test rather than looping forever. */
export async function drain(worker: Worker, maxRuns = 10_000): Promise<RunResult[]> {
  const results: RunResult[] = [];
  for (let i = 0; i < maxRuns; i += 1) {
    const result = await worker.runOnce();
    results.push(result);
    if (result.outcome === 'error') throw result.error ?? new Error('run failed');
    if (result.outcome === 'no_job') return results;
  }
  throw new Error(`still runnable after ${maxRuns} runs`);
}

export async function migrationRow(db: pg.Pool, name: string) {
  const { rows } = await db.query(
    'SELECT id, status, max_value, failure_error_code, failure_message, hold_reason, started_at, finished_at FROM batched_background_migrations WHERE name = $1',
    [name],
  );
  return rows[0] as
    | {
        id: string;
        status: number;
        max_value: string | null;
        failure_error_code: number | null;
        failure_message: string | null;
        hold_reason: string | null;
      }
    | undefined;
}

/** How many of a migration's jobs finished. */
export async function finishedJobs(db: pg.Pool, name: string): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM batched_background_migration_jobs j
       JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
     WHERE m.name = $1 AND j.status = ${JobStatus.finished}`,
    [name],
  );
  return rows[0]!.n;
}

/**
 * The ranges of a migration that ran (finished or failed), in order. A range cut ahead for a lane
 * and not run yet (active) is left out unless `all`.
 */
export async function jobRanges(
  db: pg.Pool,
  name: string,
  { all = false }: { all?: boolean } = {},
): Promise<Array<{ min: number; max: number; status: number; attempts: number }>> {
  const { rows } = await db.query(
    `SELECT j.min_value::int AS min, j.max_value::int AS max, j.status, j.attempts
     FROM batched_background_migration_jobs j JOIN batched_background_migrations m ON m.id = j.batched_background_migration_id
     WHERE m.name = $1 AND (j.status <> 1 OR $2) ORDER BY j.min_value`,
    [name, all],
  );
  return rows;
}

/** A table `name(id, v, touched)` holding the given ids; `touched` counts how often a work function hit a row. */
export async function createItems(db: pg.Pool, name: string, ids: Iterable<number>): Promise<void> {
  await db.query(
    `CREATE TABLE ${name} (id bigint PRIMARY KEY, v int NOT NULL DEFAULT 0, touched int NOT NULL DEFAULT 0)`,
  );
  await db.query(`INSERT INTO ${name} (id, v) SELECT x, x FROM unnest($1::bigint[]) AS x`, [[...ids]]);
}

/**
 * A migration done exactly once: every row of `table` touched once, its ranges all finished and
 * contiguous (each starts where the one before ended), and the migration finished.
 */
export async function expectEveryRowOnce(pool: pg.Pool, table: string, name: string): Promise<void> {
  const { rows } = await pool.query(`SELECT touched, count(*)::int AS n FROM ${table} GROUP BY touched`);
  expect(rows, name).toEqual([{ touched: 1, n: expect.any(Number) }]);
  const jobs = await jobRanges(pool, name, { all: true });
  expect(jobs.every((j) => j.status === JobStatus.finished)).toBe(true);
  for (let i = 1; i < jobs.length; i += 1) expect(jobs[i]!.min, `range ${i}`).toBe(jobs[i - 1]!.max + 1);
  expect((await migrationRow(pool, name))?.status).toBe(MigrationStatus.finished);
}

export const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** Runs until a run executes a job (starting the migration first if need be), and returns that run. */
export async function nextJob(worker: Worker): Promise<RunResult> {
  for (let i = 0; i < 10; i += 1) {
    const result = await worker.runOnce();
    if (result.outcome !== 'migration_started') return result;
  }
  throw new Error('no job after 10 runs');
}
