/**
 * A job's record, in the run's transaction: finished (committed in one round trip with the next
 * range's cut and, with `chain`, the next run's take), or failed (its range split in two when it
 * timed out and can be). Either way the transaction ends here, and what comes next is returned.
 */
import { ErrorCode } from '../store/codes.ts';
import { SqlState, sqlStateOf } from '../store/db.ts';
import type { ClaimedJob, RangeCut } from '../store/jobs.ts';
import type { NextRun, RunTransaction, TakeAfter, TakenMigration } from '../store/run-transaction.ts';
import { asError, storedMessage } from './errors.ts';
import { isTimeout, VerificationError, type MigrationRef, type Worked } from './job.ts';
import { CORRELATION_ID, type Logger } from './log.ts';
import type { RunResult } from './types.ts';
import type { Validated } from './validate.ts';

/** A run's result before timing. */
export type UntimedRunResult = Omit<RunResult, 'durationMs' | 'runId'>;

/** A run whose transaction has ended: its result, and the next run when it began one (`chain`). */
export interface Ran {
  result: UntimedRunResult;
  next: NextRun | null;
}

export const ended = (result: UntimedRunResult): Ran => ({ result, next: null });

/** A migration a run took a lane of, checked. */
export interface Taken {
  migration: TakenMigration;
  ref: MigrationRef;
  validated: Validated;
  lane: number;
}

/** The work's outcome, and whether the next range was cut beside it. */
export type JobWorked = Worked & { cutBeside: boolean };

/**
 * Records the job finished and commits, in one round trip with the next range's cut (several
 * lanes) and, with `chain`, the next run's take. A record that fails for the work's fault (see
 * workFailureAtCommit) is recorded as the job's failure instead.
 */
export async function recordSuccess(
  tx: RunTransaction,
  taken: Taken,
  claimed: ClaimedJob,
  worked: JobWorked,
  {
    cut,
    chain,
    after,
    runId,
    log,
  }: { cut: RangeCut | undefined; chain: boolean; after: TakeAfter | undefined; runId: string; log: Logger },
): Promise<Ran> {
  const { validated, lane } = taken;
  const { rows, workMs } = worked;
  const finished = await tx.finish({ job: claimed, rows, durationMs: workMs }, { cut, chain, after });
  if (!finished.committed) {
    return recordFailure(tx, taken, claimed, workFailureAtCommit(finished.error), workMs, true);
  }
  if (finished.cut === null) validated.cutDone = true;
  if (finished.laterError) {
    log.warn(
      { err: finished.laterError, [CORRELATION_ID]: runId },
      'job committed; cutting the next range or beginning the next run failed',
    );
  }
  const job = {
    ...jobRefOf(claimed, lane, workMs),
    rows,
    ...(finished.walBytes !== undefined && { walBytes: finished.walBytes }),
  };
  return { result: { outcome: 'job_succeeded', migration: taken.ref, job }, next: finished.next };
}

/** Records a failed job (its range split in two when it timed out and can be) and commits. */
export async function recordFailure(
  tx: RunTransaction,
  { migration, ref, validated, lane }: Taken,
  claimed: ClaimedJob,
  failure: Error,
  workMs: number,
  workUndone: boolean,
): Promise<Ran> {
  const split = isTimeout(failure)
    ? { migrationId: migration.id, target: validated.target, minRows: migration.minBatchSize ?? 1 }
    : undefined;
  // A check that failed is recorded as such; anything else the work threw is the work's, unknown.
  const errorCode = failure instanceof VerificationError ? 'verification_failed' : 'unknown';
  const failed = { job: claimed, code: ErrorCode[errorCode], message: storedMessage(failure), durationMs: workMs };
  const recorded = await tx.fail(failed, { workUndone, split });
  const job = { ...jobRefOf(claimed, lane, workMs), ...(recorded.split && { split: true }) };
  return {
    result: { outcome: 'job_failed', migration: ref, job, error: failure, errorCode },
    next: recorded.next,
  };
}

/** The job as a run's result reports it. */
export function jobRefOf(claimed: ClaimedJob, lane: number, durationMs: number): NonNullable<RunResult['job']> {
  const { id, start, end, attempt, batchSize, startKey, endKey } = claimed;
  return { id, start, end, attempt, batchSize, lane, durationMs, ...(startKey && endKey && { startKey, endKey }) };
}

/**
 * Recording a finished job fails before its COMMIT when the work left the transaction broken: the
 * work swallowed a failed statement (25P02), or its writes break a deferred constraint (class 23).
 * Those are the work's failures; anything else is the run's.
 */
function workFailureAtCommit(error: unknown): Error {
  const state = sqlStateOf(error);
  if (state === SqlState.inFailedTransaction) {
    return new Error(
      'the work function returned normally after one of its statements failed (the error was swallowed)',
    );
  }
  if (state?.startsWith('23')) return asError(error);
  throw error;
}
