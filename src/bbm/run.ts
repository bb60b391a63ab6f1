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
import { NodePgSession, NodePgTransaction } from 'drizzle-orm/node-postgres';
import { PgDialect } from 'drizzle-orm/pg-core';
import type pg from 'pg';
import { CORRELATION_ID, jobFields, migrationFields, type Logger } from './log.ts';
import { ErrorCode, INT4_MAX, JobStatus, SERIAL_KEY_SET } from '../store/codes.ts';
import { isTarget, resolveTarget } from '../store/catalog.ts';
import { cancelQuery, SqlState, sqlStateOf } from '../store/db.ts';
import {
  cutRangeBeside,
  jobFailureMessage,
  recordFailedAttempt,
  splitRange,
  type ClaimedJob,
  type CutBeside,
  type RangeCut,
  type ValidatedMigration,
} from '../store/jobs.ts';
import {
  failMigration,
  finishMigration,
  holdAfterRunError,
  quotedTable,
  startMigration,
} from '../store/migration-rows.ts';
import {
  RunTransaction,
  runPrologue,
  sessionLimits,
  tighterLimit,
  type RunPrologue,
  type Take,
  type TakenMigration,
} from '../store/run-transaction.ts';
import type { ResolvedOptions } from './config.ts';
import { asError, BbmError, storedMessage } from './errors.ts';
import { BatchSizer, type PaceSettings } from './pace.ts';
import { isValidWorkName, VALID_WORK_NAME, type WorkRegistry } from './work-registry.ts';
import { JobSession } from './session.ts';
import { isTransient } from './transient.ts';
import type { Job, JobDb, RunResult, Work } from './types.ts';

/** How far past the run timeout the server-side backstops (statement and idle timeouts) sit. */
const BACKSTOP_MARGIN_MS = 10_000;
/** How long a finished job waits for the cut beside it to get a connection before giving it up. */
const CUT_CONNECT_MS = 1_000;
/**
 * How long a lane keeps taking the next range of its migration (bbm_take_next) before it takes
 * from every migration again (bbm_take_job), so that one before it in bbm_take_job's order (an
 * older running one let out of a hold, or given more lanes) gets its lanes within about this long.
 */
const TAKE_AFTER_MS = 1_000;

interface RunContext {
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

/** The reason a run was rolled back on a hard stop. */
class StopError extends Error {
  override readonly name = 'StopError';
}

/** A job that ran past the run timeout; like a statement or lock timeout, its range is split. */
class JobTimeoutError extends BbmError {
  constructor(timeoutMs: number) {
    super('unknown', `job timed out: the run exceeded runTimeoutMs (${timeoutMs} ms)`);
  }
}

/**
 * Whether a failure is a timeout: the run's own, a statement_timeout (57014, also what a
 * cancelled statement reports) or a lock_timeout (55P03). A smaller range may well succeed.
 */
function isTimeout(error: Error): boolean {
  const state = sqlStateOf(error);
  return error instanceof JobTimeoutError || state === SqlState.queryCanceled || state === SqlState.lockNotAvailable;
}

/** A run's result before timing; `ended` when its transaction is already committed or rolled back. */
type UntimedRunResult = Omit<RunResult, 'durationMs' | 'runId'> & { ended?: true };

/** What a runner remembers of a migration it validated. */
interface Validated extends ValidatedMigration {
  work: Work;
  /** The table and column as jobs see them (Job.table, Job.column), quoted once. */
  quoted: { table: string; column: string };
  /** Set when a cut after a job found no range left to cut: none is sent after its jobs until one succeeds again. */
  cutDone?: boolean;
  /**
   * The fixed size the migration cut at when last taken: a lower one has the ranges still
   * waiting cut again (bbm_cut_range), so it clears `cutDone`.
   */
  fixedSize?: number;
}

/** The migration as a job sees it. */
type MigrationRef = NonNullable<RunResult['migration']>;

const dialect = new PgDialect();

export class Runner {
  /**
   * Migrations this runner has validated (catalog lookups included), by id. A take of a job
   * checks the row still names what was validated; entries go when a migration ends or its table errors.
   */
  readonly #validated = new Map<bigint, Validated>();
  /** Starts every run: BEGIN, settings, take, savepoint (see run-transaction.ts). */
  #prologue: RunPrologue;
  /** Read once, on the first run: the prologue then keeps the session's tighter limits (runPrologue). */
  #limits: Promise<void> | undefined;
  readonly #backstopMs: number;
  /** The statement timeout of the cuts: the backstop, or the session's own when it is tighter. */
  #cutTimeoutMs: number;
  readonly #sizers: Map<bigint, BatchSizer>;
  /** Cuts this runner started beside its jobs and has not seen end: release() waits for them. */
  readonly #cutsInFlight = new Set<Promise<void>>();
  /** The next run, when the previous one began it (`chain`). */
  #held: { tx: RunTransaction; started: number } | undefined;
  /** When this runner last took from every migration (see TAKE_AFTER_MS). */
  #tookAnyAt = Number.NEGATIVE_INFINITY;
  /** The job in flight's early end (a runner runs one job at a time), stopped by a hard stop. */
  #jobStop: JobStop | undefined;
  /**
   * Stops the job in flight on the hard stop: added before the first job after a release and
   * removed by release(), not per job (see JobStop), so that a signal that outlives the runner
   * (finalize's hardStop, a caller's) keeps no listener of it.
   */
  readonly #onHardStop = () => this.#jobStop?.stop(hardStopError());
  #hearingHardStop = false;

