/**
 * A rehearsal's projection (docs/rehearse.md, "The model"): the samples' cost per row, scaled to
 * the rows of the key space, and the duration divided by what lanes are measured to gain.
 */
import { INT4_MAX } from '../store/codes.ts';
import type { RehearsalProjection, RehearsalSample } from './types.ts';

/**
 * How much faster N lanes drain than one (index N - 1; past the end, the last), as `npm run bench`
 * measured it on the 2-core development machine (docs/performance.md: 2 lanes 1.72-1.91×, 4 lanes
 * 1.43-1.97×; about 1.8× from 2 lanes on): the two cores, shared by the server and the worker,
 * are saturated from 2 lanes on, so more lanes gain nothing there. A machine with more cores gains
 * more: pass the speed-up measured there (RehearseParams.laneSpeedup).
 */
export const LANE_SPEEDUP: readonly number[] = [1, 1.8];

/**
 * The engine's own time per job besides the work (its take, the cut of the next range, the
 * record and the commit), as `npm run bench`'s verify section measured it on the 2-core
 * development machine with 1,000-row jobs: a drain's time per job less the rehearsal's work time
 * per job, 2.5-3.7 ms. A faster server or network pays less, a wider cut more.
 */
export const ENGINE_MS_PER_JOB = 3;

export function laneSpeedup(lanes: number): number {
  return LANE_SPEEDUP[Math.min(lanes, LANE_SPEEDUP.length) - 1] ?? 1;
}

/** What the projection needs besides the samples. */
export interface ProjectionInput {
  samples: readonly RehearsalSample[];
  /** Rows in the key space, and whether counted or estimated. */
  rows: number;
  rowsBasis: RehearsalProjection['rowsBasis'];
  lanes: number;
  laneSpeedup: number;
  migration: SizeSettings;
}

/** A migration's sizing columns. */
export interface SizeSettings {
  batchSize: number;
  targetJobMs: number | null;
  minBatchSize: number | null;
  maxBatchSize: number | null;
}

/**
 * The projection from the samples whose work succeeded; null when none did (an empty key space,
 * with no sample, projects to nothing to do). Per row: the samples' totals over their rows, so
 * that a short last range weighs what it holds.
 */
export function projectRehearsal(input: ProjectionInput): RehearsalProjection | null {
  const { samples, rows, lanes, migration } = input;
  const ok = samples.filter((sample) => sample.written !== null);
  if (samples.length > 0 && ok.length === 0) return null;
  const sum = (of: (sample: RehearsalSample) => number) => ok.reduce((total, sample) => total + of(sample), 0);
  const sampledRows = sum((s) => s.rows);
  const perRow = (total: number) => (sampledRows > 0 ? total / sampledRows : 0);
  const msPerRow = perRow(sum((s) => s.workMs));
  const updated = sum((s) => s.written!.updated);
  const hot = sum((s) => s.written!.hotUpdated);
  const deleted = sum((s) => s.written!.deleted);
  const batchSize = projectedBatchSize(migration, msPerRow);
  const jobs = Math.max(1, Math.ceil(rows / batchSize));
  const engineMs = rows > 0 ? jobs * ENGINE_MS_PER_JOB : 0;
  const durationSeconds = (rows * msPerRow + engineMs) / 1000 / input.laneSpeedup;
  const walBytes = Math.round(rows * perRow(sum((s) => s.written!.walBytes)));
  const watched = ok.every((s) => s.lockWaitMs !== null);
  const workMs = sum((s) => s.workMs);
  return {
    lanes,
    laneSpeedup: input.laneSpeedup,
    rows,
    rowsBasis: input.rowsBasis,
    batchSize,
    jobs,
    msPerRow,
    engineMsPerJob: ENGINE_MS_PER_JOB,
    durationSeconds,
    walBytes,
    walBytesPerSecond: durationSeconds > 0 ? walBytes / durationSeconds : null,
    deadTuples: Math.round(rows * perRow(updated + deleted)),
    deadTuplesNotHot: Math.round(rows * perRow(updated - hot + deleted)),
    hotShare: updated > 0 ? hot / updated : null,
    lockWaitShare: watched && workMs > 0 ? sum((s) => s.lockWaitMs ?? 0) / workMs : watched ? 0 : null,
  };
}

/**
 * The size ranges are cut at to begin with: the batch size within min_batch_size and
 * max_batch_size (sql/functions/bbm_fixed_size.sql; min_batch_size wins, as there).
 */
export function startingSize({ batchSize, minBatchSize, maxBatchSize }: SizeSettings): number {
  const minSize = minBatchSize ?? 1;
  return Math.max(1, minSize, Math.min(Math.max(minSize, maxBatchSize ?? INT4_MAX), batchSize));
}

/**
 * The size the migration's jobs are cut at: the starting size, or with adaptive sizing the size
 * whose work takes about targetJobMs at the measured pace, within its bounds.
 */
function projectedBatchSize(migration: SizeSettings, msPerRow: number): number {
  const { targetJobMs, minBatchSize, maxBatchSize } = migration;
  if (targetJobMs === null || msPerRow <= 0) return startingSize(migration);
  const minSize = minBatchSize ?? 1;
  const size = Math.round(targetJobMs / msPerRow);
  return Math.max(1, minSize, Math.min(Math.max(minSize, maxBatchSize ?? INT4_MAX), size));
}
