/**
 * Which database a command works on. Without `databases` in the config there is one (the
 * `--database-url`, DATABASE_URL, `databaseUrl`, libpq chain). With it, `run`, `migrate`,
 * `dashboard`, `schedules` and `status` (without `--name`) work on all of them (or the one `--database`
 * names); every other command on one: the database of `--name DATABASE/NAME`, of `--database`, or
 * the one database that has a migration of that plain name (several: refused, listing them).
 */
import {
  resolveDatabases,
  selectDatabases,
  parseAddress,
  addressText,
  readEachDatabase,
  databaseField,
  type DatabaseTarget,
  type SettledRead,
} from '../bbm/databases.ts';
import { ConfigError } from '../bbm/errors.ts';
import type { Config } from '../bbm/types.ts';
import type pg from 'pg';
import { migrationExists } from '../store/migration-rows.ts';
import { UsageError, type Flags } from './args.ts';
import type { Context } from './context.ts';
import { describeError } from './errors.ts';

/** The databases the command line and config name, `--database` applied. */
export function commandDatabases(
  flags: Flags,
  config: Config | undefined,
  fallbackUrl: () => string | undefined,
): DatabaseTarget[] {
  const flagUrl = flags['database-url'];
  if (flagUrl) {
    if (flags.database !== undefined)
      throw new UsageError(
        "--database picks one of the config's databases; --database-url gives one: pass one of them",
      );
    return [{ name: undefined, url: flagUrl }];
  }
  if (config?.databases !== undefined) {
    if (config.databaseUrl !== undefined)
      throw new ConfigError('the config sets both databaseUrl and databases: keep one');
    const all = resolveDatabases(config.databases);
    const selected = selectDatabases(all, flags.database);
    // Read against every database, not the one selected: `ci/x` with --database main is a
    // contradiction to refuse, not a migration of main named `ci/x`.
    const address = flags.name === undefined ? undefined : parseAddress(flags.name, all);
    if (address?.database !== undefined && flags.database !== undefined && address.database !== flags.database) {
      throw new UsageError(
        `--name ${flags.name} is a migration of database ${address.database}, but --database says ${flags.database}: pass one of them`,
      );
    }
    return selected;
  }
  const url = fallbackUrl();
  if (!url) {
    throw new UsageError(
      'no database: set DATABASE_URL (or PGHOST, PGDATABASE, …) or pass --database-url postgres://user:password@host:5432/database',
    );
  }
  return selectDatabases([{ name: undefined, url }], flags.database);
}

/** Whether the command works on every database of the fleet (else on one). */
export function acrossDatabases(command: string, flags: Flags): boolean {
  return (
    ['run', 'migrate', 'dashboard', 'schedules'].includes(command) ||
    (['status', 'pause', 'resume'].includes(command) && flags.name === undefined)
  );
}

/** Whether the command names a migration that need not exist yet (so it is not looked for). */
function namesNewMigration(command: string, flags: Flags): boolean {
  return command === 'enqueue' || (command === 'rehearse' && flags.work !== undefined);
}

/**
 * The one database of a command, and its flags with `--name` reduced to the migration's own name.
 * A plain name is looked up on the command's pools (`poolOf`) of each database.
 */
export async function commandDatabase(
  command: string,
  flags: Flags,
  targets: readonly DatabaseTarget[],
  poolOf: (target: DatabaseTarget) => pg.Pool,
): Promise<{ target: DatabaseTarget; flags: Flags }> {
  const names = targets.map((target) => target.name ?? '').join(', ');
  const address = flags.name === undefined ? undefined : parseAddress(flags.name, targets);
  const withName = (target: DatabaseTarget) => ({
    target,
    flags: address ? { ...flags, name: address.name } : flags,
  });
  if (address?.database !== undefined) return withName(targets.find((target) => target.name === address.database)!);
  if (targets.length === 1) return withName(targets[0]!);
  if (address === undefined || namesNewMigration(command, flags)) {
    throw new UsageError(
      `the config names several databases (${names}): pass --database NAME${address ? ' or --name DATABASE/NAME' : ''}`,
    );
  }
  const looked = await Promise.all(
    targets.map(async (target) => {
      try {
        return { target, found: await migrationExists(poolOf(target), address.name) };
      } catch (error) {
        return { target, found: false, error: error as Error };
      }
    }),
  );
  const found = looked.filter((look) => look.found);
  const unreachable = looked.filter((look) => look.error);
  if (found.length > 1) {
    throw new UsageError(
      `${address.name} is in several databases: name one of ${found
        .map((look) => addressText(look.target.name, address.name))
        .join(', ')}`,
    );
  }
  if (unreachable.length > 0) {
    const which = unreachable.map((look) => `${look.target.name ?? ''} (${look.error!.message})`).join(', ');
    throw new UsageError(
      `could not look for ${address.name} in ${which}: name its database, as DATABASE/${address.name}`,
    );
  }
  if (found.length === 0) throw new NoSuchMigration(`no migration named ${JSON.stringify(address.name)} in ${names}`);
  return withName(found[0]!.target);
}

/** A plain name no database of the fleet has (exit 1, as a command that finds no migration). */
export class NoSuchMigration extends Error {
  override readonly name = 'NoSuchMigration';
}

/** A database a command could not work on, as its `--json` lists it: its name and its error, masked. */
export interface DatabaseFailure {
  database?: string;
  error: string;
}

/** How a command shows a database it could not work on: in its JSON, and on stderr. */
export function databaseFailure(context: Pick<Context, 'mask'>, target: DatabaseTarget, error: Error): DatabaseFailure {
  return { ...databaseField(target.name), error: context.mask(describeError(error)) };
}

/** The databases of `reads` that failed, as `--json` lists them. */
export function failedDatabases(
  context: Pick<Context, 'mask'>,
  reads: readonly SettledRead<DatabaseTarget, unknown>[],
): DatabaseFailure[] {
  return reads.flatMap(({ source, error }) => (error ? [databaseFailure(context, source, error)] : []));
}

/**
 * `read` on each of the command's databases at once. With several, one that fails is reported on
 * stderr (unless `report` is false: the command said so already) and the others are still read;
 * with one, its error is the command's.
 */
export async function overDatabases<T>(
  context: Context,
  read: (pool: pg.Pool, target: DatabaseTarget) => Promise<T>,
  { report = true }: { report?: boolean } = {},
): Promise<SettledRead<DatabaseTarget, T>[]> {
  const { databases, poolOf } = context;
  if (databases.length === 1)
    return [{ source: databases[0]!, value: await read(poolOf(databases[0]!), databases[0]!) }];
  const reads = await readEachDatabase(databases, (target) => read(poolOf(target), target));
  if (report) {
    for (const failure of failedDatabases(context, reads))
      context.io.err(`bbm ${context.command}: ${failure.database ?? ''}: ${failure.error}`);
  }
  return reads;
}
