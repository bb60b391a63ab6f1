/**
 * The worker's parts that hold logic of their own and need no database: a controller's periodic
 * round, the lane-stall watch, the pacing the lanes ask. The controllers that talk to the database
 * are tested through workers (health, commit-latency, steering, schedules).
 */
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { resolveOptions } from '../src/bbm/config.ts';
import { LaneWatch } from '../src/bbm/lane-watch.ts';
import { Pacer, waitAfter, type Gate, type RunFollower } from '../src/bbm/pacer.ts';
import { Periodic } from '../src/bbm/periodic.ts';
import type { RunResult } from '../src/bbm/types.ts';

const logLines = (into: Array<{ level: number; msg: string }>) =>
  pino({ level: 'debug' }, { write: (line: string) => into.push(JSON.parse(line) as { level: number; msg: string }) });

/** A clock the test moves. */
const clock = () => {
  let now = 1_000;
  return { now: () => now, advance: (ms: number) => (now += ms) };
};

const result = (outcome: RunResult['outcome'], extra: Partial<RunResult> = {}): RunResult => ({
  outcome,
  runId: 'run',
  durationMs: 10,
  ...extra,
});

const succeeded = (rows?: number): RunResult =>
  result('job_succeeded', {
    migration: { id: 1n, name: 'm', work: 'w' },
    job: { id: 1n, start: 1n, end: 10n, attempt: 1, batchSize: 10, lane: 0, durationMs: 8, rows },
  });

describe('Periodic', () => {
  it('is due every everyMs, and callers share the round in flight', async () => {
    const time = clock();
    let rounds = 0;
    let release: () => void = () => {};
    const periodic = new Periodic(
      100,
      () => new Promise<number>((resolve) => (release = () => resolve((rounds += 1)))),
      'end',
      time.now,
    );
    expect(periodic.due).toBe(true);
    const first = periodic.run();
    const second = periodic.run();
    // Counted from the end: due until the round in flight ends, so every lane finding it due waits for it.
    expect(periodic.due).toBe(true);
    release();
    expect(await first).toBe(1);
    expect(await second).toBe(1);
    expect(periodic.due).toBe(false);
    expect(periodic.dueInMs).toBe(100);
    time.advance(100);
    expect(periodic.due).toBe(true);
    const third = periodic.run();
    release();
    expect(await third).toBe(2);
  });

  it('counted from the start, is not due while its round is in flight', async () => {
    const time = clock();
    let release: () => void = () => {};
    const periodic = new Periodic(
      50,
      () => new Promise<boolean>((resolve) => (release = () => resolve(true))),
      'start',
      time.now,
    );
    const round = periodic.run();
    expect(periodic.due).toBe(false);
    time.advance(20);
    expect(periodic.dueInMs).toBe(30);
    release();
    expect(await round).toBe(true);
    await periodic.settled();
  });
});

describe('LaneWatch', () => {
  it('says once that a lane is stuck in a step, never of a sleep, and says when it moves on', () => {
    const time = clock();
    const lines: Array<{ level: number; msg: string }> = [];
    const watch = new LaneWatch(2, 1_000, logLines(lines), time.now);
    watch.step(0, 'a run');
    watch.step(1, 'sleep');
    time.advance(999);
    watch.check();
    expect(lines).toEqual([]);
    time.advance(2_001);
    watch.check();
    watch.check();
    expect(lines.map((l) => l.msg)).toEqual([
      'lane 0 has waited 3 s in a run: this worker makes no progress in that lane',
    ]);
    expect(lines[0]!.level).toBe(50);
    watch.step(0, 'sleep');
    expect(lines.at(-1)!.msg).toBe('lane 0 moved on after 3 s in a run');
    watch.step(0, 'a run');
    expect(lines).toHaveLength(2);
  });
});

