/**
 * One run of a lane: one transaction that takes a lane and a job of a migration, executes the
 * work function on the job's range and records the outcome (see store/run-transaction.ts for
 * the statements). On the common path that is one round trip besides the work's own: the job's
 * record, its COMMIT and the next run's take travel together. A migration in one lane has its
 * next range cut beside the job, on another connection, while the work runs, so the index scan
 * that finds its end is off the lane's path; in several lanes it is cut in that round trip too.
 *
 * A take that holds a lane but no job says what the migration needs instead: to be started, a
 * range cut, or to be finished. A migration not yet validated by this runner is checked against
 * the catalog first, and failed with an error code when its row cannot work. A failing work
 * function is undone with ROLLBACK TO the savepoint after the take, and the attempt recorded (or,
 * when it timed out, its range split in two). The work's writes and the job's status commit
 * together, so a crash at any point leaves the range either done and recorded or not done at all;
 * the lane's lock and the job's row lock die with the session, so another lane takes it at once.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import type { Logger } from './log.ts';
import { ErrorCode, INT8_MAX, JobStatus, KEY_ORDINAL_END } from '../store/codes.ts';
import { SqlState, sqlStateOf } from '../store/db.ts';
import { jobFailure, type ClaimedJob } from '../store/jobs.ts';
import { failMigration, finishMigration, startMigration } from '../store/migration-rows.ts';
import { claim, type NextRun, type RunTransaction, type Take, type TakenJob } from '../store/run-transaction.ts';
import type { ResolvedOptions } from './config.ts';
import {
  ended,
  jobRefOf,
  recordFailure,
  recordSuccess,
  type JobWorked,
  type Ran,
  type Taken,
  type UntimedRunResult,
} from './job-record.ts';
import { LANES_RECHECK_MS } from '../store/locks.ts';
import { RangeCuts } from './cuts.ts';
import { asError, BbmError, storedMessage } from './errors.ts';
import {
  doJob,
  isTimeout,
  JobStops,
  StopError,
  unverifiedText,
  VerificationError,
  type MigrationRef,
  type Worked,
} from './job.ts';
import { checkOnly, RangeSweep, SWEEP_RERUNS, SWEEP_SPAN } from './sweep.ts';
import { isTransient } from './transient.ts';
import { recordVerified, relockRange, takeUnverifiedRanges } from '../store/verify.ts';
import type { BatchSizer } from './pace.ts';
import { afterRunError } from './run-errors.ts';
import { Validations } from './validate.ts';
import { rangeText } from './log.ts';
import type { WorkRegistry } from './work-registry.ts';
import { RunOpener } from './run-open.ts';
import type { JobKey, RunResult, Work } from './types.ts';

/** What an empty range (of an empty key space) did: nothing, with no work called. */
const NOTHING_WORKED: JobWorked = { rows: 0, failure: undefined, workMs: 0, stopped: undefined, cutBeside: false };

/**
 * How long a lane keeps taking the next range of its migration (bbm_take_next) before it takes
 * from every migration again (bbm_take_job), so that one before it in bbm_take_job's order (an
 * older running one let out of a hold, or given more lanes) gets its lanes within about this long.
 */
const TAKE_AFTER_MS = 1_000;

export interface RunContext {
  pool: pg.Pool;
  registry: WorkRegistry;
  options: ResolvedOptions;
  log: Logger;
  /** Aborting it cancels the job in flight and rolls its whole run back (a second SIGTERM). */
  hardStop: AbortSignal;
  /** Work on this migration only, waiting for its lane 0 when every lane is busy (finalize). */
  only?: bigint;
  /** Adaptive sizers by migration id, shared by the lanes of one worker. */
  sizers?: Map<bigint, BatchSizer>;
}

/** What a run carries through its steps. */
interface RunInfo {
  started: number;
  runId: string;
  /** Whether a successful job's commit also begins the next run. */
  chain: boolean;
  /** The migration the run took, once it has taken one: a run error is counted against it. */
  migration: MigrationRef | undefined;
}

