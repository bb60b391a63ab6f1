/**
 * Adaptive batch size: a servo that sizes each new range so that its work takes about
 * `target_job_ms`. It learns the work's time per row from finished jobs (time in the work
 * function over the range's size), smoothed, and moves the size toward target / (time per row):
 *
 * - growth is capped per step (×1.5), so one fast job cannot blow the size up;
 * - a normal shrink is capped too (÷2), since one slow job is often noise;
 * - a job far over the target (5×, or one that timed out) shrinks the size at once, in
 *   proportion (spirit's panic rule); if the next job runs at the usual pace again, the stall was
 *   the database's, not the rows', and the size goes back to where it was at once (no higher
 *   than the estimate says), instead of climbing back at ×1.5 a range; if the next job is as
 *   slow per row, the estimate restarts from it;
 * - a job that changed no rows (the work said 0) says nothing about the pace and is ignored.
 *
 * The smoothing counts a job as at most twice, and at least half, the time per row it has learned:
 * one job several times slower than the rest (a checkpoint, a neighbour's burst) moved the plain
 * average by a third of its excess, and a panic restarted the average from that job, so each such
 * stall cost the 4-10 jobs after it their target, and how many stalls a run met decided its share
 * of jobs near the target (docs/pace.md, test/pace-replay.test.ts).
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
/**
 * A job counts as at most this many times (and at least 1/this) the smoothed time per row; and
 * after a panic, a job within this many times it says the stall is over.
 */
const OUTLIER_FACTOR = 2;

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
  /** The size before a panic, until the next job says whether the stall is over. */
  #beforePanic: number | undefined;
  /** The size went back to where it was before a panic: the next cut takes it, past the growth cap. */
  #restored = false;

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
    const usual = this.#msPerRow;
    const beforePanic = this.#beforePanic;
    // After a panic, a job as slow per row says the rows are slower, not the database: learn from it alone.
    const confirmed = beforePanic !== undefined && usual !== undefined && perRow > OUTLIER_FACTOR * usual;
    this.#msPerRow =
      usual === undefined || confirmed
        ? perRow
        : SMOOTHING * Math.min(usual * OUTLIER_FACTOR, Math.max(usual / OUTLIER_FACTOR, perRow)) +
          (1 - SMOOTHING) * usual;
    if (workMs > PANIC_FACTOR * settings.targetMs) {
      this.#beforePanic = Math.max(beforePanic ?? 0, this.#size);
      this.#size = clamp(Math.floor(size * (settings.targetMs / workMs)), settings);
      return;
    }
    const ideal = settings.targetMs / this.#msPerRow;
    this.#beforePanic = undefined;
    if (beforePanic !== undefined && !confirmed) {
      // The stall is over: back to the size before it (no larger than the estimate says), at once.
      this.#size = clamp(Math.round(Math.min(beforePanic, ideal)), settings);
      this.#restored = true;
      return;
    }
    const stepped = Math.min(this.#size * GROWTH_CAP, Math.max(this.#size * SHRINK_CAP, ideal));
    this.#size = clamp(Math.round(stepped), settings);
  }

  /**
   * The size to cut the next range at: the size, within the bounds (an operator may change them
   * while the migration runs), and at most GROWTH_CAP times the last range's, since the growth
   * cap is a promise about consecutive ranges; except once, when the size went back to where it
   * was before a stall.
   */
  nextCut(settings: PaceSettings): number {
    this.#size = clamp(this.#size, settings);
    const capped = this.#restored ? this.#size : Math.min(this.#size, Math.round(this.#lastCut * GROWTH_CAP));
    this.#restored = false;
    this.#lastCut = clamp(capped, settings);
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

/** Quiet probes the baseline is taken from: the last six quiet rounds of ten. */
const QUIET_WINDOW = 60;
/** Quiet probes learned before any verdict. */
const QUIET_WARMUP = 20;
/** Every this many rounds, one is quiet (the baseline follows the foreground's own load). */
const QUIET_EVERY = 5;
/** Probes since the last change a verdict is given on (two rounds), and the most it looks at (three). */
const LOADED_MIN = 20;
const LOADED_WINDOW = 30;
/** The smallest share of the time lanes run under commit pressure. */
const MIN_DUTY_CYCLE = 1 / 16;
/** Under the factor by this much, the duty cycle grows back. */
const COMMIT_HEALTHY_SHARE = 0.8;
/** What the duty cycle grows back by per healthy round. */
const DUTY_STEP = 0.1;
/**
 * Rounds a pace that a step up put under pressure is held off for, after the step is undone
 * (doubling while steps up to it keep failing, up to HOLD_MAX_ROUNDS; back to this after one holds).
 */
const HOLD_ROUNDS = 20;
/**
 * Verdicts a step up is judged by: pressure in any of them undoes it. One was not enough: a lane
 * more read fine once and as pressure the round after (measured), and was shed by half, not undone.
 */
const PROBATION_VERDICTS = 3;
const HOLD_MAX_ROUNDS = 16 * HOLD_ROUNDS;

const percentile = (samples: readonly number[], p: number): number => {
  const sorted = [...samples].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * p))] ?? 0;
};

