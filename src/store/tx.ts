/**
 * Transactions outside a run: `atomically` (enqueueing, deleting, scheduling), savepoints for
 * catalog lookups, and the guard against transaction control inside a work function. A run's
 * transaction has its own owner, run-transaction.ts.
 */
import type pg from 'pg';
import { SqlState, sqlStateOf, type Queryable } from './db.ts';

/** A plain transaction (through `atomically`). */
async function begin(db: Queryable): Promise<void> {
  await db.query('BEGIN');
}

async function commit(db: Queryable): Promise<void> {
  await db.query('COMMIT');
}

async function rollback(db: Queryable): Promise<void> {
  await db.query('ROLLBACK');
}

/**
 * Statements that would end or restart the run's transaction from inside a work function.
 * Savepoints (and so drizzle's nested `transaction()`) stay allowed.
 */
const TRANSACTION_CONTROL =
  /^\s*(begin|start\s+transaction|commit|end|abort|prepare\s+transaction|rollback(?!\s+(?:(?:work|transaction)\s+)?to\b))\b/i;

export function isTransactionControl(text: string): boolean {
  return TRANSACTION_CONTROL.test(text);
}

/** Runs `fn` in a savepoint of the open transaction, so an error it raises leaves the transaction usable. */
export async function inSavepoint<T>(db: Queryable, fn: () => Promise<T>): Promise<T> {
  await db.query('SAVEPOINT bbm_step');
  try {
    const result = await fn();
    await db.query('RELEASE SAVEPOINT bbm_step');
    return result;
  } catch (error) {
    await db.query('ROLLBACK TO SAVEPOINT bbm_step');
    throw error;
  }
}

/**
 * Runs `fn` atomically on one connection, whatever the caller holds: a Pool lends a connection
 * for a transaction of its own; a client inside a transaction gets a savepoint, so `fn`'s writes
 * commit or roll back with the caller's transaction and a failure of `fn` leaves that transaction
 * usable; a client outside one gets a transaction of its own.
 */
export async function atomically<T>(db: pg.Pool | pg.ClientBase, fn: (client: Queryable) => Promise<T>): Promise<T> {
  if (isPool(db)) {
    const client = await db.connect();
    try {
      return await inTransaction(client, fn);
    } finally {
      client.release();
    }
  }
  try {
    await db.query('SAVEPOINT bbm_atomically');
  } catch (error) {
    if (sqlStateOf(error) !== SqlState.noActiveTransaction) throw error;
    return await inTransaction(db, fn);
  }
  try {
    const result = await fn(db);
    await db.query('RELEASE SAVEPOINT bbm_atomically');
    return result;
  } catch (error) {
    await db.query('ROLLBACK TO SAVEPOINT bbm_atomically; RELEASE SAVEPOINT bbm_atomically').catch(() => {});
    throw error;
  }
}

async function inTransaction<T>(client: Queryable, fn: (client: Queryable) => Promise<T>): Promise<T> {
  await begin(client);
  try {
    const result = await fn(client);
    await commit(client);
    return result;
  } catch (error) {
    await rollback(client).catch(() => {});
    throw error;
  }
}

/** A pg Pool (duck-typed: the caller's `pg` may be another copy than ours). */
function isPool(db: pg.Pool | pg.ClientBase): db is pg.Pool {
  return 'totalCount' in db && typeof db.connect === 'function';
}
