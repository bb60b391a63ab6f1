/**
 * Statements on `batched_background_migration_jobs`: creating the next ID range,
 * claiming a failed one for retry, and recording outcomes.
 */
import { sql } from 'drizzle-orm';
import { exec, execOne, type Queryable } from './db.ts';
import { JobStatus, type ErrorCodeNumber } from './codes.ts';
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

/**
 * Creates the range that starts at `start`: its end is the `batchSize`-th value of the column at
 * or after `start` (an index scan: `LIMIT 1 OFFSET batchSize - 1`), or `max` when fewer remain.
 * Ranges built this way are contiguous, so gaps in the ids fall inside ranges, never between them.
 */
export async function createJob(
  db: Queryable,
  migrationId: bigint,
  target: Target,
  start: bigint,
  max: bigint,
  batchSize: number,
): Promise<ClaimedJob> {
  const column = sql.identifier(target.column);
  const row = await execOne<JobRowText>(
    db,
    sql`
      INSERT INTO batched_background_migration_jobs
        (batched_background_migration_id, min_value, max_value, status, attempts, started_at)
      SELECT ${migrationId}, ${start}::bigint,
             coalesce((SELECT ${column} FROM ${quotedTable(target)}
                       WHERE ${column} >= ${start}::bigint AND ${column} <= ${max}::bigint
                       ORDER BY ${column} LIMIT 1 OFFSET ${batchSize - 1}), ${max}::bigint),
             ${JobStatus.active}, 1, now()
      RETURNING id, min_value, max_value, attempts`,
  );
  if (!row) throw new Error('INSERT ... RETURNING returned no row');
  return toJob(row);
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

/** Marks a failed job active again for one more attempt. */
export async function retryJob(db: Queryable, jobId: bigint): Promise<ClaimedJob> {
  const row = await execOne<JobRowText>(
    db,
    sql`
      UPDATE batched_background_migration_jobs
      SET status = ${JobStatus.active}, attempts = attempts + 1, started_at = now(), updated_at = now()
      WHERE id = ${jobId}
      RETURNING id, min_value, max_value, attempts`,
  );
  if (!row) throw new Error(`job ${jobId} vanished while its migration was locked`);
  return toJob(row);
}

export async function finishJob(db: Queryable, jobId: bigint): Promise<void> {
  await exec(
    db,
    sql`
      UPDATE batched_background_migration_jobs
      SET status = ${JobStatus.finished}, finished_at = now(), updated_at = now(),
          failure_error_code = NULL, failure_message = NULL
      WHERE id = ${jobId}`,
  );
}

export async function failJob(db: Queryable, jobId: bigint, code: ErrorCodeNumber, message: string): Promise<void> {
  await exec(
    db,
    sql`
      UPDATE batched_background_migration_jobs
      SET status = ${JobStatus.failed}, failure_error_code = ${code}, failure_message = ${message}, updated_at = now()
      WHERE id = ${jobId}`,
  );
}

/** Cancels the statement a backend is running (a run past its timeout); false when it is gone. */
export async function cancelBackend(db: Queryable, pid: number): Promise<boolean> {
  const row = await execOne<{ cancelled: boolean }>(db, sql`SELECT pg_catalog.pg_cancel_backend(${pid}) AS cancelled`);
  return row?.cancelled ?? false;
}
