/**
 * pg-bbm's public types, in one place: what a work function receives, how a worker and
 * finalizing are configured, schedules and throttles, what a run reports, and the reports of
 * migrations. Everything here is exported from the package root.
 */
import type { Logger } from 'pino';
import type { NodePgTransaction } from 'drizzle-orm/node-postgres';
import type pg from 'pg';
import type { ErrorCodeName, MigrationStatusName } from '../store/codes.ts';
import type { Queryable } from '../store/db.ts';
import type { MigrationSummary, VacuumHold } from '../store/migration-rows.ts';
import type { LaneShare } from './shared-lanes.ts';

/** Runs one statement inside the job's transaction. `$1`-style parameters. */
export type JobQuery = <R extends pg.QueryResultRow = pg.QueryResultRow>(
  text: string,
  values?: unknown[],
) => Promise<pg.QueryResult<R>>;

/**
 * drizzle bound to the job's transaction. `db.transaction()` opens a savepoint inside it; ending
 * the job's transaction (COMMIT, ROLLBACK) is the engine's alone and is refused.
 */
export type JobDb = NodePgTransaction<Record<string, never>, Record<string, never>>;

/**
 * A range's bound as a work function gets it: a bigint for a single integer column (the default
 * of Job and Work); for any other single column, its value as text, which `pg` sends as a
 * parameter of the column's type (a uuid, a text, a numeric, a timestamptz in ISO 8601); for a key
 * of several columns, their values as text, in the key's column order. docs/keys.md.
 */
export type JobKey = bigint | string | readonly string[];

/**
 * A range as a ready predicate, `sql` with placeholders `$1`, `$2`, … and `params` their values,
 * for any key: `"id" BETWEEN $1 AND $2`, or `("tenant_id", "id") >= ($1::integer, $2::uuid) AND
 * ("tenant_id", "id") <= ($3::integer, $4::uuid)`: row-value comparisons, which the planner bounds
 * on the key's index. `after(n)` numbers the placeholders after the work's own n parameters.
 */
export interface JobRange {
  readonly sql: string;
  readonly params: unknown[];
  after(count: number): { sql: string; params: unknown[] };
}

/** One key range of a migration, handed to its work function. */
export interface Job<K extends JobKey = bigint> {
  /** Runs SQL in the job's transaction: its writes commit together with the job's finished status. */
  readonly query: JobQuery;
  /** The same transaction through drizzle. */
  readonly db: JobDb;
  /**
   * The migration's table, schema-qualified and quoted, e.g. `"public"."items"`. It was
   * validated against the catalog, so it is safe to place into SQL text.
   */
  readonly table: string;
  /** The batching column, quoted, e.g. `"id"` (a key of several columns: `"tenant_id", "id"`). Safe to place into SQL text. */
  readonly column: string;
  /** The range's first key (inclusive): `WHERE id BETWEEN $1 AND $2` with `[job.start, job.end]` works for any one-column key. */
  readonly start: K;
  /**
   * The range's last key (inclusive). An integer range holds at most `batchSize` rows of a unique
   * key; a range of a key that repeats may hold more (every row of its last key).
   */
  readonly end: K;
  /** The range as a predicate and its parameters, for any key (see JobRange). */
  readonly range: JobRange;
  /** The migration's arguments (its `job_arguments`, a JSON object; `{}` when it has none). */
  readonly args: Readonly<Record<string, unknown>>;
  /** The size the range was cut with: the migration's batch size then, or the adaptive size. */
  readonly batchSize: number;
  readonly migration: { readonly id: bigint; readonly name: string };
  /** 1 on the first try of this range, 2 on its first retry, and so on. */
  readonly attempt: number;
  /** The lane it runs in: 0 .. the migration's max_parallel_jobs - 1. */
  readonly lane: number;
  /** Aborted when the run times out or the worker is stopped hard; queries are cancelled too. */
  readonly signal: AbortSignal;
  /** A child logger carrying the migration and job fields. */
  readonly log: Logger;
}

/**
 * A work function, registered in code and named by migrations' `job_signature_name`. `K` is the
 * type of its ranges' bounds (JobKey): `Work` for an integer key, `Work<string>` for a uuid or
 * text key, `Work<readonly string[]>` for a key of several columns.
 */
