/** The adaptive batch size servo, against a model of a job's cost, and the commit watch's verdicts: no database needed. */
import { describe, expect, it } from 'vitest';
import { BatchSizer, CommitWatch, GROWTH_CAP, PANIC_FACTOR } from '../src/bbm/pace.ts';

const settings = { targetMs: 200, minSize: 10, maxSize: 1_000_000 };
/** A job costing 1 ms fixed plus `perRowMs` a row. */
const cost = (size: number, perRowMs: number) => 1 + size * perRowMs;

describe('BatchSizer', () => {
  it('grows from 100 toward the target at most ×1.5 a job, lands within 25 % in under 30 jobs, and stays', () => {
    const sizer = new BatchSizer(100);
    const times: number[] = [];
    for (let job = 0; job < 60; job += 1) {
      const size = sizer.size;
      const workMs = cost(size, 0.004);
      times.push(workMs);
      sizer.observe({ size, workMs }, settings);
      expect(sizer.size).toBeLessThanOrEqual(Math.round(size * GROWTH_CAP));
    }
    const first = times.findIndex((t) => Math.abs(t - 200) <= 50);
    expect(first).toBeGreaterThan(0);
    expect(first).toBeLessThan(30);
    expect(times.slice(first).every((t) => Math.abs(t - 200) <= 50)).toBe(true);
  });

  it('with ranges cut two jobs ahead of the work, still grows at most ×1.5 a range, converges and stays', () => {
    const sizer = new BatchSizer(100);
    const ahead = [sizer.nextCut(settings), sizer.nextCut(settings)];
    const cuts = [...ahead];
    const times: number[] = [];
    for (let job = 0; job < 60; job += 1) {
      const size = ahead.shift()!;
      const workMs = cost(size, 0.004);
      times.push(workMs);
      sizer.observe({ size, workMs }, settings);
      const next = sizer.nextCut(settings);
      expect(next).toBeLessThanOrEqual(Math.round(cuts.at(-1)! * GROWTH_CAP));
      cuts.push(next);
      ahead.push(next);
    }
    const first = times.findIndex((t) => Math.abs(t - 200) <= 50);
    expect(first).toBeGreaterThan(0);
    expect(first).toBeLessThan(30);
    expect(times.slice(first).every((t) => Math.abs(t - 200) <= 50)).toBe(true);
  });

  it(`shrinks at once, in proportion, after a job ${PANIC_FACTOR}× over the target`, () => {
    const sizer = new BatchSizer(50_000);
    sizer.observe({ size: 50_000, workMs: 200 }, settings);
    expect(sizer.size).toBe(50_000);
    sizer.observe({ size: 50_000, workMs: 2_000 }, settings);
    expect(sizer.size).toBe(5_000);
  });

  it('moves the size by under a quarter for one job 4× slower than the rest, and comes back', () => {
    const sizer = new BatchSizer(50_000);
    for (let i = 0; i < 5; i += 1) sizer.observe({ size: 50_000, workMs: 200 }, settings);
    sizer.observe({ size: 50_000, workMs: 800 }, settings);
    // Counted as 2× at most: the estimate moves by 30 % of that, not of 4×.
    expect(sizer.size).toBeGreaterThanOrEqual(Math.floor(50_000 / 1.3));
    for (let i = 0; i < 8; i += 1) sizer.observe({ size: sizer.size, workMs: sizer.size * 0.004 }, settings);
    expect(sizer.size).toBeGreaterThan(47_500);
  });

  it(`after a panic, goes back to the size before it at once when the next job runs at the usual pace`, () => {
    const sizer = new BatchSizer(50_000);
    for (let i = 0; i < 5; i += 1) sizer.observe({ size: 50_000, workMs: 200 }, settings);
    expect(sizer.nextCut(settings)).toBe(50_000);
    sizer.observe({ size: 50_000, workMs: 2_000 }, settings);
    expect(sizer.size).toBe(5_000);
    expect(sizer.nextCut(settings)).toBe(5_000);
    // The range cut before the panic ran at the usual pace: the stall is over.
    sizer.observe({ size: 50_000, workMs: 210 }, settings);
    expect(sizer.size).toBeGreaterThan(35_000);
    expect(sizer.size).toBeLessThanOrEqual(50_000);
    // Past the growth cap, once: the size ran near the target before the stall.
    expect(sizer.nextCut(settings)).toBe(sizer.size);
    const size = sizer.size;
    sizer.observe({ size, workMs: size * 0.004 }, settings);
    expect(sizer.nextCut(settings)).toBeLessThanOrEqual(Math.round(size * GROWTH_CAP));
  });

  it('after a panic, stays small when the next job is as slow per row (the rows are slower, not the database)', () => {
    const sizer = new BatchSizer(50_000);
    for (let i = 0; i < 5; i += 1) sizer.observe({ size: 50_000, workMs: 200 }, settings);
    sizer.observe({ size: 50_000, workMs: 2_000 }, settings);
    expect(sizer.nextCut(settings)).toBe(5_000);
    sizer.observe({ size: 5_000, workMs: 200 }, settings);
    expect(sizer.nextCut(settings)).toBe(5_000);
    sizer.observe({ size: 5_000, workMs: 210 }, settings);
    expect(sizer.nextCut(settings)).toBeGreaterThan(4_500);
    expect(sizer.size).toBeLessThan(5_000);
  });

  it('halves at most on an ordinary slow job, ignores jobs that changed nothing, and keeps to its bounds', () => {
    const sizer = new BatchSizer(1_000);
    sizer.observe({ size: 1_000, workMs: 900 }, settings);
    expect(sizer.size).toBe(500);
    sizer.observe({ size: 500, workMs: 0.1, rows: 0 }, settings);
    expect(sizer.size).toBe(500);
    sizer.observe({ size: 500, workMs: 100_000 }, settings);
    expect(sizer.size).toBe(10);
    expect(sizer.nextCut({ targetMs: 200, minSize: 50, maxSize: 60 })).toBe(50);
  });
});