/** What a round of commit probes said. */
export interface CommitVerdict {
  verdict: 'learning' | 'pressure' | 'steady' | 'healthy';
  /** The median of the probes since the last change. */
  medianMs: number;
  /** The median of the quiet probes: what commits take with no run in flight. */
  baselineMs: number;
}

/**
 * Foreground protection: what commits take while runs are in flight, against what they take with
 * none (quiet rounds: probes while every run of the fleet is held, workers.ts whileRunsHeld), the
 * median of both. So the factor means what a user means by it: how much slower the migration
 * makes an application's commits now, whatever the foreground's own load (a disk slow for other
 * reasons is slow in the quiet rounds too). One round in QUIET_EVERY is quiet. The median, not a
 * tail: probes take a millisecond or less, and the tail of a few dozen of them is scheduling noise
 * (measured: a p90 rule held a migration at a sixteenth of its time with commits no slower).
 *
 * It also keeps this worker's duty cycle: the share of the time its lanes run, pausing after each
 * job so that the rest is quiet. The worker lowers it under pressure once lanes are down to one (in
 * proportion to the pressure, at most by half), and grows it back a tenth at a time before it
 * gives lanes back; a step up found under pressure is undone and its pace held off (steppedUp). Pausing is the knob because a
 * commit waits behind the WAL flushes in progress: fewer of them, fewer waits. (Cutting smaller
 * ranges instead made more flushes per row and bought no latency, measured.)
 */
export class CommitWatch {
  readonly #quiet: number[] = [];
  #loaded: number[] = [];
  #rounds = 0;
  #dutyCycle = 1;
  /** The step up the next verdicts judge (a probe of a faster pace), if any, and how many are left. */
  #probing: { kind: 'duty' | 'lanes'; verdicts: number } | undefined;
  /** The pace a step up was under pressure at, held off until a round: a duty cycle, or (lanes) any lane more. */
  #ceiling: { kind: 'duty' | 'lanes'; dutyCycle: number; untilRound: number } | undefined;
  #holdRounds = HOLD_ROUNDS;

  constructor(private readonly factor: number) {}

  /** The share of the time lanes run now (1: no pause after jobs). */
  get dutyCycle(): number {
    return this.#dutyCycle;
  }

  /** Whether the next round should be quiet: until the baseline is learned, then one in QUIET_EVERY. */
  get quietDue(): boolean {
    return this.#quiet.length < QUIET_WARMUP || this.#rounds % QUIET_EVERY === QUIET_EVERY - 1;
  }

