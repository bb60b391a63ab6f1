/**
 * `bbm`: run workers, and inspect and steer migrations.
 * Exit codes: 0 success, 1 failure, 2 bad usage (unknown command or flag, missing database URL).
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import type pg from 'pg';
import { findDefaultConfig, loadConfig } from '../bbm/config.ts';
import { ConfigError } from '../bbm/errors.ts';
import { createLogger } from '../bbm/log.ts';
import { migrationReports, pause, resume, type MigrationReport } from '../bbm/status.ts';
import type { Config, WorkerOptions } from '../bbm/types.ts';
import { Worker } from '../bbm/worker.ts';
import { createPool, maskConnectionString } from '../store/db.ts';
import { migrateSchema } from '../store/migrate.ts';
import { percent, table, toJson } from './format.ts';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

const HELP = `bbm: batched background migrations for PostgreSQL

Usage: bbm <command> [options]

Commands:
  run       Run a worker until stopped (SIGINT/SIGTERM: finish the job in flight; twice: roll it back)
  status    Show migrations, their progress and failures
  pause     Pause active and running migrations (all, or --name)
  resume    Resume paused migrations (all, or --name)
  migrate   Apply pg-bbm's own schema (idempotent; run also does it unless --skip-migrate)

Options for every command:
  --database-url URL  PostgreSQL to use; default DATABASE_URL, then the config's databaseUrl
  --config FILE       Config module (default: bbm.config.ts, .mjs or .js in the current directory)
  -h, --help          This help

run:
  --until-done        Exit 0 once nothing this worker can run remains
  --interval MS       Base wait between idle runs (overrides the config's intervalMs)
  --max-attempts N    Tries per range before its migration fails (overrides maxAttempts)
  --skip-migrate      Do not apply pg-bbm's schema at start
  --log-level LEVEL   trace, debug, info (default), warn, error, silent
status:
  --name NAME         Only this migration
  --json              An array of objects instead of a table
pause, resume:
  --name NAME         Only this migration

Exit codes: 0 success, 1 failure, 2 bad usage.`;

const OPTIONS = {
  'database-url': { type: 'string' },
  config: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  'until-done': { type: 'boolean' },
  interval: { type: 'string' },
  'max-attempts': { type: 'string' },
  'skip-migrate': { type: 'boolean' },
  'log-level': { type: 'string' },
  name: { type: 'string' },
  json: { type: 'boolean' },
} satisfies ParseArgsConfig['options'];

type Flags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];

/** Which flags each command takes, beyond the common ones. */
const COMMAND_FLAGS: Record<string, (keyof Flags)[]> = {
  run: ['until-done', 'interval', 'max-attempts', 'skip-migrate', 'log-level'],
  status: ['name', 'json'],
  pause: ['name'],
  resume: ['name'],
  migrate: [],
};
const COMMON_FLAGS: (keyof Flags)[] = ['database-url', 'config', 'help'];

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  env: NodeJS.ProcessEnv;
}

const processIo: Io = {
  out: (text) => process.stdout.write(`${text}\n`),
  err: (text) => process.stderr.write(`${text}\n`),
  env: process.env,
};

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let command: string | undefined;
  let flags: Flags;
  try {
    const parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
    flags = parsed.values;
    [command] = parsed.positionals;
    if (parsed.positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[1])}`);
  } catch (error) {
    io.err(`bbm: ${(error as Error).message}\n\nRun \`bbm --help\` for usage.`);
    return 2;
  }
  if (flags.help || command === undefined || command === 'help') {
    io.out(HELP);
    return command === undefined && !flags.help ? 2 : 0;
  }
  const allowed = COMMAND_FLAGS[command];
  if (!allowed) {
    io.err(`bbm: unknown command ${JSON.stringify(command)}\n\nRun \`bbm --help\` for usage.`);
    return 2;
  }
  const extra = (Object.keys(flags) as (keyof Flags)[]).find((f) => !allowed.includes(f) && !COMMON_FLAGS.includes(f));
  if (extra) {
    io.err(`bbm ${command}: --${extra} is not an option of this command\n\nRun \`bbm --help\` for usage.`);
    return 2;
  }

  let pool: pg.Pool | undefined;
  let databaseUrl: string | undefined;
  try {
    const configFile = flags.config ?? findDefaultConfig();
    const config = configFile ? await loadConfig(configFile) : undefined;
    if (command === 'run' && !config) {
      throw new UsageError('bbm run needs work functions: pass --config FILE (or add bbm.config.ts to this directory)');
    }
    databaseUrl = flags['database-url'] ?? io.env.DATABASE_URL ?? config?.databaseUrl;
    if (!databaseUrl) {
      throw new UsageError('no database: set DATABASE_URL or pass --database-url postgres://user:password@host:5432/database');
    }
    pool = createPool({ connectionString: databaseUrl, max: 3, applicationName: `bbm ${command}` });
    switch (command) {
      case 'run':
        return await run(pool, config!, flags, io);
      case 'status':
        return await status(pool, config, flags, io);
      case 'pause':
      case 'resume':
        return await steer(pool, command, flags.name, io);
      case 'migrate':
        await migrateSchema(pool);
        io.out('pg-bbm schema is up to date');
        return 0;
    }
    return 2;
  } catch (error) {
    const message = (error as Error).message ?? String(error);
    const masked = databaseUrl ? message.replaceAll(databaseUrl, maskConnectionString(databaseUrl)) : message;
    io.err(`bbm ${command}: ${masked}`);
    return error instanceof UsageError || error instanceof ConfigError ? 2 : 1;
  } finally {
    await pool?.end();
  }
}

