/** What operators read and steer: migration summaries, pause and resume. */
import type { Queryable } from '../store/db.ts';
import { errorCodeName, migrationStatusName, type ErrorCodeName, type MigrationStatusName } from '../store/codes.ts';
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
  batchSize: number;
  failureErrorCode: ErrorCodeName | null;
  failureMessage: string | null;
  /** Share of [minValue, maxValue] covered by finished ranges, 0..1; 1 once finished. */
  progress: number;
  jobs: { total: number; finished: number; failed: number };
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
  if (m.status === 2) return 1;
  if (m.maxValue === null) return 0;
  const width = m.maxValue - m.minValue + 1n;
  if (width <= 0n) return 0;
  // Scaled integer division keeps precision for ranges wider than 2^53.
  return Math.min(1, Number((m.finishedWidth * 1_000_000n) / width) / 1_000_000);
}

/**
 * Every migration (or the one named), oldest first. A runnable migration is `waitingForWork` when
 * no live worker has its work function, nor `knownWork` (say, the caller's own config).
 */
export async function migrationReports(db: Queryable, options: { name?: string; knownWork?: readonly string[] } = {}): Promise<MigrationReport[]> {
  const known = new Set([...(options.knownWork ?? []), ...(await liveWorkNames(db, LIVE_WORKER_WINDOW_MS))]);
  const rows = await listMigrations(db, options.name);
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
      failureErrorCode: m.failureErrorCode === null ? null : errorCodeName(m.failureErrorCode),
      failureMessage: m.failureMessage,
      progress: progressOf(m),
      jobs: m.jobs,
      waitingForWork: (status === 'active' || status === 'running') && !known.has(m.jobSignatureName),
      createdAt: m.createdAt,
      startedAt: m.startedAt,
      finishedAt: m.finishedAt,
    };
  });
}

export const pause = (db: Queryable, name?: string): Promise<string[]> => pauseMigrations(db, name);
export const resume = (db: Queryable, name?: string): Promise<string[]> => resumeMigrations(db, name);
