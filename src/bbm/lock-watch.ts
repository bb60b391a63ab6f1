/**
 * A rehearsal's lock watch: while a sample's work runs, another connection looks every
 * LOCK_WATCH_MS at the locks the sample's backend waits for (pg_locks), and adds up how long each
 * wait lasted, from when it began (its waitstart) to when it was last seen. A wait shorter than
 * the interval may go unseen; a long one, the kind that matters, is measured to within it.
 */
import type pg from 'pg';
import { lockWaits } from '../store/rehearsal.ts';
import { sleep } from './backoff.ts';

/** How often the watch looks. */
export const LOCK_WATCH_MS = 20;
/** How long stop() waits for a look in flight before it gives the watch up. */
const STOP_WAIT_MS = 1_000;

export class LockWatch {
  /** The longest each wait was seen to last, by when it began. */
  readonly #waits = new Map<string, number>();
  #watching = false;
  /** A look failed: the connection is suspect, and destroyed on close. */
  #failed = false;
  #wake: AbortController | undefined;
  #loop: Promise<boolean> | undefined;

  private constructor(private readonly client: pg.PoolClient) {}

  /** A watch on a connection of its own; undefined when the pool has none to spare (lock waits are then not measured). */
  static async open(pool: pg.Pool): Promise<LockWatch | undefined> {
    if (pool.idleCount === 0 && pool.totalCount >= (pool.options.max ?? 10)) return undefined;
    return new LockWatch(await pool.connect());
  }

  /** Starts watching the backend `pid`. */
  start(pid: number): void {
    if (this.#failed) return;
    this.#waits.clear();
    this.#watching = true;
    this.#wake = new AbortController();
    this.#loop = this.#watch(pid, this.#wake.signal);
  }

  /** Stops watching; the time the backend waited for locks meanwhile, in ms, or null when the watch failed. */
  async stop(): Promise<number | null> {
    this.#watching = false;
    this.#wake?.abort();
    const loop = this.#loop;
    this.#loop = undefined;
    if (!loop) return null;
    // A look still in flight after a while waits for a server connection (behind a pooler, maybe
    // the one the sample holds until its rollback, which waits for this): the watch is given up.
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((resolve) => (timer = setTimeout(() => resolve('late'), STOP_WAIT_MS)));
    const watched = await Promise.race([loop, late]);
    clearTimeout(timer);
    if (watched === 'late') this.#failed = true;
    if (watched !== true) return null;
    let total = 0;
    for (const ms of this.#waits.values()) total += ms;
    return total;
  }

  /** Hands the connection back (destroyed after a failed look). */
  close(): void {
    this.client.release(this.#failed);
  }

  async #watch(pid: number, wake: AbortSignal): Promise<boolean> {
    try {
      while (this.#watching) {
        for (const wait of await lockWaits(this.client, pid)) {
          this.#waits.set(wait.since, Math.max(this.#waits.get(wait.since) ?? 0, wait.ms));
        }
        await sleep(LOCK_WATCH_MS, wake);
      }
      return true;
    } catch {
      this.#failed = true;
      return false;
    }
  }
}