export interface Work<K extends JobKey = bigint> {
  /** Letters, digits and `_ . : / -`, at most 200 characters, e.g. `"users.backfill_email"`. */
  readonly name: string;
  /**
   * Does the range's work. Throwing (or rejecting) rolls the work's writes back and records a
   * failed attempt; the range is retried later, up to `maxAttempts` in all. It may be called
   * again for the same range after a failure, so it should be idempotent. It may return the
   * number of rows it changed (counted in `bbm_migrated_tuples_total`; otherwise the range's
   * batch size is counted).
   */
  do(job: Job<K>): Promise<void | number>;
  /**
   * The migration's postcondition for the range, checked (docs/verify.md): resolves to how many
   * of the range's rows do not satisfy it yet (0 when all do), or to that count with one of their
   * keys to show. Called after `do` in the same transaction (rows left failing roll the attempt
   * back with `verification_failed`), by the final sweep over every range before the migration
   * may finish (rows found are fixed by calling `do` again), and by `bbm verify`. Read-only.
   */
  verify?(job: Job<K>): Promise<number | VerifyFound>;
  /**
   * The work acts outside the database (deletes objects, calls a service), where a rolled-back
   * transaction cannot undo it: `bbm rehearse` refuses it [false].
   */
  readonly sideEffects?: boolean;
}

/** What a check (`Work.verify`) found in a range: the rows not satisfying it, and one key of them as text. */
export interface VerifyFound {
  rows: number;
  example?: string;
}

/**
 * A work function of any key, as a config lists it. (`any`: a work function written inline in a
 * config gets its job's bounds untyped, as before keys of other types existed, so that integer
 * arithmetic on them still compiles; one declared as `Work<string>` keeps its type.)
 */
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type AnyWork = Work<any>;

/** How a worker paces itself and bounds its jobs. Every field is optional; defaults in brackets. */
export interface WorkerOptions {
  /**
   * Base wait between runs when there is nothing to do or another worker holds the lock [10000].
   * After a run that executed a job the next one starts at once (see `pauseMs`).
   */
  intervalMs?: number;
  /** Idle and erroring workers double their wait up to this cap [300000]. */
  maxIntervalMs?: number;
  /** Each wait is spread by up to ± this fraction so a fleet does not tick together [0.2]. */
  jitterRatio?: number;
  /** A worker waits a random time up to this before its first run [same as intervalMs]. */
  startupJitterMs?: number;
  /** Wait after a successful job before the next run; 0 drains at database speed [0]. */
  pauseMs?: number;
  /** Tries per range; a range that fails this many times fails its migration [5]. */
  maxAttempts?: number;
  /** Bound on one run; a job past it is cancelled and counts as a failed attempt [180000]. */
  runTimeoutMs?: number;
  /** How often a worker with a `throttle` asks it, at most [5000]. */
  throttleCheckMs?: number;
  /**
   * How many jobs this worker runs at once, each on its own connection [1]. A job runs in one of
   * its migration's lanes (`max_parallel_jobs`), so lanes of one migration may be spread over
   * any number of workers; a worker's extra concurrency works other migrations or waits.
   */
  concurrency?: number;
  /**
   * A run that fails for a reason not its work function's (an unexpected SQL error cutting or
   * recording, a catalog change) sets its migration aside this long, doubling with each such
   * error in a row up to `maxIntervalMs`, so that other migrations run meanwhile [30000].
   */
  runErrorHoldMs?: number;
  /** That many run errors in a row fail the migration with `run_error` [5]. */
  maxRunErrors?: number;
  /** How often a worker with `schedules` enqueues the passes that are due [10000]. */
  scheduleCheckMs?: number;
  /** Finished passes of schedules are deleted, with their jobs, after this long [604800000: 7 days]. */
  passRetentionMs?: number;
  /** How often a worker with `notify` looks for events and sends the notifications due [5000]. */
  notifyCheckMs?: number;
}

