/** `bbm`'s flags: which command takes which, their help, and parsing of their values. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { INT8_MAX, INT8_MIN } from '../store/codes.ts';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

const OPTIONS = {
  'database-url': { type: 'string' },
  database: { type: 'string' },
  config: { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'v' },
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
  'dashboard-token': { type: 'string' },
  port: { type: 'string' },
  host: { type: 'string' },
  'grace-period': { type: 'string' },
  concurrency: { type: 'string' },
  // status
  watch: { type: 'boolean' },
  // enqueue
  work: { type: 'string' },
  table: { type: 'string' },
  column: { type: 'string' },
  'batch-size': { type: 'string' },
  min: { type: 'string' },
  max: { type: 'string' },
  'min-key': { type: 'string' },
  'max-key': { type: 'string' },
  args: { type: 'string' },
  paused: { type: 'boolean' },
  'needs-approval': { type: 'boolean' },
  // approve
  by: { type: 'string' },
  'dry-run': { type: 'boolean' },
  // enqueue, set: pace
  lanes: { type: 'string' },
  'target-job-ms': { type: 'string' },
  'min-batch-size': { type: 'string' },
  'max-batch-size': { type: 'string' },
  fixed: { type: 'boolean' },
  // rehearse
  samples: { type: 'string' },
} satisfies ParseArgsConfig['options'];

export type Flags = ReturnType<typeof parseArgs<{ options: typeof OPTIONS; allowPositionals: true }>>['values'];
export type Flag = keyof Flags;

/** What a flag means, for help. */
const FLAG_HELP: Record<Flag, string> = {
  'database-url':
    "--database-url URL    PostgreSQL to use; default the config's databases, then DATABASE_URL, then its databaseUrl",
  database:
    "--database NAME       One of the config's databases (default: all of them, or the one --name DATABASE/NAME names)",
  config: '--config FILE         Config module (default: bbm.config.ts, .mjs or .js here)',
  help: '-h, --help            This help',
  version: "-v, --version         pg-bbm's version",
  json: '--json                Print the result as JSON',
  name: '--name NAME           The migration (DATABASE/NAME when the config names several databases)',
  'until-done': '--until-done          Exit 0 once nothing this worker can run remains',
  interval: "--interval MS         Base wait between idle runs (overrides the config's intervalMs)",
  'max-attempts': '--max-attempts N      Tries per range before its migration fails (overrides maxAttempts)',
  'skip-migrate': "--skip-migrate        Do not apply pg-bbm's schema at start",
  'log-level': '--log-level LEVEL     trace, debug, info (default), warn, error, silent',
  'log-format': '--log-format FORMAT   json (default when not on a terminal) or pretty',
  'metrics-port': '--metrics-port PORT   Serve /metrics, /healthz and /readyz on this port (default: off)',
  'metrics-host': '--metrics-host HOST   Address to bind them to (default 127.0.0.1)',
  'grace-period':
    "--grace-period MS     After SIGTERM/SIGINT, how long the job in flight may take before it is\n                        rolled back (default: the config's gracePeriodMs, else 25000)",
  concurrency: '--concurrency N       Jobs this worker runs at once, each on its own connection (default 1)',
  'dashboard-token':
    "--dashboard-token T  Operator token for the status page's actions: pause, resume, retry, approve, delete,\n                        rehearse (default BBM_DASHBOARD_TOKEN; without one the page is read-only); 16+ characters",
  port: '--port PORT           Port to serve on (default 9188)',
  host: '--host HOST           Address to bind to (default 127.0.0.1)',
  watch: '--watch               Redraw every second until interrupted',
  work: '--work WORK           The work function (job_signature_name)',
  table: '--table TABLE         The table, optionally schema-qualified',
  column:
    '--column COLUMN       The key to batch over, with a btree index leading with it: a column, or several\n                        in index order joined by commas (tenant_id,id)',
  'batch-size': '--batch-size N        Rows per range',
  min: '--min N               First id of a single integer column (default 1)',
  max: "--max N               Last id (default: the column's maximum when the migration starts)",
  'min-key':
    '--min-key JSON        First key, for a key that is not one integer column: a value, or an array of one\n                        value per column (\'"0190c7e4-…"\', \'[42, "2026-01-01"]\'; default: its first key at start)',
  'max-key': '--max-key JSON        Last key, as --min-key (default: its last key when the migration starts)',
  args: '--args JSON           Arguments for the work function (job.args), a JSON object',
  paused: '--paused              Enqueue it paused',
  'needs-approval': '--needs-approval      Enqueue it awaiting approval: no worker takes it until `bbm approve`',
  by: '--by WHO              Who approves (default BBM_OPERATOR, else the OS user)',
  'dry-run':
    '--dry-run             Print the INSERT (for a schema-migration file) instead of running it; no database needed',
  lanes:
    "--lanes N             Jobs of the migration that may run at once, across all workers (default 1);\n                        rehearse: the lanes to project for (default: the migration's)",
  'target-job-ms': "--target-job-ms MS    Adapt the batch size so a job's work takes about this long",
  'min-batch-size': '--min-batch-size N    Smallest adaptive size, and smallest half a timed-out range is split to',
  'max-batch-size': '--max-batch-size N    Largest adaptive size',
  fixed: '--fixed               Stop adapting: keep the batch size fixed (clears --target-job-ms)',
  samples: '--samples N           Sample ranges to run, spread over the key space (default 10)',
};

