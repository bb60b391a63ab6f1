/** Waits between runs: exponential while idle or failing, reset by useful work, always jittered. */

export function jittered(ms: number, ratio: number, random: () => number = Math.random): number {
  return Math.max(0, Math.round(ms * (1 + ratio * (2 * random() - 1))));
}

export class Backoff {
  #attempt = 0;
  #soon = 0;

  constructor(
    private readonly baseMs: number,
    private readonly capMs: number,
  ) {}

  /** The next wait: base, 2×base, 4×base … up to the cap. */
  next(): number {
    const ms = this.peek();
    this.#attempt += 1;
    return ms;
  }

  /** The wait `next` would give, without moving on. */
  peek(): number {
    return Math.min(this.capMs, this.baseMs * 2 ** Math.min(this.#attempt, 30));
  }

  /**
   * A wait the database asked for (a take's `lookAgainMs`), doubled for each one in a row since the
   * last reset, up to `capMs` (never below `ms`): a moment the take expected to last a few jobs
   * that lasts longer (a slow start that does not grow, a last range that runs long) costs a lane
   * a few looks, then one per `capMs`.
   */
  soon(ms: number, capMs: number): number {
    const wait = Math.max(ms, Math.min(capMs, ms * 2 ** Math.min(this.#soon, 30)));
    this.#soon += 1;
    return wait;
  }

  reset(): void {
    this.#attempt = 0;
    this.#soon = 0;
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. Never rejects. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted || ms <= 0) return resolve();
    const done = () => {
      clearTimeout(timer);
      signal?.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal?.addEventListener('abort', done, { once: true });
  });
}