/** A config module's default export (`bbm.config.ts`/`.js`/`.mjs`). */
export interface Config extends WorkerOptions {
  /** The work functions this process can run, of any key (AnyWork). */
  work: readonly AnyWork[];
  /** Holds `bbm run` back while the database is under pressure; see walArchiveThrottle. */
  throttle?: Throttle;
  /** Recurring migrations (sweeps): a pass of each is enqueued every period. */
  schedules?: readonly Schedule[];
  /** Health holds: signals from Postgres that set migrations aside (see HealthOptions); `false` turns them off. */
  health?: HealthOptions | false;
  /** Used when neither `--database-url` nor DATABASE_URL is given. */
  databaseUrl?: string;
  /**
   * Several databases served by one fleet: `{ main: process.env.MAIN_DATABASE_URL, ci: … }`.
   * Names are lowercase (`[a-z][a-z0-9_-]*`); a migration is then addressed as `main/name`. Wins
   * over DATABASE_URL and `databaseUrl`; `--database-url` wins over it (one database). See docs/databases.md.
   */
  databases?: Record<string, string | undefined>;
  /** `bbm run`: how long, after SIGTERM/SIGINT, the job in flight may take before it is rolled back [25000]. */
  gracePeriodMs?: number;
  /** Error reports; SENTRY_DSN, when set, wins over `dsn`. */
  sentry?: { dsn?: string; environment?: string; release?: string };
  /** Webhooks told about migrations' events (see NotifyTarget). */
  notify?: readonly NotifyTarget[];
}

/**
 * What a webhook is told about. `started`, `finished`, `failed` (with its error code and
 * message): a migration changed state. `held`: a runnable migration on hold (a health or
 * run-error hold) has made no progress for `heldForMs`. `not_finalized`: a migration finished
 * `unfinalizedForMs` ago and its row is still there (pg-bbm has no finalized state; deleting the
 * row is finalizing it). `awaiting_approval`: a migration waits for `bbm approve`.
 */
export type NotifyEvent = 'started' | 'finished' | 'failed' | 'held' | 'not_finalized' | 'awaiting_approval';

/** A webhook (`notify` in the config). Each event is sent to it once, by one worker of the fleet. */
export interface NotifyTarget {
  /** An http(s) URL; POSTed to. It is never stored in the database nor logged (only its host). */
  url: string;
  /** The events it is told [all of them]. */
  events?: readonly NotifyEvent[];
  /** `json`: the event as a JSON object; `slack`: `{ "text": … }`, for Slack-compatible incoming webhooks [json]. */
  format?: 'json' | 'slack';
  /** A request that has not answered after this long is abandoned and retried [10000]. */
  timeoutMs?: number;
  /** Sends of one notification before it is given up (logged) [10]. Retries back off from 1 s, doubling, up to 10 min. */
  maxAttempts?: number;
  /** `held`: how long a held migration must have gone without progress [3600000: 1 h]. */
  heldForMs?: number;
  /** `not_finalized`: how long after it finished [604800000: 7 days]. */
  unfinalizedForMs?: number;
}

/**
 * What one run did. `job_succeeded`/`job_failed`: a range was executed. `migration_finished`/
 * `migration_failed`: a migration changed state without a job. `no_job`: nothing this worker can
 * run exists. `lock_in_use`: there is work, but other workers hold every candidate's lock.
 * `throttled`: the worker's throttle held it back (the reason is the error). `aborted`: the worker was stopped hard and the job rolled back. `error`: the run failed
 * unexpectedly and was rolled back.
 */
export type RunOutcome =
  | 'job_succeeded'
  | 'job_failed'
  /** The final sweep checked a finished range (and fixed what it found: `verified`). */
  | 'range_verified'
  | 'migration_started'
  | 'migration_finished'
  | 'migration_failed'
  | 'no_job'
  | 'lock_in_use'
  | 'throttled'
  | 'aborted'
  | 'error';

export interface RunResult {
  outcome: RunOutcome;
  /** The run's correlation id, on its log lines and error reports. */
  runId: string;
  /** The migration the run worked on, if it got that far. `work` is its job_signature_name. */
  migration?: { id: bigint; name: string; work: string };
  /**
   * The job it executed. `rows` is what the work function returned, if it returned a number
   * (the rows it changed); `batchSize` the size its range was cut with; `lane` the lane it ran in
   * (0 .. the migration's max_parallel_jobs - 1); `durationMs` the time spent in the work
   * function; `split` set when it timed out and its range was split in two halves to retry. For
   * a key that is not a single integer column, `startKey` and `endKey` are the range's first and
   * last keys (their values as text), and `start` and `end` its place in the order of ranges.
   */
  job?: {
    id: bigint;
    start: bigint;
    end: bigint;
    startKey?: readonly string[];
    endKey?: readonly string[];
    attempt: number;
    batchSize: number;
    lane: number;
    rows?: number;
    durationMs: number;
    split?: boolean;
    /** WAL the server wrote while the job ran (its lanes' neighbours' included), when measured. */
    walBytes?: number;
  };
  /**
   * A range the final sweep checked: the rows it found failing the work's check, all fixed by
   * running the work again (`range_verified`), or still failing after the reruns
   * (`migration_failed`).
   */
  verified?: {
    found: number;
    /** Ranges verified by the run: several when one check covered them and found nothing. */
    ranges: number;
  };
  /** The job's or migration's failure, or the run's error. */
  error?: Error;
  /** The code the failure was recorded with: `unknown` for a failed job, the migration's code when it failed. */
  errorCode?: ErrorCodeName;
  /** On an `error`: how long its migration was set aside for, when the error was counted against it. */
  heldForMs?: number;
  /**
   * On `lock_in_use`: in how many ms a lane may be free although no run ends (a hold's end, a
   * lane a controller may give back): the lane looks again by then, not after its whole backoff.
   */
  lookAgainMs?: number;
  durationMs: number;
}

