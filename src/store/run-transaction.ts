/**
 * A run's transaction, and the one place its control statements are written: begin and take,
 * cut a range, record the outcome, commit or roll back. The engine (src/bbm/run.ts) decides what
 * happens; this module says it to the database.
 *
 * A run is one transaction on one pooled connection:
 *
 *   BEGIN · bbm_take_job (backstops, a lane and a job, locked) · SAVEPOINT bbm_work
 *   … the work function's statements …
 *   record the job finished · COMMIT · [cut the next range: BEGIN … COMMIT] · [the next run's BEGIN …]
 *
 * so on the common path a job costs one round trip besides its work: the next run is begun (and,
 * for a migration in several lanes, the next range cut) in the round trip that commits this one,
 * with bbm_take_next (the same migration and lane) in place of bbm_take_job (see RunPrologue).
 * A migration in one lane has its next range cut beside the job instead, on another connection
 * (jobs.ts, cutRangeBeside), while the work runs.
 */
import type { QueryResult } from 'pg';
import type pg from 'pg';
import { sql } from 'drizzle-orm';
import { execOne, integerLiteral, textLiteral, withStatement, type Queryable } from './db.ts';
import { INT4_MAX, JobStatus, type JobStatusCode, type MigrationStatusCode } from './codes.ts';
import type { StoredJob, StoredMigration } from './rows.ts';
import type { Target } from './catalog.ts';
import {
  cutRangeTransaction,
  finishJobText,
  jobStatus,
  parseCut,
  parseFinish,
  recordFailedAttempt,
  splitRange,
  type ClaimedJob,
  type FailedJob,
  type FinishedJob,
  type RangeCut,
} from './jobs.ts';

/** Where a timed-out job's range may be split: its migration, table and smallest half. */
export interface SplitAt {
  migrationId: bigint;
  target: Target;
  minRows: number;
}

/** The savepoint every run opens right after its take; rolling back to it undoes the work only. */
const WORK_SAVEPOINT = 'bbm_work';

/** What a worker may take: the work names it has, and the pattern every valid work name matches. */
export interface WorkFilter {
  names: readonly string[];
  /** A POSIX regular expression (the same text is a valid JS RegExp). */
  validNamePattern: string;
}

/**
 * The text that starts a run in one round trip: it opens the run's transaction, takes a lane and
 * a job (sql/functions/bbm_take_job.sql), and opens the work savepoint after them. Rendered once
 * per runner, with the work names as literals (the worker's own, already checked against the
 * pattern, and hex-encoded all the same) so that it can travel in the same round trip as BEGIN.
 * With `only`, the run is bound to that migration (bbm finalize).
 *
 * The savepoint must follow the take: rolling back to a savepoint releases the locks taken after
 * it. Everything else the run does happens inside it, so undoing a failed work function is one
 * ROLLBACK TO, after which the run records the failure.
 *
 * The take first sets the run's backstops (`backstopMs`), server-side bounds on the client's own
 * run timeout, so that no run holds a lane for long after its worker is gone: a statement that
 * outlives the run is cancelled, a worker that stalls while idle in the transaction is
 * disconnected, and a worker killed mid-statement is noticed within a second
 * (client_connection_check_interval, PostgreSQL 14+) instead of when the statement ends. It
 * also holds the quiet lock shared until the run ends (locks.ts, QUIET_LOCK_KEY), so that a
 * worker measuring commits with no run in flight can wait for every run of the fleet. Both used
 * to be a statement of their own: every statement costs parsing and a result on both sides, per job.
 */
export function runPrologue(
  { names, validNamePattern }: WorkFilter,
  backstopMs: number,
  only?: bigint,
  limits?: SessionLimits,
): RunPrologue {
  if (!Number.isSafeInteger(backstopMs) || backstopMs <= 0 || backstopMs > INT4_MAX) {
    throw new RangeError(`bad timeout ${backstopMs}`);
  }
  const nameArray = `ARRAY[${names.map(textLiteral).join(', ')}]::text[]`;
  const onlyId = only === undefined ? 'NULL' : `${BigInt(only)}::bigint`;
  const take = `SELECT * FROM bbm_take_job(${nameArray}, ${textLiteral(validNamePattern)}, ${onlyId}, ${backstopMs})`;
  const keep = limits ? tighterLimits(limits, backstopMs) : '';
  return {
    any: `BEGIN; ${take}; ${keep}SAVEPOINT ${WORK_SAVEPOINT}`,
    after: ({ migrationId, lane }) => {
      if (lane < 0 || lane > INT4_MAX) throw new RangeError(`bad lane ${lane}`);
      const next = `bbm_take_next(${integerLiteral(migrationId)}::bigint, ${integerLiteral(lane)}, ${nameArray}, ${backstopMs})`;
      return `BEGIN; SELECT * FROM ${next}; ${keep}SAVEPOINT ${WORK_SAVEPOINT}`;
    },
  };
}

