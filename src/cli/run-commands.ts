/** The long-running commands: `bbm run` (a worker) and `bbm finalize` (one migration, now). */
import { finalizeMigration, FinalizeError } from '../bbm/finalize.ts';
import type pg from 'pg';
import type { LevelWithSilent } from 'pino';
import { createLogger, LOG_LEVELS, type LogFormat, type Logger } from '../bbm/log.ts';
import { migrationReports } from '../bbm/status.ts';
import { progressText } from '../bbm/report-text.ts';
import { createMetrics } from '../bbm/metrics.ts';
import { startOpsServer, type OpsServer } from '../bbm/ops-server.ts';
import { createStatusPage } from '../bbm/status-page.ts';
import { resolveSchedules, type ResolvedSchedule } from '../bbm/schedules.ts';
import { WorkRegistry } from '../bbm/work-registry.ts';
import { createSentryReporter, type SentryReporter } from '../bbm/sentry.ts';
import type { Config, MigrationReport, WorkerObserver, WorkerOptions } from '../bbm/types.ts';
import { Fleet } from '../bbm/fleet.ts';
import { addressText, databaseField, shownReport } from '../bbm/databases.ts';
import { ConfigError } from '../bbm/errors.ts';
import { describeError } from './errors.ts';
import { MAX_LANES } from '../store/codes.ts';
import { passwordOf } from '../store/db.ts';
import { integerFlag, requiredFlag, UsageError } from './args.ts';
import { duration, progressBar } from './format.ts';
import { createLiveDisplay, type LiveDisplay } from './live.ts';
import type { Context } from './context.ts';

const DEFAULT_GRACE_PERIOD_MS = 25_000;
/**
 * How long a rolled-back stop may take before the process exits anyway: a cancel reaches a
 * statement at once, so only a worker that cannot make progress (a defect) gets here. Its runs'
 * transactions die with their sessions, so nothing is half done.
 */
const ABORT_EXIT_MS = 10_000;

function logLevelFlag({ flags }: Context): LevelWithSilent | undefined {
  const level = flags['log-level'];
  if (level !== undefined && !(LOG_LEVELS as string[]).includes(level)) {
    throw new UsageError(`--log-level must be one of ${LOG_LEVELS.join(', ')}; got ${JSON.stringify(level)}`);
  }
  return level as LevelWithSilent | undefined;
}

function logFormatFlag({ flags }: Context): LogFormat | undefined {
  const format = flags['log-format'];
  if (format !== undefined && format !== 'json' && format !== 'pretty') {
    throw new UsageError(`--log-format must be json or pretty; got ${JSON.stringify(format)}`);
  }
  return format;
}

export function logger(context: Context, destination: 1 | 2): Logger {
  return createLogger({
    level: logLevelFlag(context),
    format: logFormatFlag(context),
    destination,
    mask: context.mask,
  });
}

/**
 * `bbm run` on a terminal (unless JSON logs are asked for): a live display, with log lines on one
 * line each above it, at warn unless a level is given (failures show; each finished job does not).
 */
function terminalOutput(context: Context): { log: Logger; display: LiveDisplay } | undefined {
  const level = logLevelFlag(context);
  const format = logFormatFlag(context) ?? (context.io.env.BBM_LOG_FORMAT as LogFormat | undefined);
  if (!context.io.tty || format === 'json') return undefined;
  const display = createLiveDisplay({
    databases: context.databases.map((target) => ({ name: target.name, db: context.poolOf(target) })),
    knownWork: context.config?.work.map((w) => w.name) ?? [],
    write: (text) => process.stdout.write(text),
  });
  const log = createLogger({
    level: level ?? ((context.io.env.BBM_LOG_LEVEL || undefined) as LevelWithSilent | undefined) ?? 'warn',
    format: 'pretty',
    destination: display.stream,
    terse: true,
    mask: context.mask,
  });
  return { log, display };
}

async function sentryFrom({ config, io, databases }: Context): Promise<SentryReporter | undefined> {
  const dsn = io.env.SENTRY_DSN ?? config?.sentry?.dsn;
  if (!dsn) return undefined;
  const secrets = databases.flatMap(({ url }) => [url, passwordOf(url) ?? []].flat());
  return await createSentryReporter({
    dsn,
    ...(config?.sentry?.environment !== undefined && { environment: config.sentry.environment }),
    ...(config?.sentry?.release !== undefined && { release: config.sentry.release }),
    secrets,
  });
}

