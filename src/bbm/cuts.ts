/**
 * Cutting a runner's next ranges: when and at what size (the adaptive sizer of a migration with
 * a target job time, pace.ts), beside a job or after its COMMIT. The statements are the store's
 * (jobs.ts); a take that finds no range has one cut before it (RunTransaction.cutAndTake).
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { INT4_MAX } from '../store/codes.ts';
import { cutRangeBeside, type ClaimedJob, type CutBeside, type RangeCut } from '../store/jobs.ts';
import type { TakenMigration } from '../store/run-transaction.ts';
import { CORRELATION_ID, type Logger } from './log.ts';
import { BatchSizer, type PaceSettings } from './pace.ts';
import type { Validated } from './validate.ts';

/**
 * How long a finished job waits for the cut beside it (its connection and its statement). A cut
 * costs milliseconds; one that takes longer most likely waits behind a pooler for a server
 * connection, and the job holds one of them while it waits: the job then goes on without it.
 */
const BESIDE_WAIT_MS = 1_000;
/** After a cut beside a job came late, the lane's cuts follow its jobs' commits for this long. */
const BESIDE_OFF_MS = 60_000;

export class RangeCuts {
  /** Cuts started beside jobs and not yet seen to end: settled() waits for them. */
  readonly #inFlight = new Set<Promise<void>>();
  /** The statement timeout of the cuts: the run's backstop, or the session's own when it is tighter. */
  timeoutMs: number;
  /** Until when no cut runs beside a job (one came late). */
  #besideOffUntil = -Infinity;

  constructor(
    private readonly pool: pg.Pool,
    private readonly log: Logger,
    /** Adaptive sizers by migration id, shared by the lanes of one worker. */
    private readonly sizers: Map<bigint, BatchSizer>,
    timeoutMs: number,
  ) {
    this.timeoutMs = timeoutMs;
  }

  /** The next range of a migration to cut, sized by its sizer when it has a target job time. */
  cut(migration: TakenMigration, validated: Validated): RangeCut {
    const settings = paceSettings(migration);
    let size: number | null = null;
    if (settings) {
      let sizer = this.sizers.get(migration.id);
      if (!sizer) this.sizers.set(migration.id, (sizer = new BatchSizer(migration.batchSize)));
      size = sizer.nextCut(settings);
    }
    return { migrationId: migration.id, validated, size, statementTimeoutMs: this.timeoutMs };
  }

  /**
   * Starts cutting the next range of a migration in one lane beside its job (cutRangeBeside). With
   * several lanes, the lanes keep the server's cores busy, and the cut costs least in the round
   * trip that commits the finishing job, after its COMMIT (measured: two lanes on two cores ran
   * 8 % slower with their ranges cut beside them, on connections of their own); with one, the cut
   * runs on a spare core while the work runs.
   */
  beside(migration: TakenMigration, validated: Validated): CutBeside | undefined {
    if (migration.maxParallelJobs !== 1 || performance.now() < this.#besideOffUntil) return undefined;
    const beside = cutRangeBeside(this.pool, this.cut(migration, validated));
    if (!beside) return undefined;
    this.#inFlight.add(beside.over);
    void beside.over.then(() => this.#inFlight.delete(beside.over));
    return beside;
  }

  /**
   * Waits for the cut beside the job before the job's record, so that the next take (sent with
   * the record) finds the range. A failed or late cut is only noted: the lane then cuts the range
   * itself (cutAndTake; the cursor lock orders it after a late cut that still runs), and a real
   * fault fails that run and is reported there. After a late one, cuts follow the commits for a
   * while: a job must not keep waiting on a connection its own transaction may be holding.
   */
  async besideEnded(beside: CutBeside | undefined, runId: string): Promise<void> {
    if (!beside) return;
    try {
      if ((await beside.ended(BESIDE_WAIT_MS)) === 'late') {
        this.#besideOffUntil = performance.now() + BESIDE_OFF_MS;
        this.log.info(
          { [CORRELATION_ID]: runId },
          `a range cut beside a job took over ${BESIDE_WAIT_MS} ms (a pooler with no server connection to spare?): ranges are cut after the jobs' commits for ${BESIDE_OFF_MS / 1000} s`,
        );
      }
    } catch (error) {
      this.log.debug({ err: error, [CORRELATION_ID]: runId }, 'cutting a range beside the job failed');
    }
  }

  /** The sizer learns from a finished (or timed-out) job of a migration with a target job time. */
  learn(migration: TakenMigration, job: ClaimedJob, workMs: number, rows: number | undefined): void {
    const settings = paceSettings(migration);
    const sizer = settings ? this.sizers.get(migration.id) : undefined;
    if (sizer && settings) sizer.observe({ size: job.batchSize, workMs, rows }, settings);
  }

  /**
   * The cut to send after a successful job's COMMIT, if any: none when the take said no cut was
   * due, when one was cut beside the job, or when the last found nothing left to cut (and the
   * fixed size was not lowered since: the ranges waiting are then cut again).
   */
  afterJob(
    migration: TakenMigration,
    validated: Validated,
    { due, beside }: { due: boolean; beside: boolean },
  ): RangeCut | undefined {
    const fixedSize = paceSettings(migration) ? undefined : fixedSizeOf(migration);
    if (fixedSize !== undefined && validated.fixedSize !== undefined && fixedSize < validated.fixedSize) {
      validated.cutDone = false;
    }
    validated.fixedSize = fixedSize;
    return !due || beside || validated.cutDone ? undefined : this.cut(migration, validated);
  }

  forget(id: bigint): void {
    this.sizers.delete(id);
  }

  /** Waits for the cuts started beside jobs (a pool ended meanwhile would fail them). */
  async settled(): Promise<void> {
    await Promise.all(this.#inFlight);
  }
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
