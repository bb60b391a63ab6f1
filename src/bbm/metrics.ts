/**
 * Prometheus metrics (prom-client). Names follow GitLab's container registry (`registry/bbm/
 * metrics`) with the `bbm_` prefix. Labels stay bounded: no job ids, and a migration's label is
 * its name up to any `@` (recurring passes named `<schedule>@<time>` share their schedule's).
 */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Queryable } from '../store/db.ts';
import { MigrationStatus, UNFINISHED_STATUSES, type MigrationStatusName } from '../store/codes.ts';
import { countHeldMigrations, countMigrationsByStatus } from '../store/migration-rows.ts';
import { finishedSeconds, heldSeconds } from '../store/dashboard.ts';
import { databaseList, readEachDatabase } from './databases.ts';
import { migrationReports } from './status.ts';
import type { RunOutcome, RunResult, WorkerObserver } from './types.ts';

export const METRIC_HELP = {
  bbm_runs_total:
    'Worker runs by result: job_ran (a job was executed), no_job, lock_in_use, throttled, migration_changed (started, finished or failed a migration), error.',
  bbm_run_duration_seconds: 'Duration of a worker run: one transaction, from BEGIN to COMMIT.',
  bbm_job_duration_seconds: 'Time spent in the work function of a job.',
  bbm_job_batch_size: 'Batch size of the jobs executed.',
  bbm_migrated_tuples_total:
    'Rows migrated: what work functions report changing, or the batch size of each successful job when they report nothing.',
  bbm_jobs_total: 'Jobs executed, by result: succeeded or failed.',
  bbm_sleep_duration_seconds: 'Waits of workers between runs.',
  bbm_migration_progress:
    "Share (0..1) of a migration's id range covered by finished jobs, for migrations not finished or failed; for a key that is not a single integer column, an estimate: finished rows over the table's estimated rows.",
  bbm_migrations: 'Migrations by status.',
  bbm_holds_total:
    'Health holds set, by reason (autovacuum, transaction_age, replay_lag, wal_archive, replication_slot, wal_budget): one per migration newly set aside.',
  bbm_held_migrations: 'Runnable migrations on hold now (health holds and run-error holds).',
  bbm_migration_held_seconds:
    'For each migration on hold now: seconds since it last made progress (its last finished job, else its start).',
  bbm_migration_finished_seconds:
    'For each finished migration still in the table (schedule passes aside): seconds since it finished.',
  bbm_wal_bytes_total: 'WAL the server wrote while jobs ran (their take to their finish), by migration.',
  bbm_verify_failures_total:
    "Checks (the work's verify) that found rows not satisfying them, by migration: attempts rolled back with verification_failed, and ranges the final sweep found rows in.",
  bbm_verify_rows_fixed_total:
    'Rows the final sweep found failing the check and fixed by running the work again on their range, by migration.',
  bbm_lane_changes_total: "The latency controller's changes of a migration's lanes, by direction: shed or grown.",
  bbm_notifications_total:
    'Webhook notifications this process tried to send, by event and result: sent, failed (to be retried) or given_up.',
  bbm_database_up:
    'Whether the database answered the last scrape (1) or not (0): in a fleet of several databases, one series each.',
  bbm_process_lane_wait_seconds_total:
    "A process serving several databases: the seconds its lanes waited for one of the process's lanes (`concurrency` in all), by database; how much the databases contend for them.",
  bbm_duty_cycle:
    "Foreground protection: the share (0..1) of the time this process's lanes run now (1: no pause after jobs; below 1 while the migration slows commits).",
} as const;

type RunResultLabel = 'job_ran' | 'no_job' | 'lock_in_use' | 'throttled' | 'migration_changed' | 'error';

function runResultLabel(outcome: RunOutcome): RunResultLabel {
  switch (outcome) {
    case 'job_succeeded':
    case 'job_failed':
    case 'range_verified':
      return 'job_ran';
    case 'no_job':
    case 'lock_in_use':
    case 'throttled':
      return outcome;
    case 'migration_started':
    case 'migration_finished':
    case 'migration_failed':
      return 'migration_changed';
    case 'aborted':
    case 'error':
      return 'error';
  }
}

