/**
 * The pacing of a worker's lanes: the one object a lane asks before and after each run, and the
 * one its controllers (health-holds.ts, commit-probes.ts, latency-lanes.ts, scheduler.ts) act
 * through. Before a run, a lane waits for the controllers' rounds that are due (gates), rests
 * while the duty cycle calls for rest, and asks the throttle. After it, the controllers that
 * follow runs see the result (the lane waits for what they do with it), and the pacing says how
 * long the lane sleeps: nothing after useful work (or `pauseMs`), a jittered exponential backoff
 * while idle, failing or locked out. A lane that sees a migration start, finish or fail wakes the
 * sleeping others: it changes what they may find.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { LANES_RECHECK_MS } from '../store/locks.ts';
import { Backoff, jittered } from './backoff.ts';
import type { ResolvedOptions } from './config.ts';
import type { LaneSteps } from './lane-watch.ts';
import type { Logger } from './log.ts';
import { Periodic } from './periodic.ts';
import type { RunResult, Throttle } from './types.ts';

/** A controllers' round a lane waits for before its run, when it is due. */
export interface Gate {
  /** What a lane waiting for it waits in (the lane-stall watch names it). */
  readonly step: string;
  readonly due: boolean;
  /** A round; true when it made new work (the lane's backoff starts over). */
  run(): Promise<boolean>;
  /** For a gate idle lanes wake for: the time until its next round. */
  readonly wakeInMs?: number;
}

/**
 * A controller that follows the lanes' runs: what a lane waits for after a run, if anything (the
 * lane's run begun ahead is released first: a step only when there is something to wait for).
 */
export interface RunFollower {
  follow(result: RunResult): { step: string; run: () => Promise<void> } | undefined;
}

/** All a lane reads of its worker's state. */
export interface LanePacing {
  /** Whether a run whose job succeeds begins the next in the round trip that commits it. */
  readonly chain: boolean;
  /** Aborted when a lane wakes the others. */
  readonly wake: AbortSignal;
  backoff(): Backoff;
  /**
   * Waits for the controllers' rounds that are due. `release` ends the lane's run begun ahead:
   * each wait below calls it first, since a controller's query may need the very server
   * connection the run holds (a pooler with fewer server connections than lanes), and a
   * transaction must not stay open while the lane waits on another connection.
   */
  ready(lane: number, backoff: Backoff, release: Release): Promise<void>;
  /** How long every lane rests now (foreground protection's duty cycle). */
  restMs(): number;
  /** The throttle's reason to hold back, or false. */
  throttled(release: Release): Promise<string | false>;
  /** Tells the controllers that follow runs; how long the lane sleeps before its next run. */
  afterRun(lane: number, result: RunResult, backoff: Backoff, release: Release): Promise<number>;
  wakeLanes(): void;
}

/** Ends a lane's run begun ahead (run.ts `Runner.release`), if it holds one. */
export type Release = () => Promise<void>;

/** What controllers change in the pacing. */
export interface PaceControls {
  /** The share of the time the lanes run: below 1, each rests after a job for the rest. */
  setDutyCycle(share: number): void;
  /** Wakes the sleeping lanes: a controller gave a migration lanes back, which they take at once. */
  wakeLanes(): void;
}

export class Pacer implements LanePacing, PaceControls {
  readonly #gates: Gate[] = [];
  readonly #followers: RunFollower[] = [];
  #dutyCycle = 1;
  /** Until when every lane rests after a job (the duty cycle). */
  #restUntil = -Infinity;
  #wake = new AbortController();
  /** The throttle's last answer, shared by the lanes until the next check is due. */
  #throttleReason: string | false = false;
  readonly #throttle: Periodic<string | false> | undefined;

  constructor(
    private readonly options: ResolvedOptions,
    private readonly lanes: number,
    private readonly steps: LaneSteps,
    { throttle, db, log }: { throttle: Throttle | undefined; db: () => pg.Pool; log: Logger },
  ) {
    // A throttle that fails is logged and does not hold back.
    const ask = async (check: Throttle): Promise<string | false> => {
      try {
        return await check(db());
      } catch (error) {
        log.warn({ err: error }, 'throttle check failed; not throttling');
        return false;
      }
    };
    this.#throttle = throttle && new Periodic(options.throttleCheckMs, () => ask(throttle), 'end');
  }

  /** Gates are waited for in the order added. */
  addGate(gate: Gate): void {
    this.#gates.push(gate);
  }

