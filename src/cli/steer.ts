/** The commands that change migrations: enqueue, pause, resume, retry. */
import { isValidWorkName } from '../bbm/registry.ts';
import { migrationReports, pause, resume } from '../bbm/status.ts';
import { isTarget, resolveTarget } from '../store/catalog.ts';
import { SqlState, sqlStateOf } from '../store/db.ts';
import { INT4_MAX, MAX_LANES } from '../store/codes.ts';
import { insertMigration, retryMigration, setMigrationPace, type MigrationPace } from '../store/migrations.ts';
import { begin, commit, rollback } from '../store/tx.ts';
import { LIVE_WORKER_WINDOW_MS, liveWorkNames } from '../store/workers.ts';
import { bigintFlag, integerFlag, requiredFlag, UsageError } from './args.ts';
import type { Context } from './main.ts';

/** Checks a migration against the catalog and the config before inserting it; nothing is written when a check fails. */
export async function enqueue(context: Context): Promise<number> {
  const { flags, pool, io, config } = context;
  const name = requiredFlag(flags, 'name', 'enqueue');
  const work = requiredFlag(flags, 'work', 'enqueue');
  const tableName = requiredFlag(flags, 'table', 'enqueue');
  const columnName = requiredFlag(flags, 'column', 'enqueue');
  const batchSize = integerFlag(flags, 'batch-size', { min: 1, max: INT4_MAX });
  if (batchSize === undefined) throw new UsageError('bbm enqueue needs --batch-size');
  const pace = paceFlags(flags);
  const minValue = bigintFlag(flags, 'min');
  const maxValue = bigintFlag(flags, 'max');
  if (maxValue !== undefined && maxValue < (minValue ?? 1n)) throw new UsageError(`--max ${maxValue} is below --min ${minValue ?? 1n}`);
  if (!isValidWorkName(work)) throw new UsageError(`--work ${JSON.stringify(work)} is not a valid work name (letters, digits, _ . : / -)`);
  if (config && !config.work.some((w) => w.name === work)) {
    throw new UsageError(`--work ${work} is not a work function of the config (it has: ${config.work.map((w) => w.name).join(', ') || 'none'})`);
  }

  const client = await pool.connect();
  let id: bigint;
  try {
    await begin(client);
    try {
      const target = await resolveTarget(client, tableName, columnName);
      if (!isTarget(target)) {
        io.err(`bbm enqueue: ${target.code}: ${target.message}; nothing was written`);
        await rollback(client);
        return 1;
      }
      id = await insertMigration(client, {
        name,
        jobSignatureName: work,
        tableName,
        columnName,
        batchSize,
        minValue,
        maxValue,
        paused: flags.paused,
        maxParallelJobs: pace.maxParallelJobs,
        targetJobMs: pace.targetJobMs,
        minBatchSize: pace.minBatchSize,
        maxBatchSize: pace.maxBatchSize,
      });
      await commit(client);
    } catch (error) {
      await rollback(client).catch(() => {});
      if (sqlStateOf(error) === SqlState.uniqueViolation) {
        io.err(`bbm enqueue: a migration named ${JSON.stringify(name)} already exists; nothing was written`);
        return 1;
      }
      throw error;
    }
  } finally {
    client.release();
  }
  const [report] = await migrationReports(pool, { name });
  const live = await liveWorkNames(pool, LIVE_WORKER_WINDOW_MS);
  context.print(report, () =>
    [
      `enqueued ${name} (id ${id}): ${work} over ${tableName}.${columnName} [${minValue ?? 1n}..${maxValue ?? 'max'}] in batches of ${batchSize}` +
        (pace.targetJobMs ? ` (adapting toward ${pace.targetJobMs} ms jobs)` : '') +
        (pace.maxParallelJobs && pace.maxParallelJobs > 1 ? `, ${pace.maxParallelJobs} lanes` : '') +
        (flags.paused ? ', paused' : ''),
      ...(live.includes(work) ? [] : [`note: no live worker has work function ${work} yet`]),
    ].join('\n'),
  );
  return 0;
}