/**
 * The session's own limits, in milliseconds (0: none): what the role, the database, the server or
 * the connection set, as a session of the worker's pool sees them before any run changes them.
 *
 * Only the statement timeout: a statement it cancels fails in a transaction that can still record
 * the attempt or split the range. A tighter idle_in_transaction_session_timeout is not kept inside
 * jobs: the server ends the session, the job's transaction cannot record anything, and the range
 * would be taken again and again, charged to nothing. Jobs are bounded by runTimeoutMs instead.
 */
export interface SessionLimits {
  statementTimeoutMs: number;
}

export async function sessionLimits(db: Queryable): Promise<SessionLimits> {
  const row = await execOne<{ setting: string }>(
    db,
    sql`SELECT setting FROM pg_catalog.pg_settings WHERE name = 'statement_timeout'`,
  );
  return { statementTimeoutMs: Number(row?.setting ?? 0) };
}

/** The smaller of a session's limit and a backstop; 0 (no limit) is not smaller. */
export function tighterLimit(limitMs: number, backstopMs: number): number {
  return limitMs > 0 && limitMs < backstopMs ? limitMs : backstopMs;
}

/**
 * A SET LOCAL that puts back the session's statement timeout where it is tighter than the backstop
 * the take set (a DBA's statement_timeout is a safety net a tool must not lift); nothing when it is
 * not. After the take, before the work's savepoint: rolling back to that savepoint keeps it.
 */
function tighterLimits(limits: SessionLimits, backstopMs: number): string {
  return tighterLimit(limits.statementTimeoutMs, backstopMs) < backstopMs
    ? `SET LOCAL statement_timeout = ${integerLiteral(limits.statementTimeoutMs)}; `
    : '';
}

/** The migration and lane of the job a run just finished: where its successor looks first. */
export interface TakeAfter {
  migrationId: bigint;
  lane: number;
}

/**
 * A run's first round trip, in two forms: `any`, which takes from every migration the worker
 * may run (bbm_take_job), and `after`, which takes the next range of the migration and lane a
 * run just finished (sql/functions/bbm_take_next.sql): one migration row read, one lane tried,
 * where bbm_take_job walks the migrations in order under a subtransaction each. It takes
 * nothing when that lane of that migration has no range for it; the run is then rolled back and
 * begun with `any` (RunTransaction.begin).
 */
export interface RunPrologue {
  any: string;
  after(previous: TakeAfter): string;
}

/** A migration as bbm_take_job returned it: the columns of its row a run needs. */
export type TakenMigration = Pick<
  StoredMigration,
  | 'id'
  | 'name'
  | 'jobSignatureName'
  | 'tableName'
  | 'columnName'
  | 'batchingStrategy'
  | 'batchSize'
  | 'maxParallelJobs'
  | 'targetJobMs'
  | 'minBatchSize'
  | 'maxBatchSize'
> & {
  status: MigrationStatusCode;
  /** The migration's job_arguments: a JSON object (the table's CHECK). */
  jobArguments: Readonly<Record<string, unknown>>;
};

/**
 * A job as bbm_take_job returned it, locked by this run: its row's id, attempts made so far and
 * the size it was cut with (null for a range cut before sizes were recorded), its range, and
 * what the take read beside it.
 */