  addFollower(follower: RunFollower): void {
    this.#followers.push(follower);
  }

  get chain(): boolean {
    return this.options.pauseMs === 0 && this.#dutyCycle === 1;
  }

  get wake(): AbortSignal {
    return this.#wake.signal;
  }

  setDutyCycle(share: number): void {
    this.#dutyCycle = share;
  }

  /** The share of the time the lanes run (1 unless foreground protection lowered it); the heartbeat publishes it. */
  get dutyCycle(): number {
    return this.#dutyCycle;
  }

  backoff(): Backoff {
    return new Backoff(this.options.intervalMs, this.options.maxIntervalMs);
  }

  async ready(lane: number, backoff: Backoff, release: Release): Promise<void> {
    for (const gate of this.#gates) {
      if (!gate.due) continue;
      await release();
      this.steps.step(lane, gate.step);
      if (await gate.run()) {
        // New work (a pass enqueued, a hold lifted): every lane may take it, not this one alone.
        backoff.reset();
        this.wakeLanes();
      }
    }
  }

  restMs(): number {
    return Math.max(0, this.#restUntil - performance.now());
  }

  /** Asked at most every `throttleCheckMs`, one check in flight for all lanes. */
  async throttled(release: Release): Promise<string | false> {
    if (!this.#throttle) return false;
    if (this.#throttle.due) {
      await release();
      this.#throttleReason = await this.#throttle.run();
    }
    return this.#throttleReason;
  }

  async afterRun(lane: number, result: RunResult, backoff: Backoff, release: Release): Promise<number> {
    for (const follower of this.#followers) {
      const next = follower.follow(result);
      if (!next) continue;
      await release();
      this.steps.step(lane, next.step);
      await next.run();
    }
    if (result.outcome.startsWith('migration_')) this.wakeLanes();
    // A sweep's check that found nothing wrote nothing: only the ranges it ran the work on again rest.
    const wrote = result.outcome === 'job_succeeded' || result.outcome === 'range_verified';
    if (this.#dutyCycle < 1 && wrote && result.job?.rows !== 0) {
      const restMs = result.durationMs * (1 / this.#dutyCycle - 1);
      this.#restUntil = Math.max(this.#restUntil, performance.now() + restMs);
    }
    let waitMs = waitAfter(result, backoff, this.options);
    for (const gate of this.#gates) if (gate.wakeInMs !== undefined) waitMs = Math.min(waitMs, gate.wakeInMs);
    return waitMs;
  }

  wakeLanes(): void {
    if (this.lanes === 1) return;
    this.#wake.abort();
    this.#wake = new AbortController();
  }
}

/** How long a lane sleeps after a run, before the controllers' rounds it wakes for. */
export function waitAfter(
  result: RunResult,
  backoff: Backoff,
  { jitterRatio, pauseMs }: Pick<ResolvedOptions, 'jitterRatio' | 'pauseMs'>,
): number {
  switch (result.outcome) {
    case 'job_succeeded':
      backoff.reset();
      // A range the work changed nothing in does not count toward the pace.
      return result.job?.rows === 0 ? 0 : pauseMs;
    case 'range_verified':
    case 'migration_started':
    case 'migration_finished':
    case 'migration_failed':
      backoff.reset();
      return pauseMs;
    // lock_in_use: every lane of every migration it may take is busy. Back off like an idle lane,
    // so that a fleet larger than the lanes it works does not poll the database (a sibling wakes
    // it when a migration changes); but when the take said a lane may be free sooner without any
    // run ending (a hold's end, lanes a controller may give back), look again then: a wait for an
    // event, not a backoff, so it does not lengthen the next one; looks in a row the take asked
    // for double, up to LANES_RECHECK_MS, so that a moment that lasts longer than the take expected
    // does not become a poll. (A hold may also lift earlier, when its signal clears: the backoff
    // still bounds the wait.)
    case 'lock_in_use':
      if (result.lookAgainMs !== undefined && result.lookAgainMs < backoff.peek())
        return jittered(Math.min(backoff.soon(result.lookAgainMs, LANES_RECHECK_MS), backoff.peek()), jitterRatio);
      return jittered(backoff.next(), jitterRatio);
    case 'job_failed':
    case 'no_job':
    case 'throttled':
    case 'aborted':
    case 'error':
      return jittered(backoff.next(), jitterRatio);
  }
}
