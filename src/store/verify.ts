/**
 * Statements of the final sweep (docs/verify.md): once every range of a migration whose work has a
 * check has finished, each finished range is checked again, in its lanes, before the migration
 * may finish. A range's row is locked (FOR UPDATE SKIP LOCKED) by the run that checks it, and
 * marked verified in that run's transaction, with whatever the work fixed in it: a crash leaves
 * it unverified, to be checked again.
 *
 * A key that is not a single integer column has its ranges cut from the first key after the
 * previous range's end, so rows written since between two ranges lie in neither: a range is
 * checked from the previous range's last key (inclusive: that row is checked twice, harmlessly),
 * and the first range from the migration's first key.
 */
import { sql, type SQL } from 'drizzle-orm';
import { exec, execOne, type Queryable } from './db.ts';
import { JobStatus } from './codes.ts';
import type { ClaimedJob } from './jobs.ts';
import { takenMigrationOf, type MigrationColumns, type TakenMigration } from './run-transaction.ts';

/** What the sweep's next ranges are: up to the number asked, held by this run; none left; or only ranges other lanes hold. */
export type SweepRanges = { kind: 'ranges'; jobs: ClaimedJob[] } | { kind: 'none' } | { kind: 'busy' };

interface RangeRow {
  id: string;
  min_value: string;
  max_value: string;
  attempts: number;
  batch_size: number | null;
  min_key: string[] | null;
  max_key: string[] | null;
  before_key: string[] | null;
}

/** A finished range to check, as a job of its range (checked from the previous range's end, for a key). */
function rangeOf(row: RangeRow, batchSize: number): ClaimedJob {
  return {
    id: BigInt(row.id),
    start: BigInt(row.min_value),
    end: BigInt(row.max_value),
    attempt: row.attempts,
    batchSize: row.batch_size ?? batchSize,
    startKey: row.before_key ?? row.min_key,
    endKey: row.max_key,
    // Nothing is cut beside a check.
    cutDue: false,
  };
}

const RANGE_COLUMNS = sql`
  j.id, j.min_value, j.max_value, j.attempts, j.batch_size,
  bbm_key_text(j.min_key) AS min_key, bbm_key_text(j.max_key) AS max_key,
  coalesce(
    (SELECT bbm_key_text(p.max_key) FROM batched_background_migration_jobs p
     WHERE p.batched_background_migration_id = j.batched_background_migration_id AND p.max_value < j.min_value
       AND p.max_key IS NOT NULL
     ORDER BY p.max_value DESC LIMIT 1),
    (SELECT bbm_key_text(m.min_key) FROM batched_background_migrations m
     WHERE m.id = j.batched_background_migration_id AND j.min_key IS NOT NULL)) AS before_key`;

/** A migration's finished ranges (only those not yet verified) after the one ending at ordinal `after`, in order. */
function finishedAfter(migrationId: bigint, after: bigint | null, { unverified }: { unverified: boolean }): SQL {
  return sql`
    FROM batched_background_migration_jobs j
    WHERE j.batched_background_migration_id = ${migrationId} AND j.status = ${JobStatus.finished}
      ${unverified ? sql`AND j.verified_at IS NULL` : sql``}
      AND (${after}::bigint IS NULL OR j.max_value > ${after}::bigint)
    ORDER BY j.max_value`;
}

/**
 * The first `limit` finished ranges of the migration not yet verified and not held by another
 * lane, in order, locked; after the range ending at ordinal `after` first (this runner's last),
 * then from the start (ranges before it that failed their check or whose run died).
 */
export async function takeUnverifiedRanges(
  db: Queryable,
  migrationId: bigint,
  batchSize: number,
  after: bigint | undefined,
  limit: number,
): Promise<SweepRanges> {
  for (const from of after === undefined ? [null] : [after, null]) {
    const rows = await exec<RangeRow>(
      db,
      sql`SELECT ${RANGE_COLUMNS} ${finishedAfter(migrationId, from, { unverified: true })} LIMIT ${limit} FOR UPDATE OF j SKIP LOCKED`,
    );
    if (rows.length > 0) return { kind: 'ranges', jobs: rows.map((row) => rangeOf(row, batchSize)) };
  }
  const left = await execOne<{ left: boolean }>(
    db,
    sql`
      SELECT EXISTS (SELECT 1 FROM batched_background_migration_jobs j
                     WHERE j.batched_background_migration_id = ${migrationId} AND j.status = ${JobStatus.finished}
                       AND j.verified_at IS NULL) AS left`,
  );
  return left?.left ? { kind: 'busy' } : { kind: 'none' };
}

/** Locks a range of the sweep again (after its work was undone), unless another lane holds it or verified it. */
export async function relockRange(db: Queryable, jobId: bigint): Promise<boolean> {
  const rows = await exec(
    db,
    sql`SELECT id FROM batched_background_migration_jobs WHERE id = ${jobId} AND verified_at IS NULL FOR UPDATE SKIP LOCKED`,
  );
  return rows.length > 0;
}

/**
 * Marks ranges verified, adding what the sweep found and fixed in them to the migration's counts;
 * a range verified ends a run of run errors (as a finished job's cut does).
 */
export async function recordVerified(
  db: Queryable,
  migrationId: bigint,
  jobIds: readonly bigint[],
  { found, rerun }: { found: number; rerun: boolean },
): Promise<void> {
  const ids = jobIds.map(String);
  await exec(
    db,
    sql`
      WITH verified AS (
        UPDATE batched_background_migration_jobs SET verified_at = now(), updated_at = now()
        WHERE id = ANY(${sql.param(ids)}::bigint[]) RETURNING id)
      UPDATE batched_background_migrations
      SET verify_rows_found = verify_rows_found + ${found}, verify_ranges_rerun = verify_ranges_rerun + ${rerun ? 1 : 0},
          run_errors = 0
      WHERE id = ${migrationId} AND (${found > 0 || rerun} OR run_errors > 0) AND EXISTS (SELECT 1 FROM verified)`,
  );
  // The sweep's fixes (the work run again) commit with this record: by two-phase commit on Citus.
  await exec(db, sql`SELECT bbm_citus_two_phase()`);
}

/**
 * The finished ranges of a migration in order, `limit` at a time after the range ending at
 * ordinal `after` (bbm verify reads them all, a page at a time).
 */
export async function finishedRanges(
  db: Queryable,
  migrationId: bigint,
  batchSize: number,
  after: bigint | null,
  limit: number,
): Promise<ClaimedJob[]> {
  const rows = await exec<RangeRow>(
    db,
    sql`SELECT ${RANGE_COLUMNS} ${finishedAfter(migrationId, after, { unverified: false })} LIMIT ${limit}`,
  );
  return rows.map((row) => rangeOf(row, batchSize));
}

/** A migration's row by name, as a run takes it (null when there is none): for `bbm verify` and `bbm rehearse`. */
export async function migrationNamed(db: Queryable, name: string): Promise<TakenMigration | null> {
  const row = await execOne<MigrationColumns>(
    db,
    sql`
      SELECT id::text AS migration_id, name, status, job_signature_name, table_name, column_name, batching_strategy,
             batch_size, max_parallel_jobs, target_job_ms, min_batch_size, max_batch_size, job_arguments
      FROM batched_background_migrations WHERE name = ${name}`,
  );
  return row ? takenMigrationOf(row) : null;
}
