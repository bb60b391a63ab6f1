/**
 * Adaptive batch size: a servo that sizes each new range so that its work takes about
 * `target_job_ms`. It learns the work's time per row from finished jobs (time in the work
 * function over the range's size), smoothed, and moves the size toward target / (time per row):
 *
 * - growth is capped per step (×1.5), so one fast job cannot blow the size up;
 * - a normal shrink is capped too (÷2), since one slow job is often noise;
 * - a job far over the target (5×, or one that timed out) shrinks the size at once, in
 *   proportion (spirit's panic rule), and restarts the estimate from that job;
 * - a job that changed no rows (the work said 0) says nothing about the pace and is ignored.
 *
 * Anchors: GitLab's BatchOptimizer (a capped step toward a target), pt-online-schema-change's
 * weighted average rate, spirit's chunker. Each worker process keeps its own estimate per
 * migration; the size it chooses is written to the migration's batch_size, where a process that
 * starts later begins.
 */

export interface PaceSettings {
  targetMs: number;
  minSize: number;
  maxSize: number;
}

/** How much one step may grow the size. */
export const GROWTH_CAP = 1.5;
/** How much one ordinary step may shrink it. */
const SHRINK_CAP = 0.5;
/** A job this many times over the target shrinks the size at once. */
export const PANIC_FACTOR = 5;
/** Weight of the newest job in the smoothed time per row (about the last six jobs count). */
const SMOOTHING = 0.3;

interface JobSample {
  /** The size the job's range was cut with. */
  size: number;
  /** Time in the work function. */
  workMs: number;
  /** What the work reported changing, if it said. */
  rows?: number | undefined;
}

export class BatchSizer {
  #size: number;
  #msPerRow: number | undefined;
  /** The size of the last range cut: ranges are cut ahead, so two jobs may be learned from between two cuts. */
  #lastCut: number;

  constructor(initialSize: number) {
    this.#size = Math.max(1, Math.round(initialSize));
    this.#lastCut = this.#size;
  }

  /** The size for the next range. */
  get size(): number {
    return this.#size;
  }

  /** Learns from a finished (or timed-out) job and moves the size. */
  observe(sample: JobSample, settings: PaceSettings): void {
    const { size, workMs } = sample;
    if (sample.rows === 0 || !(size > 0) || !Number.isFinite(workMs) || workMs < 0) return;
    const perRow = Math.max(workMs, 0.001) / size;
    if (workMs > PANIC_FACTOR * settings.targetMs) {
      this.#msPerRow = perRow;
      this.#size = clamp(Math.floor(size * (settings.targetMs / workMs)), settings);
      return;
    }
    this.#msPerRow = this.#msPerRow === undefined ? perRow : SMOOTHING * perRow + (1 - SMOOTHING) * this.#msPerRow;
    const ideal = settings.targetMs / this.#msPerRow;
    const stepped = Math.min(this.#size * GROWTH_CAP, Math.max(this.#size * SHRINK_CAP, ideal));
    this.#size = clamp(Math.round(stepped), settings);
  }

  /**
   * The size to cut the next range at: the size, within the bounds (an operator may change them
   * while the migration runs), and at most GROWTH_CAP times the last range's, since the growth
   * cap is a promise about consecutive ranges.
   */
  nextCut(settings: PaceSettings): number {
    this.#size = clamp(this.#size, settings);
    this.#lastCut = clamp(Math.min(this.#size, Math.round(this.#lastCut * GROWTH_CAP)), settings);
    return this.#lastCut;
  }
}

function clamp(size: number, { minSize, maxSize }: PaceSettings): number {
  return Math.min(maxSize, Math.max(minSize, Math.max(1, size)));
}

/** What one job's time per row says about the database, against the migration's recent norm. */
export type LatencyVerdict = 'learning' | 'pressure' | 'steady' | 'healthy';

/** Jobs a migration's norm is learned from before verdicts are given. */
const LATENCY_WARMUP = 5;
/** Weight of a job in the norm: slow, so that the norm is the recent past, not the last job. */
const NORM_SMOOTHING = 0.1;
/**
 * Within this many times the norm, a job is healthy and lanes may grow. Tight on purpose: the
 * norm is learned at low concurrency (a migration starts in one lane), and lanes stop growing
 * once more of them makes each job slower, which is where the database's headroom ends.
 */
const HEALTHY_FACTOR = 1.25;

/**
 * The engine's own latency signal: the work's in-database time per row, per migration, against
 * its norm (a slow moving average of the jobs that were not under pressure). A job `factor` times
 * over the norm is pressure: the database is slowing the work down before it says so itself.
 * Pressure does not move the norm, so a lasting slowdown stays pressure until it ends.
 */
export class LatencyWatch {
  readonly #norms = new Map<bigint, { msPerRow: number; jobs: number }>();

