/**
 * pg-bbm's own tables. drizzle-kit generates migrations/ from this file
 * (`npm run db:generate`); the engine applies them with `bbm migrate`.
 * Column names and numbers follow GitLab's container registry so its SQL works here.
 */
import { sql } from 'drizzle-orm';
import {
  bigint,
  boolean,
  check,
  doublePrecision,
  foreignKey,
  index,
  integer,
  jsonb,
  pgTable,
  real,
  smallint,
  text,
  timestamp,
  uniqueIndex,
} from 'drizzle-orm/pg-core';
import { ErrorCode, JobStatus, MAX_LANES, MigrationStatus } from './codes.ts';

const list = (values: Record<string, number>) => sql.raw(Object.values(values).join(', '));
const timestamps = {
  createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
  updatedAt: timestamp('updated_at', { withTimezone: true }).notNull().defaultNow(),
  startedAt: timestamp('started_at', { withTimezone: true }),
  finishedAt: timestamp('finished_at', { withTimezone: true }),
};

export const batchedBackgroundMigrations = pgTable(
  'batched_background_migrations',
  {
    id: bigint('id', { mode: 'bigint' }).primaryKey().generatedByDefaultAsIdentity(),
    name: text('name').notNull(),
    /**
     * An integer key's bounds (inclusive). A key that is not a single integer column (docs/keys.md)
     * has its bounds in min_key and max_key; these then hold the ranges' order (KEY_ORDINAL_END).
     */
    minValue: bigint('min_value', { mode: 'bigint' })
      .notNull()
      .default(sql`1`),
    /** NULL: resolved to the column's maximum when the migration first starts. */
    maxValue: bigint('max_value', { mode: 'bigint' }),
    /**
     * Bounds (inclusive) of a key that is not a single integer column: a JSON array of the key's
     * values in column order (a lone value for a one-column key). NULL: the key's first (min_key)
     * or last (max_key) value when the migration first starts.
     */
    minKey: jsonb('min_key'),
    maxKey: jsonb('max_key'),
    /** The migration's arguments, handed to its work function as `job.args` (GitLab's job_arguments). */
    jobArguments: jsonb('job_arguments')
      .notNull()
      .default(sql`'{}'::jsonb`),
    batchSize: integer('batch_size').notNull(),
    status: smallint('status').notNull().default(MigrationStatus.active),
    jobSignatureName: text('job_signature_name').notNull(),
    tableName: text('table_name').notNull(),
    columnName: text('column_name').notNull(),
    /** NULL means serial_key_set, the only strategy implemented; anything else fails the migration. */
    batchingStrategy: text('batching_strategy'),
    failureErrorCode: smallint('failure_error_code'),
    failureMessage: text('failure_message'),
    ...timestamps,
    totalTupleCount: bigint('total_tuple_count', { mode: 'bigint' }),
    /** Lanes: how many of its jobs may run at once, across all workers. Read at every take. */
    maxParallelJobs: integer('max_parallel_jobs').notNull().default(1),
    /**
     * Lanes the latency controller allows now (at most max_parallel_jobs): shed when the work's
     * time per row climbs well past its norm, grown back one at a time while healthy. NULL: all.
     */
    lanesAllowed: integer('lanes_allowed'),
    /**
     * Why lanes_allowed is below max_parallel_jobs: 'slow start', 'latency' (the latency
     * controller shed lanes) or 'commit latency' (foreground protection did). Set with
     * lanes_allowed, NULL with it; read only while lanes_allowed < max_parallel_jobs (a worker of
     * 0.9.3 or before changes lanes_allowed without it).
     */
    lanesReason: text('lanes_reason'),
    /** Adaptive sizing: the work time a job should take; NULL keeps `batch_size` fixed. */
    targetJobMs: integer('target_job_ms'),
    /** Bounds of adaptive sizing, and the smallest range a timed-out range is split down to (NULL: 1). */
    minBatchSize: integer('min_batch_size'),
    maxBatchSize: integer('max_batch_size'),
    /** Set aside until then (no worker takes it), for `hold_reason`; NULL when not held. */
    onHoldUntil: timestamp('on_hold_until', { withTimezone: true }),
    holdReason: text('hold_reason'),
    /** Runs in a row that failed for a reason not the work function's; reset by a job that succeeds. */
    runErrors: integer('run_errors').notNull().default(0),
    /** Who approved a migration enqueued awaiting approval, and when; NULL when it needed none (or not yet). */
    approvedBy: text('approved_by'),
    approvedAt: timestamp('approved_at', { withTimezone: true }),
    /**
     * The final sweep of a migration whose work has a check (docs/verify.md): when it found every
     * range's rows satisfying it (NULL: not swept), the rows it found failing, and the ranges whose
     * work it ran again to fix them.
     */
    verifiedAt: timestamp('verified_at', { withTimezone: true }),
    verifyRowsFound: bigint('verify_rows_found', { mode: 'number' }).notNull().default(0),
    verifyRangesRerun: integer('verify_ranges_rerun').notNull().default(0),
    /** The last rehearsal's measurements and projection (`bbm rehearse`), as its JSON report. */
    rehearsal: jsonb('rehearsal'),
  },
  (t) => [
    uniqueIndex('batched_background_migrations_name_key').on(t.name),
    // The worker's candidate scan: runnable migrations in id order.
    index('batched_background_migrations_status_id_idx').on(t.status, t.id),
    check('batched_background_migrations_name_not_empty', sql`length(btrim(${t.name})) > 0`),
    check('batched_background_migrations_table_name_not_empty', sql`length(btrim(${t.tableName})) > 0`),
    check('batched_background_migrations_column_name_not_empty', sql`length(btrim(${t.columnName})) > 0`),
    check('batched_background_migrations_job_signature_name_not_empty', sql`length(btrim(${t.jobSignatureName})) > 0`),
    check('batched_background_migrations_batch_size_positive', sql`${t.batchSize} > 0`),
    check(
      'batched_background_migrations_max_value_not_below_min',
      sql`${t.maxValue} IS NULL OR ${t.maxValue} >= ${t.minValue}`,
    ),
    check('batched_background_migrations_job_arguments_object', sql`jsonb_typeof(${t.jobArguments}) = 'object'`),
    check(
      'batched_background_migrations_keys_values',
      sql`coalesce(jsonb_typeof(${t.minKey}), 'array') NOT IN ('object', 'null') AND coalesce(jsonb_typeof(${t.maxKey}), 'array') NOT IN ('object', 'null')`,
    ),
    check('batched_background_migrations_status_known', sql`${t.status} IN (${list(MigrationStatus)})`),
    check(
      'batched_background_migrations_max_parallel_jobs_range',
      sql`${t.maxParallelJobs} BETWEEN 1 AND ${sql.raw(String(MAX_LANES))}`,
    ),
    check(
      'batched_background_migrations_lanes_allowed_positive',
      sql`${t.lanesAllowed} IS NULL OR ${t.lanesAllowed} >= 1`,
    ),
    check(
      'batched_background_migrations_target_job_ms_positive',
      sql`${t.targetJobMs} IS NULL OR ${t.targetJobMs} > 0`,
    ),
    check(
      'batched_background_migrations_min_batch_size_positive',
      sql`${t.minBatchSize} IS NULL OR ${t.minBatchSize} > 0`,
    ),
    check(
      'batched_background_migrations_max_batch_size_not_below_min',
      sql`${t.maxBatchSize} IS NULL OR ${t.maxBatchSize} >= greatest(coalesce(${t.minBatchSize}, 1), 1)`,
    ),
    check(
      'batched_background_migrations_failure_error_code_known',
      sql`${t.failureErrorCode} IS NULL OR ${t.failureErrorCode} IN (${list(ErrorCode)})`,
    ),
  ],
);

