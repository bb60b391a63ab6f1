/** Errors as `bbm` prints them. */
import { SqlState, sqlStateOf, statementLabel } from '../store/db.ts';

/**
 * An error as the user reads it. A database error shows the database's own message and SQLSTATE,
 * and the statement that raised it (its text, never its values): drizzle's DrizzleQueryError
 * says only "Failed query: …" and keeps the database's error as its `cause`.
 */
export function describeError(error: unknown): string {
  if (!(error instanceof Error)) return String(error);
  const wrapped = isDrizzleQueryError(error) && isDatabaseError(error.cause);
  const database = wrapped ? (error.cause as Error) : error;
  const state = sqlStateOf(database);
  if (state === undefined || !isDatabaseError(database)) return error.message;
  // pg-bbm's tables are missing: the database was never migrated.
  const hint =
    state === SqlState.undefinedTable && /batched_background_migration|registry\./.test(database.message)
      ? ' (run `bbm migrate` first)'
      : '';
  const statement = wrapped
    ? statementLabel((error as Error & { query: string }).query)
    : (database as Error & { statement?: unknown }).statement;
  // A connection or login failure comes from no statement, whatever was about to run: classes 08
  // and 28, no such database (3D000), a server starting or stopping (57P03), no free connection (53300).
  const fromStatement = !/^(08|28)/.test(state) && !['3D000', '57P03', '53300'].includes(state);
  const where = fromStatement && typeof statement === 'string' && statement ? ` in: ${statement}` : '';
  return `${database.message}${hint} (SQLSTATE ${state})${where}`;
}

/** An error the server sent (pg's DatabaseError, by shape): a SQLSTATE and a severity; not a Node error like EPERM. */
function isDatabaseError(error: unknown): error is Error {
  return error instanceof Error && sqlStateOf(error) !== undefined && 'severity' in error;
}

/** drizzle's DrizzleQueryError (by shape: the caller's drizzle may be another copy than ours). */
function isDrizzleQueryError(error: Error): error is Error & { query: string; cause: unknown } {
  return 'query' in error && typeof error.query === 'string' && error.message.startsWith('Failed query:');
}