const LOGGING: Flag[] = ['log-level', 'log-format'];

/** The flags that describe a migration: `bbm enqueue`'s, and `bbm rehearse`'s for one not enqueued. */
const MIGRATION_SPEC_FLAGS: Flag[] = [
  'work',
  'table',
  'column',
  'batch-size',
  'min',
  'max',
  'min-key',
  'max-key',
  'args',
  'target-job-ms',
  'min-batch-size',
  'max-batch-size',
];

interface CommandSpec {
  summary: string;
  usage: string;
  flags: Flag[];
}

/** Every command: what it does, and the flags it takes beyond `--database-url`, `--config` and `--help`. */
export const COMMANDS: Record<string, CommandSpec> = {
  run: {
    summary: 'Run a worker until stopped (SIGTERM/SIGINT: finish the job in flight; twice: roll it back)',
    usage: 'bbm run [--config FILE] [--until-done] [--metrics-port PORT] …',
    flags: [
      'until-done',
      'dashboard-token',
      'concurrency',
      'interval',
      'max-attempts',
      'grace-period',
      'metrics-port',
      'metrics-host',
      'skip-migrate',
      ...LOGGING,
    ],
  },
  finalize: {
    summary: 'Run the rest of one migration now, in this process; exit 0 once it is finished',
    usage: 'bbm finalize --name NAME --config FILE',
    flags: ['name', 'json', ...LOGGING],
  },
  verify: {
    summary: "Check every finished range of a migration with its work's check, read-only; exit 1 when rows fail it",
    usage: 'bbm verify --name NAME --config FILE [--json]',
    flags: ['name', 'json', ...LOGGING],
  },
  status: {
    summary: 'Show migrations: progress, pace, time left, failures',
    usage: 'bbm status [--name NAME] [--watch] [--json]',
    flags: ['name', 'watch', 'json'],
  },
  schedules: {
    summary: "List the config's schedules: each one's last pass and when the next is due",
    usage: 'bbm schedules --config FILE [--json]',
    flags: ['json'],
  },
  enqueue: {
    summary: 'Add a migration, after checking its table, key, index, bounds and work function',
    usage:
      'bbm enqueue --name NAME --work WORK --table TABLE --column COLUMN --batch-size N [--min N] [--max N] [--min-key JSON] [--max-key JSON] [--args JSON] [--lanes N] [--paused | --needs-approval] …',
    flags: ['name', ...MIGRATION_SPEC_FLAGS, 'lanes', 'paused', 'needs-approval', 'dry-run', 'json'],
  },
  rehearse: {
    summary: "Run a migration's work on sample ranges, each rolled back, and project its duration, WAL and dead tuples",
    usage:
      'bbm rehearse --name NAME --config FILE [--samples N] [--lanes N] [--json], or with the flags of bbm enqueue (--work WORK --table TABLE …) for a migration not enqueued',
    flags: ['name', 'samples', 'lanes', 'json', ...MIGRATION_SPEC_FLAGS],
  },
  set: {
    summary: "Change a migration's pace while it runs: lanes, batch size, adaptive sizing",
    usage:
      'bbm set --name NAME [--lanes N] [--batch-size N] [--target-job-ms MS] [--min-batch-size N] [--max-batch-size N] [--fixed]',
    flags: ['name', 'lanes', 'batch-size', 'target-job-ms', 'min-batch-size', 'max-batch-size', 'fixed', 'json'],
  },
  pause: {
    summary: 'Pause active and running migrations (all, or --name)',
    usage: 'bbm pause [--name NAME]',
    flags: ['name', 'json'],
  },
  resume: {
    summary: 'Resume paused migrations (all, or --name)',
    usage: 'bbm resume [--name NAME]',
    flags: ['name', 'json'],
  },
  retry: {
    summary: 'Make a failed migration active again, its failed ranges with fresh attempts',
    usage: 'bbm retry --name NAME',
    flags: ['name', 'json'],
  },
  approve: {
    summary: 'Approve a migration enqueued with --needs-approval: workers take it from now on',
    usage: 'bbm approve --name NAME [--by WHO]',
    flags: ['name', 'by', 'json'],
  },
  dashboard: {
    summary:
      'Serve the status page (overview, progress, pace, holds, workers, job charts; the actions a state allows, with the token; rehearse, with --config) until stopped',
    usage: 'bbm dashboard [--port PORT] [--host HOST] [--dashboard-token TOKEN] [--config FILE]',
    flags: ['port', 'host', 'dashboard-token'],
  },
  delete: {
    summary:
      'Delete a paused, failed or finished migration and its jobs (an active or running one is refused: pause it first)',
    usage: 'bbm delete --name NAME',
    flags: ['name', 'json'],
  },
  migrate: {
    summary: "Apply pg-bbm's own schema (idempotent; run does it too unless --skip-migrate)",
    usage: 'bbm migrate',
    flags: ['json'],
  },
};
export const COMMON_FLAGS: Flag[] = ['database-url', 'database', 'config', 'help'];
/** Flags that need no command. */
export const GLOBAL_FLAGS: Flag[] = ['help', 'version'];

