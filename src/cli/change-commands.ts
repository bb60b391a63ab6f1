/** The commands that change migrations: enqueue, approve, pause, resume, retry, set, delete. */
import { userInfo } from 'node:os';
import type pg from 'pg';
import { enqueueMigration, enqueueMigrationSql, EnqueueError } from '../bbm/enqueue.ts';
import type { MigrationSpec } from '../bbm/types.ts';
import { migrationReports, pause, resume } from '../bbm/status.ts';
import { SqlState, sqlStateOf } from '../store/db.ts';
import { INT4_MAX, MAX_LANES, migrationStatusName } from '../store/codes.ts';
import { approveMigration } from '../store/approvals.ts';
import { deleteMigration, retryMigration, setMigrationPace, type MigrationPace } from '../store/migration-rows.ts';
import { LIVE_WORKER_WINDOW_MS, liveWorkNames } from '../store/workers.ts';
import { bigintFlag, integerFlag, jsonFlag, requiredFlag, UsageError } from './args.ts';
import type { Context } from './context.ts';
import { addressText, databaseField, shownReport } from '../bbm/databases.ts';
import { failedDatabases, overDatabases, type DatabaseFailure } from './targets.ts';

/** The migration the flags describe (`bbm enqueue`'s, and `bbm rehearse`'s), and the config's say on its work function. */
export function migrationSpec(
  { flags, config }: Pick<Context, 'flags' | 'config'>,
  command: 'enqueue' | 'rehearse' = 'enqueue',
): MigrationSpec {
  const work = requiredFlag(flags, 'work', command);
  const spec: MigrationSpec = {
    name: requiredFlag(flags, 'name', command),
    work,
    table: requiredFlag(flags, 'table', command),
    column: requiredFlag(flags, 'column', command),
    batchSize:
      integerFlag(flags, 'batch-size', { min: 1, max: INT4_MAX }) ?? usage(`bbm ${command} needs --batch-size`),
  };
  const min = bigintFlag(flags, 'min');
  const max = bigintFlag(flags, 'max');
  const pace = paceFlags(flags);
  if (min !== undefined) spec.min = min;
  if (max !== undefined) spec.max = max;
  // The shapes are enqueueMigration's to check (ConfigError, exit 2 like a usage error).
  const minKey = jsonFlag(flags, 'min-key') as MigrationSpec['minKey'];
  const maxKey = jsonFlag(flags, 'max-key') as MigrationSpec['maxKey'];
  const args = jsonFlag(flags, 'args') as MigrationSpec['args'];
  if (minKey !== undefined) spec.minKey = minKey;
  if (maxKey !== undefined) spec.maxKey = maxKey;
  if (args !== undefined) spec.args = args;
  if (flags.paused && flags['needs-approval'])
    throw new UsageError(
      '--paused and --needs-approval contradict each other: a migration awaiting approval is not taken',
    );
  if (flags.paused) spec.paused = true;
  if (flags['needs-approval']) spec.needsApproval = true;
  if (pace.maxParallelJobs !== undefined) spec.lanes = pace.maxParallelJobs;
  if (typeof pace.targetJobMs === 'number') spec.targetJobMs = pace.targetJobMs;
  if (typeof pace.minBatchSize === 'number') spec.minBatchSize = pace.minBatchSize;
  if (typeof pace.maxBatchSize === 'number') spec.maxBatchSize = pace.maxBatchSize;
  if (config && !config.work.some((w) => w.name === work)) {
    throw new UsageError(
      `--work ${work} is not a work function of the config (it has: ${config.work.map((w) => w.name).join(', ') || 'none'})`,
    );
  }
  return spec;
}

function usage(message: string): never {
  throw new UsageError(message);
}

/** `bbm enqueue --dry-run`: the INSERT, for a schema-migration file; needs no database. */
export function enqueueSql(context: Pick<Context, 'flags' | 'config' | 'io'>): number {
  context.io.out(enqueueMigrationSql(migrationSpec(context)));
  return 0;
}

/** Checks a migration against the catalog and the config before inserting it; nothing is written when a check fails. */
export async function enqueue(context: Context): Promise<number> {
  const { flags, pool, io } = context;
  const spec = migrationSpec(context);
  let id: bigint;
  try {
    ({ id } = await enqueueMigration(pool, spec));
  } catch (error) {
    if (!(error instanceof EnqueueError)) throw error;
    io.err(
      `bbm enqueue: ${error.code === 'duplicate_name' ? '' : `${error.code}: `}${error.message}; nothing was written`,
    );
    return 1;
  }
  const [report] = await migrationReports(pool, { name: spec.name });
  const live = await liveWorkNames(pool, LIVE_WORKER_WINDOW_MS);
  context.print(report && shownReport(context.database, report), () =>
    [
      `enqueued ${spec.name} (id ${id}): ${spec.work} over ${spec.table}.${[spec.column].flat().join(',')} ${boundsText(spec)} in batches of ${spec.batchSize}` +
        (spec.targetJobMs ? ` (adapting toward ${spec.targetJobMs} ms jobs)` : '') +
        (spec.lanes && spec.lanes > 1 ? `, ${spec.lanes} lanes` : '') +
        (flags.paused ? ', paused' : '') +
        (flags['needs-approval'] ? `, awaiting approval (bbm approve --name ${spec.name})` : ''),
      ...(live.includes(spec.work) ? [] : [`note: no live worker has work function ${spec.work} yet`]),
    ].join('\n'),
  );
  return 0;
}

