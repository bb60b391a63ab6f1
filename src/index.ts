/** pg-bbm: batched background migrations for PostgreSQL. */
export { createWorker, Worker } from './bbm/worker.ts';
export { defineConfig, loadConfig, resolveOptions, DEFAULTS, type ResolvedOptions } from './bbm/config.ts';
export { BbmError, ConfigError, ErrorCode, errorCodeName, type ErrorCodeName } from './bbm/errors.ts';
export { VALID_WORK_NAME } from './bbm/work-registry.ts';
export { enqueueMigration, enqueueMigrationSql, EnqueueError, type EnqueueErrorCode } from './bbm/enqueue.ts';
export { migrationReports, pause, resume } from './bbm/status.ts';
export { finalizeMigration, FinalizeError } from './bbm/finalize.ts';
export { verifyMigration } from './bbm/verify.ts';
export { rehearseMigration, RehearseError, type RehearseErrorCode } from './bbm/rehearse.ts';
export { ENGINE_MS_PER_JOB, LANE_SPEEDUP } from './bbm/rehearse-projection.ts';
export { createMetrics, METRIC_HELP, type BbmMetrics } from './bbm/metrics.ts';
export { anyThrottle, replicaLagThrottle, walArchiveThrottle } from './bbm/throttle.ts';
export { parseEvery, passName, tickSchedules } from './bbm/schedules.ts';
export { startOpsServer, type OpsServer, type OpsServerOptions } from './bbm/ops-server.ts';
export { createSentryReporter, type SentryOptions, type SentryReporter } from './bbm/sentry.ts';
export { createLogger } from './bbm/log.ts';
export {
  MigrationStatus,
  JobStatus,
  SERIAL_KEY_SET,
  type MigrationStatusName,
  type JobStatusName,
} from './store/codes.ts';
export { LANE_LOCK_BASE, LOCK_NAMESPACE } from './store/locks.ts';
export { migrateGcSchema, migrateSchema } from './store/apply-schema.ts';
export { connectionMasker, createPool, maskConnectionString, type Queryable } from './store/db.ts';
export type { VacuumHold } from './store/migration-rows.ts';
export { copyColumn, copyColumnWork, COPY_COLUMN_WORK, type CopyColumnOptions } from './work/copy-column.ts';
export type {
  Config,
  EnqueueOptions,
  FinalizeParams,
  HealthOptions,
  Job,
  JobDb,
  JobKey,
  JobQuery,
  JobRange,
  KeyValue,
  MigrationReport,
  MigrationSpec,
  NotificationEvent,
  NotifyEvent,
  NotifyTarget,
  ProgressBasis,
  RehearsalProjection,
  RehearsalReport,
  RehearsalSample,
  RehearsalSummary,
  RehearsalWrites,
  RehearseOptions,
  RehearseParams,
  RunLoopOptions,
  RunOutcome,
  RunResult,
  Schedule,
  Throttle,
  Work,
  AnyWork,
  VerifyFound,
  VerifyParams,
  VerifyReport,
  WorkerObserver,
  WorkerOptions,
  WorkerParams,
} from './bbm/types.ts';