/**
 * Watches a worker, e.g. for metrics, error reports or progress. Called synchronously after each
 * run and before each wait; an observer that throws is logged and ignored, never stopping the
 * worker.
 */
export interface WorkerObserver {
  run?(result: RunResult): void;
  sleep?(ms: number): void;
  /** A health hold set migrations aside that were not held before (told once per hold, by the worker that set it). */
  hold?(event: HoldEvent): void;
  /** The latency controller shed or gave back lanes of a migration. */
  lanes?(event: LanesEvent): void;
  /** Foreground protection changed the share (0..1) of the time this worker's lanes run. */
  dutyCycle?(share: number): void;
  /** This worker tried to send a notification: sent, failed (to be retried) or given up. */
  notification?(event: NotificationEvent): void;
  /** A lane of this worker waited `ms` for one of the process's lanes (a process serving several databases). */
  laneWait?(ms: number): void;
}

export interface NotificationEvent {
  event: NotifyEvent;
  migration: string;
  result: 'sent' | 'failed' | 'given_up';
}

export interface LanesEvent {
  migration: string;
  direction: 'shed' | 'grown';
  from: number;
  to: number;
}

/** Which health signal held migrations: the `reason` label of `bbm_holds_total`. */
export type HoldKind =
  'autovacuum' | 'transaction_age' | 'replay_lag' | 'wal_archive' | 'replication_slot' | 'wal_budget';

export interface HoldEvent {
  kind: HoldKind;
  /** As stored in `hold_reason` and shown by `bbm status`, e.g. "autovacuum on public.items". */
  reason: string;
  /** The migrations newly held. */
  migrations: readonly string[];
  /** Until when (a signal still firing at the next check extends it). */
  until: Date;
}

export interface Schedule {
  /** Letters, digits and `_ . : -`; the passes are named `<name>@<slot>`. */
  name: string;
  /** The work function each pass runs. */
  work: string;
  table: string;
  column: string;
  batchSize: number;
  /** `30s`, `15m`, `1h`, `1d` (slots aligned to the epoch), or a five-field cron expression in UTC. */
  every: string;
  /** With `databases` in the config: the databases its passes are enqueued in [all of them]. */
  databases?: readonly string[];
}

/**
 * Asked by a worker before its runs (at most every `throttleCheckMs`): a reason to hold back, or
 * false. While one holds back, the worker runs nothing and backs off.
 */
export type Throttle = (db: Queryable) => Promise<string | false>;

/** What `createWorker` / `new Worker` take: the work, a database, worker options, and what to tell and ask. */
export interface WorkerParams extends WorkerOptions {
  /** As Config.work. */
  work: readonly AnyWork[];
  /**
   * A pool for the lanes (the caller ends it): at least `concurrency` connections, one a lane (one
   * more lets a migration in one lane cut its next range beside the job). The worker's controllers
   * (health checks, probes, heartbeats) use 3 connections of a pool of their own, with its settings.
   */
  pool?: pg.Pool;
  /** Or a connection string: the worker opens and ends its own pool (`concurrency` + 1, and 3 for its controllers). */
  connectionString?: string;
  /** A pino logger. Default: warnings and errors as JSON lines on stderr (nothing on stdout). */
  logger?: Logger;
  /** Told about every run and every wait (metrics, error reports, progress). */
  observers?: readonly WorkerObserver[];
  /** Asked before runs, at most every `throttleCheckMs`: while it holds back, nothing runs. */
  throttle?: Throttle;
  /** Recurring migrations this worker enqueues passes of (their work functions must be in `work`). */
  schedules?: readonly Schedule[];
  /** Health holds; all on by default, `false` turns them off. */
  health?: HealthOptions | false;
  /** Webhooks told about migrations' events (see NotifyTarget). */
  notify?: readonly NotifyTarget[];
  /** The database's name in a fleet of several (`databases`): on every log line as `database`. */
  database?: string;
  /**
   * The lanes of the process when it serves several databases (shared-lanes.ts): each run of
   * this worker holds one. `bbm run` sets it; a worker alone leaves it out.
   */
  laneShare?: LaneShare;
}