export type TakenJob = Pick<StoredJob, 'id' | 'attempts' | 'batchSize'> & {
  start: bigint;
  end: bigint;
  status: JobStatusCode;
  /** The server's WAL insert position when it was taken. */
  walLsn: string | null;
  /**
   * Whether to cut the next ranges with this job (beside it in one lane, after its COMMIT in
   * several): whether bbm_cut_range would cut any then. The range's cue says (sql/functions/bbm_cut_due.sql),
   * or for a range cut without one a count of the ranges waiting or running. Null when the
   * take does not say (a retry).
   */
  cutDue: boolean | null;
  /**
   * A key that is not a single integer column (Target.key): the range's first and last keys
   * (inclusive), each value as text in the key's column order; null for an empty key space, and
   * for an integer key, whose range is [start, end].
   */
  startKey: readonly string[] | null;
  endKey: readonly string[] | null;
};

/** The job a take locked, as its run claims it: the attempt about to run, the size it was cut with. */
export function claim(job: TakenJob, migration: Pick<TakenMigration, 'batchSize'>): ClaimedJob {
  return {
    id: job.id,
    start: job.start,
    end: job.end,
    attempt: job.attempts + 1,
    batchSize: job.batchSize ?? migration.batchSize,
    walLsn: job.walLsn,
    cutDue: job.cutDue,
    startKey: job.startKey,
    endKey: job.endKey,
  };
}

/** What a take found. `step` says what the run must do when it holds a lane but no job. */
export type Take =
  | { kind: 'nothing' }
  /** `lookAgainMs`: when a lane may be free although no run ends (a hold's end, a lane a controller may give back). */
  | { kind: 'busy'; lookAgainMs: number | null }
  | { kind: 'job'; lane: number; migration: TakenMigration; job: TakenJob }
  | { kind: 'step'; lane: number; migration: TakenMigration; step: 'start' | 'cut' | 'finish' };

/** A row of bbm_take_job or bbm_take_next, as the server sends it. */
export interface TakeRow {
  migration_id: string;
  lane: number | null;
  name: string;
  status: number;
  job_signature_name: string;
  table_name: string;
  column_name: string;
  batching_strategy: string | null;
  batch_size: number;
  max_parallel_jobs: number;
  target_job_ms: number | null;
  min_batch_size: number | null;
  max_batch_size: number | null;
  step: 'start' | 'cut' | 'finish' | null;
  job_id: string | null;
  job_min: string | null;
  job_max: string | null;
  job_status: number | null;
  job_attempts: number | null;
  job_batch_size: number | null;
  wal_lsn: string | null;
  cut_due: boolean | null;
  job_min_key: string[] | null;
  job_max_key: string[] | null;
  job_arguments: Record<string, unknown> | null;
  look_again_ms: number | null;
}

/** A take row's migration columns; a migration read by name (store/verify.ts) has the same. */
export type MigrationColumns = Pick<
  TakeRow,
  | 'migration_id'
  | 'name'
  | 'status'
  | 'job_signature_name'
  | 'table_name'
  | 'column_name'
  | 'batching_strategy'
  | 'batch_size'
  | 'max_parallel_jobs'
  | 'target_job_ms'
  | 'min_batch_size'
  | 'max_batch_size'
  | 'job_arguments'
>;

export function takenMigrationOf(row: MigrationColumns): TakenMigration {
  return {
    id: BigInt(row.migration_id),
    name: row.name,
    status: row.status as MigrationStatusCode,
    jobSignatureName: row.job_signature_name,
    tableName: row.table_name,
    columnName: row.column_name,
    batchingStrategy: row.batching_strategy,
    batchSize: row.batch_size,
    maxParallelJobs: row.max_parallel_jobs,
    targetJobMs: row.target_job_ms,
    minBatchSize: row.min_batch_size,
    maxBatchSize: row.max_batch_size,
    jobArguments: row.job_arguments ?? {},
  };
}

/** A take's rows (takeRowsOf) read: nothing, busy (a lane locked elsewhere), a job, or a step. */
export function parseTake(rows: readonly TakeRow[]): Take {
  const row = rows[0];
  if (!row) return { kind: 'nothing' };
  if (row.migration_id === '0') return { kind: 'busy', lookAgainMs: row.look_again_ms ?? null };
  const lane = row.lane ?? 0;
  const migration = takenMigrationOf(row);
  if (row.job_id === null || row.job_min === null || row.job_max === null) {
    return { kind: 'step', lane, migration, step: row.step ?? 'finish' };
  }
  const job: TakenJob = {
    id: BigInt(row.job_id),
    start: BigInt(row.job_min),
    end: BigInt(row.job_max),
    status: (row.job_status ?? JobStatus.active) as JobStatusCode,
    attempts: row.job_attempts ?? 0,
    batchSize: row.job_batch_size,
    walLsn: row.wal_lsn,
    cutDue: row.cut_due,
    startKey: row.job_min_key,
    endKey: row.job_max_key,
  };
  return { kind: 'job', lane, migration, job };
}

