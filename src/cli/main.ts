/**
 * `bbm`: run workers, and inspect and steer migrations.
 * Exit codes: 0 success, 1 failure, 2 bad usage (unknown command or flag, bad value, no database).
 */
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import type { Context, Io } from './context.ts';
import { findDefaultConfig, loadConfig } from '../bbm/config.ts';
import { ConfigError } from '../bbm/errors.ts';
import { connectionMasker, createPool } from '../store/db.ts';
import { describeError } from './errors.ts';
import { migrateSchema } from '../store/apply-schema.ts';
import { databaseField, type DatabaseTarget } from '../bbm/databases.ts';
import {
  acrossDatabases,
  commandDatabase,
  commandDatabases,
  databaseFailure,
  NoSuchMigration,
  overDatabases,
} from './targets.ts';
import {
  commandHelp,
  COMMANDS,
  COMMON_FLAGS,
  GLOBAL_FLAGS,
  HELP,
  helpHint,
  parseCommandLine,
  UsageError,
  type Flag,
  type Flags,
} from './args.ts';
import { toJson } from './format.ts';
import { schedules, status } from './status-commands.ts';
import { dashboard, finalize, run } from './run-commands.ts';
import { verify } from './verify-command.ts';
import { approve, deleteCommand, enqueue, enqueueSql, pauseOrResume, retry, setPace } from './change-commands.ts';
import { rehearse } from './rehearse-command.ts';

export { describeError, UsageError };
export type { Io };

const processIo: Io = {
  out: (text) => process.stdout.write(`${text}\n`),
  err: (text) => process.stderr.write(`${text}\n`),
  env: process.env,
  tty: Boolean(process.stdout.isTTY),
};

export async function main(argv: string[], io: Io = processIo): Promise<number> {
  let command: string | undefined;
  let flags: Flags;
  try {
    ({ command, flags } = parseCommandLine(argv));
  } catch (error) {
    io.err((error as Error).message);
    return 2;
  }
  if (flags.version) {
    io.out(`pg-bbm ${packageVersion()}`);
    return 0;
  }
  if (command === undefined || command === 'help') {
    io.out(HELP);
    return command === undefined && !flags.help ? 2 : 0;
  }
  const allowed = COMMANDS[command]?.flags;
  if (!allowed) {
    io.err(`bbm: unknown command ${JSON.stringify(command)}\n\n${helpHint()}`);
    return 2;
  }
  if (flags.help) {
    io.out(commandHelp(command));
    return 0;
  }
  const extra = (Object.keys(flags) as Flag[]).find(
    (f) => !allowed.includes(f) && !COMMON_FLAGS.includes(f) && !GLOBAL_FLAGS.includes(f),
  );
  if (extra) {
    io.err(`bbm ${command}: --${extra} is not an option of this command\n\n${helpHint(command)}`);
    return 2;
  }

  let mask = (text: string) => text;
  const pools = new Map<string, pg.Pool>();
  try {
    const configFile = flags.config ?? findDefaultConfig();
    const config = configFile ? await loadConfig(configFile) : undefined;
    if (command === 'enqueue' && flags['dry-run']) return enqueueSql({ flags, config, io });
    const databases = commandDatabases(
      flags,
      config,
      () => io.env.DATABASE_URL || config?.databaseUrl || libpqUrl(io.env),
    );
    mask = connectionMasker(databases.map((target) => target.url));
    const poolOf = (target: DatabaseTarget): pg.Pool => {
      let pool = pools.get(target.url);
      if (!pool) {
        pool = createPool({ connectionString: target.url, max: 4, applicationName: `bbm ${command}` });
        pools.set(target.url, pool);
      }
      return pool;
    };
    const chosen = acrossDatabases(command, flags)
      ? { target: databases[0]!, flags }
      : await commandDatabase(command, flags, databases, poolOf);
    const context: Context = {
      command,
      flags: chosen.flags,
      io,
      config,
      pool: poolOf(chosen.target),
      databaseUrl: chosen.target.url,
      database: chosen.target.name,
      databases,
      poolOf,
      mask,
      print: (data, text) => io.out(flags.json ? toJson(data) : text()),
    };
    switch (command) {
      case 'run':
        return await run(context);
      case 'finalize':
        return await finalize(context);
      case 'verify':
        return await verify(context);
      case 'status':
        return await status(context);
      case 'schedules':
        return await schedules(context);
      case 'enqueue':
        return await enqueue(context);
      case 'rehearse':
        return await rehearse(context);
      case 'pause':
      case 'resume':
        return await pauseOrResume(context, command);
      case 'retry':
        return await retry(context);
      case 'approve':
        return await approve(context);
      case 'set':
        return await setPace(context);
      case 'delete':
        return await deleteCommand(context);
      case 'dashboard':
        return await dashboard(context);
      case 'migrate':
        return await migrate(context);
    }
    return 2;
  } catch (error) {
    io.err(
      mask(
        error instanceof NoSuchMigration
          ? `bbm ${command}: ${error.message}`
          : `bbm ${command}: ${describeError(error)}`,
      ),
    );
    return error instanceof UsageError || error instanceof ConfigError ? 2 : 1;
  } finally {
    await Promise.all([...pools.values()].map((pool) => pool.end()));
  }
}

