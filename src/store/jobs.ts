/**
 * Statements on `batched_background_migration_jobs`: cutting ranges ahead of the lanes,
 * recording outcomes, splitting a range that timed out.
 *
 * A job's row is cut as `active` (see cutRangeStatement), then taken by a lane with a row lock
 * (sql/functions/bbm_take_job.sql) and updated with its outcome in the transaction that ran its
 * work, so the work and its record commit together.
 */
import type pg from 'pg';
import type { QueryResult, QueryResultRow } from 'pg';
import { sql } from 'drizzle-orm';
import { exec, execOne, integerLiteral, textLiteral, withStatement, type Queryable } from './db.ts';
import { INT4_MAX, JobStatus, type ErrorCodeNumber, type JobStatusCode } from './codes.ts';
import { storableMessage } from './messages.ts';
import type { Target } from './catalog.ts';
import { keyTextArray, type Key } from './keys.ts';
import { keyAt, rowsInKeyRange, rowsInRange, valueAt } from './target-reads.ts';
import type { StoredJob } from './rows.ts';

/** A job as a lane runs it. Ranges are inclusive at both ends. */
export interface ClaimedJob {
  id: bigint;
  start: bigint;
  end: bigint;
  /** Attempts including the one about to run. */
  attempt: number;
  /** The size the range was cut with. */
  batchSize: number;
  /** The server's WAL insert position when it was taken (wal_bytes is measured from it). */
  walLsn?: string | null | undefined;
  /** False when enough ranges wait that none is to be cut with this job (the take says; TakenJob.cutDue). */
  cutDue?: boolean | null | undefined;
  /** A key that is not a single integer column: the range's first and last keys (TakenJob); start and end are then its place in the order of ranges. */
  startKey?: readonly string[] | null | undefined;
  endKey?: readonly string[] | null | undefined;
}

/** What a migration's row said when it was validated; cutting a range requires it still says so. */
export interface ValidatedMigration {
  target: Target;
  tableName: string;
  columnName: string;
  jobSignatureName: string;
}

/** A number of milliseconds as a literal (finite, non-negative). */
function ms(value: number): string {
  if (!Number.isFinite(value) || value < 0) throw new TypeError(`not a duration: ${String(value)}`);
  return value.toFixed(3);
}

/** One range to cut: the migration, what it was validated as, and (adaptive sizing) the size. */
export interface RangeCut {
  migrationId: bigint;
  /** The catalog's names of the table and column, and the names the migration's row must still hold. */
  validated: Omit<ValidatedMigration, 'target'> & {
    target: Pick<Target, 'schema' | 'table' | 'column' | 'unique' | 'key'>;
  };
  /**
   * The size to cut at: with a target_job_ms, the adaptive size; without, a smaller size than the
   * batch_size (foreground protection), never a larger one. Null: the batch_size.
   */
  size: number | null;
  /** Server-side bound on a cut in a transaction of its own, like a run's (see runPrologue). */
  statementTimeoutMs: number;
}

/**
 * The statement that cuts the migration's next ranges and writes them as active jobs, for the
 * lanes to take: a call of bbm_cut_range (sql/functions/bbm_cut_range.sql), which takes the
 * migration's cursor lock, (LOCK_NAMESPACE, id), held until the transaction ends. It keeps up to
 * bbm_cut_depth ranges waiting or running (a fixed batch size: 16 in one lane, max(32, 8 x lanes)
 * in several; an adaptive one: 2 x lanes), and cuts nothing while more than half that many are,
 * besides up to one range each other lane holds (checked before the lock), since a call costs
 * about as much for one range as for sixteen. A fixed batch size lowered since the waiting ranges
 * at the end were cut has those cut again. It marks one of the ranges it cuts as the cue
 * (cut_cue), the one after which about half the depth still waits: the take of that range says a
 * cut is due (TakenJob.cutDue), the others say not, and the runner sends none then. It runs in a
 * transaction of its own (cutRangeTransaction), so that the lock is held for the cut alone. Its one column,
 * `bbm_cut`, is the number of ranges cut, or NULL when none is left to cut.
 *
 * The range starts after the highest range cut so far (or at min_value); its end is the
 * `size`-th value of the column from there (an index scan: `LIMIT 1 OFFSET size - 1`), or
 * max_value when fewer remain; ranges are contiguous, so gaps in the ids fall inside ranges, never
 * between them. On a unique key whose last scan found the keys dense, the end is start + size - 1
 * instead (dense cuts, which rescan every 16th range): at most `size` rows, and no scan (the end
 * keys of all the ranges of one call looked up at once, to send a range in a gap to the scan).
 * The table and column are the catalog's names from validation; the names the row must still
 * hold are passed too, so a row changed since is not cut. Text travels hex-encoded.
 */