export const batchedBackgroundMigrationJobs = pgTable(
  'batched_background_migration_jobs',
  {
    id: bigint('id', { mode: 'bigint' }).primaryKey().generatedByDefaultAsIdentity(),
    batchedBackgroundMigrationId: bigint('batched_background_migration_id', { mode: 'bigint' }).notNull(),
    /**
     * An integer key's range (inclusive). A key that is not a single integer column has its range
     * in min_key and max_key, and these hold its place in the order of the ranges (bbm_cut_range.sql).
     */
    minValue: bigint('min_value', { mode: 'bigint' }).notNull(),
    maxValue: bigint('max_value', { mode: 'bigint' }).notNull(),
    /** The range of a key that is not a single integer column: its first and last keys (JSON arrays), inclusive. NULL: an empty key space. */
    minKey: jsonb('min_key'),
    maxKey: jsonb('max_key'),
    status: smallint('status').notNull().default(JobStatus.active),
    /** When the final sweep found the range's rows satisfying the work's check; NULL: not yet (or no check). */
    verifiedAt: timestamp('verified_at', { withTimezone: true }),
    failureErrorCode: smallint('failure_error_code'),
    failureMessage: text('failure_message'),
    attempts: smallint('attempts').notNull().default(0),
    /** What the work function returned for a finished job: the rows it changed, if it said. */
    rowCount: bigint('row_count', { mode: 'number' }),
    /** The size the range was cut with (the migration's batch size then, or the adaptive choice). */
    batchSize: integer('batch_size'),
    /** Time spent in the work function by the attempt that finished it, in milliseconds. */
    durationMs: doublePrecision('duration_ms'),
    /**
     * WAL written while the job ran: the server's WAL insert position at its take and at its
     * finish (what its lanes' neighbours wrote meanwhile included). Feeds the WAL budget.
     */
    walBytes: bigint('wal_bytes', { mode: 'number' }),
    /**
     * How the range's end was found (sql/functions/bbm_cut_range.sql). NULL: by an index scan that
     * found the keys sparse (or by a worker before 0.7); 0: by an index scan that found them dense;
     * k > 0: by arithmetic, start + size - 1, the k-th range since that scan.
     */
    denseCuts: smallint('dense_cuts'),
    /**
     * Whether the next cut is due once this range is taken (sql/functions/bbm_cut_range.sql): set
     * on the range after which about half the ranges cut ahead still wait, so that a take reads
     * whether to cut from the range it takes instead of counting the waiting ones. NULL (a range
     * split in two, or cut before 0.9.2): the take counts.
     */
    cutCue: boolean('cut_cue'),
    ...timestamps,
  },
  (t) => [
    foreignKey({
      name: 'batched_background_migration_jobs_migration_fkey',
      columns: [t.batchedBackgroundMigrationId],
      foreignColumns: [batchedBackgroundMigrations.id],
    }).onDelete('cascade'),
    // The last range of a migration (next range starts after it); also serves the FK.
    index('batched_background_migration_jobs_migration_max_value_idx').on(t.batchedBackgroundMigrationId, t.maxValue),
    // Failed jobs waiting for a retry: a small partial index, oldest first.
    index('batched_background_migration_jobs_failed_idx')
      .on(t.batchedBackgroundMigrationId, t.id)
      .where(sql`${t.status} = ${sql.raw(String(JobStatus.failed))}`),
    // Ranges cut and waiting for a lane (or running in one), oldest first: what a lane takes.
    index('batched_background_migration_jobs_active_idx')
      .on(t.batchedBackgroundMigrationId, t.minValue)
      .where(sql`${t.status} = ${sql.raw(String(JobStatus.active))}`),
    check('batched_background_migration_jobs_range_ordered', sql`${t.maxValue} >= ${t.minValue}`),
    check('batched_background_migration_jobs_status_known', sql`${t.status} IN (${list(JobStatus)})`),
    check('batched_background_migration_jobs_attempts_not_negative', sql`${t.attempts} >= 0`),
    check(
      'batched_background_migration_jobs_failure_error_code_known',
      sql`${t.failureErrorCode} IS NULL OR ${t.failureErrorCode} IN (${list(ErrorCode)})`,
    ),
  ],
);

