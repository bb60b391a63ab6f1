/**
 * One run of a worker: one transaction that locks a migration, finds or creates its next
 * ID range, executes the work function on it and records the outcome. On the common path that
 * is four round trips:
 *
 *   1. BEGIN · lock the first free runnable migration · SAVEPOINT
 *   2. read the migration and claim its next range (one statement, nothing written)
 *   3. the work function's statements
 *   4. write the job, finished · COMMIT (· the next run's step 1, when the worker goes on)
 *
 * A migration not yet validated by this worker, starting, out of new ranges or failing takes
 * the full path: read it, validate it, then start, finish or fail it, or claim a failed range.
 * A failing work function is undone with ROLLBACK TO the savepoint, and the attempt recorded.
 * The work's writes and the job's status commit together, so a crash at any point leaves the
 * range either done and recorded or not done at all.
 */
import { randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { NodePgSession, NodePgTransaction } from 'drizzle-orm/node-postgres';
import { PgDialect } from 'drizzle-orm/pg-core';
import type pg from 'pg';
import type { Logger } from 'pino';
import { ErrorCode, MigrationStatus, SERIAL_KEY_SET } from '../store/codes.ts';
import { isTarget, resolveTarget, type Target, type TargetProblem } from '../store/catalog.ts';
import { SqlState, sqlStateOf } from '../store/db.ts';
import {
  cancelBackend,
  claimNextRange,
  firstFailedJob,
  recordFailedAttempt,
  recordFinishedAndCommit,
  type ClaimedJob,
  type ValidatedMigration,
} from '../store/jobs.ts';
import {
  failMigration,
  finishMigration,
  loadLockedMigration,
  lockMigrationStatement,
  lockNextMigrationStatement,
  BUSY,
  quotedTable,
  startMigration,
  type LockedMigration,
  type WorkFilter,
} from '../store/migrations.ts';
import { beginRun, commit, rollback, rollbackWorkSavepoint, runPrologue } from '../store/tx.ts';
import type { ResolvedOptions } from './config.ts';
import { asError, BbmError, storedMessage } from './errors.ts';
import { isValidWorkName, VALID_WORK_NAME, type WorkRegistry } from './registry.ts';
import { JobSession } from './session.ts';
import type { Job, JobDb, RunResult, Work } from './types.ts';

/** How far past the run timeout the server-side backstops (statement and idle timeouts) sit. */
const BACKSTOP_MARGIN_MS = 10_000;

export interface RunContext {
  pool: pg.Pool;
  registry: WorkRegistry;
  options: ResolvedOptions;
  log: Logger;
  /** Aborting it cancels the job in flight and rolls its whole run back (a second SIGTERM). */
  hardStop: AbortSignal;
  /** Work on this migration only, waiting for its lock when another worker holds it (finalize). */
  only?: bigint;
}

/** The reason a run was rolled back on a hard stop. */
class StopError extends Error {
  override readonly name = 'StopError';
}

/**
 * A run's result before timing; `committed` when its last statement already committed, and
 * `next` when that statement also started the next run (the next run's lock rows).
 */
type Outcome = Omit<RunResult, 'durationMs' | 'runId'> & { committed?: true; next?: LockRow[] | undefined };

/** A migration's row as validated, or the problem validation found. */
type Validation = Omit<ValidatedMigration, 'target'> & { target: Target | TargetProblem };

type LockRow = { id: string | null };
const idOf = (rows: LockRow[]): bigint | null => (rows[0]?.id ? BigInt(rows[0].id) : null);

/**
 * A pooled connection for the duration of one run (or of chained runs). A connection lost while
 * checked out emits 'error' on the client (the pool listens only to idle ones); unheard, that is
 * an uncaught exception. It is remembered instead, and the client destroyed on release.
 */
class RunConnection {
  #lost: Error | undefined;
  readonly #onError = (error: Error) => this.lost(error);

  constructor(readonly client: pg.PoolClient) {
    client.on('error', this.#onError);
  }

  lost(error: Error): void {
    this.#lost ??= error;
  }

  release(): void {
    this.client.off('error', this.#onError);
    this.client.release(this.#lost);
  }
}

/** What a run carries through its steps. */
interface RunInfo {
  started: number;
  runId: string;
  /** Whether a successful job's commit also starts the next run. */
  chain: boolean;
}

/** A run whose transaction is open: its connection, when it began, and its lock rows if known. */
interface OpenRun {
  connection: RunConnection;
  started: number;
  locked: LockRow[] | undefined;
}

const dialect = new PgDialect();
/** The backend pid pg learns at connect (BackendKeyData); pg does not type it. */
const backendPid = (client: pg.PoolClient): number | undefined => (client as unknown as { processID?: number }).processID;

export class Runner {
  /**
   * Migrations this worker has validated (catalog lookups included), by id. Range creation checks
   * the row still says what was validated; entries go when a migration ends or its table errors.
   */
  readonly #validated = new Map<bigint, ValidatedMigration & { work: Work }>();
  /** Starts every run: BEGIN, settings, lock, savepoint (see tx.ts). */
  readonly #prologue: string;
  /** The next run, when the previous one started it (`chain`). */
  #held: OpenRun | undefined;

  constructor(private readonly ctx: RunContext) {
    const filter: WorkFilter = { names: ctx.registry.names, validNamePattern: VALID_WORK_NAME };
    const lock = ctx.only === undefined ? lockNextMigrationStatement(filter) : lockMigrationStatement(ctx.only);
    this.#prologue = runPrologue(ctx.options.runTimeoutMs + BACKSTOP_MARGIN_MS, lock);
  }

  /**
   * One run. With `chain`, a run whose job succeeds starts the next run in the round trip that
   * commits it; the next call continues that run (call `release()` if there is none).
   */
  async runOnce({ chain = false }: { chain?: boolean } = {}): Promise<RunResult> {
    let run = this.#held;
    this.#held = undefined;
    const started = run?.started ?? performance.now();
    const runId = randomUUID();
    const finish = (outcome: Outcome): RunResult => ({ ...outcome, runId, durationMs: performance.now() - started });
    if (!run) {
      let connection: RunConnection;
      try {
        connection = new RunConnection(await this.ctx.pool.connect());
      } catch (error) {
        return finish({ outcome: 'error', error: asError(error) });
      }
      run = { connection, started, locked: undefined };
    }
    const { connection } = run;
    const client = connection.client;
    try {
      const locked = run.locked ?? (await beginRun<LockRow>(client, this.#prologue));
      const { committed, next, ...outcome } = await this.#inTransaction(client, idOf(locked), { started, runId, chain });
      if (!committed) await commit(client);
      if (next) this.#held = { connection, started: performance.now(), locked: next };
      else connection.release();
      return finish(outcome);
    } catch (thrown) {
      const error = asError(thrown);
      await rollback(client).catch((rollbackError: unknown) => connection.lost(asError(rollbackError)));
      connection.release();
      const state = sqlStateOf(error);
      if (state === SqlState.undefinedTable || state === SqlState.undefinedColumn) this.#validated.clear();
      return finish({ outcome: error instanceof StopError ? 'aborted' : 'error', error });
    }
  }

  /** Rolls back and hands back the connection of a run started ahead by `chain` and not used. */
  async release(): Promise<void> {
    const run = this.#held;
    this.#held = undefined;
    if (!run) return;
    await rollback(run.connection.client).catch((error: unknown) => run.connection.lost(asError(error)));
    run.connection.release();
  }

  async #inTransaction(client: pg.PoolClient, id: bigint | null, run: RunInfo): Promise<Outcome> {
    if (id === null) return { outcome: 'no_job' };
    if (id === BUSY) return { outcome: 'lock_in_use' };
    // The common case, every range but a migration's first: one statement reads the migration
    // and creates its next range. Anything else (not validated here yet, not running, ranges
    // exhausted, row changed) returns null and takes the full path below.
    const validated = this.#validated.get(id);
    if (validated) {
      const next = await claimNextRange(client, id, validated);
      if (next) {
        const migration = { ...next.migration, work: validated.jobSignatureName };
        return this.#execute(client, migration, validated.target, validated.work, next.job, run);
      }
    }

    const migration = await loadLockedMigration(client, id);
    // Paused or finished between choosing it and taking its lock: someone else got there first.
    if (!migration || (migration.status !== MigrationStatus.active && migration.status !== MigrationStatus.running)) {
      return { outcome: 'lock_in_use' };
    }
    const ref = { id: migration.id, name: migration.name, work: migration.jobSignatureName };
    const fail = async (error: BbmError): Promise<Outcome> => {
      await failMigration(client, migration.id, ErrorCode[error.code], storedMessage(error));
      this.#validated.delete(migration.id);
      return { outcome: 'migration_failed', migration: ref, error, errorCode: error.code };
    };

    const work = this.ctx.registry.get(migration.jobSignatureName);
    // Left for a worker that has the work function (only a run bound to one migration gets here).
    if (!work && isValidWorkName(migration.jobSignatureName)) return { outcome: 'no_job', migration: ref };
    if (!work) {
      return fail(
        new BbmError(
          'invalid_job_signature',
          `job_signature_name ${JSON.stringify(migration.jobSignatureName)} can never name a work function ` +
            '(letters, digits and _ . : / - only, at most 200)',
        ),
      );
    }
    if (migration.batchingStrategy !== null && migration.batchingStrategy !== SERIAL_KEY_SET) {
      return fail(
        new BbmError(
          'invalid_batching_strategy',
          `batching_strategy ${JSON.stringify(migration.batchingStrategy)} is not supported; use NULL or '${SERIAL_KEY_SET}'`,
        ),
      );
    }
    const checked = await this.#validate(client, migration, work);
    if (!isTarget(checked.target)) return fail(new BbmError(checked.target.code, checked.target.message));
    const target = checked.target;

    if (migration.status === MigrationStatus.active || migration.maxValue === null) {
      // Committed on its own, before any job: a run that updates the migration row holds that
      // row's lock until it commits, and an operator's `bbm pause` must never wait for a job.
      await startMigration(client, migration, target);
      return { outcome: 'migration_started', migration: ref };
    }
    const max = migration.maxValue;

    const next = migration.lastJobEnd === null ? migration.minValue : migration.lastJobEnd + 1n;
    let job: ClaimedJob;
    if (next <= max) {
      const claimed = await claimNextRange(client, migration.id, { ...checked, target });
      if (!claimed) throw new Error(`migration ${migration.id} changed while its lock was held`);
      job = claimed.job;
    } else {
      // Every range has run once; now the failed ones, oldest first.
      const failed = await firstFailedJob(client, migration.id);
      if (!failed) {
        await finishMigration(client, migration.id);
        this.#validated.delete(migration.id);
        return { outcome: 'migration_finished', migration: ref };
      }
      if (failed.attempt >= this.ctx.options.maxAttempts) {
        return fail(
          new BbmError(
            'max_job_retry',
            `job ${failed.id} [${failed.start}..${failed.end}] failed ${failed.attempt} times; last error: ${failed.failureMessage ?? 'unknown'}`,
          ),
        );
      }
      job = { id: failed.id, start: failed.start, end: failed.end, attempt: failed.attempt + 1 };
    }
    return this.#execute(client, { ...ref, batchSize: migration.batchSize }, target, work, job, run);
  }

  /**
   * The migration's table and column checked against the catalog, or the earlier check while the
   * row still names the same table, column and work function.
   */
  async #validate(client: pg.PoolClient, migration: LockedMigration, work: Work): Promise<Validation> {
    const names = { tableName: migration.tableName, columnName: migration.columnName, jobSignatureName: migration.jobSignatureName };
    const cached = this.#validated.get(migration.id);
    if (cached && cached.tableName === names.tableName && cached.columnName === names.columnName && cached.jobSignatureName === names.jobSignatureName) {
      return cached;
    }
    const target = await resolveTarget(client, migration.tableName, migration.columnName);
    if (isTarget(target)) this.#validated.set(migration.id, { ...names, target, work });
    return { ...names, target };
  }

  async #execute(
    client: pg.PoolClient,
    migration: { id: bigint; name: string; work: string; batchSize: number },
    target: Target,
    work: Work,
    claimed: ClaimedJob,
    { started, runId, chain }: RunInfo,
  ): Promise<Outcome> {
    const { options, hardStop, pool } = this.ctx;
    const ref = { id: migration.id, name: migration.name, work: migration.work };
    const jobRef: NonNullable<RunResult['job']> = {
      id: claimed.id,
      start: claimed.start,
      end: claimed.end,
      attempt: claimed.attempt,
      batchSize: migration.batchSize,
      durationMs: 0,
    };

    const abort = new AbortController();
    const stop = () => abort.abort(new StopError('worker stopped: job cancelled and rolled back'));
    hardStop.addEventListener('abort', stop, { once: true });
    if (hardStop.aborted) stop();
    const remainingMs = Math.max(1, options.runTimeoutMs - (performance.now() - started));
    const timer = setTimeout(
      () => abort.abort(new BbmError('unknown', `job timed out: the run exceeded runTimeoutMs (${options.runTimeoutMs} ms)`)),
      remainingMs,
    );

    const session = new JobSession(client);
    const job: Job = {
      query: session.query,
      db: jobDb(session),
      table: dialect.sqlToQuery(quotedTable(target)).sql,
      column: dialect.escapeName(target.column),
      start: claimed.start,
      end: claimed.end,
      batchSize: migration.batchSize,
      migration: ref,
      attempt: claimed.attempt,
      signal: abort.signal,
      log: this.ctx.log.child({
        correlation_id: runId,
        bbm_id: String(migration.id),
        bbm_name: migration.name,
        job_id: String(claimed.id),
        job_start: String(claimed.start),
        job_end: String(claimed.end),
        attempt: claimed.attempt,
      }),
    };

    let failure: Error | undefined;
    let rows: number | undefined;
    const workStarted = performance.now();
    try {
      try {
        rows = await untilAborted(callWork(work, job), abort.signal);
      } catch (thrown) {
        failure = asError(thrown);
      }
      jobRef.durationMs = performance.now() - workStarted;
      session.close();
      const pid = backendPid(client);
      // Our next statements queue behind the work's; cancel it so they run now. pg_cancel_backend
      // returns after the signal is sent, so it cannot land on a statement we send afterwards.
      if (abort.signal.aborted && session.busy && pid !== undefined) await cancelBackend(pool, pid).catch(() => false);
      await session.settled();
    } finally {
      clearTimeout(timer);
      hardStop.removeEventListener('abort', stop);
    }
    if (abort.signal.reason instanceof StopError) throw abort.signal.reason;

    if (!failure) {
      try {
        const next = await recordFinishedAndCommit<LockRow>(client, migration.id, claimed, rows, chain ? this.#prologue : undefined);
        return { outcome: 'job_succeeded', migration: ref, job: { ...jobRef, rows }, committed: true, next };
      } catch (error) {
        failure = workFailureAtCommit(error);
      }
    }
    await rollbackWorkSavepoint(client);
    await recordFailedAttempt(client, migration.id, claimed, ErrorCode.unknown, storedMessage(failure));
    return { outcome: 'job_failed', migration: ref, job: jobRef, error: failure, errorCode: 'unknown' };
  }
}

/**
 * recordFinishedAndCommit fails before its COMMIT when the work left the transaction broken: the work
 * swallowed a failed statement (25P02), or its writes break a deferred constraint (class 23).
 * Those are the work's failures; anything else is the run's.
 */
function workFailureAtCommit(error: unknown): Error {
  const state = sqlStateOf(error);
  if (state === SqlState.inFailedTransaction) {
    return new Error('the work function returned normally after one of its statements failed (the error was swallowed)');
  }
  if (state?.startsWith('23')) return asError(error);
  throw error;
}

/** drizzle over the fenced session, nested (savepoints) inside the run's transaction. */
function jobDb(session: JobSession): JobDb {
  const pgSession = new NodePgSession(session as unknown as pg.PoolClient, dialect, undefined);
  return new NodePgTransaction(dialect, pgSession, undefined, 1) as JobDb;
}

/** The work's promise, resolving to the rows it reports changing, if any; a synchronous throw becomes a rejection. */
async function callWork(work: Work, job: Job): Promise<number | undefined> {
  const rows = await work.do(job);
  return typeof rows === 'number' && Number.isFinite(rows) ? rows : undefined;
}

/** Settles with `work`, or rejects with the signal's reason as soon as it aborts. */
function untilAborted<T>(work: Promise<T>, signal: AbortSignal): Promise<T> {
  // A timed-out work function keeps running detached; its eventual rejection must not go unhandled.
  work.catch(() => {});
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (error: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(error);
      },
    );
  });
}