export function cutRangeStatement(cut: RangeCut): string {
  const { migrationId, validated, size } = cut;
  const { target } = validated;
  const args = [
    `${integerLiteral(migrationId)}::bigint`,
    textLiteral(target.schema),
    textLiteral(target.table),
    textLiteral(target.column),
    textLiteral(validated.tableName),
    textLiteral(validated.columnName),
    textLiteral(validated.jobSignatureName),
    size === null ? 'NULL::integer' : `${integerLiteral(Math.max(1, Math.min(INT4_MAX, Math.round(size))))}::integer`,
    target.unique ? 'true' : 'false',
    target.key ? `ARRAY[${target.key.map((c) => textLiteral(c.name)).join(', ')}]::text[]` : 'NULL::text[]',
    target.key ? `ARRAY[${target.key.map((c) => integerLiteral(c.typeOid)).join(', ')}]::oid[]` : 'NULL::oid[]',
  ];
  return `SELECT bbm_cut_range(${args.join(', ')}) AS bbm_cut`;
}

/**
 * A transaction of its own that cuts the next ranges (see cutRangeStatement): sent after a
 * finished job's COMMIT in the same round trip (several lanes), beside the job on another
 * connection (one lane, cutRangeBeside), or before a take that found no range
 * (RunTransaction.cutAndTake). Its commit is asynchronous (synchronous_commit off): losing it in a
 * crash loses only ranges no work has used, since the commit of any job that ran one flushes it
 * first. The settings are SET LOCAL rather than set_config: statements without a result cost less.
 */
export function cutRangeTransaction(cut: RangeCut): string {
  return (
    `BEGIN; SET LOCAL synchronous_commit = off; SET LOCAL statement_timeout = ${integerLiteral(cut.statementTimeoutMs)}; ` +
    `${cutRangeStatement(cut)}; COMMIT`
  );
}

/**
 * What a cut wrote, from the results of the round trip that sent it (a cutRangeStatement's
 * `bbm_cut` column): how many ranges it cut, null when none was left to cut, undefined when the
 * results hold no cut.
 */
export function parseCut(results: unknown): number | null | undefined {
  return resultNamed<{ bbm_cut: number | null }>(results, 'bbm_cut')?.rows[0]?.bbm_cut;
}

/** The WAL a finished job wrote, from the results of the round trip that recorded it (finishJobText). */
export function parseFinish(results: unknown): number | undefined {
  const walBytes = resultNamed<{ bbm_wal_bytes: string | null }>(results, 'bbm_wal_bytes')?.rows[0]?.bbm_wal_bytes;
  return walBytes == null ? undefined : Number(walBytes);
}

/** The result among those of a multi-statement round trip whose one column is `column`. */
function resultNamed<R extends QueryResultRow>(results: unknown, column: string): QueryResult<R> | undefined {
  const list = Array.isArray(results) ? (results as QueryResult<R>[]) : [results as QueryResult<R>];
  return list.find((result) => result.fields?.[0]?.name === column);
}

/** A range being cut beside a running job (cutRangeBeside). */
export interface CutBeside {
  /**
   * Waits for the cut, up to `waitMs` in all: 'ended' once it committed, 'late' past that. Before
   * it has a connection, a late cut is given up and cuts nothing (a pool lent out to lanes that
   * wait for their own cuts would otherwise never lend one); after, it goes on, unwaited for:
   * through a pooler, its statement may wait for the very server connection the job holds.
   * Rejects when it failed.
   */
  ended(waitMs: number): Promise<'ended' | 'late'>;
  /** Settles when the cut is over, whichever way (committed, failed or given up). */
  readonly over: Promise<void>;
}