const FOOTER =
  "Environment: DATABASE_URL (else libpq's PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE), SENTRY_DSN,\n  BBM_DASHBOARD_TOKEN, BBM_OPERATOR, BBM_LOG_LEVEL, BBM_LOG_FORMAT.\nExit codes: 0 success, 1 failure, 2 bad usage.";
const flagLines = (flags: Flag[]) => flags.map((flag) => `  ${FLAG_HELP[flag]}`).join('\n');

export const HELP = [
  'bbm: batched background migrations for PostgreSQL',
  '',
  'Usage: bbm <command> [options]     (bbm <command> --help for its options)',
  '',
  'Commands:',
  ...Object.entries(COMMANDS).map(([name, spec]) => `  ${name.padEnd(10)} ${spec.summary}`),
  '',
  'Options of every command:',
  flagLines([...COMMON_FLAGS, 'version']),
  '',
  FOOTER,
].join('\n');

export function commandHelp(command: string): string {
  const spec = COMMANDS[command];
  if (!spec) return HELP;
  return [
    `bbm ${command}: ${spec.summary}`,
    '',
    `Usage: ${spec.usage}`,
    '',
    'Options:',
    flagLines([...spec.flags, ...COMMON_FLAGS]),
    '',
    FOOTER,
  ].join('\n');
}

