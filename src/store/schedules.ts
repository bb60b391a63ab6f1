/**
 * Statements for recurring schedules. A schedule has no table of its own: each pass is a
 * migration named `<schedule>@<slot>`, so the passes are found by that name prefix.
 */
import { sql } from 'drizzle-orm';
import { exec, execOne, type Queryable } from './db.ts';
import { MigrationStatus, type MigrationStatusCode } from './codes.ts';
import type { Target } from './catalog.ts';
import { LOCK_NAMESPACE, SCHEDULER_LOCK_KEY } from './locks.ts';
import { quotedTable } from './migration-rows.ts';

/** Takes the scheduler's transaction-level lock if it is free: one worker schedules at a time. */
export async function trySchedulerLock(db: Queryable): Promise<boolean> {
  const row = await execOne<{ locked: boolean }>(
    db,
    sql`SELECT pg_catalog.pg_try_advisory_xact_lock(${LOCK_NAMESPACE}::int, ${SCHEDULER_LOCK_KEY}::int) AS locked`,
  );
  return row?.locked ?? false;
}

export interface Pass {
  id: bigint;
  name: string;
  status: MigrationStatusCode;
  createdAt: Date;
  finishedAt: Date | null;
}

/** The schedule's newest pass. */
export async function latestPass(db: Queryable, schedule: string): Promise<Pass | null> {
  const prefix = `${schedule}@`;
  const row = await execOne<{ id: string; name: string; status: number; created_at: Date; finished_at: Date | null }>(
    db,
    sql`
      SELECT id, name, status, created_at, finished_at FROM batched_background_migrations
      WHERE left(name, ${prefix.length}::int) = ${prefix}
      ORDER BY id DESC LIMIT 1`,
  );
  return row
    ? {
        id: BigInt(row.id),
        name: row.name,
        status: row.status as MigrationStatusCode,
        createdAt: row.created_at,
        finishedAt: row.finished_at,
      }
    : null;
}

/** The column's current maximum (an index lookup), null on an empty table. */
export async function columnMax(db: Queryable, target: Target): Promise<bigint | null> {
  const column = sql.identifier(target.column);
  const row = await execOne<{ max: string | null }>(db, sql`SELECT max(${column}) AS max FROM ${quotedTable(target)}`);
  return row?.max == null ? null : BigInt(row.max);
}

/** Deletes the schedule's finished passes (and their jobs) older than the retention. Returns how many. */
export async function prunePasses(db: Queryable, schedule: string, retentionMs: number): Promise<number> {
  const prefix = `${schedule}@`;
  const rows = await exec<{ id: string }>(
    db,
    sql`
      DELETE FROM batched_background_migrations
      WHERE left(name, ${prefix.length}::int) = ${prefix} AND status = ${MigrationStatus.finished}
        AND finished_at < now() - make_interval(secs => ${retentionMs / 1000}::float8)
      RETURNING id`,
  );
  return rows.length;
}