/** The take's rows among the results of a multi-statement query: the last SELECT's. */
export function takeRowsOf(results: unknown): TakeRow[] {
  const list = Array.isArray(results) ? (results as QueryResult<TakeRow>[]) : [results as QueryResult<TakeRow>];
  const take = list.findLast((result) => result.command === 'SELECT');
  if (!take) throw new Error('the run prologue returned no SELECT result');
  return take.rows;
}

/**
 * What follows a run on its connection: the take of the next run, begun in the round trip that
 * committed it (`chain`), for RunTransaction.begin; `missed` when that was a take `after` it that
 * found nothing (the transaction is open, and begin() starts over). Null: nothing was begun.
 */
export type NextRun = Take | 'missed';

/** How recording a finished job ended. */
export type FinishOutcome =
  /**
   * Committed. `next` is the next run when one was begun (`chain`). `cut` is how many ranges the
   * cut sent with it wrote, when it ran: 0 when enough wait already, null when none is left to
   * cut. `laterError` is set when what followed the COMMIT (the cut, the next take) failed.
   */
  | { committed: true; next: NextRun | null; cut?: number | null; walBytes?: number; laterError?: Error }
  /** Not committed, and the transaction is still open, rolled back to the work savepoint: the caller records a failure. */
  | { committed: false; error: Error };

/**
 * One run's transaction on a pooled connection, or a chain of them (the next run begun in the
 * round trip that commits the last). A connection lost while checked out emits 'error' on the
 * client (the pool listens only to idle ones); unheard, that is an uncaught exception. It is
 * remembered instead, and the client destroyed on release.
 */
export class RunTransaction {
  #lost: Error | undefined;
  readonly #onError = (error: Error) => this.lost(error);

