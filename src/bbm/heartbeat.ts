/**
 * The worker's heartbeat: its row among the live workers (batched_background_migration_workers),
 * written when it starts and every HEARTBEAT_MS, for `bbm status`, with the share of the time its
 * lanes run (the duty cycle; the commit probes also write it when they change it). Failing to is
 * logged, never fatal: nothing but the status reads it.
 */
import { hostname } from 'node:os';
import type pg from 'pg';
import { announceWorker, HEARTBEAT_MS } from '../store/workers.ts';
import type { Logger } from './log.ts';
import { Periodic } from './periodic.ts';

export class Heartbeat {
  readonly #beats: Periodic<void>;
  #timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly db: () => pg.Pool,
    private readonly worker: { id: string; workNames: readonly string[]; dutyCycle: () => number },
    private readonly log: Logger,
  ) {
    this.#beats = new Periodic(HEARTBEAT_MS, () => this.#beat(), 'start');
  }

  /** Beats now, then every HEARTBEAT_MS until stopped. */
  async start(): Promise<void> {
    this.#timer = setInterval(() => void this.#beats.run(), HEARTBEAT_MS);
    this.#timer.unref();
    await this.#beat();
  }

  /** Stops beating, once the beat in flight has ended. */
  async stop(): Promise<void> {
    clearInterval(this.#timer);
    await this.#beats.settled();
  }

  async #beat(): Promise<void> {
    try {
      await announceWorker(this.db(), {
        id: this.worker.id,
        hostname: hostname(),
        pid: process.pid,
        workNames: [...this.worker.workNames],
        dutyCycle: this.worker.dutyCycle(),
      });
    } catch (error) {
      this.log.warn({ err: error }, 'could not record worker heartbeat');
    }
  }
}
