/**
 * Transaction control for a run. Kept apart from the statements so the run reads as
 * begin, lock, work, commit.
 */
import type { QueryResult, QueryResultRow } from 'pg';
import type { Queryable } from './db.ts';

/** The savepoint every run opens right after its lock; see beginRun. */
const WORK_SAVEPOINT = 'bbm_work';

/**
 * The text that starts a run in one round trip: it opens the run's transaction, sets its
 * backstops, runs `lockStatement` (which takes the advisory lock of the migration the run will
 * work on) and opens the work savepoint after it.
 *
 * The savepoint must follow the lock: rolling back to a savepoint releases advisory locks taken
 * after it. Everything else the run does happens inside it, so undoing a failed work function is
 * one ROLLBACK TO, after which the run records the failure (see recordFailedAttempt).
 *
 * The settings are server-side backstops for the client's own run timeout, so that no run holds
 * a migration's lock for long after its worker is gone: a statement that outlives the run is
 * cancelled, a worker that stalls while idle in the transaction is disconnected, and a worker
 * killed mid-statement is noticed within a second (client_connection_check_interval, PostgreSQL
 * 14+) instead of when the statement ends.
 */
export function runPrologue(backstopMs: number, lockStatement: string): string {
  if (!Number.isSafeInteger(backstopMs) || backstopMs <= 0) throw new RangeError(`bad timeout ${backstopMs}`);
  return (
    `BEGIN; SET LOCAL statement_timeout = ${backstopMs}; SET LOCAL idle_in_transaction_session_timeout = ${backstopMs};` +
    ` SET LOCAL client_connection_check_interval = 1000; ${lockStatement}; SAVEPOINT ${WORK_SAVEPOINT}`
  );
}

/** Sends a run prologue and returns the rows of its lock statement. */
export async function beginRun<R extends QueryResultRow>(db: Queryable, prologue: string): Promise<R[]> {
  return lockRowsOf<R>(await db.query(prologue));
}

/** The lock statement's rows among the results of a multi-statement query that ends with a prologue. */
export function lockRowsOf<R extends QueryResultRow>(results: unknown): R[] {
  const locked = (results as QueryResult<R>[]).findLast((result) => result.command === 'SELECT');
  if (!locked) throw new Error('the run prologue returned no SELECT result');
  return locked.rows;
}

/** A plain transaction, for the CLI's checked writes (a run starts with beginRun). */
export async function begin(db: Queryable): Promise<void> {
  await db.query('BEGIN');
}

export async function commit(db: Queryable): Promise<void> {
  await db.query('COMMIT');
}

export async function rollback(db: Queryable): Promise<void> {
  await db.query('ROLLBACK');
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
