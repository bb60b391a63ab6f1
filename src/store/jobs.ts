/**
 * Statements on `batched_background_migration_jobs`: creating the next ID range,
 * claiming a failed one for retry, and recording outcomes.
 */
import { sql } from 'drizzle-orm';
import pg, { type QueryResultRow } from 'pg';
import { lockRowsOf } from './tx.ts';
import { exec, execOne, type Queryable } from './db.ts';
import { JobStatus, MigrationStatus, SERIAL_KEY_SET, type ErrorCodeNumber } from './codes.ts';
import type { Target } from './catalog.ts';
import { quotedTable } from './migrations.ts';

/** A job as a run executes it. Ranges are inclusive at both ends. */
export interface ClaimedJob {
  id: bigint;
  start: bigint;
  end: bigint;
  /** Attempts including the one about to run. */
  attempt: number;
}

interface JobRowText {
  id: string;
  min_value: string;
  max_value: string;
  attempts: number;
}

const toJob = (r: JobRowText): ClaimedJob => ({
  id: BigInt(r.id),
  start: BigInt(r.min_value),
  end: BigInt(r.max_value),
  attempt: r.attempts,
});

/** What a migration's row said when it was validated; range creation requires it still says so. */
export interface ValidatedMigration {
  target: Target;
  tableName: string;
  columnName: string;
  jobSignatureName: string;
}

export interface NextJob {
  job: ClaimedJob;
  migration: { id: bigint; name: string; batchSize: number };
}

/** The sequence behind the jobs' ids (named in migrations/0000): a range's id is taken when it is claimed. */
const JOB_ID_SEQUENCE = sql.raw(`'batched_background_migration_jobs_id_seq'::regclass`);

/**
 * Claims the migration's next range, reading the migration and its last range in this same
 * statement, so the caller needs no read of its own first. The range starts after the last one
 * (or at min_value); its end is the `batch_size`-th value of the column from there (an index
 * scan: `LIMIT 1 OFFSET batch_size - 1`), or max_value when fewer remain. Ranges built this way
 * are contiguous, so gaps in the ids fall inside ranges, never between them.
 *
 * Nothing is written: the job's row is written once, with its outcome, by
 * recordFinishedAndCommit or recordFailedAttempt, in the same transaction, under the migration's
 * lock. Its id is taken from the sequence now, so the work function and the logs know it.
 *
 * Returns null unless the migration is running with a resolved max_value, a range is left, and
 * its row still names what `validated` was checked against.
 */
export async function claimNextRange(db: Queryable, migrationId: bigint, validated: ValidatedMigration): Promise<NextJob | null> {
  const { target } = validated;
  const column = sql.identifier(target.column);
  const row = await execOne<JobRowText & { name: string; batch_size: number }>(
    db,
    sql`
      WITH m AS (
        SELECT m.id, m.name, m.batch_size, m.max_value,
               coalesce((SELECT j.max_value + 1 FROM batched_background_migration_jobs j
                         WHERE j.batched_background_migration_id = m.id
                         ORDER BY j.max_value DESC LIMIT 1), m.min_value) AS start
        FROM batched_background_migrations m
        WHERE m.id = ${migrationId} AND m.status = ${MigrationStatus.running} AND m.max_value IS NOT NULL
          AND m.table_name = ${validated.tableName} AND m.column_name = ${validated.columnName}
          AND m.job_signature_name = ${validated.jobSignatureName}
          AND (m.batching_strategy IS NULL OR m.batching_strategy = ${SERIAL_KEY_SET})
      )
      SELECT pg_catalog.nextval(${JOB_ID_SEQUENCE}) AS id, m.start AS min_value,
             coalesce((SELECT ${column} FROM ${quotedTable(target)}
                       WHERE ${column} >= m.start AND ${column} <= m.max_value
                       ORDER BY ${column} LIMIT 1 OFFSET m.batch_size - 1), m.max_value) AS max_value,
             1 AS attempts, m.name, m.batch_size
      FROM m WHERE m.start <= m.max_value`,
  );
  if (!row) return null;
  return { job: toJob(row), migration: { id: migrationId, name: row.name, batchSize: row.batch_size } };
}

export interface FailedJob extends ClaimedJob {
  failureMessage: string | null;
}

/** The oldest failed job of a migration, if any; `attempt` is the attempts made so far. */
export async function firstFailedJob(db: Queryable, migrationId: bigint): Promise<FailedJob | null> {
  const row = await execOne<JobRowText & { failure_message: string | null }>(
    db,
    sql`
      SELECT id, min_value, max_value, attempts, failure_message FROM batched_background_migration_jobs
      WHERE batched_background_migration_id = ${migrationId} AND status = ${JobStatus.failed}
      ORDER BY id LIMIT 1`,
  );
  return row ? { ...toJob(row), failureMessage: row.failure_message } : null;
}