export class Runner {
  readonly #validations: Validations;
  readonly #cuts: RangeCuts;
  readonly #stops: JobStops;
  readonly #opener: RunOpener;
  /** The next run, when the previous one began it (`chain`): its connection and take. */
  #held: { tx: RunTransaction; next: NextRun; started: number } | undefined;
  /** The error `connect()` met opening a connection: the next run's, without connecting again. */
  #connectError: Error | undefined;
  /**
   * The end of the range this runner last checked in each migration's final sweep: its next check
   * looks after it first, so that each take does not walk every range verified before it.
   */
  readonly #swept = new Map<bigint, bigint>();
  /**
   * Where a wide check of the sweep found rows: up to that range's end, this runner checks (and
   * fixes) one range at a time.
   */
  readonly #sweepNarrowUntil = new Map<bigint, bigint>();
  /** When this runner last took from every migration (see TAKE_AFTER_MS). */
  #tookAnyAt = Number.NEGATIVE_INFINITY;

  constructor(private readonly ctx: RunContext) {
    const { pool, registry, options, log, only } = ctx;
    this.#opener = new RunOpener(pool, registry.names, options.runTimeoutMs, only, (ms) => (this.#cuts.timeoutMs = ms));
    this.#validations = new Validations(registry);
    this.#cuts = new RangeCuts(pool, log, ctx.sizers ?? new Map<bigint, BatchSizer>(), this.#opener.backstopMs);
    this.#stops = new JobStops(ctx.hardStop, options.runTimeoutMs);
  }