/**
 * SIGINT/SIGTERM: the first asks to stop after the job in flight, giving it `graceMs`; past that,
 * or on a second signal, the job in flight is cancelled and rolled back.
 */
function onStopSignals(log: Logger, graceMs: number, stop: () => void, abort: () => void): () => void {
  let signals = 0;
  let timer: NodeJS.Timeout | undefined;
  let exitTimer: NodeJS.Timeout | undefined;
  const rollBack = () => {
    abort();
    exitTimer ??= setTimeout(() => {
      log.error({ exit_after_ms: ABORT_EXIT_MS }, `could not stop within ${ABORT_EXIT_MS} ms of rolling back: exiting`);
      process.exit(1);
    }, ABORT_EXIT_MS);
    exitTimer.unref();
  };
  const handler = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals === 1) {
      log.info({ signal, grace_period_ms: graceMs }, 'stopping after the job in flight (signal again to roll it back)');
      stop();
      timer = setTimeout(() => {
        log.warn({ grace_period_ms: graceMs }, 'grace period over: rolling back the job in flight');
        rollBack();
      }, graceMs);
      timer.unref();
    } else {
      log.warn({ signal }, 'stopping now: rolling back the job in flight');
      rollBack();
    }
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return () => {
    clearTimeout(timer);
    clearTimeout(exitTimer);
    process.off('SIGINT', handler);
    process.off('SIGTERM', handler);
  };
}

/** A config's worker options: the config less what is not a worker option. */
export function workerOptionsOf(config: Config): WorkerOptions {
  const {
    work: _work,
    throttle: _throttle,
    schedules: _schedules,
    databaseUrl: _url,
    databases: _databases,
    gracePeriodMs: _grace,
    sentry: _sentry,
    health: _health,
    notify: _notify,
    ...options
  } = config;
  return options;
}

function overrides(context: Context): WorkerOptions {
  const result: WorkerOptions = {};
  const interval = integerFlag(context.flags, 'interval', { min: 1 });
  const concurrency = integerFlag(context.flags, 'concurrency', { min: 1, max: MAX_LANES });
  if (concurrency !== undefined) result.concurrency = concurrency;
  const maxAttempts = integerFlag(context.flags, 'max-attempts', { min: 1, max: 32_767 });
  if (interval !== undefined) result.intervalMs = interval;
  if (maxAttempts !== undefined) result.maxAttempts = maxAttempts;
  return result;
}