describe('CommitWatch', () => {
  const round = (ms: number) => Array.from({ length: 10 }, (_, i) => ms + i * 0.01);

  it('grows a halved duty cycle back to exactly 1, from any depth, and no further', () => {
    for (let halvings = 1; halvings <= 4; halvings += 1) {
      const watch = new CommitWatch(1.5);
      for (let i = 0; i < halvings; i += 1) watch.shrink();
      let grown = 0;
      while (watch.grow()) grown += 1;
      // Exactly 1: a worker chains its runs only then (0.5 + 5 x 0.1 is 0.9999999999999999 unrounded).
      expect(watch.dutyCycle, `after ${halvings} halvings`).toBe(1);
      expect(grown).toBe(Math.ceil((1 - 2 ** -halvings) * 10 - 1e-9));
    }
  });

  it('learns its baseline from quiet rounds, then compares the same median of the rounds beside the runs', () => {
    const watch = new CommitWatch(1.5);
    // Quiet until the baseline has 20 probes, then one round in five.
    const quietRounds: boolean[] = [];
    for (let i = 0; i < 12; i += 1) {
      const quiet = watch.quietDue;
      quietRounds.push(quiet);
      if (quiet) watch.observeQuiet(round(1));
      else watch.observe(round(1.1));
    }
    expect(quietRounds).toEqual([true, true, false, false, true, false, false, false, false, true, false, false]);
    // Within 0.8 × factor of the quiet median: healthy; between that and the factor: steady; at it: pressure.
    expect(watch.observe(round(1.1)).verdict).toBe('healthy');
    watch.changed();
    expect(watch.observe(round(1.3)).verdict).toBe('learning');
    expect(watch.observe(round(1.3))).toMatchObject({ verdict: 'steady', baselineMs: 1.05 });
    watch.changed();
    watch.observe(round(2));
    expect(watch.observe(round(2)).verdict).toBe('pressure');
  });

  it('gives no verdict before its baseline is learned, however slow the commits', () => {
    const watch = new CommitWatch(1.5);
    watch.observeQuiet(round(1));
    for (let i = 0; i < 5; i += 1) expect(watch.observe(round(50)).verdict).toBe('learning');
  });

  it('halves the duty cycle down to a sixteenth and grows it back a tenth at a time', () => {
    const watch = new CommitWatch(1.5);
    expect(watch.dutyCycle).toBe(1);
    const shrinks = [];
    while (watch.shrink()) shrinks.push(watch.dutyCycle);
    expect(shrinks).toEqual([0.5, 0.25, 0.125, 0.0625]);
    let grows = 0;
    while (watch.grow()) grows += 1;
    expect(grows).toBe(10);
    expect(watch.dutyCycle).toBe(1);
  });
  it('lowers the duty cycle in proportion to how far over the factor commits are: by a step at least, by half at most', () => {
    const watch = new CommitWatch(1.5);
    // 1.6 ms against a quiet 1 ms at a factor of 1.5: 1.5 / 1.6 of the pace, rounded down to a step.
    watch.shrink({ medianMs: 1.6, baselineMs: 1 });
    expect(watch.dutyCycle).toBe(0.9);
    watch.shrink({ medianMs: 2, baselineMs: 1 });
    expect(watch.dutyCycle).toBe(0.675);
    watch.shrink({ medianMs: 100, baselineMs: 1 });
    expect(watch.dutyCycle).toBe(0.3375);
  });

  it('undoes a step up that a verdict of its probation finds under pressure, and holds that pace off for a while', () => {
    const watch = new CommitWatch(1.5);
    watch.observeQuiet(round(1));
    watch.observeQuiet(round(1));
    const verdict = (ms: number) => {
      watch.changed();
      watch.observe(round(ms));
      return watch.judged(watch.observe(round(ms)).verdict);
    };
    watch.shrink();
    expect(watch.grow()).toBe(true);
    watch.steppedUp('duty');
    expect(watch.dutyCycle).toBe(0.6);
    // Fine once, then pressure: the step failed (one verdict alone was not enough to judge it).
    expect(verdict(1.1)).toBeUndefined();
    expect(verdict(2)).toBe('duty');
    expect(watch.stepDown()).toBe(true);
    expect(watch.dutyCycle).toBe(0.5);
    // 0.6 is held off (about 20 rounds; each verdict here is two), then tried again.
    let held = 0;
    while (!watch.grow()) {
      verdict(1.1);
      held += 1;
    }
    expect(held).toBeGreaterThanOrEqual(9);
    expect(watch.dutyCycle).toBe(0.6);
    // A step that holds through its probation: lanes may grow once the duty cycle is whole.
    watch.steppedUp('duty');
    expect(watch.mayGrowLanes).toBe(false);
    for (let i = 0; i < 3; i += 1) expect(verdict(1.1)).toBeUndefined();
    while (watch.grow()) void 0;
    expect(watch.mayGrowLanes).toBe(true);
    // A lane more that fails: no lane more for a while.
    watch.steppedUp('lanes');
    expect(verdict(2)).toBe('lanes');
    expect(watch.mayGrowLanes).toBe(false);
  });
});
