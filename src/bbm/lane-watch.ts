/**
 * The lane-stall watch: each lane notes what it waits for next (a run, a health check, a sleep);
 * a lane that has waited in one step, other than a sleep, for longer than any run may take is
 * said, once, to make no progress: by design none does, so such a line is a defect to report,
 * and the only sign of a worker that is alive but does no work.
 */
import { performance } from 'node:perf_hooks';
import type { Logger } from './log.ts';

/** How often the worker looks for a lane that has been stuck in one step. */
const WATCH_MS = 10_000;

/** What a lane tells the watch. */
export interface LaneSteps {
  step(lane: number, step: string): void;
}

export class LaneWatch implements LaneSteps {
  readonly #lanes: Array<{ step: string; since: number; told: boolean }>;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    lanes: number,
    /** Past this, a step is stuck: the run timeout and a minute. */
    private readonly limitMs: number,
    private readonly log: Logger,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.#lanes = Array.from({ length: lanes }, () => ({ step: 'starting', since: now(), told: false }));
  }

  /** Notes what a lane waits for next; a lane that had been stuck says it moved on. */
  step(lane: number, step: string): void {
    const current = this.#lanes[lane]!;
    const now = this.now();
    if (current.told) {
      this.log.warn(
        { lane, step: current.step, waited_ms: Math.round(now - current.since) },
        `lane ${lane} moved on after ${Math.round((now - current.since) / 1000)} s in ${current.step}`,
      );
    }
    current.step = step;
    current.since = now;
    current.told = false;
  }

  /** Says so, once per step, of each lane stuck in one. */
  check(): void {
    const now = this.now();
    this.#lanes.forEach((lane, index) => {
      if (lane.told || lane.step === 'sleep' || now - lane.since < this.limitMs) return;
      lane.told = true;
      this.log.error(
        { lane: index, step: lane.step, waited_ms: Math.round(now - lane.since) },
        `lane ${index} has waited ${Math.round((now - lane.since) / 1000)} s in ${lane.step}: this worker makes no progress in that lane`,
      );
    });
  }

  start(): void {
    this.#timer = setInterval(() => this.check(), WATCH_MS);
    this.#timer.unref();
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}