/**
 * Workers announce themselves here (every 30 s while running), so that `bbm status` can tell a
 * migration that waits for a work function no live worker has from one that is just queued.
 */
export const batchedBackgroundMigrationWorkers = pgTable(
  'batched_background_migration_workers',
  {
    id: text('id').primaryKey(),
    hostname: text('hostname').notNull(),
    pid: integer('pid').notNull(),
    workNames: text('work_names').array().notNull(),
    startedAt: timestamp('started_at', { withTimezone: true }).notNull().defaultNow(),
    lastSeenAt: timestamp('last_seen_at', { withTimezone: true }).notNull().defaultNow(),
    /**
     * The share of the time the worker's lanes run (foreground protection's duty cycle, 0..1):
     * written with the heartbeat and when it changes; NULL when they run all the time.
     */
    dutyCycle: real('duty_cycle'),
  },
  (t) => [index('batched_background_migration_workers_last_seen_at_idx').on(t.lastSeenAt)],
);

/**
 * Webhook notifications (the `notify` option): one row per event, target and occurrence. Any
 * worker may detect an event (an INSERT that the unique key turns into nothing when the row is
 * there already); delivery claims a row by pushing `next_attempt_at` past the HTTP timeout (a
 * lease) in a statement of its own, sends with no transaction open, then records the result.
 * `migration_id` has no foreign key: a notification outlives a migration deleted meanwhile.
 */
export const batchedBackgroundMigrationNotifications = pgTable(
  'batched_background_migration_notifications',
  {
    id: bigint('id', { mode: 'bigint' }).primaryKey().generatedByDefaultAsIdentity(),
    migrationId: bigint('migration_id', { mode: 'bigint' }).notNull(),
    /** started, finished, failed, held, not_finalized, awaiting_approval. */
    event: text('event').notNull(),
    /** Which occurrence of the event: the time it happened (a retried migration fails anew). */
    key: text('key').notNull(),
    /** A hash of the webhook's URL and format (never the URL itself: a Slack webhook URL is a secret). */
    target: text('target').notNull(),
    /** The JSON body, built from the migration's row when the event was detected. */
    payload: jsonb('payload').notNull(),
    createdAt: timestamp('created_at', { withTimezone: true }).notNull().defaultNow(),
    sentAt: timestamp('sent_at', { withTimezone: true }),
    /** Sends begun (claims). */
    attempts: integer('attempts').notNull().default(0),
    /** When it may be claimed next; NULL once sent or given up. */
    nextAttemptAt: timestamp('next_attempt_at', { withTimezone: true }).defaultNow(),
    lastError: text('last_error'),
  },
  (t) => [
    uniqueIndex('batched_background_migration_notifications_event_key').on(t.migrationId, t.event, t.key, t.target),
    // What delivery claims: unsent rows due, oldest first.
    index('batched_background_migration_notifications_due_idx')
      .on(t.nextAttemptAt)
      .where(sql`${t.nextAttemptAt} IS NOT NULL`),
    check('batched_background_migration_notifications_attempts_not_negative', sql`${t.attempts} >= 0`),
  ],
);