/**
 * `bbm migrate`: pg-bbm's schema in each database; one that fails is reported (in the JSON too,
 * with its error) and the others are still migrated.
 */
async function migrate(context: Context): Promise<number> {
  const { databases, io } = context;
  const prefix = (target: DatabaseTarget) => (target.name === undefined ? '' : `${target.name}: `);
  const outcomes = await overDatabases(context, async (pool, target) => {
    const migrated = await migrateSchema(pool);
    const { functions, citus } = migrated;
    if (citus?.twoPhaseCommit === false) {
      io.err(
        `bbm migrate: ${prefix(target)}Citus: jobs whose work writes one shard will commit in one phase: ${citus.reason}`,
      );
    }
    if (functions.outcome === 'newer') {
      io.err(
        `bbm migrate: ${prefix(target)}the database has the functions of pg-bbm ${functions.installedVersion}, newer than this pg-bbm ${functions.version}: left in place`,
      );
    }
    return migrated;
  });
  const results = outcomes.map(({ source, value, error }) =>
    value ? { ...databaseField(source.name), applied: value.applied } : databaseFailure(context, source, error),
  );
  const lines = outcomes.flatMap(({ source, value }) => {
    if (!value) return [];
    const { applied, functions } = value;
    const done = [];
    if (applied.length > 0)
      done.push(`applied ${applied.length} migration(s) of pg-bbm's schema: ${applied.join(', ')}`);
    if (functions.outcome === 'installed') done.push(`installed the database functions of pg-bbm ${functions.version}`);
    return (done.length === 0 ? ['pg-bbm schema is up to date; nothing to apply'] : done).map(
      (line) => prefix(source) + line,
    );
  });
  context.print(databases.length === 1 ? results[0] : results, () => lines.join('\n'));
  return outcomes.some((outcome) => outcome.error !== undefined) ? 1 : 0;
}

/** The installed package's version (package.json sits two levels up from src/cli and dist/cli alike). */
function packageVersion(): string {
  return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string })
    .version;
}

/**
 * libpq's environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE) as a URL, when
 * no URL is given and any of them is set, so `bbm` connects where `psql` would. A PGHOST that is
 * a directory is a Unix socket.
 */
function libpqUrl(env: NodeJS.ProcessEnv): string | undefined {
  const { PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE } = env;
  if (!PGHOST && !PGPORT && !PGUSER && !PGPASSWORD && !PGDATABASE) return undefined;
  // Several hosts (PGHOST=db1,db2, PGPORT=5432,5433) have no single-host URL: libpq's keyword form.
  if (PGHOST?.includes(',') || PGPORT?.includes(',')) {
    const quote = (value: string) => `'${value.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
    const words = Object.entries({
      host: PGHOST,
      port: PGPORT,
      user: PGUSER,
      password: PGPASSWORD,
      dbname: PGDATABASE || PGUSER,
      sslmode: PGSSLMODE,
    }).flatMap(([key, value]) => (value ? [`${key}=${quote(value)}`] : []));
    return words.join(' ');
  }
  const url = new URL('postgres://localhost');
  const socket = PGHOST?.startsWith('/');
  if (PGHOST && !socket) url.hostname = PGHOST;
  if (PGPORT) url.port = PGPORT;
  if (PGUSER) url.username = encodeURIComponent(PGUSER);
  if (PGPASSWORD) url.password = encodeURIComponent(PGPASSWORD);
  url.pathname = `/${encodeURIComponent(PGDATABASE || PGUSER || '')}`;
  if (socket && PGHOST) url.searchParams.set('host', PGHOST);
  if (PGSSLMODE) url.searchParams.set('sslmode', PGSSLMODE);
  return url.toString();
}
