/**
 * Connections and the one way SQL is run: drizzle `sql` templates rendered to
 * `$n` text and executed on a node-postgres client or pool.
 */
import { createHash } from 'node:crypto';
import pg from 'pg';
import { sql, type SQL } from 'drizzle-orm';
import { PgDialect } from 'drizzle-orm/pg-core';
import { poolTarget, type ClientClass } from './pool-target.ts';
import { maskKeywordPassword, passwordInConnectionString } from './hosts.ts';

/** Anything that runs a parameterised query: a pool, a pooled client, a client. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(config: pg.QueryConfig): Promise<pg.QueryResult<R>>;
}

const dialect = new PgDialect();

/**
 * Statements run as named prepared statements: each connection parses and plans one once, then
 * only binds and executes it. The name is derived from the text, so one text is one statement.
 */
const statementNames = new Map<string, string>();
function statementName(text: string): string {
  let name = statementNames.get(text);
  if (!name) {
    name = `bbm_${createHash('sha1').update(text).digest('hex').slice(0, 20)}`;
    if (statementNames.size > 10_000) statementNames.clear();
    statementNames.set(text, name);
  }
  return name;
}

/**
 * A text value as an SQL expression for statements sent as plain text (the run's multi-statement
 * round trips cannot carry parameters): hex digits only, so it means the same whatever the
 * server's standard_conforming_strings, and no quote or backslash in the value can end it.
 */
export function textLiteral(value: string): string {
  return `convert_from(decode('${Buffer.from(value, 'utf8').toString('hex')}', 'hex'), 'UTF8')`;
}

/** Literal SQL for one of our own integers (ids, bounds, counts): digits only, so safe in text. */
export function integerLiteral(value: bigint | number): string {
  if (typeof value === 'number' && !Number.isSafeInteger(value)) throw new RangeError(`not an integer: ${value}`);
  return String(value);
}

/**
 * Marks an error with the statement that raised it, for logs and error reports (as drizzle's
 * DrizzleQueryError keeps its query): a name, or the statement's text with its `$n`
 * placeholders, never its values. The error itself is kept (its SQLSTATE still decides).
 */
export function withStatement(error: unknown, statement: string): unknown {
  if (error instanceof Error && !('statement' in error)) Object.assign(error, { statement });
  return error;
}

/** The text of a statement as it is named on errors: whitespace collapsed, at most 160 characters. */
function statementLabel(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= 160 ? flat : `${flat.slice(0, 159)}…`;
}

export async function exec<R extends pg.QueryResultRow>(db: Queryable, statement: SQL): Promise<R[]> {
  const { sql: text, params } = dialect.sqlToQuery(statement);
  try {
    const result = await db.query<R>({ name: statementName(text), text, values: params });
    return result.rows;
  } catch (error) {
    throw withStatement(error, statementLabel(text));
  }
}

export async function execOne<R extends pg.QueryResultRow>(db: Queryable, statement: SQL): Promise<R | undefined> {
  const rows = await exec<R>(db, statement);
  return rows[0];
}

export interface PoolOptions {
  connectionString: string;
  /** Upper bound of connections this process opens. */
  max?: number;
  applicationName?: string;
}

export function createPool({ connectionString, max = 4, applicationName = 'pg-bbm' }: PoolOptions): pg.Pool {
  const pool = new pg.Pool({ ...poolTarget(connectionString), max, application_name: applicationName });
  // An idle client whose server went away emits 'error' on the pool; unhandled, that kills the
  // process. The pool drops the client and the next run gets a fresh one, so there is nothing to do.
  pool.on('error', () => {});
  return pool;
}

/**
 * A pool of its own to the same database as `pool`, with the same connection settings: for a part
 * that must never wait for a connection `pool` lends out (a worker's controllers beside its lanes).
 */
export function siblingPool(
  pool: pg.Pool,
  { max, applicationName }: { max: number; applicationName?: string },
): pg.Pool {
  const sibling = new pg.Pool({
    ...pool.options,
    max,
    ...(applicationName !== undefined && { application_name: applicationName }),
  });
  sibling.on('error', () => {});
  return sibling;
}

/** The password in a connection string replaced by `***`, for logs and error messages. */
export function maskConnectionString(connectionString: string): string {
  try {
    const url = new URL(connectionString);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    return maskKeywordPassword(connectionString.replace(/(:\/\/[^:/@]*:)[^@]*@/, '$1***@'));
  }
}

/** The password in a connection string, if it has one. */
export function passwordOf(connectionString: string): string | undefined {
  try {
    return decodeURIComponent(new URL(connectionString).password) || undefined;
  } catch {
    return passwordInConnectionString(connectionString);
  }
}

/** SQLSTATE codes the engine reacts to; anything else is an unexpected error. */
export const SqlState = {
  /** 42P01: the batched table was dropped or renamed after validation. */
  undefinedTable: '42P01',
  /** 42703: the batched column was dropped or renamed after validation. */
  undefinedColumn: '42703',
  /** 57014: statement cancelled (our run timeout, or statement_timeout). */
  queryCanceled: '57014',
  /** 25P02: a statement was sent after an earlier one failed in the same transaction. */
  inFailedTransaction: '25P02',
  /** 23514: a CHECK constraint refused a row. */
  checkViolation: '23514',
  /** 23505: a unique constraint refused a row. */
  uniqueViolation: '23505',
  /** 55P03: lock_timeout, or NOWAIT, found the lock taken. */
  lockNotAvailable: '55P03',
  /** 42501: the role lacks a privilege (health views without pg_monitor). */
  insufficientPrivilege: '42501',
  /** 0A000 and 22023: a name to_regclass refuses outright (cross-database references, …). */
  featureNotSupported: '0A000',
  invalidParameterValue: '22023',
  /** 25P01: SAVEPOINT outside a transaction block. */
  noActiveTransaction: '25P01',
} as const;

export function sqlStateOf(error: unknown): string | undefined {
  if (
    error &&
    typeof error === 'object' &&
    'code' in error &&
    typeof error.code === 'string' &&
    error.code.length === 5
  ) {
    return error.code;
  }
  return undefined;
}

/** Resolves when the database answers a trivial query. */
export async function ping(db: Queryable): Promise<void> {
  await db.query('SELECT 1');
}

/**
 * Cancels the statement a backend is running (a run past its timeout); false when it is gone.
 * It connects on its own rather than through the pool: the pool's connections may all be busy,
 * one of them with the very run being cancelled.
 */
export async function cancelBackend(pool: pg.Pool, pid: number): Promise<boolean> {
  const Client = (pool.options.Client as ClientClass | undefined) ?? pg.Client;
  const client = new Client({ ...pool.options, connectionTimeoutMillis: 10_000 });
  client.on('error', () => {});
  try {
    await client.connect();
    const row = await execOne<{ cancelled: boolean }>(
      client,
      sql`SELECT pg_catalog.pg_cancel_backend(${pid}) AS cancelled`,
    );
    return row?.cancelled ?? false;
  } finally {
    await client.end().catch(() => {});
  }
}