describe('Pacer', () => {
  const options = resolveOptions({ intervalMs: 100, maxIntervalMs: 800, jitterRatio: 0 });
  const noDatabase = () => {
    throw new Error('no throttle here: the pacing asks no database');
  };
  const pacer = (lanes = 2, steps: string[] = []) =>
    new Pacer(
      options,
      lanes,
      { step: (lane, step) => steps.push(`${lane}:${step}`) },
      {
        throttle: undefined,
        db: noDatabase,
        log: pino({ level: 'silent' }),
      },
    );

  const noRun = async () => {};

  it('sleeps nothing after useful work, backs off exponentially while idle, and starts over after work', () => {
    const pace = pacer();
    const backoff = pace.backoff();
    expect(waitAfter(result('no_job'), backoff, options)).toBe(100);
    expect(waitAfter(result('lock_in_use'), backoff, options)).toBe(200);
    expect(waitAfter(result('error'), backoff, options)).toBe(400);
    expect(waitAfter(result('no_job'), backoff, options)).toBe(800);
    expect(waitAfter(result('no_job'), backoff, options)).toBe(800);
    expect(waitAfter(succeeded(5), backoff, options)).toBe(0);
    expect(waitAfter(result('no_job'), backoff, options)).toBe(100);
    expect(waitAfter(result('migration_started'), backoff, options)).toBe(0);
    expect(waitAfter(succeeded(0), backoff, { ...options, pauseMs: 50 })).toBe(0);
    expect(waitAfter(succeeded(3), backoff, { ...options, pauseMs: 50 })).toBe(50);
  });

  it('looks again by the time a busy take said, doubling it for looks in a row, without lengthening the backoff that follows', () => {
    const backoff = pacer().backoff();
    const busy = (lookAgainMs?: number) => result('lock_in_use', lookAgainMs === undefined ? {} : { lookAgainMs });
    expect(waitAfter(busy(), backoff, options)).toBe(100);
    // Looks in a row the take asked for double, bounded by the backoff (and LANES_RECHECK_MS).
    expect([1, 2, 3, 4, 5].map(() => waitAfter(busy(30), backoff, options))).toEqual([30, 60, 120, 200, 200]);
    expect(waitAfter(busy(), backoff, options)).toBe(200);
    // A hold that ends after the backoff may lift earlier (its signal clears): the backoff bounds it.
    expect(waitAfter(busy(5_000), backoff, options)).toBe(400);
    expect(waitAfter(busy(), backoff, options)).toBe(800);
    // A job ends the streak: the next look the take asks for is as soon as it says.
    waitAfter(succeeded(5), backoff, options);
    expect([1, 2].map(() => waitAfter(busy(30), backoff, options))).toEqual([30, 60]);
  });

  it('chains while the duty cycle is whole; below, rests every lane after a job for the rest of the time', async () => {
    const pace = pacer();
    expect(pace.chain).toBe(true);
    expect(pace.restMs()).toBe(0);
    pace.setDutyCycle(0.25);
    expect(pace.chain).toBe(false);
    // A job of 10 ms at a quarter of the time: 30 ms of rest.
    // The rest runs from afterRun: what is left of it is 30 ms less the time since (a loaded
    // machine can take milliseconds between two statements here).
    const before = performance.now();
    await pace.afterRun(0, succeeded(5), pace.backoff(), noRun);
    const rest = pace.restMs();
    expect(rest).toBeGreaterThanOrEqual(30 - (performance.now() - before));
    expect(rest).toBeLessThanOrEqual(30);
    // A range the work changed nothing in does not count toward the pace.
    const other = pacer();
    other.setDutyCycle(0.25);
    await other.afterRun(0, succeeded(0), other.backoff(), noRun);
    expect(other.restMs()).toBe(0);
  });

  it('waits for due gates in order, resets the backoff for one that made work, and wakes lanes for the next round', async () => {
    const steps: string[] = [];
    const pace = pacer(2, steps);
    const calls: string[] = [];
    const gate = (step: string, made: boolean, due: boolean, wakeInMs?: number): Gate => ({
      step,
      due,
      wakeInMs,
      run: async () => {
        calls.push(step);
        return made;
      },
    });
    pace.addGate(gate('scheduling', true, true, 40));
    pace.addGate(gate('a health check', false, true));
    pace.addGate(gate('not due', true, false));
    const backoff = pace.backoff();
    backoff.next();
    backoff.next();
    // The lane's run begun ahead ends before each round: a round's query may need its server connection.
    await pace.ready(1, backoff, async () => void calls.push('release'));
    expect(calls).toEqual(['release', 'scheduling', 'release', 'a health check']);
    expect(steps).toEqual(['1:scheduling', '1:a health check']);
    expect(backoff.next()).toBe(100);
    // Idle lanes still wake for the next scheduling round.
    expect(await pace.afterRun(1, result('no_job'), backoff, noRun)).toBe(40);
  });

  it('lets followers see each run, the lane waiting for what they do, and wakes sleeping lanes on a migration change', async () => {
    const steps: string[] = [];
    const pace = pacer(2, steps);
    const seen: string[] = [];
    const follower: RunFollower = {
      follow: (run) =>
        run.outcome === 'job_succeeded'
          ? { step: 'lane steering', run: async () => void seen.push(run.outcome) }
          : undefined,
    };
    pace.addFollower(follower);
    const release = async () => void seen.push('release');
    await pace.afterRun(0, succeeded(1), pace.backoff(), release);
    await pace.afterRun(0, result('no_job'), pace.backoff(), release);
    // The run begun ahead is released only for a step to wait for, before it.
    expect(seen).toEqual(['release', 'job_succeeded']);
    expect(steps).toEqual(['0:lane steering']);
    const wake = pace.wake;
    await pace.afterRun(0, result('migration_finished'), pace.backoff(), release);
    expect(wake.aborted).toBe(true);
    expect(pace.wake.aborted).toBe(false);
    // One lane has no sibling to wake.
    const alone = pacer(1);
    const signal = alone.wake;
    alone.wakeLanes();
    expect(signal.aborted).toBe(false);
  });
});