export interface RunLoopOptions {
  /**
   * Return once no migration this worker can run remains (finished, failed, paused or unknown
   * work). Skips the startup jitter.
   */
  untilDone?: boolean;
}

/** What `finalizeMigration` takes. */
export interface FinalizeParams extends WorkerOptions {
  pool: pg.Pool;
  /** As Config.work. */
  work: readonly AnyWork[];
  /** The migration's name. */
  name: string;
  /** A pino logger. Default: warnings and errors as JSON lines on stderr (nothing on stdout). */
  logger?: Logger;
  /** As WorkerParams.database: the database's name in a fleet of several, on every log line as `database`. */
  database?: string;
  observers?: readonly WorkerObserver[];
  /** Called with a fresh report at most every `progressEveryMs` (and once at the end). */
  onProgress?: (report: MigrationReport) => void;
  progressEveryMs?: number;
  /** Stop after the job in flight. */
  signal?: AbortSignal;
  /** Cancel and roll back the job in flight. */
  hardStop?: AbortSignal;
}

/** What `verifyMigration` (`bbm verify`) takes. */
export interface VerifyParams extends Pick<WorkerOptions, 'runTimeoutMs'> {
  pool: pg.Pool;
  /** As Config.work: the migration's work function, with its check. */
  work: readonly AnyWork[];
  /** The migration's name. */
  name: string;
  logger?: Logger;
  /** Called after each page of ranges checked. */
  onProgress?: (report: VerifyReport) => void;
  /** Cancels the check in flight and stops. */
  signal?: AbortSignal;
}

/** What `verifyMigration` found: ranges checked, those with rows failing the check, and the rows. */
export interface VerifyReport {
  name: string;
  rangesChecked: number;
  rangesFailing: number;
  /** Rows failing the check, over all ranges. */
  rows: number;
  /** The first failing ranges (up to 20): the job's id, its range as text, its failing rows and one key when the check gave one. */
  failing: Array<{ jobId: bigint; range: string; rows: number; example?: string }>;
  durationMs: number;
}

/** What a migration's `progress` measures (MigrationReport.progressBasis). */
export type ProgressBasis = 'key-width' | 'rows-estimate';

/**
 * A migration as operators see it (`bbm status --json`): its row's fields (documented on
 * MigrationSummary) with statuses and codes by name, plus what is derived from its jobs.
 */
export type MigrationReport = Omit<
  MigrationSummary,
  'status' | 'failureErrorCode' | 'maxParallelJobs' | 'finishedWidth' | 'recent' | 'lastJobError' | 'rehearsal'
> & {
  status: MigrationStatusName;
  failureErrorCode: ErrorCodeName | null;
  /**
   * In a fleet of several databases (`databases` in the config): the database it is in. Then
   * `bbm status --json` and the status page name it `database/name`; absent otherwise.
   */
  database?: string;
  /** Lanes: how many of its jobs may run at once (max_parallel_jobs). */
  lanes: number;
  /** How far it has come, 0..1; 1 once finished. How it is measured is `progressBasis`. */
  progress: number;
  /**
   * What `progress` measures (docs/operating.md, "Progress for keys"). `key-width`, for an integer
   * key: the share of [minValue, maxValue] covered by finished ranges. `rows-estimate`, for any
   * other key (`key` is set): an estimate, the finished ranges' rows over the table's estimated
   * rows, kept below 1 until the migration finishes, and 0 while the table has no statistics.
   */
  progressBasis: ProgressBasis;
  /** Rows per second over the last five minutes (the sizes of the ranges finished); null when idle, paused or failed. */
  rowsPerSecond: number | null;
  /** Seconds left at the last five minutes' pace; null when not running or idle. */
  etaSeconds: number | null;
  /** The migration's failure, else the last failure of a job still failed; null when neither. */
  lastError: string | null;
  /**
   * Set when the migration is runnable but no live worker has its work function: it waits for a
   * worker that has it (during a rolling deploy, older workers lack new work functions).
   */
  waitingForWork: boolean;
  /** Who approved it and when (`bbm approve`), for a migration enqueued with `needsApproval`; else null. */
  approvedBy: string | null;
  approvedAt: Date | null;
  /** The last rehearsal (`bbm rehearse`, the status page's rehearse) and its projection; null when never rehearsed. */
  rehearsal: RehearsalSummary | null;
};

