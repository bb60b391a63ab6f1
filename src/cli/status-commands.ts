/** `bbm status`: migrations for people (a table, optionally redrawn) and for machines (JSON). */
import type pg from 'pg';
import { WorkRegistry } from '../bbm/work-registry.ts';
import { resolveSchedules, scheduleReports, schedulesIn, type ScheduleReport } from '../bbm/schedules.ts';
import { migrationReports } from '../bbm/status.ts';
import type { MigrationReport } from '../bbm/types.ts';
import { UsageError } from './args.ts';
import type { Context } from './context.ts';
import {
  boundsText,
  dutyCycleText,
  lanesText,
  progressIsEstimate,
  progressText,
  verificationText,
} from '../bbm/report-text.ts';
import { liveWorkers } from '../store/dashboard.ts';
import { LIVE_WORKER_WINDOW_MS } from '../store/workers.ts';
import { duration, table, toJson } from './format.ts';
import { addressText, shownReport } from '../bbm/databases.ts';
import { failedDatabases, overDatabases, type DatabaseFailure } from './targets.ts';

export async function status(context: Context): Promise<number> {
  const { flags, io } = context;
  if (flags.watch) return watch(context);
  const { reports, errors } = await load(context);
  if (flags.name !== undefined && reports.length === 0) {
    io.err(`bbm status: no migration named ${JSON.stringify(flags.name)}`);
    return 1;
  }
  // A database that could not be read follows the migrations, as migrate lists one it could not migrate.
  if (flags.json) io.out(toJson([...reports, ...errors]));
  else
    io.out(
      render(reports) + awaitingApproval(reports) + (await restingWorkers(context)) + (await renderSchedules(context)),
    );
  return errors.length > 0 ? 1 : 0;
}

/** `bbm schedules`: the config's schedules, each with its last pass and when the next is due. */
export async function schedules(context: Context): Promise<number> {
  if (!context.config) throw new UsageError('bbm schedules needs --config with the schedules');
  const reports = await loadSchedules(context);
  context.print(reports, () => (reports.length === 0 ? 'the config has no schedules' : renderScheduleTable(reports)));
  return 0;
}

function loadSchedules(context: Context): Promise<ScheduleReport[]> {
  const { config } = context;
  if (!config?.schedules?.length) return Promise.resolve([]);
  const schedules = resolveSchedules(config.schedules, new WorkRegistry(config.work));
  return eachDatabase(context, async (pool, database) =>
    (await scheduleReports(pool, schedulesIn(schedules, database))).map((r) => ({
      ...r,
      name: addressText(database, r.name),
    })),
  );
}

/** The schedules section under `bbm status` (empty without schedules). */
async function renderSchedules(context: Context): Promise<string> {
  const reports = await loadSchedules(context);
  return reports.length === 0 ? '' : `\n\n${renderScheduleTable(reports)}`;
}

function renderScheduleTable(reports: ScheduleReport[]): string {
  return table(
    ['SCHEDULE', 'EVERY', 'WORK', 'LAST PASS', 'STATUS', 'NEXT DUE'],
    reports.map((r) => [
      r.name,
      r.every,
      r.work,
      r.lastPass?.name ?? '-',
      r.lastPass?.status ?? '-',
      r.nextDue === null ? 'after the last pass' : r.nextDue.toISOString(),
    ]),
  );
}

/**
 * The migrations of the command's database, or of every database of the fleet, each then named
 * `database/name` (and its `database` set). A database that cannot be read is reported on stderr
 * and returned in `errors`; the others are still shown. With one database, its error is the command's.
 */
async function load(context: Context): Promise<{ reports: MigrationReport[]; errors: DatabaseFailure[] }> {
  const { flags, config } = context;
  const knownWork = config?.work.map((w) => w.name) ?? [];
  if (flags.name !== undefined) {
    const reports = await migrationReports(context.pool, { name: flags.name, knownWork });
    return { reports: reports.map((r) => shownReport(context.database, r)), errors: [] };
  }
  const outcomes = await overDatabases(context, async (pool, target) =>
    (await migrationReports(pool, { knownWork })).map((r) => shownReport(target.name, r)),
  );
  return {
    reports: outcomes.flatMap((outcome) => outcome.value ?? []),
    errors: failedDatabases(context, outcomes),
  };
}

/** Redraws every second until SIGINT/SIGTERM; on a terminal in place, elsewhere one block a second. */
async function watch(context: Context): Promise<number> {
  const { io, flags } = context;
  let stopped = false;
  let wake: (() => void) | undefined;
  const stop = () => {
    stopped = true;
    wake?.();
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  try {
    while (!stopped) {
      const { reports, errors } = await load(context);
      const stamp = new Date().toISOString();
      if (flags.json)
        io.out(
          JSON.stringify({
            at: stamp,
            migrations: JSON.parse(toJson(reports, 0)) as unknown,
            ...(errors.length > 0 && { errors }),
          }),
        );
      else if (io.tty) process.stdout.write(`\x1b[H\x1b[2J${stamp}  (Ctrl-C to stop)\n\n${render(reports)}\n`);
      else io.out(`--- ${stamp}\n${render(reports)}\n`);
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 1_000);
      });
    }
  } finally {
    process.off('SIGINT', stop);
    process.off('SIGTERM', stop);
  }
  return 0;
}