  constructor(private readonly factor: number) {}

  observe(migrationId: bigint, { workMs, rows }: { workMs: number; rows: number }): LatencyVerdict {
    if (rows <= 0 || !(workMs >= 0)) return 'learning';
    const msPerRow = workMs / rows;
    const norm = this.#norms.get(migrationId);
    if (!norm || norm.jobs < LATENCY_WARMUP) {
      const jobs = (norm?.jobs ?? 0) + 1;
      this.#norms.set(migrationId, { msPerRow: norm ? norm.msPerRow * 0.7 + msPerRow * 0.3 : msPerRow, jobs });
      return 'learning';
    }
    const ratio = norm.msPerRow > 0 ? msPerRow / norm.msPerRow : 1;
    if (ratio >= this.factor) return 'pressure';
    norm.msPerRow = norm.msPerRow * (1 - NORM_SMOOTHING) + msPerRow * NORM_SMOOTHING;
    norm.jobs += 1;
    return ratio <= HEALTHY_FACTOR ? 'healthy' : 'steady';
  }

  /** The norm's time per row, for log lines. */
  normMsPerRow(migrationId: bigint): number | undefined {
    return this.#norms.get(migrationId)?.msPerRow;
  }
}

/** Probes of commit latency the usual is learned from: 10 minutes of checks every 10 s, 10 probes each. */
const COMMIT_WINDOW = 600;
/** The smallest share of its size a range is cut at under commit pressure. */
const MIN_BATCH_SCALE = 1 / 32;
/** Under the factor by this much, the size grows back. */
const COMMIT_HEALTHY_SHARE = 0.8;
/** What the size grows back by per healthy check. */
const SCALE_STEP = 0.1;
/** Probes the usual is learned from before any verdict: the 10th percentile of a few is no usual. */
const COMMIT_WARMUP = 50;

const percentile = (sorted: readonly number[], p: number): number =>
  sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0;

/** What a round of commit probes said. */
export interface CommitVerdict {
  verdict: 'learning' | 'pressure' | 'steady' | 'healthy';
  p90Ms: number;
  baselineMs: number;
}

/**
 * Foreground protection: commit latency as an application feels it, against its usual. The usual
 * is the 10th percentile of the last probes: the commits that waited for no one, learned while
 * the migration runs. It also keeps the share of their size at which this worker cuts ranges
 * (`scale`), which the worker halves under pressure once lanes are down to one, and grows back a
 * tenth at a time before it gives lanes back.
 */
export class CommitWatch {
  readonly #window: number[] = [];
  #scale = 1;

  constructor(private readonly factor: number) {}

  /** The share of its size at which a range is cut now (1: all of it). */
  get scale(): number {
    return this.#scale;
  }

  observe(latenciesMs: readonly number[]): CommitVerdict {
    this.#window.push(...latenciesMs);
    if (this.#window.length > COMMIT_WINDOW) this.#window.splice(0, this.#window.length - COMMIT_WINDOW);
    const baselineMs = percentile(
      [...this.#window].sort((a, b) => a - b),
      0.1,
    );
    const p90Ms = percentile(
      [...latenciesMs].sort((a, b) => a - b),
      0.9,
    );
    const verdict =
      this.#window.length < COMMIT_WARMUP || latenciesMs.length === 0 || !(baselineMs > 0)
        ? 'learning'
        : p90Ms >= this.factor * baselineMs
          ? 'pressure'
          : p90Ms <= COMMIT_HEALTHY_SHARE * this.factor * baselineMs
            ? 'healthy'
            : 'steady';
    return { verdict, p90Ms, baselineMs };
  }

  /** Halves the share (down to MIN_BATCH_SCALE); false when it was already there. */
  shrink(): boolean {
    const before = this.#scale;
    this.#scale = Math.max(MIN_BATCH_SCALE, this.#scale / 2);
    return this.#scale !== before;
  }

  /** Grows the share by a tenth (up to 1); false when it was already whole. */
  grow(): boolean {
    const before = this.#scale;
    this.#scale = Math.min(1, this.#scale + SCALE_STEP);
    return this.#scale !== before;
  }
}