/**
 * Cuts the next range in a transaction of its own on another connection of the pool, while the
 * job of a migration in one lane runs: the index scan that finds the range's end then costs the
 * lane no time (the server has cores to spare beside one lane), and the lane's next take finds
 * the range waiting. Undefined when the pool has no idle connection and no room for one (the lane
 * then cuts the range itself when it needs it). A failure is the caller's to report; the
 * connection is destroyed then, as it is when lost while checked out.
 */
export function cutRangeBeside(pool: pg.Pool, cut: RangeCut): CutBeside | undefined {
  if (pool.idleCount === 0 && pool.totalCount >= (pool.options.max ?? 10)) return undefined;
  let givenUp = false;
  const connection = pool.connect();
  let connected = false;
  const done = (async () => {
    const client = await connection;
    connected = true;
    if (givenUp) {
      client.release();
      return;
    }
    let lost: Error | undefined;
    // A connection lost while checked out emits 'error' on the client; unheard, that would be an uncaught exception.
    const onError = (error: Error) => (lost ??= error);
    client.on('error', onError);
    try {
      await client.query(cutRangeTransaction(cut));
    } catch (error) {
      lost ??= error instanceof Error ? error : new Error(String(error));
      throw withStatement(error, 'bbm_cut_range (beside a job)');
    } finally {
      client.off('error', onError);
      client.release(lost);
    }
  })();
  // A cut given up must not fail unheard.
  const over = done.catch(() => {});
  return {
    over,
    async ended(waitMs) {
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), waitMs)));
      try {
        const first = await Promise.race([done.then(() => 'ended' as const), late]);
        if (first === 'late' && !connected) givenUp = true;
        return first;
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** What a finished job's row records. */
export interface FinishedJob {
  job: ClaimedJob;
  /** What the work function returned, if a number. */
  rows: number | undefined;
  /** Time spent in the work function. */
  durationMs: number;
}

/** What a failed job's row records. */
export interface FailedJob {
  job: ClaimedJob;
  code: ErrorCodeNumber;
  message: string;
  /** Time spent in the work function. */
  durationMs: number;
}

/** A pg_lsn as Postgres prints it (`16/B374D848`): checked, since it travels as a literal. */
const LSN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/;

/**
 * The statement that records a job finished (sql/functions/bbm_finish_job.sql), before the COMMIT
 * that the caller appends: it checks deferred constraints first, while the work's savepoint is
 * still open, so a deferred violation by the work fails the job instead of the whole run, and
 * returns the WAL written since the take as `bbm_wal_bytes`. Every value is one of our own
 * numbers, written as a literal, so the text can travel with the COMMIT and the next run's
 * prologue in one round trip.
 */
export function finishJobText({ job, rows, durationMs }: FinishedJob): string {
  const rowCount = rows === undefined ? 'NULL' : integerLiteral(Math.round(rows));
  const lsn = job.walLsn && LSN.test(job.walLsn) ? `'${job.walLsn}'::pg_lsn` : 'NULL::pg_lsn';
  return `SELECT bbm_finish_job(${integerLiteral(job.id)}::bigint, ${integerLiteral(job.attempt)}, ${rowCount}, ${ms(durationMs)}, ${lsn}) AS bbm_wal_bytes`;
}

/** A job's status now (null when its row is gone): what a run asks when it cannot tell whether its COMMIT happened. */
export async function jobStatus(db: Queryable, id: bigint): Promise<JobStatusCode | null> {
  const row = await execOne<{ status: number }>(
    db,
    sql`SELECT status FROM batched_background_migration_jobs WHERE id = ${id}`,
  );
  return row ? (row.status as JobStatusCode) : null;
}

/** The failure a failed job carries: its code and message (for the migration's failure past maxAttempts). */
export async function jobFailure(
  db: Queryable,
  id: bigint,
): Promise<{ code: ErrorCodeNumber | null; message: string | null }> {
  const row = await execOne<{ failure_error_code: ErrorCodeNumber | null; failure_message: string | null }>(
    db,
    sql`SELECT failure_error_code, failure_message FROM batched_background_migration_jobs WHERE id = ${id}`,
  );
  return { code: row?.failure_error_code ?? null, message: row?.failure_message ?? null };
}

/** Records a failed attempt, after the run rolled back to its work savepoint. */
export async function recordFailedAttempt(
  db: Queryable,
  job: ClaimedJob,
  code: ErrorCodeNumber,
  message: string,
  durationMs: number,
): Promise<void> {
  await execOne(
    db,
    sql`
      UPDATE batched_background_migration_jobs
      SET status = ${JobStatus.failed}, attempts = ${job.attempt}, failure_error_code = ${code}, failure_message = ${storableMessage(message)},
          duration_ms = ${durationMs}::float8, started_at = now(), updated_at = clock_timestamp()
      WHERE id = ${job.id}`,
  );
}

/**
 * Splits a range that timed out into two halves by rows (the middle value of the column in the
 * range, an index scan), both active with fresh attempts: the job's row keeps the first half, a
 * new row gets the second. Nothing happens, and false is returned, when a half would hold fewer
 * than `minRows` rows. Runs in the failed job's transaction, after its work was rolled back, so
 * the split commits with the row lock still held: the range's rows are read in statements of
 * their own (target-reads.ts), and the job's row is written with what they found.
 */
export async function splitRange(
  db: Queryable,
  job: ClaimedJob,
  migrationId: bigint,
  target: Target,
  minRows: number,
): Promise<boolean> {
  if (target.key) return splitKeyRange(db, job, migrationId, target, target.key, minRows);
  const rows = await rowsInRange(db, target, job.start, job.end, job.batchSize);
  const half = Math.floor(rows / 2);
  if (half < Math.max(minRows, 1)) return false;
  const middle = await valueAt(db, target, job.start, job.end, half - 1);
  if (middle === null || BigInt(middle) >= job.end) return false;
  const row = await execOne<{ split: boolean }>(
    db,
    sql`
      WITH first_half AS (
        UPDATE batched_background_migration_jobs
        SET max_value = ${middle}::bigint, status = ${JobStatus.active}, attempts = 0, batch_size = ${half}::int,
            failure_error_code = NULL, failure_message = NULL, updated_at = clock_timestamp()
        WHERE id = ${job.id}
        RETURNING id
      ), second_half AS (
        INSERT INTO batched_background_migration_jobs
          (batched_background_migration_id, min_value, max_value, status, attempts, batch_size)
        SELECT ${migrationId}::bigint, ${middle}::bigint + 1, ${job.end}::bigint, ${JobStatus.active}, 0, ${rows - half}::int
        FROM first_half
        RETURNING id
      )
      SELECT EXISTS (SELECT 1 FROM second_half) AS split`,
  );
  return row?.split ?? false;
}

/**
 * splitRange for a key that is not a single integer column: the first half ends at the key in the
 * middle of the range's rows, the second starts at the key after it, and the range's place in the
 * order of ranges (min_value, max_value) is halved alike. No split when the range's order has no
 * room left (24 splits deep).
 */
async function splitKeyRange(
  db: Queryable,
  job: ClaimedJob,
  migrationId: bigint,
  target: Target,
  key: Key,
  minRows: number,
): Promise<boolean> {
  const stored = await execOne<{ lo: string; hi: string }>(
    db,
    sql`SELECT min_key::text AS lo, max_key::text AS hi FROM batched_background_migration_jobs
        WHERE id = ${job.id} AND min_key IS NOT NULL AND max_value > min_value`,
  );
  if (!stored) return false;
  const { lo, hi } = stored;
  const rows = await rowsInKeyRange(db, target, key, lo, hi, job.batchSize);
  const half = Math.floor(rows / 2);
  if (half < Math.max(minRows, 1)) return false;
  const middle = await keyAt(db, target, key, { lo, hi, after: false }, half - 1);
  // The second half starts at the first key past the middle one (keys may repeat).
  const next = middle === null ? null : await keyAt(db, target, key, { lo: middle, hi, after: true }, 0);
  if (middle === null || next === null) return false;
  const row = await execOne<{ split: boolean }>(
    db,
    sql`
      WITH bbm_job AS (
        SELECT min_value, max_value, max_key AS hi, min_value + (max_value - min_value) / 2 AS place
        FROM batched_background_migration_jobs WHERE id = ${job.id}
      ), first_half AS (
        UPDATE batched_background_migration_jobs j
        SET max_value = b.place, max_key = ${middle}::jsonb, status = ${JobStatus.active}, attempts = 0, batch_size = ${half}::int,
            failure_error_code = NULL, failure_message = NULL, updated_at = clock_timestamp()
        FROM bbm_job b WHERE j.id = ${job.id}
        RETURNING b.place
      ), second_half AS (
        INSERT INTO batched_background_migration_jobs
          (batched_background_migration_id, min_value, max_value, status, attempts, batch_size, min_key, max_key)
        SELECT ${migrationId}::bigint, f.place + 1, b.max_value, ${JobStatus.active}, 0, ${rows - half}::int, ${next}::jsonb, b.hi
        FROM first_half f, bbm_job b
        RETURNING id
      )
      SELECT EXISTS (SELECT 1 FROM second_half) AS split`,
  );
  return row?.split ?? false;
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

/** A job as the status page shows it: its row, with its range and the rows its work reported under plainer names. */
export type JobRow = Pick<
  StoredJob,
  'id' | 'attempts' | 'batchSize' | 'durationMs' | 'walBytes' | 'failureMessage' | 'finishedAt'
> & {
  /** An integer key's range; a key migration's place in the order of its ranges (ordinals, not to be shown). */
  start: bigint;
  end: bigint;
  /**
   * A key migration's range: its first and last keys, each value's exact text in column order.
   * Null for an integer key, and for the one range of an empty key space.
   */
  startKey: string[] | null;
  endKey: string[] | null;
  status: JobStatusCode;
  rows: number | null;
};

/**
 * A migration's most recent jobs (by last change), and every failed one whatever its age: what
 * the status page shows of one migration.
 */
export async function recentJobs(
  db: Queryable,
  migrationId: bigint,
  limit = 50,
): Promise<{ recent: JobRow[]; failed: JobRow[] }> {
  const rows = await exec<{
    id: string;
    min_value: string;
    max_value: string;
    status: number;
    attempts: number;
    batch_size: number | null;
    row_count: string | null;
    duration_ms: number | null;
    wal_bytes: string | null;
    failure_message: string | null;
    finished_at: Date | null;
    start_key: string[] | null;
    end_key: string[] | null;
    recent: boolean;
  }>(
    db,
    sql`
      SELECT r.*, ${sql.raw(keyTextArray('r.min_key'))} AS start_key, ${sql.raw(keyTextArray('r.max_key'))} AS end_key
      FROM (
        (SELECT j.*, true AS recent FROM batched_background_migration_jobs j
         WHERE j.batched_background_migration_id = ${migrationId} ORDER BY j.updated_at DESC, j.id DESC LIMIT ${limit}::int)
        UNION ALL
        (SELECT j.*, false FROM batched_background_migration_jobs j
         WHERE j.batched_background_migration_id = ${migrationId} AND j.status = ${JobStatus.failed} ORDER BY j.min_value)
      ) r`,
  );
  const toJob = (r: (typeof rows)[number]): JobRow => ({
    id: BigInt(r.id),
    start: BigInt(r.min_value),
    end: BigInt(r.max_value),
    startKey: r.start_key,
    endKey: r.end_key,
    status: r.status as JobStatusCode,
    attempts: r.attempts,
    batchSize: r.batch_size,
    rows: r.row_count === null ? null : Number(r.row_count),
    durationMs: r.duration_ms,
    walBytes: r.wal_bytes === null ? null : Number(r.wal_bytes),
    failureMessage: r.failure_message,
    finishedAt: r.finished_at,
  });
  return { recent: rows.filter((r) => r.recent).map(toJob), failed: rows.filter((r) => !r.recent).map(toJob) };
}