export async function run(context: Context): Promise<number> {
  const { config, flags, io, databases } = context;
  if (!config)
    throw new UsageError('bbm run needs work functions: pass --config FILE (or add bbm.config.ts to this directory)');
  const fleet = databases[0]?.name !== undefined;
  const terminal = terminalOutput(context);
  const log = terminal?.log ?? logger(context, 1);
  const graceMs = integerFlag(flags, 'grace-period') ?? config.gracePeriodMs ?? DEFAULT_GRACE_PERIOD_MS;
  const metricsPort = integerFlag(flags, 'metrics-port', { max: 65_535 });
  if (flags['metrics-host'] !== undefined && metricsPort === undefined)
    throw new UsageError('--metrics-host needs --metrics-port');
  const { work, throttle, schedules } = config;
  const options = { ...workerOptionsOf(config), ...overrides(context) };
  // Checked against the config's databases, whichever of them --database serves.
  const configured = Object.keys(config.databases ?? {});
  for (const schedule of schedules ?? []) {
    const unknown = (schedule.databases ?? []).filter((name) => !configured.includes(name));
    if (unknown.length > 0) {
      throw new ConfigError(
        `schedule ${schedule.name}: ${unknown.join(', ')} ${unknown.length > 1 ? 'are' : 'is'} not among the config's databases`,
      );
    }
  }
  const untilDone = Boolean(flags['until-done']);
  const read = readSources(context);

  // The migrations this process ran jobs of: with --until-done, the exit code says whether any failed.
  const workedOn = new Map<string | undefined, Set<string>>();
  const metrics = metricsPort === undefined ? undefined : createMetrics(read);
  let sentry: SentryReporter | undefined;
  const observersFor = (database: string | undefined): WorkerObserver[] => {
    const ran = workedOn.get(database) ?? new Set<string>();
    workedOn.set(database, ran);
    const observers: WorkerObserver[] = [
      {
        run(result) {
          if (result.migration) ran.add(result.migration.name);
        },
      },
    ];
    if (metrics) observers.push(metrics.observerFor(database));
    if (sentry) observers.push(sentry.observerFor(database));
    return observers;
  };
  const running = new Fleet({
    ...options,
    databases,
    work,
    logger: log,
    observersFor,
    migrate: !flags['skip-migrate'],
    ...(throttle && { throttle }),
    ...(schedules && { schedules }),
    ...(config.health !== undefined && { health: config.health }),
    ...(config.notify && { notify: config.notify }),
  });
  // A signal while a database is awaited ends the wait; once its worker runs, it stops the worker.
  const release = onStopSignals(
    log,
    graceMs,
    () => void running.stop(),
    () => void running.stop({ abort: true }),
  );
  let ops: OpsServer | undefined;
  try {
    // Served before the databases are awaited: a liveness probe must see a live process that waits
    // (and /readyz says it is not ready), or it restarts it in a loop.
    if (metrics && metricsPort !== undefined) {
      ops = await startOpsServer({
        registry: metrics.registry,
        page: createStatusPage({
          ...read,
          token: dashboardToken(context),
          log,
          schedules: schedulesOf(config),
          rehearse: { ...(!fleet && { pool: context.pool }), work, runTimeoutMs: options.runTimeoutMs },
          mask: context.mask,
        }),
        ...read,
        mask: context.mask,
        port: metricsPort,
        host: flags['metrics-host'] ?? '127.0.0.1',
        log,
      });
      log.info({ url: `http://${ops.host}:${ops.port}/metrics` }, 'serving metrics, /healthz and /readyz');
    }
    sentry = await sentryFrom(context);
    terminal?.display.start();
    try {
      await running.run({ untilDone });
    } finally {
      await terminal?.display.stop();
    }
  } finally {
    release();
    await ops?.close();
    await sentry?.close();
  }
  if (!untilDone) return 0;
  let failures = 0;
  for (const [database, error] of running.failed) {
    io.err(context.mask(`bbm run: database ${database} could not be served: ${describeError(error)}`));
    failures += 1;
  }
  for (const target of databases) {
    const ran = workedOn.get(target.name);
    if (!ran || ran.size === 0) continue;
    const failed = (await migrationReports(context.poolOf(target))).filter(
      (report) => ran.has(report.name) && report.status === 'failed',
    );
    for (const report of failed) {
      io.err(
        context.mask(
          `bbm run: ${addressText(target.name, report.name)} failed (${report.failureErrorCode ?? 'unknown'}): ${report.failureMessage ?? ''}`,
        ),
      );
    }
    failures += failed.length;
  }
  return failures > 0 ? 1 : 0;
}

export async function finalize(context: Context): Promise<number> {
  const { config, flags, pool, io } = context;
  const name = requiredFlag(flags, 'name', 'finalize');
  const shown = addressText(context.database, name);
  if (!config) throw new UsageError(`bbm finalize needs --config with the work function of ${name}`);
  const log = logger(context, 2);
  const options = workerOptionsOf(config);
  const sentry = await sentryFrom(context);
  const soft = new AbortController();
  const hard = new AbortController();
  const release = onStopSignals(
    log,
    config.gracePeriodMs ?? DEFAULT_GRACE_PERIOD_MS,
    () => soft.abort(),
    () => hard.abort(),
  );
  const progress = progressPrinter(context);
  try {
    const report = await finalizeMigration({
      ...options,
      pool,
      work: config.work,
      name,
      logger: log,
      ...(context.database !== undefined && { database: context.database }),
      observers: sentry ? [sentry.observerFor(context.database)] : [],
      onProgress: (report) => progress.update(shownReport(context.database, report)),
      signal: soft.signal,
      hardStop: hard.signal,
    });
    progress.done();
    context.print(
      shownReport(context.database, report),
      () => `${shown} is finished: ${report.jobs.finished} jobs, ${report.jobs.failed} failed`,
    );
    return 0;
  } catch (error) {
    progress.done();
    if (!(error instanceof FinalizeError)) throw error;
    io.err(context.mask(`bbm finalize: ${shown} is not finished: ${error.message}`));
    if (flags.json && error.report) {
      const { status } = error.report;
      io.out(
        JSON.stringify({
          name: shown,
          ...databaseField(context.database),
          finished: false,
          reason: error.message,
          status,
        }),
      );
    }
    return 1;
  } finally {
    release();
    await sentry?.close();
  }
}