/** A value of a key bound (MigrationSpec.minKey, maxKey): a bigint for integers past 2^53. */
export type KeyValue = string | number | bigint | boolean;

/** What `enqueueMigration` and `enqueueMigrationSql` take: a migration to add. */
export interface MigrationSpec {
  /** Unique; how operators name it (`bbm status --name`). */
  name: string;
  /** The work function's name (`job_signature_name`). */
  work: string;
  /** The table, optionally schema-qualified, read as SQL reads it. */
  table: string;
  /**
   * The key to batch on, with a valid, non-partial btree index leading with it: one column (an
   * integer, or a uuid, text, timestamp, numeric… column: docs/keys.md), or several in the
   * index's order, as an array (`['tenant_id', 'id']`) or joined by commas (`'tenant_id,id'`,
   * how `column_name` stores it).
   */
  column: string | readonly string[];
  /** Rows per range (the starting size when `targetJobMs` is set). */
  batchSize: number;
  /** First id of the range, for a single integer column. Default 1. */
  min?: bigint | number;
  /** Last id, for a single integer column. Default: the column's maximum when the migration starts. */
  max?: bigint | number;
  /**
   * First key (inclusive), for any other key: a value, or an array of one value per key column in
   * the key's order (`[42, '0190c7e4-…']`). Each is cast to its column's type by the database:
   * give numeric and timestamp values as strings to keep them exact. Default: the key's first
   * value when the migration starts.
   */
  minKey?: KeyValue | readonly KeyValue[];
  /** Last key (inclusive), as `minKey`. Default: the key's last value when the migration starts. */
  maxKey?: KeyValue | readonly KeyValue[];
  /**
   * Arguments for the work function, stored in `job_arguments` and handed to it as `job.args`: a
   * plain JSON object (no undefined, functions, bigint, Date, NaN…: what JSON would not keep as
   * it is, is refused). Default `{}`.
   */
  args?: Readonly<Record<string, unknown>>;
  /** Enqueue it paused (`bbm resume` starts it). */
  paused?: boolean;
  /**
   * Enqueue it awaiting approval (status `awaiting_approval`): no worker takes it until someone
   * approves it (`bbm approve`, or the status page with the operator token). Not with `paused`.
   */
  needsApproval?: boolean;
  /** Jobs of it that may run at once, across all workers (1..256). Default 1. */
  lanes?: number;
  /** Adapt the batch size so a job's work takes about this long. Default: fixed size. */
  targetJobMs?: number;
  minBatchSize?: number;
  maxBatchSize?: number;
}

export interface EnqueueOptions {
  /**
   * Check the table, column and index in the catalog first (default true). A table created
   * earlier in the same transaction passes. Turn it off when the table or its index will only
   * exist later (an index built CONCURRENTLY by a later migration): a migration whose target is
   * still wrong when it starts fails with invalid_table or invalid_column, writing nothing.
   */
  check?: boolean;
}

/**
 * What `rehearseMigration` takes (docs/rehearse.md): the migration, by `name` when it is enqueued,
 * or as `spec` (what `enqueueMigration` takes) when it is not.
 */
export type RehearseParams = RehearseOptions & ({ name: string; spec?: never } | { spec: MigrationSpec; name?: never });

