/**
 * Statements on `batched_background_migrations`: choosing and locking the next
 * migration, its state transitions, and what operators read and steer.
 */
import { sql, type SQL } from 'drizzle-orm';
import { PgDialect } from 'drizzle-orm/pg-core';
import { exec, execOne, type Queryable } from './db.ts';
import { JobStatus, MigrationStatus, type ErrorCodeNumber, type MigrationStatusCode } from './codes.ts';
import type { Target } from './catalog.ts';

/**
 * First half of every advisory-lock key pg-bbm takes: `pg_try_advisory_xact_lock(6447725, id)`,
 * where id is the migration's id (0x62626d is "bbm"). A migration is worked on by one
 * transaction at a time; different migrations run in parallel on different workers. The same
 * number is written into bbm_lock_next_migration (migrations/0001).
 */
export const LOCK_NAMESPACE = 0x62626d;

const dialect = new PgDialect();
const RUNNABLE = sql.raw(`${MigrationStatus.active}, ${MigrationStatus.running}`);

/** The migration as a run sees it once it holds the migration's lock. */
export interface LockedMigration {
  id: bigint;
  name: string;
  status: MigrationStatusCode;
  minValue: bigint;
  maxValue: bigint | null;
  batchSize: number;
  jobSignatureName: string;
  tableName: string;
  columnName: string;
  batchingStrategy: string | null;
  /** End of the highest range created so far; null before the first job. */
  lastJobEnd: bigint | null;
}

const big = (value: string): bigint => BigInt(value);
const bigOrNull = (value: string | null): bigint | null => (value === null ? null : BigInt(value));

/** What a worker asks for: the work names it has, and the pattern every valid work name matches. */
export interface WorkFilter {
  names: readonly string[];
  /** A POSIX regular expression (the same text is a valid JS RegExp). */
  validNamePattern: string;
}

/**
 * The statement that takes the advisory lock of the first runnable migration whose lock is free
 * (running before active, then lowest id) and returns its id as `id`: a call of
 * bbm_lock_next_migration (migrations/0001, 0004), which tries the candidates' locks one at a
 * time in that order. `id` is NULL when nothing is runnable, and BUSY when other workers hold
 * every candidate's lock.
 *
 * It is rendered once per worker, with the work names as literals, so a run can send it in the
 * same round trip as BEGIN (see tx.ts): the names are the worker's own, already checked against
 * VALID_WORK_NAME, and escaped all the same.
 */
/** What bbm_lock_next_migration returns when there is work but every candidate is locked. */
export const BUSY = 0n;

export function lockNextMigrationStatement({ names, validNamePattern }: WorkFilter): string {
  const literal = (text: string) => dialect.escapeString(text);
  const nameArray = `ARRAY[${names.map(literal).join(', ')}]::text[]`;
  return `SELECT bbm_lock_next_migration(${nameArray}, ${literal(validNamePattern)}) AS id`;
}

/**
 * The lock statement of a run bound to one migration (`bbm finalize`): it waits for the
 * migration's lock rather than skipping it, so it interleaves with background workers safely.
 * The id is a bigint, so writing it into the text is safe.
 */
export function lockMigrationStatement(id: bigint): string {
  if (typeof id !== 'bigint') throw new TypeError('migration id must be a bigint');
  return `SELECT ${id}::bigint AS id FROM pg_catalog.pg_advisory_xact_lock(${LOCK_NAMESPACE}, (${id}::bigint % 2147483648)::int)`;
}

interface LockedRow {
  id: string;
  name: string;
  status: number;
  min_value: string;
  max_value: string | null;
  batch_size: number;
  job_signature_name: string;
  table_name: string;
  column_name: string;
  batching_strategy: string | null;
  last_job_end: string | null;
}

/**
 * Reads the migration after its lock is held. This must be a statement of its own, after the
 * lock: a snapshot taken before the lock could miss the range the previous holder just committed.
 */
export async function loadLockedMigration(db: Queryable, id: bigint): Promise<LockedMigration | null> {
  const row = await execOne<LockedRow>(
    db,
    sql`
      SELECT m.id, m.name, m.status, m.min_value, m.max_value, m.batch_size, m.job_signature_name,
             m.table_name, m.column_name, m.batching_strategy,
             (SELECT j.max_value FROM batched_background_migration_jobs j
              WHERE j.batched_background_migration_id = m.id
              ORDER BY j.max_value DESC LIMIT 1) AS last_job_end
      FROM batched_background_migrations m
      WHERE m.id = ${id}`,
  );
  if (!row) return null;
  return {
    id: big(row.id),
    name: row.name,
    status: row.status as MigrationStatusCode,
    minValue: big(row.min_value),
    maxValue: bigOrNull(row.max_value),
    batchSize: row.batch_size,
    jobSignatureName: row.job_signature_name,
    tableName: row.table_name,
    columnName: row.column_name,
    batchingStrategy: row.batching_strategy,
    lastJobEnd: bigOrNull(row.last_job_end),
  };
}

export function quotedTable(target: Target): SQL {
  return sql`${sql.identifier(target.schema)}.${sql.identifier(target.table)}`;
}

