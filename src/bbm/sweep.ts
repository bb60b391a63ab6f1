/**
 * A range of the final sweep (docs/verify.md), as the work a run calls on it: the work's check,
 * and while rows fail it, the work again and the check again, up to SWEEP_RERUNS times, all in
 * the run's transaction. Rows still failing after that throw VerificationError.
 */
import { checkRange, VerificationError } from './job.ts';
import type { Job, JobKey, Work } from './types.ts';

/** How many times the sweep runs the work again on one range whose rows keep failing the check. */
export const SWEEP_RERUNS = 3;

/**
 * How many ranges one check of the sweep covers while they pass: a run's own cost (its take,
 * the range's row lock, its record and commit) is several times a check of one range of rows.
 */
export const SWEEP_SPAN = 16;

/** The work's check alone, as the work a run calls on a span of ranges: the rows it finds failing. */
export function checkOnly(work: Work<JobKey>): Work<JobKey> {
  return { name: work.name, do: async (job: Job<JobKey>) => (await checkRange(work, job)).rows };
}

export class RangeSweep {
  /** Rows the first check found failing (and the work's runs then fixed). */
  found = 0;
  /** Times the work ran again. */
  reruns = 0;
  readonly work: Work<JobKey>;

  constructor(work: Work<JobKey>) {
    this.work = {
      name: work.name,
      do: async (job: Job<JobKey>) => {
        let check = await checkRange(work, job);
        this.found = check.rows;
        while (check.rows > 0) {
          if (this.reruns === SWEEP_RERUNS) throw new VerificationError(check);
          this.reruns += 1;
          await work.do(job);
          check = await checkRange(work, job);
        }
        return this.found;
      },
    };
  }
}
