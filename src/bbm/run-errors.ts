/**
 * A run that failed for a reason that is not its work function's, on a migration it had taken,
 * sets that migration aside for a while (so the next take finds the others), and the
 * `maxRunErrors`-th in a row fails it with run_error. Transient trouble (the connection, the
 * server restarting, a lock or statement timeout, a serialization failure) is not its fault
 * and is not counted.
 */
import type pg from 'pg';
import { holdAfterRunError } from '../store/migration-rows.ts';
import type { ResolvedOptions } from './config.ts';
import { BbmError, storedMessage } from './errors.ts';
import type { MigrationRef } from './job.ts';
import type { RunResult } from './types.ts';
import { isTransient } from './transient.ts';

export async function afterRunError(
  { pool, options }: { pool: pg.Pool; options: ResolvedOptions },
  error: Error,
  migration: MigrationRef | undefined,
  forget: (id: bigint) => void,
): Promise<Omit<RunResult, 'durationMs' | 'runId'>> {
  if (!migration || isTransient(error)) return { outcome: 'error', error, ...(migration && { migration }) };
  const { runErrorHoldMs, maxRunErrors, maxIntervalMs } = options;
  const reason = `run error: ${storedMessage(error, 500)}`;
  // One text for the row, the logs and the error report.
  const failureMessage = `${maxRunErrors} runs in a row failed; last error: ${reason}`;
  let hold;
  try {
    hold = await holdAfterRunError(pool, migration.id, {
      reason,
      failureMessage,
      holdMs: runErrorHoldMs,
      maxHoldMs: Math.max(runErrorHoldMs, maxIntervalMs),
      maxErrors: maxRunErrors,
    });
  } catch {
    return { outcome: 'error', error, migration };
  }
  if (hold?.failed) {
    forget(migration.id);
    const failure = new BbmError('run_error', failureMessage, { cause: error });
    return { outcome: 'migration_failed', migration, error: failure, errorCode: 'run_error' };
  }
  return { outcome: 'error', error, migration, ...(hold && { heldForMs: hold.heldForMs }) };
}
