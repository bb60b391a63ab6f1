/**
 * Rehearsing a migration (`bbm rehearse`, `rehearseMigration`; docs/rehearse.md): its work
 * function run on sample ranges spread over its key space, each in a transaction that is rolled
 * back, as a job would run it (the same Job, the same limits), with what each did measured inside
 * its transaction; then projected to the whole migration at its lanes. The report is stored on the
 * migration's row, in a statement of its own, after the last rollback.
 *
 * Any migration that may still run can be rehearsed: one not started (active, paused, awaiting
 * approval), and one started too, whose samples may run ranges its lanes already ran (rolled
 * back, they change nothing; the projection is of the whole key space, not of what is left).
 * A migration not enqueued is rehearsed from its spec: inserted in the plan's transaction, checked
 * as enqueueMigration checks it, and rolled back with it; its report is returned, not stored.
 */
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { MAX_LANES, migrationStatusName } from '../store/codes.ts';
import type { Target } from '../store/catalog.ts';
import type { ClaimedJob } from '../store/jobs.ts';
import { rangePredicate } from '../store/keys.ts';
import {
  beginPlan,
  beginSample,
  countRange,
  keySpace,
  rollBack,
  sampleCounters,
  sessionLockTimeoutMs,
  storeRehearsal,
  type KeyBounds,
  type SampleLimits,
} from '../store/rehearsal.ts';
import { migrationNamed } from '../store/verify.ts';
import { sessionLimits, tighterLimit, type TakenMigration } from '../store/run-transaction.ts';
import { resolveOptions } from './config.ts';
import { enqueueMigration, EnqueueError } from './enqueue.ts';
import { asError, BbmError, ConfigError } from './errors.ts';
import { doJob, isTimeout, JobStops, StopError, type JobSpec, type Worked } from './job.ts';
import { LockWatch } from './lock-watch.ts';
import { defaultLibraryLogger, type Logger } from './log.ts';
import { laneSpeedup, projectRehearsal, startingSize } from './rehearse-projection.ts';
import { sampleRanges, type SampleRanges } from './rehearse-ranges.ts';
import { BACKSTOP_MARGIN_MS } from './run-open.ts';
import type { MigrationSpec, RehearsalReport, RehearsalSample, RehearseParams } from './types.ts';
import { Validations, type Validated } from './validate.ts';
import { WorkRegistry } from './work-registry.ts';

export type RehearseErrorCode =
  'unknown_migration' | 'settled' | 'work_not_registered' | 'side_effects' | 'invalid_migration' | 'stopped';