/**
 * active -> running. A NULL max_value becomes the column's current maximum (an index lookup);
 * on an empty range it becomes min_value, leaving one empty range to run. The status guard keeps
 * a pause that an operator committed meanwhile.
 */
export async function startMigration(db: Queryable, migration: LockedMigration, target: Target): Promise<bigint | null> {
  const column = sql.identifier(target.column);
  const row = await execOne<{ max_value: string }>(
    db,
    sql`
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.running},
          started_at = coalesce(started_at, now()),
          updated_at = now(),
          max_value = coalesce(max_value, greatest(min_value,
            (SELECT max(${column}) FROM ${quotedTable(target)} WHERE ${column} >= ${migration.minValue}::bigint))),
          total_tuple_count = coalesce(total_tuple_count,
            (SELECT nullif(reltuples, -1)::bigint FROM pg_catalog.pg_class WHERE oid = ${target.oid}::oid))
      WHERE id = ${migration.id} AND status IN (${RUNNABLE})
      RETURNING max_value`,
  );
  return row ? big(row.max_value) : null;
}

export async function finishMigration(db: Queryable, id: bigint): Promise<void> {
  await exec(
    db,
    sql`
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.finished}, finished_at = now(), updated_at = now(),
          failure_error_code = NULL, failure_message = NULL
      WHERE id = ${id} AND status IN (${RUNNABLE})`,
  );
}

export async function failMigration(db: Queryable, id: bigint, code: ErrorCodeNumber, message: string): Promise<void> {
  await exec(
    db,
    sql`
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.failed}, failure_error_code = ${code}, failure_message = ${message},
          finished_at = now(), updated_at = now()
      WHERE id = ${id} AND status IN (${RUNNABLE})`,
  );
}

/** running/active -> paused. Returns the names changed. */
export async function pauseMigrations(db: Queryable, name?: string): Promise<string[]> {
  const rows = await exec<{ name: string }>(
    db,
    sql`
      UPDATE batched_background_migrations SET status = ${MigrationStatus.paused}, updated_at = now()
      WHERE status IN (${RUNNABLE}) ${name === undefined ? sql`` : sql`AND name = ${name}`}
      RETURNING name`,
  );
  return rows.map((r) => r.name);
}

/** paused -> active (a worker makes it running again). Returns the names changed. */
export async function resumeMigrations(db: Queryable, name?: string): Promise<string[]> {
  const rows = await exec<{ name: string }>(
    db,
    sql`
      UPDATE batched_background_migrations SET status = ${MigrationStatus.active}, updated_at = now()
      WHERE status = ${MigrationStatus.paused} ${name === undefined ? sql`` : sql`AND name = ${name}`}
      RETURNING name`,
  );
  return rows.map((r) => r.name);
}

/** How many migrations are in each status. */
export async function countMigrationsByStatus(db: Queryable): Promise<Map<MigrationStatusCode, number>> {
  const rows = await exec<{ status: number; count: string }>(
    db,
    sql`SELECT status, count(*) AS count FROM batched_background_migrations GROUP BY status`,
  );
  return new Map(rows.map((r) => [r.status as MigrationStatusCode, Number(r.count)]));
}

/** One migration with its job counts, as `bbm status` shows it. */
export interface MigrationSummary {
  id: bigint;
  name: string;
  status: MigrationStatusCode;
  jobSignatureName: string;
  tableName: string;
  columnName: string;
  minValue: bigint;
  maxValue: bigint | null;
  batchSize: number;
  failureErrorCode: number | null;
  failureMessage: string | null;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
  jobs: { total: number; finished: number; failed: number };
  /** Sum of the widths of finished ranges: progress is this over the width of [min, max]. */
  finishedWidth: bigint;
  /** Jobs finished in the last RECENT_WINDOW: their count, summed width, and the seconds they span. */
  recent: { jobs: number; width: bigint; seconds: number };
  /** The failure message of the job that failed last, if any job is failed now. */
  lastJobError: string | null;
}

/** How far back `recent` looks: the rate a migration has now, not its average since it started. */
export const RECENT_WINDOW_SECONDS = 300;

interface SummaryRow {
  id: string;
  name: string;
  status: number;
  job_signature_name: string;
  table_name: string;
  column_name: string;
  min_value: string;
  max_value: string | null;
  batch_size: number;
  failure_error_code: number | null;
  failure_message: string | null;
  created_at: Date;
  started_at: Date | null;
  finished_at: Date | null;
  jobs_total: string;
  jobs_finished: string;
  jobs_failed: string;
  finished_width: string;
  recent_jobs: string;
  recent_width: string;
  recent_seconds: number | null;
  last_job_error: string | null;
}

const RECENT = sql.raw(`interval '${RECENT_WINDOW_SECONDS} seconds'`);

