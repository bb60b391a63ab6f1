/**
 * Plain transactions and savepoints, for the CLI's checked writes and catalog lookups. A run's
 * transaction has its own owner: run-transaction.ts.
 */
import type { Queryable } from './db.ts';

/** A plain transaction, for the CLI's checked writes. */
export async function begin(db: Queryable): Promise<void> {
  await db.query('BEGIN');
}

export async function commit(db: Queryable): Promise<void> {
  await db.query('COMMIT');
}

export async function rollback(db: Queryable): Promise<void> {
  await db.query('ROLLBACK');
}

/**
 * Statements that would end or restart the run's transaction from inside a work function.
 * Savepoints (and so drizzle's nested `transaction()`) stay allowed.
 */
const TRANSACTION_CONTROL = /^\s*(begin|start\s+transaction|commit|end|abort|prepare\s+transaction|rollback(?!\s+(?:(?:work|transaction)\s+)?to\b))\b/i;

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