/** The command's help hint, for messages about a bad command line. */
export function helpHint(command?: string): string {
  return command && COMMANDS[command]
    ? `Run \`bbm ${command} --help\` for its options.`
    : 'Run `bbm --help` for usage.';
}

/**
 * The command and its flags. Node's parseArgs errors are turned into pg-bbm's own messages
 * (theirs talk about positional arguments and '--'), each with the command's help hint.
 */
export function parseCommandLine(argv: string[]): { command: string | undefined; flags: Flags } {
  let parsed: { values: Flags; positionals: string[] };
  try {
    parsed = parseArgs({ args: argv, options: OPTIONS, allowPositionals: true, strict: true });
  } catch (error) {
    const command = argv.find((arg) => !arg.startsWith('-'));
    const where = command && COMMANDS[command] ? `bbm ${command}` : 'bbm';
    const { code, message } = error as NodeJS.ErrnoException;
    const option = /'(-{1,2}[^' ]+)/.exec(message)?.[1] ?? '';
    const what =
      code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION'
        ? `unknown option ${option}`
        : code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE' && /argument missing/.test(message)
          ? `${option} needs a value`
          : code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE'
            ? `${option} takes no value`
            : message;
    throw new UsageError(`${where}: ${what}\n\n${helpHint(command)}`);
  }
  if (parsed.positionals.length > 1) {
    throw new UsageError(
      `bbm: unexpected argument ${JSON.stringify(parsed.positionals[1])}\n\n${helpHint(parsed.positionals[0])}`,
    );
  }
  return { command: parsed.positionals[0], flags: parsed.values };
}

export function integerFlag(
  flags: Flags,
  flag: Flag,
  { min = 0, max = Number.MAX_SAFE_INTEGER } = {},
): number | undefined {
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
  if (typeof value !== 'string' || !/^-?\d+$/.test(value))
    throw new UsageError(`--${flag} must be an integer, got ${JSON.stringify(value)}`);
  const parsed = BigInt(value);
  if (parsed < INT8_MIN || parsed > INT8_MAX) throw new UsageError(`--${flag} must fit in a bigint, got ${value}`);
  return parsed;
}

/** A flag whose value is JSON text, parsed (what it must hold is checked by its user). */
export function jsonFlag(flags: Flags, flag: Flag): unknown {
  const value = flags[flag];
  if (value === undefined) return undefined;
  if (typeof value !== 'string') throw new UsageError(`--${flag} needs a value`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(value) as unknown;
  } catch (error) {
    throw new UsageError(`--${flag} must be JSON, got ${JSON.stringify(value)}: ${(error as Error).message}`);
  }
  const inexact = inexactNumber(value);
  if (inexact !== undefined) {
    throw new UsageError(
      `--${flag}: the number ${inexact} has more significant digits than a JavaScript number keeps (15); ` +
        `give it as a string, ${JSON.stringify(inexact)}`,
    );
  }
  return parsed;
}

/** JSON's strings and numbers, in order: the numbers are what lies outside the strings. */
const JSON_TOKENS = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/**
 * The first number in JSON text that JSON.parse cannot keep exactly, if any: one of more than 15
 * significant digits (every decimal of up to 15 reads back exactly from a double). The database
 * would store the rounded number, not the one typed.
 */
function inexactNumber(text: string): string | undefined {
  for (const [token] of text.matchAll(JSON_TOKENS)) {
    if (token.startsWith('"')) continue;
    const digits = token
      .replace(/^-/, '')
      .replace(/[eE].*$/, '')
      .replace('.', '')
      .replace(/^0+/, '')
      .replace(/0+$/, '');
    if (digits.length > 15) return token;
  }
  return undefined;
}

export function requiredFlag(flags: Flags, flag: Flag, command: string): string {
  const value = flags[flag];
  if (typeof value !== 'string' || value.trim() === '') throw new UsageError(`bbm ${command} needs --${flag}`);
  return value;
}
