/** `bbm`'s flags: which command takes which, their help, and parsing of their values. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export const OPTIONS = {
  'database-url': { type: 'string' },
  config: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  json: { type: 'boolean' },
  name: { type: 'string' },
  // run
  'until-done': { type: 'boolean' },
  interval: { type: 'string' },
  'max-attempts': { type: 'string' },
  'skip-migrate': { type: 'boolean' },
  'log-level': { type: 'string' },
  'log-format': { type: 'string' },
  'metrics-port': { type: 'string' },
  'metrics-host': { type: 'string' },
  'grace-period': { type: 'string' },
  // status
  watch: { type: 'boolean' },
  // enqueue
  work: { type: 'string' },
  table: { type: 'string' },
  column: { type: 'string' },
  'batch-size': { type: 'string' },
  min: { type: 'string' },
  max: { type: 'string' },
  paused: { type: 'boolean' },
} satisfies ParseArgsConfig['options'];

export type Flags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];
export type Flag = keyof Flags;

const LOGGING: Flag[] = ['log-level', 'log-format'];

/** Which flags each command takes, beyond `--database-url`, `--config` and `--help`. */
export const COMMAND_FLAGS: Record<string, Flag[]> = {
  run: ['until-done', 'interval', 'max-attempts', 'skip-migrate', 'metrics-port', 'metrics-host', 'grace-period', ...LOGGING],
  finalize: ['name', 'json', ...LOGGING],
  status: ['name', 'json', 'watch'],
  enqueue: ['name', 'work', 'table', 'column', 'batch-size', 'min', 'max', 'paused', 'json'],
  pause: ['name', 'json'],
  resume: ['name', 'json'],
  retry: ['name', 'json'],
  migrate: ['json'],
};
export const COMMON_FLAGS: Flag[] = ['database-url', 'config', 'help'];

export const HELP = `bbm: batched background migrations for PostgreSQL

Usage: bbm <command> [options]

Commands:
  run        Run a worker until stopped
  finalize   Run the rest of one migration now, in this process; exit 0 once it is finished
  status     Show migrations: progress, pace, time left, failures
  enqueue    Add a migration, after checking its table, column, index and work function
  pause      Pause active and running migrations (all, or --name)
  resume     Resume paused migrations (all, or --name)
  retry      Make a failed migration active again, its failed ranges with fresh attempts
  migrate    Apply pg-bbm's own schema (idempotent; run does it too unless --skip-migrate)

Options of every command:
  --database-url URL    PostgreSQL to use; default DATABASE_URL, then the config's databaseUrl
  --config FILE         Config module (default: bbm.config.ts, .mjs or .js here)
  --json                Print data as JSON (commands that print data)
  -h, --help            This help

run:
  --until-done          Exit 0 once nothing this worker can run remains
  --interval MS         Base wait between idle runs (overrides the config's intervalMs)
  --max-attempts N      Tries per range before its migration fails (overrides maxAttempts)
  --grace-period MS     On SIGTERM/SIGINT, how long the job in flight may take to finish before
                        it is rolled back (default: the config's gracePeriodMs, else 25000)
  --metrics-port PORT   Serve /metrics, /healthz and /readyz on this port (default: off)
  --metrics-host HOST   Address to bind them to (default 127.0.0.1)
  --skip-migrate        Do not apply pg-bbm's schema at start
  --log-level LEVEL     trace, debug, info (default), warn, error, silent
  --log-format FORMAT   json (default when not on a terminal) or pretty
finalize:
  --name NAME           The migration (required); needs --config with its work function
status:
  --name NAME           Only this migration
  --watch               Redraw every second until interrupted
enqueue:
  --name NAME --work WORK --table TABLE --column COLUMN --batch-size N [--min N] [--max N] [--paused]
pause, resume:
  --name NAME           Only this migration
retry:
  --name NAME           The failed migration (required)

Environment: DATABASE_URL, SENTRY_DSN, BBM_LOG_LEVEL, BBM_LOG_FORMAT.
Exit codes: 0 success, 1 failure, 2 bad usage.`;

export function parseCommandLine(argv: string[]): { command: string | undefined; flags: Flags } {
  const parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  if (parsed.positionals.length > 1) throw new UsageError(`unexpected argument ${JSON.stringify(parsed.positionals[1])}`);
  return { command: parsed.positionals[0], flags: parsed.values };
}

export function integerFlag(flags: Flags, flag: Flag, { min = 0, max = Number.MAX_SAFE_INTEGER } = {}): number | undefined {
  const value = flags[flag];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^\d+$/.test(value) || Number(value) < min || Number(value) > max) {
    throw new UsageError(`--${flag} must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return Number(value);
}

/** A bigint flag (ids and range bounds may exceed 2^53). */
export function bigintFlag(flags: Flags, flag: Flag): bigint | undefined {
  const value = flags[flag];
  if (value === undefined) return undefined;
  if (typeof value !== 'string' || !/^-?\d+$/.test(value)) throw new UsageError(`--${flag} must be an integer, got ${JSON.stringify(value)}`);
  const parsed = BigInt(value);
  if (parsed < -(2n ** 63n) || parsed >= 2n ** 63n) throw new UsageError(`--${flag} must fit in a bigint, got ${value}`);
  return parsed;
}

export function requiredFlag(flags: Flags, flag: Flag, command: string): string {
  const value = flags[flag];
  if (typeof value !== 'string' || value.trim() === '') throw new UsageError(`bbm ${command} needs --${flag}`);
  return value;
}
