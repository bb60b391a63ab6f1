/**
 * A task of the worker's controllers, run at most every `everyMs` and one at a time: a lane (or a
 * timer) that finds it due starts it, and callers meanwhile share the round in flight. When its
 * time is counted from decides whether lanes wait for a round in flight: from the `start`, a round
 * in flight is not due, and only the lane that started it waits; from the `end`, every lane that
 * finds it due waits for the same round.
 */
import { performance } from 'node:perf_hooks';

export class Periodic<T> {
  #lastAt = -Infinity;
  #inFlight: Promise<T> | undefined;

  constructor(
    readonly everyMs: number,
    private readonly task: () => Promise<T>,
    private readonly countFrom: 'start' | 'end',
    private readonly now: () => number = () => performance.now(),
  ) {}

  get due(): boolean {
    return this.now() - this.#lastAt >= this.everyMs;
  }

  /** Until the next round is due (0 when it is). */
  get dueInMs(): number {
    return Math.max(0, this.#lastAt + this.everyMs - this.now());
  }

  /** A round: the one in flight, or a new one. The task must not reject (controllers log their failures). */
  run(): Promise<T> {
    this.#inFlight ??= this.#round().finally(() => (this.#inFlight = undefined));
    return this.#inFlight;
  }

  /** Waits for the round in flight, if any. */
  async settled(): Promise<void> {
    await this.#inFlight;
  }

  async #round(): Promise<T> {
    if (this.countFrom === 'start') this.#lastAt = this.now();
    try {
      return await this.task();
    } finally {
      if (this.countFrom === 'end') this.#lastAt = this.now();
    }
  }
}