  /** A quiet round's latencies: the baseline. */
  observeQuiet(latenciesMs: readonly number[]): void {
    this.#rounds += 1;
    this.#quiet.push(...latenciesMs);
    if (this.#quiet.length > QUIET_WINDOW) this.#quiet.splice(0, this.#quiet.length - QUIET_WINDOW);
  }

  /** A round's latencies with runs in flight, against the baseline. */
  observe(latenciesMs: readonly number[]): CommitVerdict {
    this.#rounds += 1;
    this.#loaded.push(...latenciesMs);
    if (this.#loaded.length > LOADED_WINDOW) this.#loaded.splice(0, this.#loaded.length - LOADED_WINDOW);
    const baselineMs = percentile(this.#quiet, 0.5);
    const medianMs = percentile(this.#loaded, 0.5);
    const verdict =
      this.#quiet.length < QUIET_WARMUP || this.#loaded.length < LOADED_MIN || !(baselineMs > 0)
        ? 'learning'
        : medianMs >= this.factor * baselineMs
          ? 'pressure'
          : medianMs <= COMMIT_HEALTHY_SHARE * this.factor * baselineMs
            ? 'healthy'
            : 'steady';
    return { verdict, medianMs, baselineMs };
  }

  /** After a change (lanes or duty cycle), verdicts wait for probes that saw it. */
  changed(): void {
    this.#loaded = [];
  }

  /**
   * After a step up (the duty cycle, or a lane): the next PROBATION_VERDICTS verdicts judge it. A
   * step up that one of them finds under pressure failed (`judged`): it is undone, and the pace it reached is
   * held off for a while, so that the controller settles just below the knee instead of halving
   * from it, or probing into it every other round.
   */
  steppedUp(kind: 'duty' | 'lanes'): void {
    this.#probing = { kind, verdicts: PROBATION_VERDICTS };
  }

  /**
   * What a verdict says of the step up it judges, if any: the step that failed (pressure: hold
   * its pace off for #holdRounds, doubled each time in a row), or undefined (no step judged, or
   * not yet failed; after the last verdict of its probation, the hold is back to its shortest).
   */
  judged(verdict: CommitVerdict['verdict']): 'duty' | 'lanes' | undefined {
    const probing = this.#probing;
    if (!probing || verdict === 'learning') return undefined;
    if (verdict !== 'pressure') {
      probing.verdicts -= 1;
      if (probing.verdicts > 0) return undefined;
      this.#probing = undefined;
      this.#holdRounds = HOLD_ROUNDS;
      return undefined;
    }
    this.#probing = undefined;
    this.#ceiling = { kind: probing.kind, dutyCycle: this.#dutyCycle, untilRound: this.#rounds + this.#holdRounds };
    this.#holdRounds = Math.min(HOLD_MAX_ROUNDS, 2 * this.#holdRounds);
    return probing.kind;
  }

  /** Whether a lane more may be tried now: the last step up has held, and no failed one is held off. */
  get mayGrowLanes(): boolean {
    return !this.#probing && (!this.#ceiling || this.#rounds >= this.#ceiling.untilRound);
  }

  /** Undoes a step up of the duty cycle that failed. */
  stepDown(): boolean {
    const before = this.#dutyCycle;
    this.#dutyCycle = Math.max(MIN_DUTY_CYCLE, Math.round((this.#dutyCycle - DUTY_STEP) * 1e6) / 1e6);
    return this.#dutyCycle !== before;
  }

  /**
   * Lowers the duty cycle (down to MIN_DUTY_CYCLE); false when it was already there. By half, or
   * given what the round's verdict said (`over`: its median against the quiet one), in proportion
   * to how far over the factor commits are: by at least a step, at most half. Commits just over
   * the factor cost a tenth of the pace, not half of it.
   */
  shrink(over?: { medianMs: number; baselineMs: number }): boolean {
    const before = this.#dutyCycle;
    const proportional =
      over && over.medianMs > 0 ? (before * this.factor * over.baselineMs) / over.medianMs : before / 2;
    const next = Math.max(before / 2, Math.min(before - DUTY_STEP, proportional));
    this.#dutyCycle = Math.max(MIN_DUTY_CYCLE, Math.round(next * 1e6) / 1e6);
    return this.#dutyCycle !== before;
  }

  /**
   * Grows the duty cycle by a tenth (up to 1); false when it was already whole. Rounded to a
   * millionth: 0.5 plus five tenths is 0.9999999999999999 in floating point, and a worker whose
   * duty cycle is not exactly 1 rests after every job and never chains its runs again.
   */
  grow(): boolean {
    const before = this.#dutyCycle;
    const ceiling = this.#ceiling;
    // A duty cycle a step up failed at waits for its hold to end (a lanes ceiling is above every duty cycle).
    if (ceiling?.kind === 'duty' && this.#rounds < ceiling.untilRound && before + DUTY_STEP >= ceiling.dutyCycle - 1e-9)
      return false;
    this.#dutyCycle = Math.min(1, Math.round((this.#dutyCycle + DUTY_STEP) * 1e6) / 1e6);
    return this.#dutyCycle !== before;
  }
}
