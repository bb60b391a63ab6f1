/**
 * What the status page and the metrics read beyond migration summaries: the live workers, a
 * migration's job timeline, and the ages operators alert on (held without progress, finished).
 */
import { sql } from 'drizzle-orm';
import { exec, type Queryable } from './db.ts';
import { JobStatus, MigrationStatus, RUNNABLE_STATUSES, statusCodes, type JobStatusCode } from './codes.ts';

export interface LiveWorker {
  id: string;
  hostname: string;
  pid: number;
  workNames: string[];
  startedAt: Date;
  lastSeenAt: Date;
  /** The share of the time its lanes run (foreground protection's duty cycle); null when all the time. */
  dutyCycle: number | null;
}

/** Workers heard from within `withinMs`, most recently heard first. */
export async function liveWorkers(db: Queryable, withinMs: number): Promise<LiveWorker[]> {
  const rows = await exec<{
    id: string;
    hostname: string;
    pid: number;
    work_names: string[];
    started_at: Date;
    last_seen_at: Date;
    duty_cycle: number | null;
  }>(
    db,
    sql`
      SELECT id, hostname, pid, work_names, started_at, last_seen_at, duty_cycle FROM batched_background_migration_workers
      WHERE last_seen_at > now() - make_interval(secs => ${withinMs / 1000}::float8)
      ORDER BY last_seen_at DESC, id`,
  );
  return rows.map((r) => ({
    id: r.id,
    hostname: r.hostname,
    pid: r.pid,
    workNames: r.work_names,
    startedAt: r.started_at,
    lastSeenAt: r.last_seen_at,
    dutyCycle: r.duty_cycle,
  }));
}

/** One job on a migration's timeline: when it ended (finished, or last failed), how long its work took, its rows. */
export interface JobPoint {
  id: bigint;
  status: JobStatusCode;
  at: Date;
  durationMs: number | null;
  /** What the work reported changing, else the range's batch size. */
  rows: number;
  attempts: number;
}

/**
 * The last `limit` jobs that ran (finished or failed), oldest first: the chart's points. Jobs cut
 * ahead and not run yet are left out; a failed job is placed where it last failed.
 */
export async function jobTimeline(db: Queryable, migrationId: bigint, limit = 300): Promise<JobPoint[]> {
  const rows = await exec<{
    id: string;
    status: number;
    at: Date;
    duration_ms: number | null;
    rows: string;
    attempts: number;
  }>(
    db,
    sql`
      SELECT * FROM (
        SELECT j.id, j.status, coalesce(j.finished_at, j.updated_at) AS at, j.duration_ms,
               -- A key range (min_key set) always has its batch_size; its width counts ordinals, not rows.
               coalesce(j.row_count, j.batch_size, CASE WHEN j.min_key IS NULL THEN j.max_value - j.min_value + 1 END, 0) AS rows,
               j.attempts
        FROM batched_background_migration_jobs j
        WHERE j.batched_background_migration_id = ${migrationId}
          AND (j.status = ${JobStatus.finished} OR (j.status = ${JobStatus.failed} AND j.attempts > 0))
        ORDER BY coalesce(j.finished_at, j.updated_at) DESC, j.id DESC
        LIMIT ${limit}::int
      ) last ORDER BY at, id`,
  );
  return rows.map((r) => ({
    id: BigInt(r.id),
    status: r.status as JobStatusCode,
    at: r.at,
    durationMs: r.duration_ms,
    rows: Number(r.rows),
    attempts: r.attempts,
  }));
}

/**
 * Runnable migrations on hold now, with the seconds since they last made progress: since their
 * last finished job (the newest by id), else since they started, else since they were enqueued. A
 * hold renewed again and again (a standby that stays behind) keeps growing this, unlike the hold's
 * own expiry, which each renewal pushes on.
 */
export async function heldSeconds(db: Queryable): Promise<{ name: string; seconds: number }[]> {
  return exec<{ name: string; seconds: number }>(
    db,
    sql`
      SELECT m.name, extract(epoch FROM now() - coalesce(
               (SELECT j.finished_at FROM batched_background_migration_jobs j
                WHERE j.batched_background_migration_id = m.id AND j.status = ${JobStatus.finished}
                ORDER BY j.id DESC LIMIT 1),
               m.started_at, m.created_at))::float8 AS seconds
      FROM batched_background_migrations m
      WHERE m.status IN (${sql.raw(statusCodes(RUNNABLE_STATUSES))}) AND m.on_hold_until > now()`,
  );
}

/**
 * Finished migrations still in the table, with the seconds since they finished. A schedule's passes
 * (named `<schedule>@<time>`) are left out: they are meant to stay until the schedule clears them.
 */
export async function finishedSeconds(db: Queryable): Promise<{ name: string; seconds: number }[]> {
  return exec<{ name: string; seconds: number }>(
    db,
    sql`
      SELECT name, extract(epoch FROM now() - finished_at)::float8 AS seconds
      FROM batched_background_migrations
      WHERE status = ${MigrationStatus.finished} AND finished_at IS NOT NULL AND strpos(name, '@') = 0`,
  );
}
