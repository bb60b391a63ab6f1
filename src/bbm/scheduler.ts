/**
 * The worker's scheduling rounds (schedules.ts, tickSchedules): at most every `scheduleCheckMs`,
 * before a lane's run, one round in flight; idle lanes wake for the next. A round that enqueued a
 * pass has the lane that ran it start its backoff over. Failing is logged, never fatal.
 */
import type pg from 'pg';
import type { Logger } from './log.ts';
import type { Gate } from './pacer.ts';
import { Periodic } from './periodic.ts';
import { tickSchedules, type ResolvedSchedule } from './schedules.ts';

export class Scheduler implements Gate {
  readonly step = 'scheduling';
  readonly #rounds: Periodic<boolean>;

  constructor(
    private readonly db: () => pg.Pool,
    private readonly schedules: readonly ResolvedSchedule[],
    { scheduleCheckMs, passRetentionMs }: { scheduleCheckMs: number; passRetentionMs: number },
    private readonly log: Logger,
  ) {
    // Counted from the start: lanes other than the one scheduling run on meanwhile.
    this.#rounds = new Periodic(scheduleCheckMs, () => this.#tick(passRetentionMs), 'start');
  }

  get due(): boolean {
    return this.#rounds.due;
  }

  get wakeInMs(): number {
    return this.#rounds.dueInMs;
  }

  /** True when it enqueued any pass. */
  run(): Promise<boolean> {
    return this.#rounds.run();
  }

  async #tick(retentionMs: number): Promise<boolean> {
    try {
      const tick = await tickSchedules(this.db(), this.schedules, { retentionMs, log: this.log });
      return tick.enqueued.length > 0;
    } catch (error) {
      this.log.error({ err: error }, 'scheduling passes failed');
      return false;
    }
  }
}
