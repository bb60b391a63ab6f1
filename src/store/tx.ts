/**
 * Transaction control for a run. Kept apart from the statements so the run reads as
 * begin, lock, work, commit.
 */
import type { Queryable } from './db.ts';

/**
 * Opens the run's transaction in one round trip. The settings are server-side backstops for the
 * client's own run timeout, so that no run can hold a migration's lock for long after its worker
 * is gone: a statement that outlives the run is cancelled, a worker that stalls while idle in the
 * transaction is disconnected, and a worker killed mid-statement is noticed within a second
 * (client_connection_check_interval, PostgreSQL 14+) instead of when the statement ends.
 */
export async function beginRun(db: Queryable, backstopMs: number): Promise<void> {
  if (!Number.isSafeInteger(backstopMs) || backstopMs <= 0) throw new RangeError(`bad timeout ${backstopMs}`);
  await db.query(
    `BEGIN; SET LOCAL statement_timeout = ${backstopMs}; SET LOCAL idle_in_transaction_session_timeout = ${backstopMs};` +
      ` SET LOCAL client_connection_check_interval = 1000`,
  );
}

export async function commit(db: Queryable): Promise<void> {
  await db.query('COMMIT');
}

export async function rollback(db: Queryable): Promise<void> {
  await db.query('ROLLBACK');
}

/** The savepoint around a work function: its writes can be undone while the job's record stays. */
const WORK_SAVEPOINT = 'bbm_work';

export async function openWorkSavepoint(db: Queryable): Promise<void> {
  await db.query(`SAVEPOINT ${WORK_SAVEPOINT}`);
}

export async function rollbackWorkSavepoint(db: Queryable): Promise<void> {
  await db.query(`ROLLBACK TO SAVEPOINT ${WORK_SAVEPOINT}`);
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