/** Migrations (all, the one named, or those in `statuses`), oldest first, with their job counts. */
export async function listMigrations(
  db: Queryable,
  { name, statuses }: { name?: string | undefined; statuses?: readonly MigrationStatusCode[] } = {},
): Promise<MigrationSummary[]> {
  const filters: SQL[] = [];
  if (name !== undefined) filters.push(sql`m.name = ${name}`);
  if (statuses !== undefined) filters.push(sql`m.status = ANY(${sql.param(statuses)}::smallint[])`);
  const rows = await exec<SummaryRow>(
    db,
    sql`
      SELECT m.id, m.name, m.status, m.job_signature_name, m.table_name, m.column_name, m.min_value, m.max_value,
             m.batch_size, m.failure_error_code, m.failure_message, m.created_at, m.started_at, m.finished_at,
             count(j.id) AS jobs_total,
             count(j.id) FILTER (WHERE j.status = 2) AS jobs_finished,
             count(j.id) FILTER (WHERE j.status = 3) AS jobs_failed,
             coalesce(sum(j.max_value - j.min_value + 1) FILTER (WHERE j.status = 2), 0) AS finished_width,
             count(j.id) FILTER (WHERE j.status = 2 AND j.finished_at > now() - ${RECENT}) AS recent_jobs,
             coalesce(sum(j.max_value - j.min_value + 1) FILTER (WHERE j.status = 2 AND j.finished_at > now() - ${RECENT}), 0) AS recent_width,
             extract(epoch FROM max(j.finished_at) FILTER (WHERE j.status = 2 AND j.finished_at > now() - ${RECENT})
                              - min(j.started_at) FILTER (WHERE j.status = 2 AND j.finished_at > now() - ${RECENT}))::float8 AS recent_seconds,
             (SELECT f.failure_message FROM batched_background_migration_jobs f
              WHERE f.batched_background_migration_id = m.id AND f.status = 3
              ORDER BY f.updated_at DESC LIMIT 1) AS last_job_error
      FROM batched_background_migrations m
      LEFT JOIN batched_background_migration_jobs j ON j.batched_background_migration_id = m.id
      ${filters.length === 0 ? sql`` : sql`WHERE ${sql.join(filters, sql` AND `)}`}
      GROUP BY m.id
      ORDER BY m.id`,
  );
  return rows.map((r) => ({
    id: big(r.id),
    name: r.name,
    status: r.status as MigrationStatusCode,
    jobSignatureName: r.job_signature_name,
    tableName: r.table_name,
    columnName: r.column_name,
    minValue: big(r.min_value),
    maxValue: bigOrNull(r.max_value),
    batchSize: r.batch_size,
    failureErrorCode: r.failure_error_code,
    failureMessage: r.failure_message,
    createdAt: r.created_at,
    startedAt: r.started_at,
    finishedAt: r.finished_at,
    jobs: { total: Number(r.jobs_total), finished: Number(r.jobs_finished), failed: Number(r.jobs_failed) },
    finishedWidth: big(r.finished_width),
    recent: { jobs: Number(r.recent_jobs), width: big(r.recent_width), seconds: r.recent_seconds ?? 0 },
    lastJobError: r.last_job_error,
  }));
}

export interface NewMigration {
  name: string;
  jobSignatureName: string;
  tableName: string;
  columnName: string;
  batchSize: number;
  minValue?: bigint | undefined;
  maxValue?: bigint | null | undefined;
  paused?: boolean | undefined;
}

/** Inserts a migration (what `bbm enqueue` does after checking it); returns its id. */
export async function insertMigration(db: Queryable, m: NewMigration): Promise<bigint> {
  const row = await execOne<{ id: string }>(
    db,
    sql`
      INSERT INTO batched_background_migrations
        (name, min_value, max_value, batch_size, status, job_signature_name, table_name, column_name)
      VALUES (${m.name}, ${m.minValue ?? 1n}::bigint, ${m.maxValue ?? null}::bigint, ${m.batchSize},
              ${m.paused ? MigrationStatus.paused : MigrationStatus.active}, ${m.jobSignatureName}, ${m.tableName}, ${m.columnName})
      RETURNING id`,
  );
  if (!row) throw new Error('INSERT ... RETURNING returned no row');
  return big(row.id);
}

/**
 * failed -> active, with the failure cleared and the failed jobs' attempts reset, so each gets
 * `maxAttempts` tries again. Returns the number of jobs reset, or null when no failed migration
 * has that name.
 */
export async function retryMigration(db: Queryable, name: string): Promise<number | null> {
  const row = await execOne<{ jobs: string | null }>(
    db,
    sql`
      WITH m AS (
        UPDATE batched_background_migrations
        SET status = ${MigrationStatus.active}, failure_error_code = NULL, failure_message = NULL,
            finished_at = NULL, updated_at = now()
        WHERE name = ${name} AND status = ${MigrationStatus.failed}
        RETURNING id
      ), jobs AS (
        UPDATE batched_background_migration_jobs j SET attempts = 0, updated_at = now()
        FROM m WHERE j.batched_background_migration_id = m.id AND j.status = ${JobStatus.failed}
        RETURNING j.id
      )
      SELECT (SELECT count(*) FROM jobs) AS jobs FROM m`,
  );
  return row ? Number(row.jobs) : null;
}