  constructor(private readonly ctx: RunContext) {
    this.#backstopMs = ctx.options.runTimeoutMs + BACKSTOP_MARGIN_MS;
    this.#cutTimeoutMs = this.#backstopMs;
    this.#prologue = runPrologue(
      { names: ctx.registry.names, validNamePattern: VALID_WORK_NAME },
      this.#backstopMs,
      ctx.only,
    );
    this.#sizers = ctx.sizers ?? new Map<bigint, BatchSizer>();
  }

  /** Reads the session's limits and keeps the tighter ones in every run (runPrologue); retried on failure. */
  async #readLimits(): Promise<void> {
    try {
      const limits = await sessionLimits(this.ctx.pool);
      this.#prologue = runPrologue(
        { names: this.ctx.registry.names, validNamePattern: VALID_WORK_NAME },
        this.#backstopMs,
        this.ctx.only,
        limits,
      );
      this.#cutTimeoutMs = tighterLimit(limits.statementTimeoutMs, this.#backstopMs);
    } catch (error) {
      this.#limits = undefined;
      throw error;
    }
  }

  /**
   * One run. With `chain`, a run whose job succeeds begins the next run in the round trip that
   * commits it; the next call continues that run (call `release()` if there is none).
   */
  async runOnce({ chain = false }: { chain?: boolean } = {}): Promise<RunResult> {
    const held = this.#held;
    this.#held = undefined;
    const started = held?.started ?? performance.now();
    const runId = randomUUID();
    const finish = (outcome: UntimedRunResult): RunResult => {
      const { ended: _ended, ...result } = outcome;
      return { ...result, runId, durationMs: performance.now() - started };
    };
    let tx = held?.tx;
    if (!tx) {
      this.#tookAnyAt = performance.now();
      try {
        await (this.#limits ??= this.#readLimits());
        tx = await RunTransaction.open(this.ctx.pool, this.#prologue);
      } catch (error) {
        return finish({ outcome: 'error', error: asError(error) });
      }
    }
    const run: RunInfo = { started, runId, chain, migration: undefined };
    try {
      const outcome = await this.#inTransaction(tx, await tx.begin(), run);
      if (!outcome.ended) await tx.commit();
      if (tx.begun) this.#held = { tx, started: performance.now() };
      else tx.release();
      return finish(outcome);
    } catch (thrown) {
      const error = asError(thrown);
      await tx.rollback();
      tx.release();
      if (error instanceof StopError) return finish({ outcome: 'aborted', error });
      const state = sqlStateOf(error);
      if (state === SqlState.undefinedTable || state === SqlState.undefinedColumn) this.#validated.clear();
      return finish(await this.#afterRunError(error, run.migration));
    }
  }

  /**
   * A run that failed for a reason that is not its work function's, on a migration it had taken,
   * sets that migration aside for a while (so the next take finds the others), and the
   * `maxRunErrors`-th in a row fails it with run_error. Transient trouble (the connection, the
   * server restarting, a lock or statement timeout, a serialization failure) is not its fault
   * and is not counted.
   */
  async #afterRunError(error: Error, migration: MigrationRef | undefined): Promise<UntimedRunResult> {
    if (!migration || isTransient(error)) return { outcome: 'error', error, ...(migration && { migration }) };
    const { runErrorHoldMs, maxRunErrors, maxIntervalMs } = this.ctx.options;
    const reason = `run error: ${storedMessage(error, 500)}`;
    // One text for the row, the logs and the error report.
    const failureMessage = `${maxRunErrors} runs in a row failed; last error: ${reason}`;
    let hold;
    try {
      hold = await holdAfterRunError(this.ctx.pool, migration.id, {
        reason,
        failureMessage,
        holdMs: runErrorHoldMs,
        maxHoldMs: Math.max(runErrorHoldMs, maxIntervalMs),
        maxErrors: maxRunErrors,
      });
    } catch {
      return { outcome: 'error', error, migration };
    }
    if (hold?.failed) {
      this.#forget(migration.id);
      const failure = new BbmError('run_error', failureMessage, { cause: error });
      return { outcome: 'migration_failed', migration, error: failure, errorCode: 'run_error' };
    }
    return { outcome: 'error', error, migration, ...(hold && { heldForMs: hold.heldForMs }) };
  }

  /**
   * Rolls back and hands back the connection of a run begun ahead by `chain` and not used, and
   * waits for the cuts it started beside its jobs (a pool ended meanwhile would fail them). It stops
   * listening for the hard stop until its next job.
   */
  async release(): Promise<void> {
    this.ctx.hardStop.removeEventListener('abort', this.#onHardStop);
    this.#hearingHardStop = false;
    const held = this.#held;
    this.#held = undefined;
    if (held) {
      await held.tx.rollback();
      held.tx.release();
    }
    await Promise.all(this.#cutsInFlight);
  }

  async #inTransaction(tx: RunTransaction, first: Take, run: RunInfo): Promise<UntimedRunResult> {
    let take = first;
    for (let cuts = 0; ; cuts += 1) {
      if (take.kind === 'nothing' || take.kind === 'busy') {
        await tx.rollback();
        return { outcome: take.kind === 'nothing' ? 'no_job' : 'lock_in_use', ended: true };
      }
      const { migration } = take;
      const ref: MigrationRef = { id: migration.id, name: migration.name, work: migration.jobSignatureName };
      run.migration = ref;
      const checked = await this.#check(tx, migration);
      if (checked === 'not_mine') {
        // Only a run bound to one migration (finalize) can get here: leave it for a worker that has it.
        await tx.rollback();
        return { outcome: 'no_job', migration: ref, ended: true };
      }
      if (checked instanceof BbmError) return this.#fail(tx, ref, checked);

      if (take.kind === 'job') {
        const { job } = take;
        if (job.status === JobStatus.failed && job.attempts >= this.ctx.options.maxAttempts) {
          return this.#fail(
            tx,
            ref,
            new BbmError(
              'max_job_retry',
              `job ${job.id} [${job.start}..${job.end}] failed ${job.attempts} times; last error: ${(await jobFailureMessage(tx.db, job.id)) ?? 'unknown'}`,
            ),
          );
        }
        const claimed: ClaimedJob = {
          id: job.id,
          start: job.start,
          end: job.end,
          attempt: job.attempts + 1,
          batchSize: job.batchSize ?? migration.batchSize,
          walLsn: job.walLsn,
          cutDue: job.cutDue,
        };
        return this.#execute(tx, migration, ref, checked, claimed, take.lane, run);
      }

      switch (take.step) {
        case 'start':
          // Committed on its own, before any job: a run that updates the migration row holds that
          // row's lock until it commits, and an operator's `bbm pause` must never wait for a job.
          await startMigration(tx.db, migration.id, checked.target);
          return { outcome: 'migration_started', migration: ref };
        case 'finish':
          if (!(await finishMigration(tx.db, migration.id))) return { outcome: 'lock_in_use', migration: ref };
          this.#forget(migration.id);
          return { outcome: 'migration_finished', migration: ref };
        case 'cut':
          // Another lane may take the range first; after one cut, leave it to the next run.
          if (cuts > 0) {
            await tx.rollback();
            return { outcome: 'lock_in_use', migration: ref, ended: true };
          }
          checked.cutDone = false;
          take = await tx.cutAndTake(this.#cut(migration, checked));
      }
    }
  }

  /** Fails the migration with the error's code (committed by the caller). */
  async #fail(tx: RunTransaction, ref: MigrationRef, error: BbmError): Promise<UntimedRunResult> {
    await failMigration(tx.db, ref.id, ErrorCode[error.code], storedMessage(error));
    this.#forget(ref.id);
    return { outcome: 'migration_failed', migration: ref, error, errorCode: error.code };
  }

  #forget(id: bigint): void {
    this.#validated.delete(id);
    this.#sizers.delete(id);
  }

  /**
   * The migration's work function, batching strategy, table and column checked, or the error it
   * must fail with. The catalog is asked once per migration, while the row names the same table,
   * column and work function as when it was asked.
   */
  async #check(tx: RunTransaction, migration: TakenMigration): Promise<Validated | BbmError | 'not_mine'> {
    const names = {
      tableName: migration.tableName,
      columnName: migration.columnName,
      jobSignatureName: migration.jobSignatureName,
    };
    const cached = this.#validated.get(migration.id);
    if (
      cached &&
      cached.tableName === names.tableName &&
      cached.columnName === names.columnName &&
      cached.jobSignatureName === names.jobSignatureName
    ) {
      return cached;
    }
    const work = this.ctx.registry.get(migration.jobSignatureName);
    if (!work && isValidWorkName(migration.jobSignatureName)) return 'not_mine';
    if (!work) {
      return new BbmError(
        'invalid_job_signature',
        `job_signature_name ${JSON.stringify(migration.jobSignatureName)} can never name a work function ` +
          '(letters, digits and _ . : / - only, at most 200)',
      );
    }
    if (migration.batchingStrategy !== null && migration.batchingStrategy !== SERIAL_KEY_SET) {
      return new BbmError(
        'invalid_batching_strategy',
        `batching_strategy ${JSON.stringify(migration.batchingStrategy)} is not supported; use NULL or '${SERIAL_KEY_SET}'`,
      );
    }
    const target = await resolveTarget(tx.db, migration.tableName, migration.columnName);
    if (!isTarget(target)) return new BbmError(target.code, target.message);
    const quoted = { table: dialect.sqlToQuery(quotedTable(target)).sql, column: dialect.escapeName(target.column) };
    const validated: Validated = { ...names, target, work, quoted };
    this.#validated.set(migration.id, validated);
    return validated;
  }

  /** The next range of a migration to cut, sized by its sizer when it has a target job time. */
  #cut(migration: TakenMigration, validated: Validated): RangeCut {
    const settings = paceSettings(migration);
    let size: number | null = null;
    if (settings) {
      let sizer = this.#sizers.get(migration.id);
      if (!sizer) this.#sizers.set(migration.id, (sizer = new BatchSizer(migration.batchSize)));
      size = sizer.nextCut(settings);
    }
    return { migrationId: migration.id, validated, size, statementTimeoutMs: this.#cutTimeoutMs };
  }

  /**
   * Starts cutting the next range of a migration in one lane beside its job (cutRangeBeside). With
   * several lanes, the lanes keep the server's cores busy, and the cut costs least in the round
   * trip that commits the finishing job, after its COMMIT (measured: two lanes on two cores ran
   * 8 % slower with their ranges cut beside them, on connections of their own); with one, the cut
   * runs on a spare core while the work runs.
   */
  #cutBeside(migration: TakenMigration, validated: Validated): CutBeside | undefined {
    if (migration.maxParallelJobs !== 1) return undefined;
    const beside = cutRangeBeside(this.ctx.pool, this.#cut(migration, validated));
    if (!beside) return undefined;
    this.#cutsInFlight.add(beside.over);
    void beside.over.then(() => this.#cutsInFlight.delete(beside.over));
    return beside;
  }

  /**
   * Waits for the cut beside the job before the job's record, so that the next take (sent with
   * the record) finds the range. A failed cut is only noted: the lane then cuts the range itself
   * (cutAndTake), and a real fault fails that run and is reported there.
   */
  async #cutBesideEnded(beside: CutBeside | undefined, runId: string): Promise<void> {
    if (!beside) return;
    try {
      await beside.ended(CUT_CONNECT_MS);
    } catch (error) {
      this.ctx.log.debug({ err: error, [CORRELATION_ID]: runId }, 'cutting a range beside the job failed');
    }
  }

  async #execute(
    tx: RunTransaction,
    migration: TakenMigration,
    ref: MigrationRef,
    validated: Validated,
    claimed: ClaimedJob,
    lane: number,
    { started, runId, chain }: RunInfo,
  ): Promise<UntimedRunResult> {
    const { options, hardStop } = this.ctx;
    const { target, work, quoted } = validated;
    const jobRef: NonNullable<RunResult['job']> = {
      id: claimed.id,
      start: claimed.start,
      end: claimed.end,
      attempt: claimed.attempt,
      batchSize: claimed.batchSize,
      lane,
      durationMs: 0,
    };

    const stop = new JobStop();
    this.#jobStop = stop;
    if (!this.#hearingHardStop) {
      hardStop.addEventListener('abort', this.#onHardStop, { once: true });
      this.#hearingHardStop = true;
    }
    if (hardStop.aborted) stop.stop(hardStopError());
    const remainingMs = Math.max(1, options.runTimeoutMs - (performance.now() - started));
    const timer = setTimeout(() => stop.stop(new JobTimeoutError(options.runTimeoutMs)), remainingMs);

    // No cut with this job when the take found enough ranges waiting (it cuts nothing then).
    const cutDue = claimed.cutDue !== false;
    const beside = cutDue ? this.#cutBeside(migration, validated) : undefined;
    const session = new JobSession(tx.client);
    const parentLog = this.ctx.log;
    // The drizzle handle and the child logger are made when the work first asks for them: most
    // work functions use neither, and a job's client CPU competes with the database for cores.
    let db: JobDb | undefined;
    let log: Logger | undefined;
    const job: Job = {
      query: session.query,
      get db() {
        return (db ??= jobDb(session));
      },
      table: quoted.table,
      column: quoted.column,
      start: claimed.start,
      end: claimed.end,
      batchSize: claimed.batchSize,
      migration: { id: ref.id, name: ref.name },
      attempt: claimed.attempt,
      lane,
      get signal() {
        return stop.signal;
      },
      get log() {
        return (log ??= parentLog.child({
          [CORRELATION_ID]: runId,
          ...migrationFields(ref),
          ...jobFields({ ...claimed, lane }),
        }));
      },
    };

    let failure: Error | undefined;
    let rows: number | undefined;
    const workStarted = performance.now();
    try {
      try {
        rows = await stop.race(callWork(work, job));
      } catch (thrown) {
        failure = asError(thrown);
      }
      jobRef.durationMs = performance.now() - workStarted;
      session.close();
      // Our next statements queue behind the work's; cancel it so they run now. The cancel resolves
      // once the server has taken it, so it cannot land on a statement we send afterwards.
      if (stop.reason && session.busy) await cancelQuery(tx.client);
      await session.settled();
    } finally {
      clearTimeout(timer);
      this.#jobStop = undefined;
    }
    await this.#cutBesideEnded(beside, runId);
    if (stop.reason instanceof StopError) throw stop.reason;

    const settings = paceSettings(migration);
    const sizer = settings ? this.#sizers.get(migration.id) : undefined;
    if (sizer && settings) sizer.observe({ size: claimed.batchSize, workMs: jobRef.durationMs, rows }, settings);

    let rolledBack = false;
    if (!failure) {
      // Several lanes (or no connection to spare): the next range is cut after this job's COMMIT (see #cutBeside).
      const fixedSize = paceSettings(migration) ? undefined : fixedSizeOf(migration);
      if (fixedSize !== undefined && validated.fixedSize !== undefined && fixedSize < validated.fixedSize) {
        validated.cutDone = false;
      }
      validated.fixedSize = fixedSize;
      const cut = !cutDue || beside || validated.cutDone ? undefined : this.#cut(migration, validated);
      // The next run tries this migration and lane first, unless it is time to look at them all.
      const after =
        chain && this.ctx.only === undefined && performance.now() - this.#tookAnyAt < TAKE_AFTER_MS
          ? { migrationId: migration.id, lane }
          : undefined;
      if (chain && !after) this.#tookAnyAt = performance.now();
      const finished = await tx.finish({ job: claimed, rows, durationMs: jobRef.durationMs }, { cut, chain, after });
      if (finished.committed) {
        if (finished.cut === null) validated.cutDone = true;
        if (finished.laterError) {
          this.ctx.log.warn(
            { err: finished.laterError, [CORRELATION_ID]: runId },
            'job committed; cutting the next range or beginning the next run failed',
          );
        }
        return {
          outcome: 'job_succeeded',
          migration: ref,
          job: { ...jobRef, rows, ...(finished.walBytes !== undefined && { walBytes: finished.walBytes }) },
          ended: true,
        };
      }
      failure = workFailureAtCommit(finished.error);
      rolledBack = true;
    }
    if (!rolledBack) await tx.rollbackWork();
    if (isTimeout(failure) && (await splitRange(tx.db, claimed, migration.id, target, migration.minBatchSize ?? 1))) {
      return {
        outcome: 'job_failed',
        migration: ref,
        job: { ...jobRef, split: true },
        error: failure,
        errorCode: 'unknown',
      };
    }
    await recordFailedAttempt(tx.db, claimed, ErrorCode.unknown, storedMessage(failure), jobRef.durationMs);
    return { outcome: 'job_failed', migration: ref, job: jobRef, error: failure, errorCode: 'unknown' };
  }
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

/** The bounds on every size a migration cuts at; min_batch_size wins over max_batch_size, as in SQL. */
function sizeBounds(migration: TakenMigration): { minSize: number; maxSize: number } {
  const minSize = migration.minBatchSize ?? 1;
  return { minSize, maxSize: Math.max(minSize, migration.maxBatchSize ?? INT4_MAX) };
}

/** The size a migration without a target job time cuts at (sql/functions/bbm_fixed_size.sql: change the two together). */
function fixedSizeOf(migration: TakenMigration): number {
  const { minSize, maxSize } = sizeBounds(migration);
  return Math.max(1, minSize, Math.min(maxSize, migration.batchSize));
}

/** The migration's adaptive sizing settings, or null when its batch size is fixed. */
function paceSettings(migration: TakenMigration): PaceSettings | null {
  if (migration.targetJobMs === null) return null;
  return { targetMs: migration.targetJobMs, ...sizeBounds(migration) };
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

/** drizzle over the fenced session, nested (savepoints) inside the run's transaction. */
function jobDb(session: JobSession): JobDb {
  const pgSession = new NodePgSession(session as unknown as pg.PoolClient, dialect, undefined);
  return new NodePgTransaction(dialect, pgSession, undefined, 1);
}

/** The work's promise, resolving to the rows it reports changing, if any; a synchronous throw becomes a rejection. */
async function callWork(work: Work, job: Job): Promise<number | undefined> {
  const rows = await work.do(job);
  return typeof rows === 'number' && Number.isFinite(rows) ? rows : undefined;
}

const hardStopError = () => new StopError('worker stopped: job cancelled and rolled back');

/**
 * How a job ends early: at its run timeout, or on the worker's hard stop. The work's promise races
 * it. The AbortSignal a work function sees (Job.signal) is made when the work first asks for it:
 * most never do, and a controller per job, with its listeners, cost the lane about 10 µs of
 * client CPU between two of its statements (measured), where the database waits for the next.
 */
class JobStop {
  /** Why the job was stopped; set once. */
  reason: Error | undefined;
  #controller: AbortController | undefined;
  #reject: ((error: Error) => void) | undefined;

  get signal(): AbortSignal {
    if (!this.#controller) {
      this.#controller = new AbortController();
      if (this.reason) this.#controller.abort(this.reason);
    }
    return this.#controller.signal;
  }

  stop(reason: Error): void {
    if (this.reason) return;
    this.reason = reason;
    this.#controller?.abort(reason);
    this.#reject?.(reason);
  }

  /** Settles with `work`, or rejects with the stop's reason as soon as it is stopped. */
  race<T>(work: Promise<T>): Promise<T> {
    // A timed-out work function keeps running detached; its eventual rejection must not go unhandled.
    work.catch(() => {});
    if (this.reason) return Promise.reject(this.reason);
    return new Promise<T>((resolve, reject) => {
      this.#reject = reject;
      work.then(resolve, (error: unknown) => reject(asError(error)));
    });
  }
}