  private constructor(
    readonly client: pg.PoolClient,
    private readonly prologue: RunPrologue,
  ) {
    client.on('error', this.#onError);
  }

  static async open(pool: pg.Pool, prologue: RunPrologue): Promise<RunTransaction> {
    return new RunTransaction(await pool.connect(), prologue);
  }

  /** Statements inside the open transaction go through this. */
  get db(): Queryable {
    return this.client;
  }

  /** Begins the run, unless the previous one already did (`begun`, what its finish returned), and returns its take. */
  async begin(begun?: NextRun): Promise<Take> {
    if (begun === 'missed') {
      return parseTake(
        takeRowsOf(
          await this.#query(`ROLLBACK; ${this.prologue.any}`, 'bbm_take_job (after bbm_take_next found nothing)'),
        ),
      );
    }
    if (begun) return begun;
    return parseTake(takeRowsOf(await this.#query(this.prologue.any, 'bbm_take_job (beginning a run)')));
  }

  /**
   * Gives back the lane (ROLLBACK), cuts a range in a transaction of its own, and begins the
   * next run, in one round trip; returns that run's take.
   */
  async cutAndTake(cut: RangeCut): Promise<Take> {
    return parseTake(
      takeRowsOf(
        await this.#query(
          `ROLLBACK; ${cutRangeTransaction(cut)}; ${this.prologue.any}`,
          'bbm_cut_range, then bbm_take_job',
        ),
      ),
    );
  }

  /**
   * Records the job finished and commits it, then cuts `cut` in a transaction of its own
   * (cutRangeTransaction) and, with `chain`, begins the next run, whose take the next `begin`
   * returns: one round trip. With `after` too, the next run first tries the same migration and
   * lane (RunPrologue.after). The cut follows the COMMIT so that the migration's cursor lock, which
   * a cut holds until its transaction ends, is held for the cut alone: inside the job's
   * transaction it was held through the job's WAL flush, and the other lanes' cuts waited for it
   * (0.3-0.5 ms a job with two lanes, measured).
   *
   * When the round trip fails, where it failed decides what it means: if ROLLBACK TO the work
   * savepoint succeeds, the record itself failed, the transaction is still open and the caller
   * records a failed attempt. Otherwise the job's row says whether the COMMIT happened (a cut or
   * take that failed after it leaves the job committed). Throws when the connection is gone or
   * the COMMIT itself failed (the range is then not recorded and will run again).
   */
  async finish(
    finished: FinishedJob,
    { cut, chain, after }: { cut?: RangeCut | undefined; chain: boolean; after?: TakeAfter | undefined },
  ): Promise<FinishOutcome> {
    const nextText = after ? this.prologue.after(after) : this.prologue.any;
    const text = `${finishJobText(finished)}; COMMIT${cut ? `; ${cutRangeTransaction(cut)}` : ''}${chain ? `; ${nextText}` : ''}`;
    try {
      const results: unknown = await this.client.query(text);
      let next: NextRun | null = null;
      if (chain) {
        const rows = takeRowsOf(results);
        next = after && rows.length === 0 ? 'missed' : parseTake(rows);
      }
      const cutCount = parseCut(results);
      const walBytes = parseFinish(results);
      return {
        committed: true,
        next,
        ...(cut && cutCount !== undefined && { cut: cutCount }),
        ...(walBytes !== undefined && { walBytes }),
      };
    } catch (thrown) {
      const error = thrown instanceof Error ? thrown : new Error(String(thrown));
      if (this.#lost) throw withStatement(error, 'finishing a job (record, commit, cut)');
      if (await this.#succeeds(`ROLLBACK TO SAVEPOINT ${WORK_SAVEPOINT}`)) {
        return { committed: false, error: withStatement(error, "recording a job's finish") as Error };
      }
      await this.client.query('ROLLBACK').catch(() => {});
      const status = await jobStatus(this.client, finished.job.id);
      if (status === JobStatus.finished) {
        const after = cut ? "bbm_cut_range or the next run's bbm_take_job" : "the next run's bbm_take_job";
        return { committed: true, next: null, laterError: withStatement(error, `${after} (after a job)`) as Error };
      }
      throw withStatement(error, 'COMMIT of a job');
    }
  }

  /** A round trip whose failure is named (`statement`) on the error. */
  async #query(text: string, statement: string): Promise<unknown> {
    try {
      return await this.client.query(text);
    } catch (error) {
      throw withStatement(error, statement);
    }
  }

  async #succeeds(statement: string): Promise<boolean> {
    return this.client.query(statement).then(
      () => true,
      () => false,
    );
  }

  /**
   * Records a failed job and commits: back to the work savepoint (unless `workUndone`: a finish
   * that failed went there already), then, for `split`, the range split in two (splitRange), or
   * else the failed attempt. Nothing is begun after a failed job.
   */
  async fail(
    failed: FailedJob,
    { workUndone, split }: { workUndone: boolean; split?: SplitAt | undefined },
  ): Promise<{ split: boolean; next: null }> {
    if (!workUndone) await this.client.query(`ROLLBACK TO SAVEPOINT ${WORK_SAVEPOINT}`);
    const { job } = failed;
    const wasSplit = split ? await splitRange(this.client, job, split.migrationId, split.target, split.minRows) : false;
    if (!wasSplit) await recordFailedAttempt(this.client, job, failed.code, failed.message, failed.durationMs);
    await this.commit();
    return { split: wasSplit, next: null };
  }

  /** Undoes what the work did (ROLLBACK TO the work savepoint), keeping the run's take and locks. */
  async undoWork(): Promise<void> {
    await this.client.query(`ROLLBACK TO SAVEPOINT ${WORK_SAVEPOINT}`);
  }

  async commit(): Promise<void> {
    await this.client.query('COMMIT');
  }

  /** Rolls the run back; a failure to do so marks the connection lost (it is destroyed on release). */
  async rollback(): Promise<void> {
    await this.client
      .query('ROLLBACK')
      .catch((error: unknown) => this.lost(error instanceof Error ? error : new Error(String(error))));
  }

  lost(error: Error): void {
    this.#lost ??= error;
  }

  /** Hands the connection back to the pool (destroyed if it was lost). */
  release(): void {
    this.client.off('error', this.#onError);
    this.client.release(this.#lost);
  }
}