/** A migration's metric label: its name up to any `@`, so recurring passes share one series. */
const migrationLabel = (name: string): string => name.split('@', 1)[0] ?? name;

const DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180];

export interface BbmMetrics {
  registry: Registry;
  /** Add to a worker's `observers` (the one database's, or a `database`'s series with `observerFor`). */
  observer: WorkerObserver;
  /** The observer of one database of a fleet, its series carrying `database`; undefined: `observer`. */
  observerFor(database: string | undefined): WorkerObserver;
}

export interface MetricsOptions {
  /** The database whose migrations the gauges describe, read at each scrape. */
  db?: Queryable;
  /** Or several, by name (a fleet's `databases`): each series carries its `database` label. */
  databases?: ReadonlyMap<string, Queryable>;
  registry?: Registry;
}

/** The `database` label of a series: none for the one database of a process without `databases`. */
type DatabaseLabel = { database?: string };

/** What one scrape read of one database. */
interface DatabaseRead {
  unfinished: { name: string; progress: number }[];
  held: number;
  heldSeconds: { name: string; seconds: number }[];
  finishedSeconds: { name: string; seconds: number }[];
  counts: Map<number, number>;
}

/** How long a scrape waits for a database before it counts it as down (its query goes on). */
const SCRAPE_TIMEOUT_MS = 5_000;

/**
 * Each database's gauges, read once per scrape for all the gauges (prom-client collects them one
 * by one), the databases at once; a database that fails or does not answer in time is read as
 * down (`bbm_database_up` 0) and the others are still reported.
 */
function scrapeSnapshot(
  sources: readonly { at: DatabaseLabel; db: Queryable }[],
): () => Promise<{ at: DatabaseLabel; read: DatabaseRead | undefined }[]> {
  let inFlight: Promise<{ at: DatabaseLabel; read: DatabaseRead | undefined }[]> | undefined;
  const readOne = async (db: Queryable): Promise<DatabaseRead> => {
    const [unfinished, held, heldFor, finishedFor, counts] = await Promise.all([
      migrationReports(db, { statuses: UNFINISHED_STATUSES }),
      countHeldMigrations(db),
      heldSeconds(db),
      finishedSeconds(db),
      countMigrationsByStatus(db),
    ]);
    return { unfinished, held, heldSeconds: heldFor, finishedSeconds: finishedFor, counts };
  };
  return () => {
    // prom-client starts every gauge's collect in the same tick of a scrape: they share one read.
    inFlight ??= readEachDatabase(sources, ({ db }) => readOne(db), SCRAPE_TIMEOUT_MS)
      .then((reads) => reads.map(({ source, value }) => ({ at: source.at, read: value })))
      .finally(() => {
        inFlight = undefined;
      });
    return inFlight;
  };
}

/**
 * Creates the metrics on a registry of their own (plus Node's default process metrics). With
 * `db` (or `databases`), the gauges that describe migrations rather than this process are read
 * from the database at each scrape.
 */
