/** What operators read and steer: migration summaries, pause and resume. */
import type { Queryable } from '../store/db.ts';
import {
  errorCodeName,
  MigrationStatus,
  migrationStatusName,
  RUNNABLE_STATUSES,
  statusIn,
  type MigrationStatusName,
} from '../store/codes.ts';
import { listMigrations, pauseMigrations, resumeMigrations, type MigrationSummary } from '../store/migration-rows.ts';
import { LIVE_WORKER_WINDOW_MS, liveWorkNames } from '../store/workers.ts';
import { approvals } from '../store/approvals.ts';
import type { MigrationReport } from './types.ts';

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
  const [rows, approved] = await Promise.all([listMigrations(db, { name: options.name, statuses }), approvals(db)]);
  return rows.map((m) => {
    const {
      id,
      name,
      status: code,
      failureErrorCode,
      maxParallelJobs,
      finishedWidth: _width,
      recent: _recent,
      lastJobError,
      ...row
    } = m;
    const status = migrationStatusName(code);
    return {
      // id, name and status first: the JSON reads in this order.
      id,
      name,
      status,
      ...row,
      lanes: maxParallelJobs,
      failureErrorCode: failureErrorCode === null ? null : errorCodeName(failureErrorCode),
      progress: progressOf(m),
      ...pace(m),
      lastError: m.failureMessage ?? lastJobError,
      waitingForWork: statusIn(RUNNABLE_STATUSES, status) && !known.has(m.jobSignatureName),
      approvedBy: approved.get(id)?.approvedBy ?? null,
      approvedAt: approved.get(id)?.approvedAt ?? null,
    };
  });
}

export const pause = (db: Queryable, name?: string): Promise<string[]> => pauseMigrations(db, name);
export const resume = (db: Queryable, name?: string): Promise<string[]> => resumeMigrations(db, name);
