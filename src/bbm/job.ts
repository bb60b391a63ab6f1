/**
 * A job's work: the work function called on the job's range, on the run's connection (fenced:
 * session.ts), raced against the job's early end (its run timeout, or the worker's hard stop).
 * What it did is recorded by the run (run.ts); nothing here writes to the database.
 */
import { performance } from 'node:perf_hooks';
import { NodePgSession, NodePgTransaction } from 'drizzle-orm/node-postgres';
import { PgDialect } from 'drizzle-orm/pg-core';
import type pg from 'pg';
import { cancelQuery, SqlState, sqlStateOf } from '../store/db.ts';
import type { ClaimedJob } from '../store/jobs.ts';
import { asError, BbmError } from './errors.ts';
import { CORRELATION_ID, jobFields, migrationFields, type Logger } from './log.ts';
import { JobSession } from './session.ts';
import type { Job, JobDb, JobKey, RunResult, VerifyFound, Work } from './types.ts';
import { rangePredicate, type Key } from '../store/keys.ts';

export const dialect = new PgDialect();

/** The reason a run was rolled back on a hard stop. */
export class StopError extends Error {
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
export function isTimeout(error: Error): boolean {
  const state = sqlStateOf(error);
  return error instanceof JobTimeoutError || state === SqlState.queryCanceled || state === SqlState.lockNotAvailable;
}

/** A range whose rows the work's check (`Work.verify`) found not satisfying it after the work ran. */
export class VerificationError extends BbmError {
  constructor(readonly found: VerifyFound) {
    super('verification_failed', `verification failed: ${unverifiedText(found)}`);
  }
}

/** `3 rows of the range do not satisfy the check (one: 42)`. */
export function unverifiedText({ rows, example }: VerifyFound): string {
  const count = rows === 1 ? '1 row of the range does' : `${rows} rows of the range do`;
  return `${count} not satisfy the check${example === undefined ? '' : ` (one: ${example})`}`;
}

/**
 * What the work's check found, as a count and maybe a key; a check that answers anything else is
 * the work's fault, and fails the attempt.
 */
export async function checkRange(work: Work<JobKey>, job: Job<JobKey>): Promise<VerifyFound> {
  const answer = await work.verify!(job);
  const found = typeof answer === 'number' ? { rows: answer } : answer;
  if (typeof found !== 'object' || found === null || !Number.isSafeInteger(found.rows) || found.rows < 0) {
    throw new Error(
      `the check of ${work.name} answered ${JSON.stringify(answer) ?? typeof answer}, not a count of rows (or { rows, example })`,
    );
  }
  return found.example === undefined ? { rows: found.rows } : { rows: found.rows, example: String(found.example) };
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

/**
 * The early ends of one runner's jobs (it runs one at a time). It listens for the hard stop from
 * its first job after a release until the next release, not per job, so that a signal that
 * outlives the runner (finalize's hardStop, a caller's) keeps no listener of it.
 */
export class JobStops {
  #current: JobStop | undefined;
  #hearing = false;
  readonly #onHardStop = () => this.#current?.stop(hardStopError());

  constructor(
    private readonly hardStop: AbortSignal,
    private readonly runTimeoutMs: number,
  ) {}

  /** A job's stop, due `remainingMs` from now (the run timeout) or at the hard stop; `end` it after the job. */
  begin(remainingMs: number): { stop: JobStop; end: () => void } {
    const stop = new JobStop();
    this.#current = stop;
    if (!this.#hearing) {
      this.hardStop.addEventListener('abort', this.#onHardStop, { once: true });
      this.#hearing = true;
    }
    if (this.hardStop.aborted) stop.stop(hardStopError());
    const timer = setTimeout(() => stop.stop(new JobTimeoutError(this.runTimeoutMs)), remainingMs);
    return {
      stop,
      end: () => {
        clearTimeout(timer);
        this.#current = undefined;
      },
    };
  }

  /** Stops listening for the hard stop until the next job. */
  deafen(): void {
    this.hardStop.removeEventListener('abort', this.#onHardStop);
    this.#hearing = false;
  }
}

/** The migration as a job sees it. */
export type MigrationRef = NonNullable<RunResult['migration']>;

/** What a job is given besides its claimed range. */
export interface JobSpec {
  client: pg.PoolClient;
  work: Work<JobKey>;
  quoted: { table: string; column: string };
  /** The key as the catalog knows it: null for a single integer column (the claimed range's start and end). */
  key: Key | null;
  /** The key's column (its first, for a key of several columns). */
  column: string;
  /** The migration's arguments (Job.args). */
  args: Readonly<Record<string, unknown>>;
  migration: MigrationRef;
  claimed: ClaimedJob;
  lane: number;
  runId: string;
  log: Logger;
}

/** What the work did: the rows it reported, or how it failed; `stopped` when the job ended early. */
export interface Worked {
  rows: number | undefined;
  failure: Error | undefined;
  /** Time in the work function. */
  workMs: number;
  stopped: Error | undefined;
}

/**
 * Calls the work function on the job's range and waits until nothing it sent is still running on
 * the connection: a work function stopped early has its statement cancelled.
 */
export async function doJob(spec: JobSpec, stop: JobStop): Promise<Worked> {
  const session = new JobSession(spec.client);
  const worked: Worked = { rows: undefined, failure: undefined, workMs: 0, stopped: undefined };
  const started = performance.now();
  try {
    worked.rows = await stop.race(callWork(spec.work, jobOf(spec, session, stop)));
  } catch (thrown) {
    worked.failure = asError(thrown);
  }
  worked.workMs = performance.now() - started;
  session.close();
  // Our next statements queue behind the work's; cancel it so they run now. The cancel resolves
  // once the server has taken it, so it cannot land on a statement we send afterwards.
  if (stop.reason && session.busy) await cancelQuery(spec.client);
  await session.settled();
  worked.stopped = stop.reason;
  return worked;
}

/**
 * The Job a work function gets. The drizzle handle and the child logger are made when the work
 * first asks for them: most work functions use neither, and a job's client CPU competes with the
 * database for cores.
 */
function jobOf(spec: JobSpec, session: JobSession, stop: JobStop): Job<JobKey> {
  const { claimed, lane, migration, runId, key } = spec;
  let db: JobDb | undefined;
  let log: Logger | undefined;
  const bounds = key === null ? claimed : { start: claimed.startKey ?? null, end: claimed.endKey ?? null };
  const rangeAfter = (count: number) => rangePredicate(key, spec.column, bounds, count + 1);
  const range = { ...rangeAfter(0), after: rangeAfter };
  return {
    query: session.query,
    get db() {
      return (db ??= jobDb(session));
    },
    table: spec.quoted.table,
    column: spec.quoted.column,
    start: keyValue(key, claimed.start, claimed.startKey),
    end: keyValue(key, claimed.end, claimed.endKey),
    range,
    args: spec.args,
    batchSize: claimed.batchSize,
    migration: { id: migration.id, name: migration.name },
    attempt: claimed.attempt,
    lane,
    get signal() {
      return stop.signal;
    },
    get log() {
      return (log ??= spec.log.child({
        [CORRELATION_ID]: runId,
        ...migrationFields(migration),
        ...jobFields({ ...claimed, lane }),
      }));
    },
  };
}

/**
 * A bound as Job.start and Job.end give it: the integer key's bigint, a one-column key's value as
 * text, or a key of several columns' values. (A range with no keys, of an empty key space, is
 * finished without its work: run.ts.)
 */
function keyValue(key: Key | null, ordinal: bigint, values: readonly string[] | null | undefined): JobKey {
  if (key === null) return ordinal;
  if (!values) throw new Error('a key range without its keys');
  return key.length === 1 ? values[0]! : values;
}

/** drizzle over the fenced session, nested (savepoints) inside the run's transaction. */
function jobDb(session: JobSession): JobDb {
  const pgSession = new NodePgSession(session as unknown as pg.PoolClient, dialect, undefined);
  return new NodePgTransaction(dialect, pgSession, undefined, 1);
}

/**
 * The work's promise, resolving to the rows it reports changing, if any; a synchronous throw
 * becomes a rejection. A work with a check has it run after `do`, in the same transaction: rows
 * it finds failing get `do` once more, and rows failing after that fail the attempt
 * (VerificationError), the work's writes rolled back.
 */
async function callWork(work: Work<JobKey>, job: Job<JobKey>): Promise<number | undefined> {
  const rows = await work.do(job);
  if (work.verify) {
    // Rows the application committed into the range while the work ran (which the check's own
    // snapshot sees) get one more pass of the work; rows still failing after it are the work's.
    if ((await checkRange(work, job)).rows > 0) {
      await work.do(job);
      const found = await checkRange(work, job);
      if (found.rows > 0) throw new VerificationError(found);
    }
  }
  return typeof rows === 'number' && Number.isFinite(rows) ? rows : undefined;
}