/** Why a migration was not rehearsed, or why its rehearsal stopped; nothing it ran was kept. */
export class RehearseError extends Error {
  override readonly name = 'RehearseError';
  constructor(
    readonly code: RehearseErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

const DEFAULT_SAMPLES = 10;
const MAX_SAMPLES = 1_000;

/** A migration ready to rehearse: its row, what a run validates of it, and where its samples run. */
interface Plan extends SampleRanges {
  migration: TakenMigration;
  validated: Validated;
  /** The size its ranges are cut at to begin with. */
  size: number;
  /** The session's lock_timeout, which the samples keep, as jobs do. */
  lockTimeoutMs: number;
  /** False for a migration described by a spec: its row was rolled back with the plan. */
  enqueued: boolean;
}

/** What each sample shares. */
interface SampleContext {
  client: pg.PoolClient;
  plan: Plan;
  limits: SampleLimits;
  stops: JobStops;
  runTimeoutMs: number;
  watch: LockWatch | undefined;
  log: Logger;
}

/**
 * Rehearses the migration named (see the module's comment) and stores its report. Throws
 * RehearseError when it cannot be rehearsed (nothing ran then), ConfigError for bad parameters.
 */
export async function rehearseMigration(params: RehearseParams): Promise<RehearsalReport> {
  const { pool } = params;
  const named = params.spec ?? params.name;
  if (typeof named !== 'string' && (typeof named !== 'object' || named === null)) {
    throw new ConfigError('rehearseMigration needs the name of an enqueued migration, or the spec of one');
  }
  const samples = integerParam('samples', params.samples ?? DEFAULT_SAMPLES, MAX_SAMPLES);
  if (params.lanes !== undefined) integerParam('lanes', params.lanes, MAX_LANES);
  const speedup = params.laneSpeedup;
  if (speedup !== undefined && !(Number.isFinite(speedup) && speedup > 0)) {
    throw new ConfigError(`laneSpeedup must be a positive number, got ${JSON.stringify(speedup)}`);
  }
  const { runTimeoutMs } = resolveOptions({ runTimeoutMs: params.runTimeoutMs });
  const registry = new WorkRegistry(params.work);
  const log = params.logger ?? defaultLibraryLogger();
  const hardStop = params.signal ?? new AbortController().signal;

  const client = await pool.connect();
  let lost: Error | undefined;
  const onError = (error: Error) => (lost ??= error);
  client.on('error', onError);
  try {
    const backstopMs = runTimeoutMs + BACKSTOP_MARGIN_MS;
    const limits = {
      statementTimeoutMs: tighterLimit((await sessionLimits(client)).statementTimeoutMs, backstopMs),
      backstopMs,
    };
    const plan = await planRehearsal(client, registry, named, samples, limits);
    const watch = await LockWatch.open(pool);
    const stops = new JobStops(hardStop, runTimeoutMs);
    const context: SampleContext = { client, plan, limits, stops, runTimeoutMs, watch, log };
    const results: RehearsalSample[] = [];
    try {
      for (const range of plan.ranges) {
        if (hardStop.aborted) throw new RehearseError('stopped', 'rehearsal stopped');
        results.push(await rehearseRange(context, range));
      }
    } finally {
      stops.deafen();
      watch?.close();
    }
    const lanes = params.lanes ?? plan.migration.maxParallelJobs;
    const report = reportOf(plan, results, {
      lanes,
      laneSpeedup: speedup ?? laneSpeedup(lanes),
      limits: { statementTimeoutMs: limits.statementTimeoutMs, lockTimeoutMs: plan.lockTimeoutMs, runTimeoutMs },
    });
    if (plan.enqueued) await storeRehearsal(client, plan.migration.id, report);
    return report;
  } catch (error) {
    if (error instanceof StopError) {
      throw new RehearseError('stopped', 'rehearsal stopped: the sample in flight was rolled back', { cause: error });
    }
    throw error;
  } finally {
    client.off('error', onError);
    client.release(lost);
  }
}

function integerParam(name: string, value: number, max: number): number {
  if (!Number.isSafeInteger(value) || value < 1 || value > max) {
    throw new ConfigError(`${name} must be an integer from 1 to ${max}, got ${JSON.stringify(value)}`);
  }
  return value;
}

/**
 * The migration checked as a run checks it, and its sample ranges, in a transaction under the
 * samples' statement timeout, rolled back: read-only for a migration enqueued; for a spec, one
 * that inserts it first. Refuses a migration that cannot be rehearsed.
 */
async function planRehearsal(
  client: pg.PoolClient,
  registry: WorkRegistry,
  named: string | MigrationSpec,
  samples: number,
  limits: SampleLimits,
): Promise<Plan> {
  const enqueued = typeof named === 'string';
  await beginPlan(client, limits.statementTimeoutMs, { readOnly: enqueued });
  try {
    const name = enqueued ? named : await insertSpec(client, registry, named);
    const migration = (await migrationNamed(client, name)) ?? undefined;
    if (!migration) throw new RehearseError('unknown_migration', `no migration named ${JSON.stringify(name)}`);
    const validated = await validate(client, registry, migration);
    const { target } = validated;
    const size = startingSize(migration);
    const space = await keySpace(client, migration.id, target);
    const ranges: SampleRanges = space
      ? await sampleRanges(client, target, space, { count: samples, size })
      : { ranges: [], rows: 0, rowsBasis: 'counted', sampling: 'whole' };
    return { ...ranges, migration, validated, size, lockTimeoutMs: await sessionLockTimeoutMs(client), enqueued };
  } finally {
    await rollBack(client);
  }
}

/**
 * A spec's migration inserted in the plan's transaction (rolled back with it), checked as
 * enqueueMigration checks it; its name. Its work function is checked first: nothing of a work with
 * side effects, or of one not registered, is inserted.
 */
async function insertSpec(client: pg.PoolClient, registry: WorkRegistry, spec: MigrationSpec): Promise<string> {
  const work = registry.get(spec.work);
  if (work) refuseSideEffects(spec.name, work);
  try {
    await enqueueMigration(client, spec);
  } catch (error) {
    if (!(error instanceof EnqueueError)) throw error;
    const message =
      error.code === 'duplicate_name'
        ? `${error.message}: rehearse it by its name alone`
        : `${spec.name} cannot be enqueued (${error.code}): ${error.message}`;
    throw new RehearseError('invalid_migration', message, { cause: error });
  }
  return spec.name;
}

function refuseSideEffects(name: string, work: { name: string; sideEffects?: boolean | undefined }): void {
  if (!work.sideEffects) return;
  throw new RehearseError(
    'side_effects',
    `${name} runs work function ${work.name}, which acts outside the database (sideEffects: true): ` +
      'a rolled-back transaction cannot undo that, so it is not rehearsed',
  );
}

/** The migration's status, work function and target, checked; throws RehearseError for what refuses it. */
async function validate(client: pg.PoolClient, registry: WorkRegistry, migration: TakenMigration): Promise<Validated> {
  const { name } = migration;
  const status = migrationStatusName(migration.status);
  if (status === 'finished' || status === 'failed') {
    throw new RehearseError('settled', `${name} is ${status}: only a migration that may still run can be rehearsed`);
  }
  const work = registry.get(migration.jobSignatureName);
  if (!work) {
    throw new RehearseError(
      'work_not_registered',
      `${name} runs work function ${migration.jobSignatureName}, which the config does not register`,
    );
  }
  refuseSideEffects(name, work);
  const checked = await new Validations(registry).check(client, migration);
  if (checked === 'not_mine') throw new Error(`work function ${work.name} was registered, then not found`);
  if (checked instanceof BbmError) {
    throw new RehearseError('invalid_migration', `${name} cannot run (${checked.code}): ${checked.message}`);
  }
  return checked;
}

/** The job a sample range stands for: bounds as a take would hand them (bbm_take_job), the first attempt. */
function claimOf(target: Target, range: KeyBounds, size: number): ClaimedJob {
  const job = { id: 0n, attempt: 1, batchSize: size };
  if (target.key === null) return { ...job, start: BigInt(range.start[0]!), end: BigInt(range.end[0]!) };
  return { ...job, start: 0n, end: 0n, startKey: range.start, endKey: range.end };
}

/**
 * One sample: its range's rows counted, then the work called on it as a job (doJob), with the
 * counters read before and after, and a watch on its lock waits; then rolled back, whatever
 * happened. A work that fails is a sample that failed, not an error of the rehearsal.
 */
async function rehearseRange(context: SampleContext, range: KeyBounds): Promise<RehearsalSample> {
  const { client, plan, watch } = context;
  const { target } = plan.validated;
  const spec = jobSpec(context, range);
  let pid: number;
  try {
    pid = await beginSample(client, context.limits);
  } catch (error) {
    // Its BEGIN may have run: the connection goes back to the pool outside a transaction.
    await rollBack(client).catch(() => {});
    throw error;
  }
  try {
    const bounds =
      target.key === null ? spec.claimed : { start: spec.claimed.startKey ?? null, end: spec.claimed.endKey ?? null };
    const rows = await countRange(client, target, rangePredicate(target.key, target.column, bounds, 1));
    const before = await sampleCounters(client, target, null);
    watch?.start(pid);
    let worked: Worked;
    let lockWaitMs: number | null = null;
    try {
      const { stop, end } = context.stops.begin(context.runTimeoutMs);
      try {
        worked = await doJob(spec, stop);
      } finally {
        end();
      }
    } finally {
      if (watch) lockWaitMs = await watch.stop();
    }
    if (worked.stopped instanceof StopError) throw worked.stopped;
    const sample: RehearsalSample = {
      start: [...range.start],
      end: [...range.end],
      rows,
      rowsReported: worked.rows ?? null,
      workMs: worked.workMs,
      msPerRow: rows > 0 ? worked.workMs / rows : null,
      written: null,
      lockWaitMs,
      error: null,
      timeout: false,
    };
    if (worked.failure) return failed(sample, worked.failure);
    try {
      const after = await sampleCounters(client, target, before.lsn);
      sample.written = {
        walBytes: after.walBytes ?? 0,
        inserted: after.inserted - before.inserted,
        updated: after.updated - before.updated,
        hotUpdated: after.hotUpdated - before.hotUpdated,
        deleted: after.deleted - before.deleted,
      };
    } catch (error) {
      // A work that caught an error of its own statement and returned: its transaction is aborted.
      return failed(sample, asError(error));
    }
    return sample;
  } finally {
    await rollBack(client);
  }
}

function failed(sample: RehearsalSample, error: Error): RehearsalSample {
  return { ...sample, error: error.message, timeout: isTimeout(error) };
}

/** What the work function is handed for a sample range: a job's (run.ts), as the first attempt in lane 0. */
function jobSpec({ client, plan, log }: SampleContext, range: KeyBounds): JobSpec {
  const { migration, validated } = plan;
  return {
    client,
    work: validated.work,
    quoted: validated.quoted,
    key: validated.target.key,
    column: validated.target.column,
    args: migration.jobArguments,
    migration: { id: migration.id, name: migration.name, work: migration.jobSignatureName },
    claimed: claimOf(validated.target, range, plan.size),
    lane: 0,
    runId: randomUUID(),
    log,
  };
}

function reportOf(
  plan: Plan,
  samples: RehearsalSample[],
  { lanes, laneSpeedup, limits }: { lanes: number; laneSpeedup: number; limits: RehearsalReport['limits'] },
): RehearsalReport {
  const { migration, validated } = plan;
  const { target } = validated;
  return {
    migration: migration.name,
    work: migration.jobSignatureName,
    table: `${target.schema}.${target.table}`,
    key: target.key ? target.key.map((column) => column.name) : [target.column],
    status: migrationStatusName(migration.status),
    enqueued: plan.enqueued,
    batchSize: plan.size,
    rehearsedAt: new Date().toISOString(),
    sampling: plan.sampling,
    limits,
    samples,
    failed: samples.filter((sample) => sample.error !== null).length,
    projection: projectRehearsal({
      samples,
      rows: plan.rows,
      rowsBasis: plan.rowsBasis,
      lanes,
      laneSpeedup,
      migration,
    }),
  };
}
