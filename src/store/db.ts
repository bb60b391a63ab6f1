/**
 * Connections and the one way SQL is run: drizzle `sql` templates rendered to
 * `$n` text and executed on a node-postgres client or pool.
 *
 * Everything here works through a pooler in transaction mode (PgBouncer, Supavisor, RDS Proxy),
 * where consecutive transactions of one client may run on different server connections: nothing
 * is left on a session for a later transaction to find. Statements are unnamed (parsed at each
 * execution; a named prepared statement lives on the server connection that parsed it, and
 * another client that lands there cannot prepare its own of that name), and locks and settings
 * are transaction-scoped.
 */
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import type { SQL } from 'drizzle-orm';
import { PgDialect } from 'drizzle-orm/pg-core';
import { poolTarget } from './pool-target.ts';
import { maskKeywordPassword, passwordInConnectionString } from './hosts.ts';

/** Anything that runs a parameterised query: a pool, a pooled client, a client. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(config: pg.QueryConfig): Promise<pg.QueryResult<R>>;
}

const dialect = new PgDialect();

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
export function statementLabel(text: string): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= 160 ? flat : `${flat.slice(0, 159)}…`;
}

export async function exec<R extends pg.QueryResultRow>(db: Queryable, statement: SQL): Promise<R[]> {
  const { sql: text, params } = dialect.sqlToQuery(statement);
  try {
    const result = await db.query<R>({ text, values: params });
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

/**
 * How long opening a connection may take, and when TCP keepalives begin: a server that vanished
 * without a reset (a cloud failover, a partition) would otherwise hold a connect for the kernel's
 * SYN retries (about 2 min) and a statement in flight for its retransmissions (about 15 min).
 */
const CONNECT_TIMEOUT_MS = 15_000;
const KEEPALIVE_DELAY_MS = 10_000;

export function createPool({ connectionString, max = 4, applicationName = 'pg-bbm' }: PoolOptions): pg.Pool {
  const pool = new pg.Pool({
    ...poolTarget(connectionString),
    max,
    application_name: applicationName,
    connectionTimeoutMillis: CONNECT_TIMEOUT_MS,
    keepAlive: true,
    keepAliveInitialDelayMillis: KEEPALIVE_DELAY_MS,
  });
  return quietOnLostConnections(pool);
}

/**
 * A client whose server went away emits 'error': on the pool when idle, on the client when checked
 * out. Unheard, either is an uncaught exception that ends the process. The failure also reaches
 * the query in flight (or the next one), and the pool drops the client, so the events need no
 * more than a listener.
 */
function quietOnLostConnections(pool: pg.Pool): pg.Pool {
  pool.on('error', () => {});
  pool.on('connect', (client) => client.on('error', () => {}));
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
    // pg-pool keeps the password off the enumerable options (so that logging them shows none).
    password: pool.options.password,
    max,
    ...(applicationName !== undefined && { application_name: applicationName }),
  });
  return quietOnLostConnections(sibling);
}

/** The password in a connection string replaced by `***`, for logs and error messages. */
export function maskConnectionString(connectionString: string): string {
  try {
    const url = new URL(connectionString);
    if (url.password) url.password = '***';
    return url.toString();
  } catch {
    // Up to the authority's last '@': a password may hold an unencoded one.
    return maskKeywordPassword(connectionString.replace(/(:\/\/[^:/@]*:)[^/]*@/, '$1***@'));
  }
}

/**
 * Text with each connection string replaced by its masked form and each one's password (of 3
 * characters or more) by `***` wherever else it appears, escaped in JSON too: what every message,
 * log line, JSON output and page that may carry a database's error shows.
 */
export function connectionMasker(connectionStrings: readonly string[]): (text: string) => string {
  const each = connectionStrings.map((connectionString) => {
    const masked = maskConnectionString(connectionString);
    const password = passwordOf(connectionString);
    return (text: string) => {
      let out = text.split(connectionString).join(masked);
      if (password && password.length >= 3) {
        out = out.split(password).join('***');
        // As a JSON string (a log line) writes it, when that differs.
        const escaped = JSON.stringify(password).slice(1, -1);
        if (escaped !== password) out = out.split(escaped).join('***');
      }
      return out;
    };
  });
  return (text) => each.reduce((out, mask) => mask(out), text);
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
  /** 0A000, 22023, 42601, 42602, 3F000: a name to_regclass refuses outright (cross-database references, …). */
  featureNotSupported: '0A000',
  invalidParameterValue: '22023',
  syntaxError: '42601',
  invalidName: '42602',
  invalidSchemaName: '3F000',
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

/** The CancelRequest code of the wire protocol (1234 << 16 | 5678). */
const CANCEL_REQUEST_CODE = 80877102;
/** How long a cancel waits for the server to take it. */
const CANCEL_TIMEOUT_MS = 10_000;

/**
 * Cancels the statement a client is running (a run past its timeout, a hard stop) with the wire
 * protocol's CancelRequest, on a connection of its own (the pool's may all be busy, one of them
 * with the very run being cancelled): the client's backend key, sent where the client connected.
 * Through a pooler that key is the pooler's, which forwards the cancel to the server connection
 * running the client's statement; a backend pid (pg_cancel_backend) would name a process the
 * pooler made up. Resolves true once the server has taken the cancel and closed the connection
 * (the signal is sent by then), false when it could not be sent.
 */
export function cancelQuery(client: pg.ClientBase): Promise<boolean> {
  const { processID, secretKey, host, port } = client as unknown as {
    processID?: number;
    secretKey?: number;
    host?: string;
    port?: number;
  };
  if (processID == null || secretKey == null || !host || !port) return Promise.resolve(false);
  return new Promise((resolve) => {
    const socket = host.startsWith('/') ? net.connect(path.join(host, `.s.PGSQL.${port}`)) : net.connect(port, host);
    let sent = false;
    const timer = setTimeout(() => socket.destroy(), CANCEL_TIMEOUT_MS);
    socket.on('connect', () => {
      const request = Buffer.alloc(16);
      request.writeInt32BE(16, 0);
      request.writeInt32BE(CANCEL_REQUEST_CODE, 4);
      request.writeInt32BE(processID, 8);
      request.writeInt32BE(secretKey, 12);
      socket.write(request, () => (sent = true));
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(sent);
    });
    socket.resume();
  });
}
