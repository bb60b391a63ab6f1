/** What operators read and steer: migration summaries, pause and resume. */
import type { Queryable } from '../store/db.ts';
import {
  errorCodeName,
  MigrationStatus,
  migrationStatusName,
  RUNNABLE_STATUSES,
  statusIn,
  type ErrorCodeName,
  type MigrationStatusName,
} from '../store/codes.ts';
import { listMigrations, pauseMigrations, resumeMigrations, type MigrationSummary } from '../store/migrations.ts';
import { LIVE_WORKER_WINDOW_MS, liveWorkNames } from '../store/workers.ts';

export interface MigrationReport {
  id: bigint;
  name: string;
  status: MigrationStatusName;
  jobSignatureName: string;
  tableName: string;
  columnName: string;
  minValue: bigint;
  maxValue: bigint | null;
  /** The batch size ranges are cut with now (the adaptive size, when `targetJobMs` is set). */
  batchSize: number;
  /** Lanes: how many of its jobs may run at once (max_parallel_jobs). */
  lanes: number;
  /** Lanes working on it at this moment, across all workers. */
  lanesInUse: number;
  /** Adaptive sizing: the target time of a job's work, and the size bounds; null when fixed. */
  targetJobMs: number | null;
  minBatchSize: number | null;
  maxBatchSize: number | null;
  /** Set while the migration is set aside (after run errors): until when, and why. */
  onHoldUntil: Date | null;
  holdReason: string | null;
  /** Runs in a row that failed for a reason not its work function's (`maxRunErrors` of them fail it). */
  runErrors: number;
  failureErrorCode: ErrorCodeName | null;
  failureMessage: string | null;
  /** Share of [minValue, maxValue] covered by finished ranges, 0..1; 1 once finished. */
  progress: number;
  /**
   * End of the contiguous finished prefix: every id up to it is done, and a resume would start
   * after it (lanes finish ranges out of order). Null before the first range.
   */
  finishedPrefixEnd: bigint | null;
  /** Rows per second over the last five minutes (the sizes of the ranges finished); null when idle, paused or failed. */
  rowsPerSecond: number | null;
  /** Seconds left at the last five minutes' pace; null when not running or idle. */
  etaSeconds: number | null;
  /** The migration's failure, else the last failure of a job still failed; null when neither. */
  lastError: string | null;
  /** Ranges cut: finished, failed (waiting for a retry), active (running in a lane, or cut ahead for one). */
  jobs: { total: number; finished: number; failed: number; active: number };
  /**
   * Set when the migration is runnable but no live worker has its work function: it waits for a
   * worker that has it (during a rolling deploy, older workers lack new work functions).
   */
  waitingForWork: boolean;
  createdAt: Date;
  startedAt: Date | null;
  finishedAt: Date | null;
}

function progressOf(m: MigrationSummary): number {
  if (m.status === MigrationStatus.finished) return 1;
  if (m.maxValue === null) return 0;
  const width = m.maxValue - m.minValue + 1n;
  if (width <= 0n) return 0;
  // Scaled integer division keeps precision for ranges wider than 2^53.
  return Math.min(1, Number((m.finishedWidth * 1_000_000n) / width) / 1_000_000);
}

function pace(m: MigrationSummary): { rowsPerSecond: number | null; etaSeconds: number | null } {
  const { jobs, width, rows, seconds } = m.recent;
  const running = statusIn(RUNNABLE_STATUSES, m.status);
  if (!running || jobs === 0 || seconds <= 0) return { rowsPerSecond: null, etaSeconds: null };
  const rowsPerSecond = rows / seconds;
  if (m.maxValue === null) return { rowsPerSecond, etaSeconds: null };
  const remaining = m.maxValue - m.minValue + 1n - m.finishedWidth;
  const idsPerSecond = Number(width) / seconds;
  return { rowsPerSecond, etaSeconds: remaining <= 0n ? 0 : Number(remaining) / idsPerSecond };
}

/**
 * Every migration (or the one named), oldest first. A runnable migration is `waitingForWork` when
 * no live worker has its work function, nor `knownWork` (say, the caller's own config).
 */
export async function migrationReports(
  db: Queryable,
  options: { name?: string | undefined; statuses?: readonly MigrationStatusName[]; knownWork?: readonly string[] } = {},
): Promise<MigrationReport[]> {
  const known = new Set([...(options.knownWork ?? []), ...(await liveWorkNames(db, LIVE_WORKER_WINDOW_MS))]);
  const statuses = options.statuses?.map((status) => MigrationStatus[status]);
  const rows = await listMigrations(db, { name: options.name, statuses });
  return rows.map((m) => {
    const status = migrationStatusName(m.status);
    return {
      id: m.id,
      name: m.name,
      status,
      jobSignatureName: m.jobSignatureName,
      tableName: m.tableName,
      columnName: m.columnName,
      minValue: m.minValue,
      maxValue: m.maxValue,
      batchSize: m.batchSize,
      lanes: m.maxParallelJobs,
      lanesInUse: m.lanesInUse,
      targetJobMs: m.targetJobMs,
      minBatchSize: m.minBatchSize,
      maxBatchSize: m.maxBatchSize,
      onHoldUntil: m.onHoldUntil,
      holdReason: m.holdReason,
      runErrors: m.runErrors,
      failureErrorCode: m.failureErrorCode === null ? null : errorCodeName(m.failureErrorCode),
      failureMessage: m.failureMessage,
      progress: progressOf(m),
      finishedPrefixEnd: m.finishedPrefixEnd,
      ...pace(m),
      lastError: m.failureMessage ?? m.lastJobError,
      jobs: m.jobs,
      waitingForWork: statusIn(RUNNABLE_STATUSES, status) && !known.has(m.jobSignatureName),
      createdAt: m.createdAt,
      startedAt: m.startedAt,
      finishedAt: m.finishedAt,
    };
  });
}

export const pause = (db: Queryable, name?: string): Promise<string[]> => pauseMigrations(db, name);
export const resume = (db: Queryable, name?: string): Promise<string[]> => resumeMigrations(db, name);