  /**
   * One run. With `chain`, a run whose job succeeds begins the next run in the round trip that
   * commits it; the next call continues that run (call `release()` if there is none).
   */
  async runOnce({ chain = false }: { chain?: boolean } = {}): Promise<RunResult> {
    const held = this.#held;
    this.#held = undefined;
    const run: RunInfo = {
      started: held?.started ?? performance.now(),
      runId: randomUUID(),
      chain,
      migration: undefined,
    };
    const timed = (result: UntimedRunResult): RunResult => ({
      ...result,
      runId: run.runId,
      durationMs: performance.now() - run.started,
    });
    let tx = held?.tx;
    if (!tx) {
      this.#tookAnyAt = performance.now();
      const connectError = this.#connectError;
      this.#connectError = undefined;
      if (connectError) return timed({ outcome: 'error', error: connectError });
      try {
        tx = await this.#opener.open();
      } catch (error) {
        return timed({ outcome: 'error', error: asError(error) });
      }
    }
    try {
      const { result, next } = await this.#inTransaction(tx, await tx.begin(held?.next), run);
      if (next) this.#held = { tx, next, started: performance.now() };
      else tx.release();
      return timed(result);
    } catch (thrown) {
      const error = asError(thrown);
      await tx.rollback();
      tx.release();
      if (error instanceof StopError) return timed({ outcome: 'aborted', error });
      const state = sqlStateOf(error);
      if (state === SqlState.undefinedTable || state === SqlState.undefinedColumn) this.#validations.clear();
      return timed(await afterRunError(this.ctx, error, run.migration, (id) => this.#forget(id)));
    }
  }

  /**
   * Checks that the database gives a connection now (unless the last run began the next), and
   * hands it back to the pool at once, where the run finds it: a lane of the process is then taken
   * only once the database answers, never held while one that fell silent makes a connect wait out
   * its timeout, and no connection is held while the lane waits. An error is the next run's to
   * report, without connecting again.
   */
  async connect(): Promise<void> {
    if (this.#held || this.#connectError) return;
    try {
      (await this.#opener.open()).release();
    } catch (error) {
      this.#connectError = asError(error);
    }
  }

  /** Whether the last run began the next (`chain`): it holds a connection and an open transaction. */
  get begunAhead(): boolean {
    return this.#held !== undefined;
  }

  /**
   * Rolls back and hands back the connection of a run begun ahead by `chain` and not used, and
   * waits for the cuts it started beside its jobs (a pool ended meanwhile would fail them). It stops
   * listening for the hard stop until its next job.
   */
  async release(): Promise<void> {
    this.#stops.deafen();
    const held = this.#held;
    this.#held = undefined;
    if (held) {
      await held.tx.rollback();
      held.tx.release();
    }
    await this.#cuts.settled();
  }

  /** The run from its take to the end of its transaction. */
  async #inTransaction(tx: RunTransaction, first: Take, run: RunInfo): Promise<Ran> {
    let take = first;
    for (let cuts = 0; ; cuts += 1) {
      if (take.kind === 'nothing') {
        await tx.rollback();
        return ended({ outcome: 'no_job' });
      }
      if (take.kind === 'busy') {
        await tx.rollback();
        return ended({ outcome: 'lock_in_use', ...(take.lookAgainMs !== null && { lookAgainMs: take.lookAgainMs }) });
      }
      const { migration } = take;
      const ref: MigrationRef = { id: migration.id, name: migration.name, work: migration.jobSignatureName };
      run.migration = ref;
      const checked = await this.#validations.check(tx.db, migration);
      if (checked === 'not_mine') {
        // Only a run bound to one migration (finalize) can get here: leave it for a worker that has it.
        await tx.rollback();
        return ended({ outcome: 'no_job', migration: ref });
      }
      if (checked instanceof BbmError) return this.#fail(tx, ref, checked);
      const taken: Taken = { migration, ref, validated: checked, lane: take.lane };
      if (take.kind === 'job') return this.#job(tx, taken, take.job, run);
      if (take.step !== 'cut') return this.#migrationStep(tx, taken, take.step, run);
      // Another lane may take the range first; after one cut, leave it to the next run, at once:
      // ranges were just cut.
      if (cuts > 0) {
        await tx.rollback();
        return ended({ outcome: 'lock_in_use', migration: ref, lookAgainMs: 0 });
      }
      checked.cutDone = false;
      take = await tx.cutAndTake(this.#cuts.cut(migration, checked));
    }
  }

  /** Starts or finishes a migration, committed on its own. */
  async #migrationStep(tx: RunTransaction, taken: Taken, step: 'start' | 'finish', run: RunInfo): Promise<Ran> {
    const { migration, ref, validated } = taken;
    if (step === 'start') {
      // Committed on its own, before any job: a run that updates the migration row holds that
      // row's lock until it commits, and an operator's `bbm pause` must never wait for a job.
      await startMigration(tx.db, migration.id, validated.target);
      await tx.commit();
      return ended({ outcome: 'migration_started', migration: ref });
    }
    if (validated.work.verify) return this.#sweep(tx, taken, run);
    return this.#finish(tx, ref, false);
  }

  /** Finishes the migration (`swept`: every range passed the final sweep), committed on its own. */
  async #finish(tx: RunTransaction, ref: MigrationRef, swept: boolean): Promise<Ran> {
    const { id } = ref;
    if (!(await finishMigration(tx.db, id, { swept }))) {
      // Its last ranges run in other lanes: it finishes soon (a lane must not sleep out a backoff
      // past the end, which a worker run until done would wait for).
      await tx.commit();
      return ended({ outcome: 'lock_in_use', migration: ref, lookAgainMs: LANES_RECHECK_MS });
    }
    this.#forget(id);
    await tx.commit();
    return ended({ outcome: 'migration_finished', migration: ref });
  }

  /**
   * The final sweep of a migration whose work has a check (docs/verify.md): every range has
   * finished; this run checks the next SWEEP_SPAN ranges not yet verified at once, in its lane.
   * When they pass, they are verified together; when rows fail, the ranges are checked one at a
   * time from the first (#sweepRange). Once every range is verified, the migration finishes.
   */
  async #sweep(tx: RunTransaction, taken: Taken, run: RunInfo): Promise<Ran> {
    const { migration, ref, validated } = taken;
    const after = this.#swept.get(migration.id);
    const narrowUntil = this.#sweepNarrowUntil.get(migration.id);
    const narrow = narrowUntil !== undefined && (after === undefined || after < narrowUntil);
    const next = await takeUnverifiedRanges(tx.db, migration.id, migration.batchSize, after, narrow ? 1 : SWEEP_SPAN);
    if (next.kind === 'busy') {
      await tx.rollback();
      return ended({ outcome: 'lock_in_use', migration: ref, lookAgainMs: LANES_RECHECK_MS });
    }
    if (next.kind === 'none') return this.#finish(tx, ref, true);
    const ranges = next.jobs;
    const first = ranges[0]!;
    if (ranges.length === 1) return this.#sweepRange(tx, taken, first, run);
    const last = ranges.at(-1)!;
    const span: ClaimedJob = {
      ...first,
      end: last.end,
      endKey: last.endKey,
      batchSize: ranges.reduce((sum, range) => sum + range.batchSize, 0),
    };
    const worked = await this.#work(tx, taken, span, run, checkOnly(validated.work));
    if (worked.failure) {
      // A check too slow for so many ranges at once: the rest of the sweep checks one at a time.
      if (isTimeout(worked.failure)) this.#sweepNarrowUntil.set(migration.id, INT8_MAX);
      throw sweepFailure(`jobs ${first.id}-${last.id} [${rangeText(span)}]`, worked.failure);
    }
    if ((worked.rows ?? 0) > 0) {
      // Rows fail somewhere in them: each is checked (and fixed) alone, this one first.
      this.#sweepNarrowUntil.set(migration.id, last.end);
      return this.#sweepRange(tx, taken, first, run);
    }
    this.#swept.set(migration.id, last.end);
    await recordVerified(
      tx.db,
      migration.id,
      ranges.map((range) => range.id),
      { found: 0, rerun: false },
    );
    await tx.commit();
    const job = { ...jobRefOf(span, taken.lane, worked.workMs), rows: 0 };
    return ended({ outcome: 'range_verified', migration: ref, job, verified: { found: 0, ranges: ranges.length } });
  }

  /**
   * One range of the final sweep: its check, and while rows fail it (rows written after the range
   * ran), the work again, up to SWEEP_RERUNS times. Rows still failing after that fail the
   * migration with verification_failed (the work's writes undone). A check or work that throws,
   * or runs past a timeout, is a run error of the migration: held, retried, and failed with
   * run_error after maxRunErrors in a row.
   */
  async #sweepRange(tx: RunTransaction, taken: Taken, claimed: ClaimedJob, run: RunInfo): Promise<Ran> {
    const { migration, ref, validated } = taken;
    this.#swept.set(migration.id, claimed.end);
    const sweep = new RangeSweep(validated.work);
    const range = rangeText(claimed);
    // The one range of an empty key space has no rows to check.
    const empty = validated.target.key !== null && !claimed.startKey;
    const worked = empty ? NOTHING_WORKED : await this.#work(tx, taken, claimed, run, sweep.work);
    if (worked.failure instanceof VerificationError) {
      // Undoing the work releases the range's row lock (taken after the savepoint): taken again,
      // or another lane has it, and the migration is left to that lane.
      await tx.undoWork();
      if (!(await relockRange(tx.db, claimed.id))) {
        await tx.rollback();
        return ended({ outcome: 'lock_in_use', migration: ref, lookAgainMs: LANES_RECHECK_MS });
      }
      const message = `the final sweep ran the work on job ${claimed.id} [${range}] ${SWEEP_RERUNS} times more and ${unverifiedText(worked.failure.found)}`;
      const failed = await this.#fail(tx, ref, new BbmError('verification_failed', message));
      return ended({ ...failed.result, verified: { found: worked.failure.found.rows, ranges: 0 } });
    }
    if (worked.failure) throw sweepFailure(`job ${claimed.id} [${range}]`, worked.failure);
    await recordVerified(tx.db, migration.id, [claimed.id], { found: sweep.found, rerun: sweep.reruns > 0 });
    await tx.commit();
    const job = { ...jobRefOf(claimed, taken.lane, worked.workMs), rows: sweep.found };
    return ended({ outcome: 'range_verified', migration: ref, job, verified: { found: sweep.found, ranges: 1 } });
  }

