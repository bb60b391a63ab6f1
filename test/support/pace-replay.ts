/**
 * An offline replay of adaptive sizing (src/bbm/pace.ts) with no database: a BatchSizer sizes the
 * ranges as the engine's cuts do (src/bbm/cuts.ts, sql/functions/bbm_cut_range.sql), and each
 * job's work takes size × time per row × noise. Deterministic for a seed.
 *
 * Cuts, as the engine makes them with a target job time: bbm_cut_depth keeps 2 × lanes ranges
 * waiting or running, and a cut fills the queue back up at one size (the sizer's nextCut). In
 * one lane, the cut runs beside the job its take made it due for, before that job is learned;
 * in several, after a job's COMMIT (learned), once no more than half the depth plus the ranges
 * the other lanes hold are left. So a range runs at the size of the time it was cut, a job or
 * more after: several jobs of an old size may be learned between two cuts.
 *
 * The work's time: overhead + size × msPerRow × drift × shift × jitter × outlier, where the
 * drift is a slow trend over the run (a table that warms), a shift a stretch of time in which
 * the database is slower (autovacuum, a neighbour's load), jitter lognormal per job, and an
 * outlier one job several times slower (a checkpoint's stall). Or, in place of the noise, a
 * recorded trace: the time per row of consecutive fixed-size jobs, replayed by the clock.
 *
 * What is measured is what `npm run bench` measures (bench/throughput.ts, adaptive()): job
 * durations in the order the jobs finished, the last dropped (the range left over); converged at
 * the first within ±25 % of the target; the share of the later jobs within ±25 %.
 */
import { BatchSizer, type PaceSettings } from '../../src/bbm/pace.ts';

export interface NoiseModel {
  /** Lognormal jitter of each job's time (σ of its log). */
  jitter: number;
  /** Share of jobs that are outliers, and how many times slower they are (uniform in the range). */
  outliers?: { share: number; min: number; max: number };
  /** The time per row at the end of the run, over the time at its start (a line in between, by rows done). */
  drift?: number;
  /** Stretches of time slower by a factor in [min, max], lasting [minMs, maxMs], one per everyMs on average. */
  shifts?: { everyMs: number; min: number; max: number; minMs: number; maxMs: number };
  /** Recorded times per row (ms) of consecutive jobs, each `recordedMs` long, replayed by the clock (wrapping). */
  trace?: { msPerRow: readonly number[]; recordedMs: number };
}

export interface ReplayOptions {
  seed: number;
  noise: NoiseModel;
  lanes?: number;
  targetMs?: number;
  initialSize?: number;
  rows?: number;
  /** The work's time per row with no noise (130,000 rows/s, the plain loop on the development machine). */
  msPerRow?: number;
  /** The work's time besides its rows (a round trip). */
  overheadMs?: number;
  /** The sizer to replay (the engine's by default). */
  sizer?: (initialSize: number) => Sizer;
}

/** What the replay needs of a sizer. */
export interface Sizer {
  nextCut(settings: PaceSettings): number;
  observe(sample: { size: number; workMs: number; rows?: number }, settings: PaceSettings): void;
}

export interface AdaptiveSummary {
  /** The job (1-based) whose time first landed within ±25 % of the target, or null. */
  convergedAtJob: number | null;
  /** The share of the jobs after it within ±25 %. */
  withinShare: number;
  jobs: number;
}

/** The bench's summary of a drain's job durations (bench/throughput.ts adaptive(): change the two together). */
export function adaptiveSummary(durations: readonly number[], targetMs: number): AdaptiveSummary {
  const measured = durations.slice(0, -1);
  const within = (ms: number) => Math.abs(ms - targetMs) <= 0.25 * targetMs;
  const first = measured.findIndex(within);
  const after = first < 0 ? [] : measured.slice(first + 1);
  return {
    convergedAtJob: first < 0 ? null : first + 1,
    withinShare: after.length === 0 ? 0 : after.filter(within).length / after.length,
    jobs: durations.length,
  };
}

/** mulberry32: a small seeded generator, uniform in [0, 1). */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function normal(rand: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
}

interface Lane {
  freeAt: number;
}