/** The migration's bounds as `bbm enqueue` reports them: `[1..max]`, `["a"..last]`. */
function boundsText(spec: MigrationSpec): string {
  if (spec.minKey === undefined && spec.maxKey === undefined) return `[${spec.min ?? 1n}..${spec.max ?? 'max'}]`;
  // The flags' JSON, parsed: no bigint in it.
  const first = spec.minKey === undefined ? 'first' : JSON.stringify(spec.minKey);
  const last = spec.maxKey === undefined ? 'last' : JSON.stringify(spec.maxKey);
  return `[${first}..${last}]`;
}

export async function pauseOrResume(context: Context, command: 'pause' | 'resume'): Promise<number> {
  const { flags, pool, io } = context;
  const name = flags.name;
  const verb = command === 'pause' ? 'paused' : 'resumed';
  const change = (db: pg.Pool, which: string | undefined) =>
    command === 'pause' ? pause(db, which) : resume(db, which);
  const printChanged = (all: string[], errors: DatabaseFailure[] = []) =>
    context.print({ [verb]: all, ...(errors.length > 0 && { errors }) }, () =>
      all.length === 0 ? `nothing to ${command}` : `${verb}: ${all.join(', ')}`,
    );
  if (name === undefined) {
    // Every migration of every database (the emergency brake): one that cannot be reached is
    // named (on stderr, and in the JSON's `errors`), and the others are still changed.
    const outcomes = await overDatabases(context, (db) => change(db, undefined));
    const errors = failedDatabases(context, outcomes);
    printChanged(
      outcomes.flatMap(({ source, value }) => (value ?? []).map((n) => addressText(source.name, n))),
      errors,
    );
    return errors.length > 0 ? 1 : 0;
  }
  const changed = await change(pool, name);
  if (changed.length === 0) {
    const [existing] = await migrationReports(pool, { name });
    if (!existing) {
      io.err(`bbm ${command}: no migration named ${JSON.stringify(name)}`);
      return 1;
    }
    context.print({ [verb]: [] }, () => `${name} is ${existing.status}; nothing to ${command}`);
    return 0;
  }
  printChanged(changed.map((n) => addressText(context.database, n)));
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
  const shown = addressText(context.database, name);
  context.print(
    { retried: shown, ...databaseField(context.database), jobsReset: jobs },
    () => `${shown} is active again; ${jobs} failed range(s) get fresh attempts`,
  );
  return 0;
}

/** Who an approval is recorded as: --by, else BBM_OPERATOR, else the OS user. */
function approver({ flags, io }: Pick<Context, 'flags' | 'io'>): string {
  const by = flags.by ?? io.env.BBM_OPERATOR;
  if (by !== undefined) {
    if (by.trim() === '') throw new UsageError('bbm approve: --by (or BBM_OPERATOR) must name someone');
    return by;
  }
  try {
    return userInfo().username;
  } catch {
    // A uid with no passwd entry (some containers): say so rather than record nobody.
    throw new UsageError('bbm approve: no OS user name here; pass --by WHO or set BBM_OPERATOR');
  }
}

/** `bbm approve`: awaiting_approval -> active, with who and when recorded on the row. */
export async function approve(context: Context): Promise<number> {
  const { flags, pool, io } = context;
  const name = requiredFlag(flags, 'name', 'approve');
  const by = approver(context);
  const approval = await approveMigration(pool, name, by);
  if (approval === null) {
    const [existing] = await migrationReports(pool, { name });
    io.err(
      existing
        ? `bbm approve: ${name} is ${existing.status}` +
            (existing.approvedBy === null ? '' : ` (approved by ${existing.approvedBy})`) +
            '; only a migration awaiting approval can be approved'
        : `bbm approve: no migration named ${JSON.stringify(name)}`,
    );
    return 1;
  }
  const shown = addressText(context.database, name);
  context.print(
    { approved: shown, ...databaseField(context.database), ...approval },
    () =>
      `approved ${shown} as ${approval.approvedBy} at ${approval.approvedAt.toISOString()}; workers take it from now on`,
  );
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
  const pace: MigrationPace = {
    ...paceFlags(flags),
    batchSize: integerFlag(flags, 'batch-size', { min: 1, max: INT4_MAX }),
  };
  if (Object.values(pace).every((value) => value === undefined)) {
    throw new UsageError(
      'bbm set needs at least one of --lanes, --batch-size, --target-job-ms, --min-batch-size, --max-batch-size, --fixed',
    );
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
  const [found] = await migrationReports(pool, { name });
  const report = found && shownReport(context.database, found);
  context.print(report, () =>
    report
      ? `${report.name}: ${report.lanes} lane(s), batch size ${report.batchSize}` +
        (report.targetJobMs === null
          ? ' (fixed)'
          : ` (adapting toward ${report.targetJobMs} ms jobs, ${report.minBatchSize ?? 1}..${report.maxBatchSize ?? 'no max'})`)
      : name,
  );
  return 0;
}

/** `bbm delete`: undoes a wrong enqueue, or clears out a finished or failed migration, without hand-written SQL. */
export async function deleteCommand(context: Context): Promise<number> {
  const { flags, pool, io } = context;
  const name = requiredFlag(flags, 'name', 'delete');
  const result = await deleteMigration(pool, name);
  if (!result.deleted) {
    io.err(
      result.status === null
        ? `bbm delete: no migration named ${JSON.stringify(name)}`
        : `bbm delete: ${name} is ${migrationStatusName(result.status)}; pause it first (bbm pause --name ${name}), then delete it`,
    );
    return 1;
  }
  const shown = addressText(context.database, name);
  context.print(
    { deleted: shown, ...databaseField(context.database), jobs: result.jobs },
    () => `deleted ${shown} and its ${result.jobs} job(s)`,
  );
  return 0;
}