export function createMetrics({ db, databases, registry = new Registry() }: MetricsOptions = {}): BbmMetrics {
  const sources = databaseList({ db, databases }).map(({ name, db: pool }) => ({
    at: name === undefined ? {} : { database: name },
    db: pool,
  }));
  const registers = [registry];
  collectDefaultMetrics({ register: registry });
  const runs = new Counter({
    name: 'bbm_runs_total',
    help: METRIC_HELP.bbm_runs_total,
    labelNames: ['database', 'result'],
    registers,
  });
  const runDuration = new Histogram({
    name: 'bbm_run_duration_seconds',
    help: METRIC_HELP.bbm_run_duration_seconds,
    labelNames: ['database'],
    buckets: DURATION_BUCKETS,
    registers,
  });
  const jobDuration = new Histogram({
    name: 'bbm_job_duration_seconds',
    help: METRIC_HELP.bbm_job_duration_seconds,
    labelNames: ['database', 'migration', 'work'],
    buckets: DURATION_BUCKETS,
    registers,
  });
  const batchSize = new Histogram({
    name: 'bbm_job_batch_size',
    help: METRIC_HELP.bbm_job_batch_size,
    labelNames: ['database'],
    buckets: [10, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000],
    registers,
  });
  const tuples = new Counter({
    name: 'bbm_migrated_tuples_total',
    help: METRIC_HELP.bbm_migrated_tuples_total,
    labelNames: ['database', 'migration'],
    registers,
  });
  const jobs = new Counter({
    name: 'bbm_jobs_total',
    help: METRIC_HELP.bbm_jobs_total,
    labelNames: ['database', 'migration', 'result'],
    registers,
  });
  const holds = new Counter({
    name: 'bbm_holds_total',
    help: METRIC_HELP.bbm_holds_total,
    labelNames: ['database', 'reason'],
    registers,
  });
  const walBytes = new Counter({
    name: 'bbm_wal_bytes_total',
    help: METRIC_HELP.bbm_wal_bytes_total,
    labelNames: ['database', 'migration'],
    registers,
  });
  const verifyFailures = new Counter({
    name: 'bbm_verify_failures_total',
    help: METRIC_HELP.bbm_verify_failures_total,
    labelNames: ['database', 'migration'],
    registers,
  });
  const rowsFixed = new Counter({
    name: 'bbm_verify_rows_fixed_total',
    help: METRIC_HELP.bbm_verify_rows_fixed_total,
    labelNames: ['database', 'migration'],
    registers,
  });
  const laneChanges = new Counter({
    name: 'bbm_lane_changes_total',
    help: METRIC_HELP.bbm_lane_changes_total,
    labelNames: ['database', 'direction'],
    registers,
  });
  const laneWaits = new Counter({
    name: 'bbm_process_lane_wait_seconds_total',
    help: METRIC_HELP.bbm_process_lane_wait_seconds_total,
    labelNames: ['database'],
    registers,
  });
  const notifications = new Counter({
    name: 'bbm_notifications_total',
    help: METRIC_HELP.bbm_notifications_total,
    labelNames: ['database', 'event', 'result'],
    registers,
  });
  const dutyCycle = new Gauge({
    name: 'bbm_duty_cycle',
    help: METRIC_HELP.bbm_duty_cycle,
    labelNames: ['database'],
    registers,
  });
  const sleeps = new Histogram({
    name: 'bbm_sleep_duration_seconds',
    help: METRIC_HELP.bbm_sleep_duration_seconds,
    labelNames: ['database'],
    buckets: [0.01, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 600],
    registers,
  });
  if (sources.length > 0) {
    const snapshot = scrapeSnapshot(sources);
    const each = (gauge: Gauge, fill: (at: DatabaseLabel, read: DatabaseRead) => void) => async () => {
      gauge.reset();
      for (const { at, read } of await snapshot()) if (read) fill(at, read);
    };
    new Gauge({
      name: 'bbm_database_up',
      help: METRIC_HELP.bbm_database_up,
      labelNames: ['database'],
      registers,
      async collect() {
        this.reset();
        for (const { at, read } of await snapshot()) this.set(at, read ? 1 : 0);
      },
    });
    const progress: Gauge = new Gauge({
      name: 'bbm_migration_progress',
      help: METRIC_HELP.bbm_migration_progress,
      labelNames: ['database', 'migration'],
      registers,
      collect: () =>
        each(progress, (at, read) => {
          for (const report of read.unfinished) {
            progress.set({ ...at, migration: migrationLabel(report.name) }, report.progress);
          }
        })(),
    });
    const held: Gauge = new Gauge({
      name: 'bbm_held_migrations',
      help: METRIC_HELP.bbm_held_migrations,
      labelNames: ['database'],
      registers,
      collect: () => each(held, (at, read) => held.set(at, read.held))(),
    });
    /** One series per migration label, the largest age among the migrations that share it. */
    const ages = (gauge: Gauge, at: DatabaseLabel, rows: { name: string; seconds: number }[]) => {
      const largest = new Map<string, number>();
      for (const { name, seconds } of rows) {
        const label = migrationLabel(name);
        largest.set(label, Math.max(largest.get(label) ?? 0, seconds));
      }
      for (const [migration, seconds] of largest) gauge.set({ ...at, migration }, seconds);
    };
    const heldFor: Gauge = new Gauge({
      name: 'bbm_migration_held_seconds',
      help: METRIC_HELP.bbm_migration_held_seconds,
      labelNames: ['database', 'migration'],
      registers,
      collect: () => each(heldFor, (at, read) => ages(heldFor, at, read.heldSeconds))(),
    });
    const finishedFor: Gauge = new Gauge({
      name: 'bbm_migration_finished_seconds',
      help: METRIC_HELP.bbm_migration_finished_seconds,
      labelNames: ['database', 'migration'],
      registers,
      collect: () => each(finishedFor, (at, read) => ages(finishedFor, at, read.finishedSeconds))(),
    });
    const byStatus: Gauge = new Gauge({
      name: 'bbm_migrations',
      help: METRIC_HELP.bbm_migrations,
      labelNames: ['database', 'status'],
      registers,
      collect: () =>
        each(byStatus, (at, read) => {
          for (const status of Object.keys(MigrationStatus) as MigrationStatusName[]) {
            byStatus.set({ ...at, status }, read.counts.get(MigrationStatus[status]) ?? 0);
          }
        })(),
    });
  }

  const observerAt = (at: DatabaseLabel): WorkerObserver => ({
    run(result: RunResult) {
      runs.inc({ ...at, result: runResultLabel(result.outcome) });
      runDuration.observe(at, result.durationMs / 1000);
      const { job, migration } = result;
      if (!migration) return;
      const label = { ...at, migration: migrationLabel(migration.name) };
      const checkFailed =
        (result.outcome === 'job_failed' && result.errorCode === 'verification_failed') ||
        (result.outcome === 'migration_failed' && result.verified !== undefined);
      if (checkFailed) verifyFailures.inc(label);
      if (!job) return;
      if (result.outcome === 'range_verified') {
        // A check of a finished range, not a job: counted apart from jobs, rows and WAL.
        const found = result.verified?.found ?? 0;
        if (found > 0) {
          verifyFailures.inc(label);
          rowsFixed.inc(label, found);
        }
        return;
      }
      jobDuration.observe({ ...label, work: migration.work }, job.durationMs / 1000);
      batchSize.observe(at, job.batchSize);
      const succeeded = result.outcome === 'job_succeeded';
      jobs.inc({ ...label, result: succeeded ? 'succeeded' : 'failed' });
      if (succeeded) tuples.inc(label, job.rows ?? job.batchSize);
      if (job.walBytes !== undefined && job.walBytes > 0) walBytes.inc(label, job.walBytes);
    },
    sleep(ms: number) {
      sleeps.observe(at, ms / 1000);
    },
    hold(event) {
      holds.inc({ ...at, reason: event.kind }, event.migrations.length);
    },
    lanes(event) {
      laneChanges.inc({ ...at, direction: event.direction });
    },
    dutyCycle(share) {
      dutyCycle.set(at, share);
    },
    laneWait(ms) {
      laneWaits.inc(at, ms / 1000);
    },
    notification(event) {
      notifications.inc({ ...at, event: event.event, result: event.result });
    },
  });
  const observer = observerAt({});
  const observers = new Map<string, WorkerObserver>();
  const observerFor = (database: string | undefined): WorkerObserver => {
    if (database === undefined) return observer;
    let found = observers.get(database);
    if (!found) {
      found = observerAt({ database });
      dutyCycle.set({ database }, 1);
      observers.set(database, found);
    }
    return found;
  };
  if (databases) for (const database of databases.keys()) observerFor(database);
  else dutyCycle.set(1);
  return { registry, observer, observerFor };
}