/** Literal SQL for one of our own integers (ids, bounds, counts): digits only, so safe in text. */
function int(value: bigint | number): string {
  if (typeof value === 'bigint' || Number.isSafeInteger(value)) return String(value);
  throw new TypeError(`not an integer: ${String(value)}`);
}

/**
 * Records the job finished and commits the run, in one round trip (the hot path: once per
 * range). With `nextPrologue`, the next run starts in the same round trip (a worker that goes
 * straight on saves one), and its lock rows are returned. Deferred constraints are checked
 * first, while the work's savepoint is still open, so a deferred violation by the work fails the
 * job instead of the whole run. Every value is one of our own integers, written as a literal.
 */
export async function recordFinishedAndCommit<R extends QueryResultRow>(
  db: Queryable,
  migrationId: bigint,
  job: ClaimedJob,
  rowCount: number | undefined,
  nextPrologue?: string,
): Promise<R[] | undefined> {
  const rows = rowCount === undefined ? 'NULL' : int(Math.round(rowCount));
  const results = await db.query(
    'SET CONSTRAINTS ALL IMMEDIATE; ' +
      'INSERT INTO batched_background_migration_jobs ' +
      '(id, batched_background_migration_id, min_value, max_value, status, attempts, row_count, started_at, finished_at) ' +
      `VALUES (${int(job.id)}, ${int(migrationId)}, ${int(job.start)}, ${int(job.end)}, ${JobStatus.finished}, ${int(job.attempt)}, ${rows}, ` +
      'now(), clock_timestamp()) ' +
      `ON CONFLICT (id) DO UPDATE SET status = ${JobStatus.finished}, attempts = excluded.attempts, row_count = excluded.row_count, ` +
      'started_at = excluded.started_at, finished_at = excluded.finished_at, updated_at = clock_timestamp(), ' +
      'failure_error_code = NULL, failure_message = NULL; ' +
      `COMMIT${nextPrologue === undefined ? '' : `; ${nextPrologue}`}`,
  );
  return nextPrologue === undefined ? undefined : lockRowsOf<R>(results);
}

/** The rows the migration's finished jobs reported changing so far (what their work functions returned). */
export async function reportedRows(db: Queryable, migrationId: bigint): Promise<number> {
  const row = await execOne<{ rows: string }>(
    db,
    sql`SELECT coalesce(sum(row_count), 0) AS rows FROM batched_background_migration_jobs
        WHERE batched_background_migration_id = ${migrationId} AND status = ${JobStatus.finished}`,
  );
  return Number(row?.rows ?? 0);
}

/**
 * Records a failed attempt (after the run rolled back to its work savepoint): a new range's job
 * is written with the id it was claimed with, a retried one updated, with the attempt that failed.
 */
export async function recordFailedAttempt(
  db: Queryable,
  migrationId: bigint,
  job: ClaimedJob,
  code: ErrorCodeNumber,
  message: string,
): Promise<void> {
  await exec(
    db,
    sql`
      INSERT INTO batched_background_migration_jobs AS j
        (id, batched_background_migration_id, min_value, max_value, status, attempts,
         failure_error_code, failure_message, started_at)
      VALUES (${job.id}, ${migrationId}, ${job.start}::bigint, ${job.end}::bigint, ${JobStatus.failed}, ${job.attempt},
              ${code}, ${message}, now())
      ON CONFLICT (id) DO UPDATE
      SET status = ${JobStatus.failed}, attempts = excluded.attempts, failure_error_code = excluded.failure_error_code,
          failure_message = excluded.failure_message, started_at = now(), updated_at = clock_timestamp()`,
  );
}

/**
 * Cancels the statement a backend is running (a run past its timeout); false when it is gone.
 * It connects on its own rather than through the pool: the pool's connections may all be busy,
 * one of them with the very run being cancelled.
 */
export async function cancelBackend(pool: pg.Pool, pid: number): Promise<boolean> {
  const client = new pg.Client({ ...pool.options, connectionTimeoutMillis: 10_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    const row = await execOne<{ cancelled: boolean }>(client, sql`SELECT pg_catalog.pg_cancel_backend(${pid}) AS cancelled`);
    return row?.cancelled ?? false;
  } finally {
    await client.end().catch(() => {});
  }
}