/** What `rehearseMigration` takes besides the migration. */
export interface RehearseOptions {
  /** A pool (the caller ends it): a connection for the samples, and one more, when free, to watch their lock waits. */
  pool: pg.Pool;
  /** As Config.work: the migration's work function must be among them. */
  work: readonly AnyWork[];
  /** Sample ranges to run, each of the migration's batch size, spread evenly over its key space [10]. */
  samples?: number;
  /** The lanes to project for [the migration's max_parallel_jobs]. */
  lanes?: number;
  /**
   * How much faster `lanes` lanes drain than one on this database, if measured [LANE_SPEEDUP: what
   * `npm run bench` measured on the 2-core development machine].
   */
  laneSpeedup?: number;
  /** As WorkerOptions.runTimeoutMs: a sample's work is bounded as a job's [180000]. */
  runTimeoutMs?: number;
  /** A pino logger (Job.log's parent). Default: warnings and errors as JSON lines on stderr. */
  logger?: Logger;
  /** Aborting it cancels the sample in flight, rolls it back and rejects. */
  signal?: AbortSignal;
}

/** One sample range of a rehearsal: what its work did before it was rolled back. */
export interface RehearsalSample {
  /** The range's first and last keys, each as its columns' values as text (an integer key: one value). */
  start: string[];
  end: string[];
  /** Rows the range held. */
  rows: number;
  /** What the work function returned (the rows it says it changed), else null. */
  rowsReported: number | null;
  /** Time in the work function. */
  workMs: number;
  /** workMs over rows; null for a range without rows. */
  msPerRow: number | null;
  /** What the work wrote before the rollback; null when it failed. */
  written: RehearsalWrites | null;
  /** Time the work waited for locks, as a watch of pg_locks saw it; null when the pool had no connection for the watch. */
  lockWaitMs: number | null;
  /** Why the work failed; null when it did not. */
  error: string | null;
  /** The failure was a timeout (lock_timeout, statement_timeout or runTimeoutMs): a job's range would be split. */
  timeout: boolean;
}

/** What a sample's work wrote, measured inside its transaction. */
export interface RehearsalWrites {
  /** WAL written from before the work to after it (pg_current_wal_insert_lsn: every session's WAL meanwhile). */
  walBytes: number;
  /** The migration's table's rows inserted, updated (of them HOT) and deleted, as its transaction counted them. */
  inserted: number;
  updated: number;
  hotUpdated: number;
  deleted: number;
}

/** A rehearsal's projection of the whole migration (docs/rehearse.md, "The model"). */
export interface RehearsalProjection {
  lanes: number;
  /** The speed-up over one lane that the duration assumes. */
  laneSpeedup: number;
  /** Rows in the key space. */
  rows: number;
  /** `counted` on the index, or `estimated` from the table's statistics or a sample of its pages. */
  rowsBasis: 'counted' | 'estimated';
  /** The size jobs are cut at: batch_size, or with targetJobMs the size whose work takes about that long at the measured pace. */
  batchSize: number;
  jobs: number;
  /** The samples' work time over their rows. */
  msPerRow: number;
  /** The engine's time per job besides the work that the duration assumes (ENGINE_MS_PER_JOB). */
  engineMsPerJob: number;
  /** (rows × msPerRow + jobs × engineMsPerJob) ÷ laneSpeedup; health holds, throttles and slow start aside. */
  durationSeconds: number;
  /** rows × the samples' WAL per row. */
  walBytes: number;
  /** walBytes over durationSeconds: what replicas and the WAL archive receive while it runs; null when it takes no time. */
  walBytesPerSecond: number | null;
  /** Row versions its updates and deletes leave dead (what n_dead_tup counts, and VACUUM removes). */
  deadTuples: number;
  /** Of them, those of deletes and of updates that were not HOT, whose index entries only VACUUM removes. */
  deadTuplesNotHot: number;
  /** HOT updates over updates; null when the samples updated nothing. */
  hotShare: number | null;
  /** Time the samples waited for locks over their work time; null when not watched. */
  lockWaitShare: number | null;
}

/**
 * A stored rehearsal as `bbm status --json` and the status page show it (MigrationReport.rehearsal):
 * the report without its samples, which `bbm rehearse --json` and the `rehearsal` column hold.
 */
export type RehearsalSummary = Omit<RehearsalReport, 'samples'> & {
  /** How many sample ranges it ran. */
  sampleCount: number;
};