  /** Fails the migration with the error's code, and commits. */
  async #fail(tx: RunTransaction, ref: MigrationRef, error: BbmError): Promise<Ran> {
    await failMigration(tx.db, ref.id, ErrorCode[error.code], storedMessage(error));
    this.#forget(ref.id);
    await tx.commit();
    return ended({ outcome: 'migration_failed', migration: ref, error, errorCode: error.code });
  }

  #forget(id: bigint): void {
    this.#swept.delete(id);
    this.#sweepNarrowUntil.delete(id);
    this.#validations.forget(id);
    this.#cuts.forget(id);
  }

  /** A job taken: failed for good past maxAttempts, else run and recorded. */
  async #job(tx: RunTransaction, taken: Taken, job: TakenJob, run: RunInfo): Promise<Ran> {
    if (job.status === JobStatus.failed && job.attempts >= this.ctx.options.maxAttempts) {
      const last = await jobFailure(tx.db, job.id);
      const range = rangeText(job);
      const message = `job ${job.id} [${range}] failed ${job.attempts} times; last error: ${last.message ?? 'unknown'}`;
      // A range its work keeps leaving unfinished fails the migration as such; any other failure is one too many.
      const code = last.code === ErrorCode.verification_failed ? 'verification_failed' : 'max_job_retry';
      return this.#fail(tx, taken.ref, new BbmError(code, message));
    }
    const claimed = claim(job, taken.migration);
    // The one range of an empty key space has no keys, and nothing for the work to do. It is the
    // last range; any other range of such a key without keys is a fault, never taken as empty.
    const empty = taken.validated.target.key !== null && !claimed.startKey;
    if (empty && (claimed.end !== KEY_ORDINAL_END || claimed.endKey)) {
      throw new Error(`job ${claimed.id} of a key range came without its keys`);
    }
    const worked = empty ? NOTHING_WORKED : await this.#work(tx, taken, claimed, run);
    if (worked.failure) return recordFailure(tx, taken, claimed, worked.failure, worked.workMs, false);
    const { migration, validated, lane } = taken;
    const cut = this.#cuts.afterJob(migration, validated, { due: claimed.cutDue !== false, beside: worked.cutBeside });
    // The next run tries this migration and lane first, unless it is time to look at them all.
    const after =
      run.chain && this.ctx.only === undefined && performance.now() - this.#tookAnyAt < TAKE_AFTER_MS
        ? { migrationId: migration.id, lane }
        : undefined;
    if (run.chain && !after) this.#tookAnyAt = performance.now();
    return recordSuccess(tx, taken, claimed, worked, {
      cut,
      chain: run.chain,
      after,
      runId: run.runId,
      log: this.ctx.log,
    });
  }

  /** Runs the work on the job's range (with the next range cut beside it, in one lane). */
  async #work(
    tx: RunTransaction,
    taken: Taken,
    claimed: ClaimedJob,
    run: RunInfo,
    sweep?: Work<JobKey>,
  ): Promise<JobWorked> {
    const { migration, ref, validated, lane } = taken;
    const remainingMs = Math.max(1, this.ctx.options.runTimeoutMs - (performance.now() - run.started));
    const { stop, end } = this.#stops.begin(remainingMs);
    // No cut with this job when the take found enough ranges waiting (it cuts nothing then).
    const beside = !sweep && claimed.cutDue !== false ? this.#cuts.beside(migration, validated) : undefined;
    let worked: Worked;
    try {
      const { quoted } = validated;
      const spec = {
        client: tx.client,
        work: sweep ?? validated.work,
        quoted,
        key: validated.target.key,
        column: validated.target.column,
        args: migration.jobArguments,
        migration: ref,
        claimed,
        lane,
        runId: run.runId,
        log: this.ctx.log,
      };
      worked = await doJob(spec, stop);
    } finally {
      end();
    }
    await this.#cuts.besideEnded(beside, run.runId);
    if (worked.stopped instanceof StopError) throw worked.stopped;
    if (!sweep) this.#cuts.learn(migration, claimed, worked.workMs, worked.rows);
    return { ...worked, cutBeside: beside !== undefined };
  }
}

/**
 * A check or work that failed in the final sweep, as the run's error: a transient failure (a lost
 * connection, a pooler's) as it is, so that it is not counted against the migration; any other
 * as a run error naming the ranges.
 */
function sweepFailure(ranges: string, failure: Error): Error {
  if (isTransient(failure)) return failure;
  return new BbmError('unknown', `the final sweep of ${ranges} failed: ${failure.message}`, { cause: failure });
}
