/**
 * The databases one fleet serves: `databases` in the config names each (`{ main: url, ci: url }`),
 * and a migration is addressed as `database/name`. Nothing crosses a database: each keeps its own
 * tables, locks, jobs and workers, and each database's worker in a process is a `Worker` of its own.
 */
import { ConfigError } from './errors.ts';
import type { MigrationReport } from './types.ts';

/** A database the fleet serves. `name` is undefined for the one database of a config without `databases`. */
export interface DatabaseTarget {
  readonly name: string | undefined;
  readonly url: string;
}

/** A database's name: a label in metrics and logs and the prefix of `database/name`. */
const NAME = /^[a-z][a-z0-9_-]{0,62}$/;

/**
 * `databases` from the config, checked. A URL that is not a non-empty string (an environment
 * variable that is not set) is refused naming the database, never showing a URL.
 */
export function resolveDatabases(databases: unknown): DatabaseTarget[] {
  if (!databases || typeof databases !== 'object' || Array.isArray(databases)) {
    throw new ConfigError("databases must be an object of database names and URLs: { main: 'postgres://…' }");
  }
  const entries = Object.entries(databases as Record<string, unknown>);
  if (entries.length === 0) throw new ConfigError('databases names no database');
  return entries.map(([name, url]) => {
    if (!NAME.test(name)) {
      throw new ConfigError(
        `databases: ${JSON.stringify(name)} is not a database name (lowercase letters, digits, _ and -, starting with a letter, up to 63)`,
      );
    }
    if (typeof url !== 'string' || url.trim() === '') {
      throw new ConfigError(`databases.${name} has no URL (is the environment variable it reads set?)`);
    }
    return { name, url };
  });
}

/** The databases named by `--database` (all when it is not given); an unknown name is refused. */
export function selectDatabases(targets: readonly DatabaseTarget[], only: string | undefined): DatabaseTarget[] {
  if (only === undefined) return [...targets];
  const found = targets.find((target) => target.name === only);
  if (!found) {
    const known = targets.flatMap((target) => (target.name === undefined ? [] : [target.name]));
    throw new ConfigError(
      known.length === 0
        ? `--database ${only}: the config names no databases (add \`databases\` to it)`
        : `--database ${only}: no such database; the config names ${known.join(', ')}`,
    );
  }
  return [found];
}

/** A migration's address: `database/name`, or a plain name that must be found. */
export interface MigrationAddress {
  database: string | undefined;
  name: string;
}

/**
 * Splits `database/name` at its first `/` when what comes before it names a database of the
 * fleet; anything else is a plain name (a migration's name may itself hold a `/`).
 */
export function parseAddress(text: string, targets: readonly DatabaseTarget[]): MigrationAddress {
  const slash = text.indexOf('/');
  if (slash > 0) {
    const database = text.slice(0, slash);
    if (targets.some((target) => target.name === database)) return { database, name: text.slice(slash + 1) };
  }
  return { database: undefined, name: text };
}

/** How a migration is shown: `database/name` in a fleet of several databases, else its name. */
export function addressText(database: string | undefined, name: string): string {
  return database === undefined ? name : `${database}/${name}`;
}

/** A migration's `database` in JSON, beside its `database/name`: set in a fleet of several databases only. */
export function databaseField(database: string | undefined): { database?: string } {
  return database === undefined ? {} : { database };
}

/** A migration's report as shown: named `database/name`, with its `database`, in a fleet of several databases. */
export function shownReport(database: string | undefined, report: MigrationReport): MigrationReport {
  return { ...report, name: addressText(database, report.name), ...databaseField(database) };
}

/**
 * The databases a reader is given as `db` (one, unnamed) or `databases` (a fleet's, by name), as
 * one list.
 */
export function databaseList<D>({
  db,
  databases,
}: {
  db?: D | undefined;
  databases?: ReadonlyMap<string, D> | undefined;
}): {
  name: string | undefined;
  db: D;
}[] {
  if (databases) return [...databases].map(([name, pool]) => ({ name, db: pool }));
  return db === undefined ? [] : [{ name: undefined, db }];
}

/** What one database gave a read of several: its value, or the error it met. */
export type SettledRead<S, T> =
  { source: S; value: T; error?: undefined } | { source: S; value?: undefined; error: Error };

/**
 * `read` on each database at once: one that fails, or does not answer within `timeoutMs` (its
 * query goes on), is returned with its error, and the others are still read.
 */
export async function readEachDatabase<S, T>(
  sources: readonly S[],
  read: (source: S) => Promise<T>,
  timeoutMs?: number,
): Promise<SettledRead<S, T>[]> {
  return await Promise.all(
    sources.map(async (source): Promise<SettledRead<S, T>> => {
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<never>((_, reject) => {
        if (timeoutMs !== undefined)
          timer = setTimeout(() => reject(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        return { source, value: await Promise.race([read(source), timedOut]) };
      } catch (error) {
        return { source, error: error instanceof Error ? error : new Error(String(error)) };
      } finally {
        clearTimeout(timer);
      }
    }),
  );
}
