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
import {
  listMigrations,
  pauseMigrations,
  resumeMigrations,
  type KeySummary,
  type MigrationSummary,
} from '../store/migration-rows.ts';
import { LIVE_WORKER_WINDOW_MS, liveWorkNames } from '../store/workers.ts';
import { approvals } from '../store/approvals.ts';
import type { MigrationReport, RehearsalSummary } from './types.ts';

/**
 * A key migration's progress short of its finish, however far its rows run past the estimate: a
 * table that grew, or statistics that lag, must not read as done.
 */
const KEY_PROGRESS_CAP = 0.99;

function progressOf(m: MigrationSummary): number {
  if (m.status === MigrationStatus.finished) return 1;
  if (m.key) return keyProgressOf(m.key);
  if (m.maxValue === null) return 0;
  const width = m.maxValue - m.minValue + 1n;
  if (width <= 0n) return 0;
  // Scaled integer division keeps precision for ranges wider than 2^53.
  return Math.min(1, Number((m.finishedWidth * 1_000_000n) / width) / 1_000_000);
}

/** Rows done over the table's estimated rows (0 when there is no estimate), below 1 until finished. */
function keyProgressOf(key: KeySummary): number {
  if (key.estimatedRows === null || key.finishedRows === 0) return 0;
  return Math.min(KEY_PROGRESS_CAP, key.finishedRows / Math.max(1, key.estimatedRows));
}

function pace(m: MigrationSummary): { rowsPerSecond: number | null; etaSeconds: number | null } {
  const { jobs, width, rows, seconds } = m.recent;
  const running = statusIn(RUNNABLE_STATUSES, m.status);
  if (!running || jobs === 0 || seconds <= 0) return { rowsPerSecond: null, etaSeconds: null };
  const rowsPerSecond = rows / seconds;
  if (m.key) {
    const left = keyRowsLeft(m.key);
    return { rowsPerSecond, etaSeconds: left === null || rowsPerSecond <= 0 ? null : left / rowsPerSecond };
  }
  if (m.maxValue === null) return { rowsPerSecond, etaSeconds: null };
  const remaining = m.maxValue - m.minValue + 1n - m.finishedWidth;
  const idsPerSecond = Number(width) / seconds;
  return { rowsPerSecond, etaSeconds: remaining <= 0n ? 0 : Number(remaining) / idsPerSecond };
}

/**
 * Rows a key migration has left by the estimate; null without one, or once past it (the table
 * grew, or its statistics lag): then nothing tells how long it has left.
 */
function keyRowsLeft(key: KeySummary): number | null {
  if (key.estimatedRows === null) return null;
  const left = key.estimatedRows - key.finishedRows;
  return left > 0 ? left : null;
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
      rehearsal,
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
      progressBasis: m.key ? 'rows-estimate' : 'key-width',
      ...pace(m),
      lastError: m.failureMessage ?? lastJobError,
      waitingForWork: statusIn(RUNNABLE_STATUSES, status) && !known.has(m.jobSignatureName),
      approvedBy: approved.get(id)?.approvedBy ?? null,
      approvedAt: approved.get(id)?.approvedAt ?? null,
      // As rehearseMigration stored it (src/store/rehearsal.ts), samples summed up by the query.
      rehearsal: rehearsal as RehearsalSummary | null,
    };
  });
}

export const pause = (db: Queryable, name?: string): Promise<string[]> => pauseMigrations(db, name);
export const resume = (db: Queryable, name?: string): Promise<string[]> => resumeMigrations(db, name);
