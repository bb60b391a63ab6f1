/**
 * Statements of webhook notifications (batched_background_migration_notifications). Detecting is
 * an INSERT … ON CONFLICT DO NOTHING that any worker may run at any time: the unique key
 * (migration, event, occurrence, target) makes the second detection of an event insert nothing.
 * Sending claims rows in one short statement (FOR UPDATE SKIP LOCKED, and `next_attempt_at`
 * pushed past the request's timeout: a lease no other worker claims under), so no transaction is
 * open while the request is in flight; the result is recorded after.
 */
import { sql, type SQL } from 'drizzle-orm';
import { ErrorCode, JobStatus, MigrationStatus, RUNNABLE_STATUSES, statusCodes } from './codes.ts';
import { exec, type Queryable } from './db.ts';
import { storableMessage } from './messages.ts';

/** Events older than this when first seen are not sent: turning notifications on replays no history. */
const RECENT_MS = 86_400_000;

/** How the detection sees a target: its id, events and bounds. */
export interface DetectTarget {
  id: string;
  events: readonly string[];
  heldForMs: number;
  unfinalizedForMs: number;
}

/** A CASE turning a code column into its name, from the codes' table. */
function names(column: SQL, table: Record<string, number>): SQL {
  const cases = Object.entries(table).map(([name, code]) => sql`WHEN ${sql.raw(String(code))} THEN ${name}`);
  return sql`CASE ${column} ${sql.join(cases, sql` `)} END`;
}

const interval = (ms: number) => sql`make_interval(secs => ${ms / 1000}::float8)`;

/**
 * Inserts the events of migrations that `target` has not been told of yet; returns how many. A
 * schedule's passes (named `<schedule>@<time>`) are left out of started, finished and
 * not_finalized: they recur, and stay finished until their schedule clears them.
 */
export async function detectNotifications(db: Queryable, target: DetectTarget): Promise<number> {
  const wants = (event: string) => sql`${event}::text = ANY(${sql.param(target.events)}::text[])`;
  const recent = (column: SQL) => sql`${column} > now() - ${interval(RECENT_MS)}`;
  const notPass = sql`strpos(m.name, '@') = 0`;
  const rows = await exec<{ id: string }>(
    db,
    sql`
      INSERT INTO batched_background_migration_notifications (migration_id, event, key, target, payload)
      SELECT m.id, e.event, k.key, ${target.id}::text,
             jsonb_build_object(
               'event', e.event,
               'at', e.at,
               'migration', jsonb_build_object(
                 'id', m.id::text, 'name', m.name, 'status', ${names(sql`m.status`, MigrationStatus)},
                 'table', m.table_name, 'column', m.column_name, 'work', m.job_signature_name,
                 'createdAt', m.created_at, 'startedAt', m.started_at, 'finishedAt', m.finished_at)
             ) || e.detail
      FROM batched_background_migrations m
      CROSS JOIN LATERAL (
        SELECT 'started' AS event, m.started_at AS at, '{}'::jsonb AS detail
        WHERE ${wants('started')} AND m.started_at IS NOT NULL AND ${recent(sql`m.started_at`)} AND ${notPass}
        UNION ALL
        SELECT 'finished', m.finished_at, '{}'::jsonb
        WHERE ${wants('finished')} AND m.status = ${MigrationStatus.finished} AND ${recent(sql`m.finished_at`)} AND ${notPass}
        UNION ALL
        SELECT 'failed', m.finished_at, jsonb_build_object(
                 'error', jsonb_build_object('code', ${names(sql`m.failure_error_code`, ErrorCode)}, 'message', m.failure_message))
        WHERE ${wants('failed')} AND m.status = ${MigrationStatus.failed} AND ${recent(sql`m.finished_at`)}
        UNION ALL
        SELECT 'held', p.at, jsonb_build_object(
                 'holdReason', m.hold_reason, 'heldUntil', m.on_hold_until,
                 'heldForMs', round(extract(epoch FROM now() - p.at) * 1000)::bigint)
        FROM (SELECT coalesce(
                (SELECT j.finished_at FROM batched_background_migration_jobs j
                 WHERE j.batched_background_migration_id = m.id AND j.status = ${JobStatus.finished}
                 ORDER BY j.id DESC LIMIT 1),
                m.started_at, m.created_at) AS at) p
        WHERE ${wants('held')} AND m.status IN (${sql.raw(statusCodes(RUNNABLE_STATUSES))}) AND m.on_hold_until > now()
          AND p.at <= now() - ${interval(target.heldForMs)}
        UNION ALL
        SELECT 'not_finalized', m.finished_at, '{}'::jsonb
        WHERE ${wants('not_finalized')} AND m.status = ${MigrationStatus.finished}
          AND m.finished_at <= now() - ${interval(target.unfinalizedForMs)} AND ${notPass}
        UNION ALL
        SELECT 'awaiting_approval', m.created_at, '{}'::jsonb
        WHERE ${wants('awaiting_approval')} AND m.status = ${MigrationStatus.awaiting_approval}
      ) e
      CROSS JOIN LATERAL (SELECT (extract(epoch FROM e.at) * 1000000)::bigint::text AS key) k
      WHERE e.at IS NOT NULL
        -- Events told already are skipped before the insert, which would take an id for each.
        AND NOT EXISTS (
          SELECT 1 FROM batched_background_migration_notifications n
          WHERE n.migration_id = m.id AND n.event = e.event AND n.key = k.key AND n.target = ${target.id}::text)
      ON CONFLICT DO NOTHING
      RETURNING id`,
  );
  return rows.length;
}

