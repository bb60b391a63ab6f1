/** Statements on `batched_background_migration_workers`: who is running, with which work functions. */
import { sql } from 'drizzle-orm';
import type pg from 'pg';
import { exec, SqlState, sqlStateOf, type Queryable } from './db.ts';
import { LOCK_NAMESPACE, QUIET_LOCK_KEY } from './locks.ts';

/** How often a running worker records that it is alive. */
export const HEARTBEAT_MS = 30_000;
/** A worker is live while it was heard from within this window: three missed heartbeats and it is not. */
export const LIVE_WORKER_WINDOW_MS = 3 * HEARTBEAT_MS;

export interface WorkerAnnouncement {
  id: string;
  hostname: string;
  pid: number;
  workNames: readonly string[];
  /** The share of the time its lanes run (the pacer's duty cycle); stored as NULL at 1. */
  dutyCycle?: number;
}

/** A duty cycle as the column holds it: NULL when the lanes run all the time. */
const dutyCycleValue = (share: number | undefined): number | null => (share === undefined || share >= 1 ? null : share);

/** Workers not seen for a day are forgotten: they died without saying goodbye. */
const FORGET_AFTER = sql.raw(`interval '1 day'`);

/** Records that a worker is alive, with its work functions (and forgets long-dead ones). */
export async function announceWorker(db: Queryable, worker: WorkerAnnouncement): Promise<void> {
  await exec(
    db,
    sql`
      WITH forgotten AS (
        DELETE FROM batched_background_migration_workers WHERE last_seen_at < now() - ${FORGET_AFTER}
      )
      INSERT INTO batched_background_migration_workers (id, hostname, pid, work_names, duty_cycle)
      VALUES (${worker.id}, ${worker.hostname}, ${worker.pid}, ${sql.param(worker.workNames)}::text[],
              ${dutyCycleValue(worker.dutyCycle)}::real)
      ON CONFLICT (id) DO UPDATE SET work_names = excluded.work_names, duty_cycle = excluded.duty_cycle, last_seen_at = now()`,
  );
}

/** Publishes a worker's duty cycle when it changes, ahead of the next heartbeat (NULL at 1). */
export async function recordDutyCycle(db: Queryable, workerId: string, share: number): Promise<void> {
  await exec(
    db,
    sql`UPDATE batched_background_migration_workers SET duty_cycle = ${dutyCycleValue(share)}::real WHERE id = ${workerId}`,
  );
}

/**
 * A commit that waits for its WAL to reach disk, as an application's write does: the worker's
 * row seen again, in a transaction of its own. (A transaction that only takes an id writes no
 * WAL and does not wait for a flush; this one writes one small record.)
 */
export async function probeCommit(db: Queryable, workerId: string): Promise<void> {
  await exec(db, sql`UPDATE batched_background_migration_workers SET last_seen_at = now() WHERE id = ${workerId}`);
}

/**
 * Runs `measure` while no run of any worker is in flight: takes the quiet lock exclusively (every
 * run holds it shared from its take to its end, bbm_take_job), which waits for the runs in flight
 * to end and makes every new take wait behind it. Gives up (undefined) after `waitMs`, since the
 * fleet's takes queue behind the request while it waits.
 *
 * The lock is held by a transaction left open on a connection of its own (`holder`, lent by the
 * pool if given one) while `measure` runs, and its end releases it: transaction-scoped, so that
 * through a pooler in transaction mode it cannot stay behind on a server connection. `measure`
 * must not use `holder` (its commits would be that transaction's).
 */
export async function whileRunsHeld<T>(
  holder: pg.Pool | pg.ClientBase,
  waitMs: number,
  measure: () => Promise<T>,
): Promise<T | undefined> {
  if (!Number.isSafeInteger(waitMs) || waitMs <= 0) throw new RangeError(`bad wait ${waitMs}`);
  if ('totalCount' in holder) {
    const client = await holder.connect();
    let broken: Error | undefined;
    try {
      return await whileRunsHeld(client, waitMs, measure);
    } catch (error) {
      broken = error instanceof Error ? error : new Error(String(error));
      throw error;
    } finally {
      client.release(broken);
    }
  }
  try {
    await holder.query(
      `BEGIN; SET LOCAL lock_timeout = ${waitMs}; SELECT pg_catalog.pg_advisory_xact_lock(${LOCK_NAMESPACE}, ${QUIET_LOCK_KEY})`,
    );
  } catch (error) {
    if (sqlStateOf(error) !== SqlState.lockNotAvailable) {
      await holder.query('ROLLBACK').catch(() => {});
      throw error;
    }
    await holder.query('ROLLBACK');
    return undefined;
  }
  try {
    return await measure();
  } finally {
    await holder.query('ROLLBACK');
  }
}

export async function retireWorker(db: Queryable, id: string): Promise<void> {
  await exec(db, sql`DELETE FROM batched_background_migration_workers WHERE id = ${id}`);
}

/** Work names of the workers seen within the last `withinMs`. */
export async function liveWorkNames(db: Queryable, withinMs: number): Promise<string[]> {
  const rows = await exec<{ name: string }>(
    db,
    sql`
      SELECT DISTINCT unnest(work_names) AS name FROM batched_background_migration_workers
      WHERE last_seen_at > now() - make_interval(secs => ${withinMs / 1000}::float8)`,
  );
  return rows.map((r) => r.name);
}