/** What `rehearseMigration` returns and stores in the migration's `rehearsal` column. */
export interface RehearsalReport {
  migration: string;
  work: string;
  /** The table, schema-qualified. */
  table: string;
  /** The key's columns, in order. */
  key: string[];
  status: MigrationStatusName;
  /**
   * True for a migration enqueued (by name), whose row stores the report; false for one described
   * by a spec, inserted in the plan's transaction only and rolled back with it (nothing stored).
   */
  enqueued: boolean;
  batchSize: number;
  /** When it ran, ISO 8601. */
  rehearsedAt: string;
  /** `spread`: the samples spread over the key space; `whole`: the key space fits in the samples, run from its start. */
  sampling: 'spread' | 'whole';
  /** The limits the samples ran under, as a job's: statement_timeout, lock_timeout (0: none) and runTimeoutMs. */
  limits: { statementTimeoutMs: number; lockTimeoutMs: number; runTimeoutMs: number };
  samples: RehearsalSample[];
  /** Samples whose work failed. */
  failed: number;
  /** Null when every sample failed. */
  projection: RehearsalProjection | null;
}

/**
 * Health holds (`health` in the config): signals read from Postgres itself that set migrations
 * aside until the database is well again. Each is on by default and switched off with `false`
 * (or `null` for a threshold); `health: false` turns them all off. Without the privileges a
 * signal needs (pg_monitor), it sees what the role can see, and never fails a run.
 */
export interface HealthOptions {
  /**
   * Hold a migration while its table is being vacuumed. `'wraparound'` (the default; `true` says
   * the same): while an autovacuum to prevent wraparound or a manual VACUUM runs on it. `'all'`:
   * routine autovacuum too, as GitLab does (a long migration starts one on its own table every few
   * million rows, and each stops it for the vacuum's length). `false`: never.
   */
  autovacuum?: VacuumHold | boolean;
  /** Hold every migration while a transaction in this database is older than this. Default 300000 (5 min). */
  maxTransactionAgeMs?: number | null;
  /** Hold every migration while a streaming replica replays more than this many bytes behind. Default 64 MiB. */
  maxReplayLagBytes?: number | null;
  /**
   * How replay lag is read, in bytes (null: no replica). Default: the largest of
   * `pg_stat_replication` on this server. Give your own where that view cannot see the replicas
   * (cascading or cloud read replicas, lag measured elsewhere).
   */
  replayLagBytes?: (db: Queryable) => Promise<number | null>;
  /** Hold every migration while more WAL segments than this wait for the archiver. Default 42. */
  maxWalArchiveReady?: number | null;
  /**
   * Hold every migration while a replication slot (a logical one of a CDC consumer such as
   * Debezium, or an idle physical one) retains more WAL than this many bytes: a backfill writes
   * WAL at database speed, and a slot that does not consume it keeps it until the disk fills.
   * Default 4 GiB.
   */
  maxSlotRetainedBytes?: number | null;
  /**
   * Hold every migration while a slot may take less than this many bytes more WAL before
   * `max_slot_wal_keep_size` invalidates it (its `safe_wal_size`; only when that setting is on).
   * Default 1 GiB.
   */
  minSlotSafeWalBytes?: number | null;
  /**
   * The engine's own latency: when a job's work takes `latencyFactor` times its recent norm per
   * row, the migration's lanes are halved (shared by every worker, down to 1, at most once every
   * `checkMs`); after every 4 jobs within 1.25× the norm, one lane comes back. A migration with
   * several lanes starts in one (slow start). Default true.
   */
  latency?: boolean;
  /** Default 3. */
  latencyFactor?: number;
  /**
   * Foreground protection: at each check the worker times 10 commits of its own (each updates
   * its row in batched_background_migration_workers and waits for the flush, as an application's
   * write does). One round in five (and the first two) is quiet: timed while every run of every
   * worker is held (runs hold a shared advisory lock the round takes exclusively, waiting at most
   * 1 s for runs in flight). While the median of the other rounds is `commitLatencyFactor` times
   * the quiet median, the lanes of the migrations this worker runs are halved, down to one, then
   * the share of the time its lanes run (a rest after each job), down to 1/16; while they are
   * back within 0.8 × the factor, the share grows back by a tenth per check, then the lanes one
   * at a time. Default null (off): it trades speed for the foreground (see the README).
   */
  commitLatencyFactor?: number | null;
  /**
   * The WAL budget, per migration: while its jobs wrote more WAL than this per second over the
   * last 10 s, it is held for as long as its average needs to fall back within the budget, so a
   * backfill cannot outrun replicas or the archiver. Default null (off).
   */
  maxWalBytesPerSecond?: number | null;
  /** How often a worker reads the signals (one lane for all). Default 10000. */
  checkMs?: number;
  /** How long a hold lasts; a signal still firing at the next check extends it. Default 30000. */
  holdMs?: number;
}