export interface ClaimedNotification {
  id: bigint;
  event: string;
  target: string;
  payload: Record<string, unknown> & { migration: { name: string } };
  /** This send's number: 1 for the first. */
  attempt: number;
}

/**
 * Claims up to `limit` notifications due for the targets given, for `leaseMs` (longer than the
 * request's timeout): until then no other worker claims them. One statement, so the rows are
 * locked only while it runs (SKIP LOCKED: two workers claiming at once take different rows).
 */
export async function claimNotifications(
  db: Queryable,
  { targets, leaseMs, limit }: { targets: readonly string[]; leaseMs: number; limit: number },
): Promise<ClaimedNotification[]> {
  const rows = await exec<{
    id: string;
    event: string;
    target: string;
    payload: ClaimedNotification['payload'];
    attempts: number;
  }>(
    db,
    sql`
      UPDATE batched_background_migration_notifications n
      SET attempts = n.attempts + 1, next_attempt_at = now() + ${interval(leaseMs)}
      WHERE n.id IN (
        SELECT id FROM batched_background_migration_notifications
        WHERE next_attempt_at <= now() AND target = ANY(${sql.param(targets)}::text[])
        ORDER BY next_attempt_at, id
        LIMIT ${limit}::int
        FOR UPDATE SKIP LOCKED)
      RETURNING n.id, n.event, n.target, n.payload, n.attempts`,
  );
  return rows.map((r) => ({
    id: BigInt(r.id),
    event: r.event,
    target: r.target,
    payload: r.payload,
    attempt: r.attempts,
  }));
}

/**
 * Records a send that the receiver acknowledged. Guarded by the attempt: a worker whose lease
 * ran out (and whose row another worker claimed since) records nothing.
 */
export async function recordSent(db: Queryable, id: bigint, attempt: number): Promise<void> {
  await exec(
    db,
    sql`
      UPDATE batched_background_migration_notifications
      SET sent_at = now(), next_attempt_at = NULL, last_error = NULL
      WHERE id = ${id} AND attempts = ${attempt}::int AND sent_at IS NULL`,
  );
}

/**
 * Records a failed send: retried after `retryInMs`, or, with null, given up (`next_attempt_at`
 * NULL and `sent_at` NULL).
 */
export async function recordFailed(
  db: Queryable,
  { id, attempt, error, retryInMs }: { id: bigint; attempt: number; error: string; retryInMs: number | null },
): Promise<void> {
  const next = retryInMs === null ? sql`NULL` : sql`now() + ${interval(retryInMs)}`;
  await exec(
    db,
    sql`
      UPDATE batched_background_migration_notifications
      SET next_attempt_at = ${next}, last_error = ${storableMessage(error)}
      WHERE id = ${id} AND attempts = ${attempt}::int AND sent_at IS NULL`,
  );
}