/** Replays a drain; returns the job durations in the order the jobs finished, and the bench's summary of them. */
export function replay(options: ReplayOptions): AdaptiveSummary & { durations: number[]; sizes: number[] } {
  const {
    seed,
    noise,
    lanes = 1,
    targetMs = 200,
    initialSize = 100,
    rows = 4_000_000,
    msPerRow = 1 / 130,
    overheadMs = 0.5,
  } = options;
  const rand = random(seed);
  const sizer = options.sizer?.(initialSize) ?? new BatchSizer(initialSize);
  const settings: PaceSettings = { targetMs, minSize: 1, maxSize: 2_147_483_647 };
  const depth = 2 * lanes;
  // Slow stretches, drawn up front over time (their own generator: the jobs' draws do not move them).
  const shiftRand = random(seed ^ 0x5eed);
  const shifts: { from: number; to: number; factor: number }[] = [];
  if (noise.shifts) {
    const s = noise.shifts;
    for (let t = 0; t < 3_600_000;) {
      t += -Math.log(1 - shiftRand()) * s.everyMs;
      const length = s.minMs + shiftRand() * (s.maxMs - s.minMs);
      shifts.push({ from: t, to: t + length, factor: s.min + shiftRand() * (s.max - s.min) });
      t += length;
    }
  }
  const shiftAt = (t: number) => shifts.find((s) => s.from <= t && t < s.to)?.factor ?? 1;
  // A recorded trace starts at a place of the seed's.
  const traceStart = Math.floor(shiftRand() * (noise.trace?.msPerRow.length ?? 0));
  const traceAt = (t: number) => {
    const trace = noise.trace!;
    return trace.msPerRow[(traceStart + Math.floor(t / trace.recordedMs)) % trace.msPerRow.length]!;
  };

  let cutRows = 0;
  const queue: number[] = [];
  const cut = (count: number) => {
    const size = sizer.nextCut(settings);
    for (let i = 0; i < count && cutRows < rows; i += 1) {
      const take = Math.min(size, rows - cutRows);
      cutRows += take;
      queue.push(take);
    }
  };
  const lanesState: Lane[] = Array.from({ length: lanes }, () => ({ freeAt: 0 }));
  // Jobs in flight: their end, size and time, learned when they end (in the order they end).
  const running: { lane: Lane; endsAt: number; size: number; workMs: number }[] = [];
  const durations: number[] = [];
  const sizes: number[] = [];
  let doneRows = 0;

  const start = (lane: Lane) => {
    if (queue.length === 0) cut(depth - running.length);
    const size = queue.shift();
    if (size === undefined) return;
    // One lane: the cut beside this job (it counts as waiting), before the job is learned.
    if (lanes === 1 && queue.length + 1 <= depth / 2) cut(depth - queue.length - 1);
    const t = lane.freeAt;
    let perRow = noise.trace ? traceAt(t) : msPerRow;
    if (!noise.trace) {
      perRow *= 1 + ((noise.drift ?? 1) - 1) * (doneRows / rows);
      perRow *= shiftAt(t);
    }
    let factor = Math.exp(noise.jitter * normal(rand));
    const o = noise.outliers;
    if (o && rand() < o.share) factor *= o.min + rand() * (o.max - o.min);
    const workMs = overheadMs + size * perRow * factor;
    running.push({ lane, endsAt: t + workMs, size, workMs });
  };

  for (const lane of lanesState) start(lane);
  while (running.length > 0) {
    running.sort((a, b) => a.endsAt - b.endsAt);
    const job = running.shift()!;
    doneRows += job.size;
    durations.push(job.workMs);
    sizes.push(job.size);
    sizer.observe({ size: job.size, workMs: job.workMs }, settings);
    job.lane.freeAt = job.endsAt;
    // Several lanes: the cut after this job's COMMIT, when half the depth or fewer wait (the other lanes' held ranges count, up to one a lane).
    if (lanes > 1 && queue.length + running.length <= depth / 2 + lanes - 1) {
      cut(depth - queue.length - running.length);
    }
    start(job.lane);
  }
  return { ...adaptiveSummary(durations, targetMs), durations, sizes };
}

/** Noise models the tests and the study replay. */
export const NOISE = {
  /** Lognormal jitter alone, on a table that gets faster as it warms. */
  jitter: { jitter: 0.1, drift: 0.8 },
  /** And one job in fifty 3-10× slower (a checkpoint's stall, a neighbour's burst). */
  outliers: { jitter: 0.1, drift: 0.8, outliers: { share: 0.02, min: 3, max: 10 } },
  /** And stretches 1.3-2× slower for 1-4 s, about one every 15 s (autovacuum on the table, another process). */
  shifts: {
    jitter: 0.1,
    drift: 0.8,
    outliers: { share: 0.01, min: 3, max: 10 },
    shifts: { everyMs: 15_000, min: 1.3, max: 2, minMs: 1_000, maxMs: 4_000 },
  },
  /** Rougher: more jitter, more outliers. */
  rough: { jitter: 0.15, drift: 0.7, outliers: { share: 0.03, min: 2, max: 10 } },
} satisfies Record<string, NoiseModel>;

/**
 * A recorded trace: the time per row (ms) of 62 consecutive `UPDATE ... SET hits = hits + 1 WHERE
 * id BETWEEN` jobs of 24,000 rows each (about 176 ms), over a fresh, vacuumed 1,500,000-row table
 * shaped as the bench's, on embedded PostgreSQL 17 on the 2-core development machine while other
 * sessions ran tests and builds on it (load average 1-2). Jobs of one fixed size spread
 * 0.63-1.93× their median, 63 % of them within ±25 % of it (σ of the log about 0.24 around a
 * trend, lag-1 correlation -0.19), and got slower by 1.7× over the run as the table grew past
 * shared_buffers.
 */
export const RECORDED_BUSY: NoiseModel = {
  jitter: 0,
  trace: {
    recordedMs: 176,
    msPerRow: [
      0.00623, 0.006031, 0.006202, 0.005174, 0.004493, 0.004551, 0.005826, 0.007765, 0.008585, 0.006303, 0.005519,
      0.00553, 0.006343, 0.004889, 0.007288, 0.004684, 0.004399, 0.005303, 0.007778, 0.007839, 0.007124, 0.005207,
      0.006824, 0.008859, 0.005683, 0.008528, 0.004789, 0.004919, 0.009704, 0.004446, 0.004845, 0.007506, 0.005413,
      0.004514, 0.009569, 0.007414, 0.008261, 0.006167, 0.007995, 0.008253, 0.007344, 0.007359, 0.010523, 0.005713,
      0.005904, 0.010182, 0.008204, 0.011733, 0.005676, 0.007505, 0.005732, 0.008598, 0.007065, 0.011389, 0.006387,
      0.01221, 0.007698, 0.013406, 0.008342, 0.011817, 0.005918, 0.011439,
    ],
  },
};