/** A progress bar redrawn in place on a terminal; elsewhere a plain line every 10% (or 10 s). */
function progressPrinter({ io, flags }: Context): { update: (report: MigrationReport) => void; done: () => void } {
  if (flags.json) return { update: () => {}, done: () => {} };
  let drawn = false;
  let lastTenth = -1;
  let lastLine = 0;
  const describe = (r: MigrationReport) =>
    `${r.name} ${progressBar(r.progress, 30, progressText(r))} ${r.jobs.finished} jobs` +
    (r.rowsPerSecond === null ? '' : `, ${Math.round(r.rowsPerSecond).toLocaleString('en')} rows/s`) +
    (r.etaSeconds === null ? '' : `, ${duration(r.etaSeconds)} left`);
  return {
    update(report) {
      if (io.tty) {
        process.stdout.write(`\r\x1b[2K${describe(report)}`);
        drawn = true;
        return;
      }
      const tenth = Math.floor(report.progress * 10);
      if (tenth > lastTenth || Date.now() - lastLine > 10_000) {
        io.out(`${describe(report)} (${progressText(report)})`);
        lastTenth = tenth;
        lastLine = Date.now();
      }
    },
    done() {
      if (drawn) process.stdout.write('\n');
      drawn = false;
    },
  };
}

/** The operator token of the status page: --dashboard-token, else BBM_DASHBOARD_TOKEN; none makes it read-only. */
function dashboardToken({ flags, io }: Context): string | undefined {
  const token = flags['dashboard-token'] || io.env.BBM_DASHBOARD_TOKEN || undefined;
  if (token !== undefined && token.length < 16)
    throw new UsageError('the dashboard token must be at least 16 characters');
  return token;
}

/** `bbm dashboard`: the status page on its own, until SIGINT/SIGTERM. */
export async function dashboard(context: Context): Promise<number> {
  const { flags, pool, io } = context;
  const port = integerFlag(flags, 'port', { max: 65_535 }) ?? 9188;
  const log = logger(context, 2);
  const token = dashboardToken(context);
  const read = readSources(context);
  const server = await startOpsServer({
    page: createStatusPage({
      ...read,
      token,
      log,
      schedules: schedulesOf(context.config),
      // With --config, its work functions: the page offers rehearse.
      rehearse: context.config && {
        ...('db' in read && { pool }),
        work: context.config.work,
        runTimeoutMs: context.config.runTimeoutMs,
      },
      mask: context.mask,
    }),
    ...read,
    mask: context.mask,
    port,
    host: flags.host ?? '127.0.0.1',
    log,
  });
  io.out(
    `status page on http://${server.host}:${server.port}/ (${token ? 'controls need the operator token' : 'read-only: no --dashboard-token'})`,
  );
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  await server.close();
  return 0;
}

/**
 * What the metrics, the status page and /readyz read: in a fleet, each database's pool by name
 * (its series, rows and readiness named so); else the one database's.
 */
function readSources({ databases, pool, poolOf }: Context): { databases: Map<string, pg.Pool> } | { db: pg.Pool } {
  if (databases[0]?.name === undefined) return { db: pool };
  return { databases: new Map(databases.map((target) => [target.name!, poolOf(target)])) };
}

/** The config's schedules, resolved, for the status page. */
function schedulesOf(config: Config | undefined): ResolvedSchedule[] {
  return config?.schedules ? resolveSchedules(config.schedules, new WorkRegistry(config.work)) : [];
}
