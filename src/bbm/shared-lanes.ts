/**
 * The lanes of one process shared by the workers of its databases (`bbm run` over `databases`):
 * at most `size` runs at once in all, whatever each database's worker has lanes for. A lane takes
 * one before each run and gives it back after, unless it chains into its next run and no other
 * database waits. When several databases wait, a free lane goes to them in turn (round robin over
 * the databases that wait, each database's lanes first come first served), so a database with a
 * long queue of jobs gets one lane in turn with the others and never starves them; a database
 * alone uses all of them.
 */

export interface LaneShare {
  /** Waits for a lane of the process; false when `signal` aborted first (nothing is held then). */
  take(signal: AbortSignal): Promise<boolean>;
  /** Gives back the lane a `take` got. */
  give(): void;
  /** Whether a lane of another database waits. */
  readonly othersWait: boolean;
}

interface Waiter {
  grant: () => void;
}

export class SharedLanes {
  #free: number;
  /** The waiting lanes of each database that has any. */
  readonly #waiting = new Map<string, Waiter[]>();
  /** The databases that wait, in the order they get the next free lanes. */
  readonly #turns: string[] = [];

  constructor(readonly size: number) {
    this.#free = size;
  }

  /** Runs going on now, in all databases. */
  get inUse(): number {
    return this.size - this.#free;
  }

  /** The share of `database`'s worker. */
  for(database: string): LaneShare {
    const othersWait = () => this.#othersWait(database);
    return {
      take: (signal) => this.#take(database, signal),
      give: () => this.#give(),
      get othersWait() {
        return othersWait();
      },
    };
  }

  #othersWait(database: string): boolean {
    return this.#turns.some((waiting) => waiting !== database);
  }

  #take(database: string, signal: AbortSignal): Promise<boolean> {
    if (signal.aborted) return Promise.resolve(false);
    if (this.#free > 0 && this.#turns.length === 0) {
      this.#free -= 1;
      return Promise.resolve(true);
    }
    return new Promise<boolean>((resolve) => {
      const waiter: Waiter = {
        grant: () => {
          signal.removeEventListener('abort', abandon);
          resolve(true);
        },
      };
      const abandon = () => {
        const queue = this.#waiting.get(database);
        const at = queue?.indexOf(waiter) ?? -1;
        if (queue && at >= 0) {
          queue.splice(at, 1);
          if (queue.length === 0) this.#forget(database);
        }
        resolve(false);
      };
      signal.addEventListener('abort', abandon, { once: true });
      const queue = this.#waiting.get(database);
      if (queue) queue.push(waiter);
      else {
        this.#waiting.set(database, [waiter]);
        this.#turns.push(database);
      }
    });
  }

  #give(): void {
    const database = this.#turns.shift();
    if (database === undefined) {
      if (this.#free >= this.size) throw new Error('a lane of the process was given back twice');
      this.#free += 1;
      return;
    }
    const queue = this.#waiting.get(database)!;
    const waiter = queue.shift()!;
    if (queue.length === 0) this.#waiting.delete(database);
    else this.#turns.push(database);
    waiter.grant();
  }

  #forget(database: string): void {
    this.#waiting.delete(database);
    const at = this.#turns.indexOf(database);
    if (at >= 0) this.#turns.splice(at, 1);
  }
}