export async function steer(context: Context, command: 'pause' | 'resume'): Promise<number> {
  const { flags, pool, io } = context;
  const name = flags.name;
  const changed = command === 'pause' ? await pause(pool, name) : await resume(pool, name);
  if (name !== undefined && changed.length === 0) {
    const [existing] = await migrationReports(pool, { name });
    if (!existing) {
      io.err(`bbm ${command}: no migration named ${JSON.stringify(name)}`);
      return 1;
    }
    context.print({ [command === 'pause' ? 'paused' : 'resumed']: [] }, () => `${name} is ${existing.status}; nothing to ${command}`);
    return 0;
  }
  const verb = command === 'pause' ? 'paused' : 'resumed';
  context.print({ [verb]: changed }, () => (changed.length === 0 ? `nothing to ${command}` : `${verb}: ${changed.join(', ')}`));
  return 0;
}

export async function retry(context: Context): Promise<number> {
  const { flags, pool, io } = context;
  const name = requiredFlag(flags, 'name', 'retry');
  const jobs = await retryMigration(pool, name);
  if (jobs === null) {
    const [existing] = await migrationReports(pool, { name });
    io.err(
      existing
        ? `bbm retry: ${name} is ${existing.status}; only a failed migration can be retried`
        : `bbm retry: no migration named ${JSON.stringify(name)}`,
    );
    return 1;
  }
  context.print({ retried: name, jobsReset: jobs }, () => `${name} is active again; ${jobs} failed range(s) get fresh attempts`);
  return 0;
}

/** The pace flags of `enqueue` and `set`, checked (the table's CHECK constraints are the backstop). */
function paceFlags(flags: Context['flags']): MigrationPace {
  const minBatchSize = integerFlag(flags, 'min-batch-size', { min: 1, max: INT4_MAX });
  const maxBatchSize = integerFlag(flags, 'max-batch-size', { min: 1, max: INT4_MAX });
  if (minBatchSize !== undefined && maxBatchSize !== undefined && maxBatchSize < minBatchSize) {
    throw new UsageError(`--max-batch-size ${maxBatchSize} is below --min-batch-size ${minBatchSize}`);
  }
  const pace: MigrationPace = {
    maxParallelJobs: integerFlag(flags, 'lanes', { min: 1, max: MAX_LANES }),
    targetJobMs: integerFlag(flags, 'target-job-ms', { min: 1, max: INT4_MAX }),
    minBatchSize,
    maxBatchSize,
  };
  if (flags.fixed) {
    if (pace.targetJobMs !== undefined) throw new UsageError('--fixed and --target-job-ms contradict each other');
    pace.targetJobMs = null;
  }
  return pace;
}

/** `bbm set`: changes a migration's lanes, batch size or adaptive sizing; the next take and cut use them. */
export async function setPace(context: Context): Promise<number> {
  const { flags, pool, io } = context;
  const name = requiredFlag(flags, 'name', 'set');
  const pace: MigrationPace = { ...paceFlags(flags), batchSize: integerFlag(flags, 'batch-size', { min: 1, max: INT4_MAX }) };
  if (Object.values(pace).every((value) => value === undefined)) {
    throw new UsageError('bbm set needs at least one of --lanes, --batch-size, --target-job-ms, --min-batch-size, --max-batch-size, --fixed');
  }
  try {
    if (!(await setMigrationPace(pool, name, pace))) {
      io.err(`bbm set: no migration named ${JSON.stringify(name)}`);
      return 1;
    }
  } catch (error) {
    if (sqlStateOf(error) === SqlState.checkViolation) {
      io.err(`bbm set: ${(error as Error).message}; nothing was changed`);
      return 1;
    }
    throw error;
  }
  const [report] = await migrationReports(pool, { name });
  context.print(report, () =>
    report
      ? `${name}: ${report.lanes} lane(s), batch size ${report.batchSize}` +
        (report.targetJobMs === null
          ? ' (fixed)'
          : ` (adapting toward ${report.targetJobMs} ms jobs, ${report.minBatchSize ?? 1}..${report.maxBatchSize ?? 'no max'})`)
      : name,
  );
  return 0;
}