function render(reports: MigrationReport[]): string {
  if (reports.length === 0) return 'no migrations';
  return migrationTable(reports) + estimateLegend(reports);
}

function migrationTable(reports: MigrationReport[]): string {
  return table(
    ['ID', 'NAME', 'STATUS', 'PROGRESS', 'JOBS OK/FAILED', 'ROWS/S', 'LEFT', 'TARGET', 'WORK', 'NOTE'],
    reports.map((r) => [
      String(r.id),
      r.name,
      r.status,
      progressText(r),
      `${r.jobs.finished}/${r.jobs.failed}`,
      r.rowsPerSecond === null ? '-' : Math.round(r.rowsPerSecond).toLocaleString('en'),
      r.etaSeconds === null ? '-' : duration(r.etaSeconds),
      `${r.tableName}.${r.columnName} ${boundsText(r)} by ${r.batchSize}` +
        (r.lanes > 1 ? `, ${r.lanesInUse}/${r.lanes} lanes` : '') +
        (r.targetJobMs === null ? '' : ` (~${r.targetJobMs} ms jobs)`),
      r.jobSignatureName,
      note(r),
    ]),
  );
}

/** The lines under the table that say what an estimated progress means (none when no progress shown is one). */
function estimateLegend(reports: MigrationReport[]): string {
  const estimates = reports.filter(progressIsEstimate);
  const lines = [
    estimates.some((r) => r.key?.estimatedRows !== null) &&
      "~: estimated, the finished ranges' rows over the table's estimated rows (a key that is not a single integer column)",
    estimates.some((r) => r.key?.estimatedRows === null) &&
      "rows: the finished ranges' rows; the table has no row estimate to measure them against (ANALYZE it)",
  ].filter(Boolean);
  return lines.length === 0 ? '' : `\n\n${lines.join('\n')}`;
}

/** The line under the table that names what waits for an operator's approval (empty when nothing does). */
function awaitingApproval(reports: MigrationReport[]): string {
  const waiting = reports.filter((r) => r.status === 'awaiting_approval').map((r) => r.name);
  return waiting.length === 0
    ? ''
    : `\n\nawaiting approval: ${waiting.join(', ')} (no worker takes them until \`bbm approve --name NAME\`)`;
}

/**
 * The lines under the table that name the live workers whose lanes rest part of the time
 * (foreground protection's duty cycle: it slows every migration they run); empty when none does.
 */
async function restingWorkers(context: Context): Promise<string> {
  const lines = await eachDatabase(context, async (pool, database) =>
    (await liveWorkers(pool, LIVE_WORKER_WINDOW_MS)).flatMap((w) => {
      const text = dutyCycleText(w.dutyCycle);
      return text === null ? [] : [`${database ? `${database}: ` : ''}worker ${w.hostname} pid ${w.pid}: ${text}`];
    }),
  );
  return lines.length === 0 ? '' : `\n\n${lines.join('\n')}`;
}

/** A read of the command's database, or of each database of the fleet (one that fails is left out: load() said so). */
async function eachDatabase<T>(
  context: Context,
  read: (pool: pg.Pool, database: string | undefined) => Promise<T[]>,
): Promise<T[]> {
  if (context.flags.name !== undefined) return read(context.pool, context.database);
  const outcomes = await overDatabases(context, (pool, target) => read(pool, target.name), { report: false });
  return outcomes.flatMap((outcome) => outcome.value ?? []);
}

function note(r: MigrationReport): string {
  if (r.failureErrorCode !== null) return `${r.failureErrorCode}: ${r.failureMessage ?? ''}`;
  const notes: string[] = [];
  if (r.status === 'awaiting_approval') notes.push('awaiting approval: bbm approve --name ' + r.name);
  if (r.approvedBy !== null) notes.push(`approved by ${r.approvedBy} at ${r.approvedAt?.toISOString() ?? '?'}`);
  if (r.onHoldUntil !== null) {
    const seconds = Math.max(0, (r.onHoldUntil.getTime() - Date.now()) / 1000);
    notes.push(`held ${duration(seconds)}: ${r.holdReason ?? ''}`);
  }
  const lanes = lanesText(r);
  if (lanes !== null) notes.push(lanes);
  if (r.waitingForWork) notes.push(`waiting for a worker with work function ${r.jobSignatureName}`);
  if (r.lastError !== null) notes.push(`last job error: ${r.lastError}`);
  const verification = verificationText(r);
  if (verification) notes.push(verification);
  return notes.join('; ');
}