function parseInteger(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  if (!/^\d+$/.test(value)) throw new UsageError(`--${flag} must be a whole number, got ${JSON.stringify(value)}`);
  return Number(value);
}

async function run(pool: pg.Pool, config: Config, flags: Flags, io: Io): Promise<number> {
  const logLevel = flags['log-level'] ?? io.env.BBM_LOG_LEVEL ?? 'info';
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(logLevel)) {
    throw new UsageError(`--log-level must be one of trace, debug, info, warn, error, silent; got ${JSON.stringify(logLevel)}`);
  }
  const overrides: WorkerOptions = {};
  const interval = parseInteger('interval', flags.interval);
  const maxAttempts = parseInteger('max-attempts', flags['max-attempts']);
  if (interval !== undefined) overrides.intervalMs = interval;
  if (maxAttempts !== undefined) overrides.maxAttempts = maxAttempts;
  const logger = createLogger(logLevel as 'info');
  const { work, databaseUrl: _ignored, ...options } = config;
  const worker = new Worker({ ...options, ...overrides, work, pool, logger });
  if (!flags['skip-migrate']) await migrateSchema(pool);

  let signals = 0;
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals === 1) {
      logger.info({ signal }, 'stopping after the job in flight (signal again to roll it back)');
      void worker.stop();
    } else {
      logger.warn({ signal }, 'stopping now: cancelling and rolling back the job in flight');
      void worker.stop({ abort: true });
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await worker.run({ untilDone: Boolean(flags['until-done']) });
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
  return 0;
}

async function status(pool: pg.Pool, config: Config | undefined, flags: Flags, io: Io): Promise<number> {
  const reports = await migrationReports(pool, { name: flags.name, knownWork: config?.work.map((w) => w.name) });
  if (flags.name !== undefined && reports.length === 0) {
    io.err(`bbm status: no migration named ${JSON.stringify(flags.name)}`);
    return 1;
  }
  if (flags.json) {
    io.out(toJson(reports));
    return 0;
  }
  if (reports.length === 0) {
    io.out('no migrations');
    return 0;
  }
  io.out(
    table(
      ['ID', 'NAME', 'STATUS', 'PROGRESS', 'JOBS DONE/FAILED/ALL', 'TARGET', 'WORK', 'NOTE'],
      reports.map((r) => [
        String(r.id),
        r.name,
        r.status,
        percent(r.progress),
        `${r.jobs.finished}/${r.jobs.failed}/${r.jobs.total}`,
        `${r.tableName}.${r.columnName} [${r.minValue}..${r.maxValue ?? 'max'}] by ${r.batchSize}`,
        r.jobSignatureName,
        note(r),
      ]),
    ),
  );
  return 0;
}

function note(r: MigrationReport): string {
  if (r.failureErrorCode !== null) return `${r.failureErrorCode}: ${r.failureMessage ?? ''}`;
  if (r.waitingForWork) return `waiting for a worker with work function ${r.jobSignatureName}`;
  return '';
}

async function steer(pool: pg.Pool, command: 'pause' | 'resume', name: string | undefined, io: Io): Promise<number> {
  const changed = command === 'pause' ? await pause(pool, name) : await resume(pool, name);
  if (name !== undefined && changed.length === 0) {
    const [existing] = await migrationReports(pool, { name });
    if (!existing) {
      io.err(`bbm ${command}: no migration named ${JSON.stringify(name)}`);
      return 1;
    }
    io.out(`${name} is ${existing.status}; nothing to ${command}`);
    return 0;
  }
  io.out(changed.length === 0 ? `nothing to ${command}` : `${command === 'pause' ? 'paused' : 'resumed'}: ${changed.join(', ')}`);
  return 0;
}
