/** A run's log line: one for each run a worker makes, at a level its outcome decides. */
import { CORRELATION_ID, jobFields, migrationFields, type Logger } from './log.ts';
import type { RunResult } from './types.ts';

export function reportRun(log: Logger, result: RunResult): void {
  const [level, message] = reportLine(result);
  // Built only when written: a job's fields cost its lane ~20 µs of client CPU (measured), and
  // the library's default logger (warn) writes no line for a job that succeeded.
  if (!log.isLevelEnabled(level)) return;
  const fields = {
    [CORRELATION_ID]: result.runId,
    outcome: result.outcome,
    duration_ms: Math.round(result.durationMs * 10) / 10,
    ...(result.migration && migrationFields(result.migration)),
    ...(result.job && {
      ...jobFields(result.job),
      batch_size: result.job.batchSize,
      ...(result.job.split && { split: true }),
    }),
    ...(result.job?.rows !== undefined && { rows: result.job.rows }),
    ...(result.errorCode && { error_code: result.errorCode }),
    ...(result.heldForMs !== undefined && { held_for_ms: Math.round(result.heldForMs) }),
    ...(result.error && { err: result.error }),
  };
  log[level](fields, message);
}

/** The level and message of a run's log line. */
function reportLine(result: RunResult): ['debug' | 'info' | 'warn' | 'error', string] {
  switch (result.outcome) {
    case 'job_succeeded':
      return ['info', 'job finished'];
    case 'job_failed':
      return ['warn', 'job failed'];
    case 'range_verified':
      return result.verified?.found
        ? ['warn', 'range verified: rows written after it ran failed the check, and the work ran again on it']
        : ['info', 'range verified'];
    case 'migration_started':
      return ['info', 'migration started'];
    case 'migration_finished':
      return ['info', 'migration finished'];
    case 'migration_failed':
      return ['error', 'migration failed'];
    case 'aborted':
      return ['warn', 'run aborted and rolled back'];
    case 'throttled':
      return ['info', 'throttled: holding back'];
    case 'error':
      return [
        'error',
        result.heldForMs === undefined ? 'run failed' : 'run failed; its migration is set aside meanwhile',
      ];
    case 'no_job':
    case 'lock_in_use':
      return ['debug', 'nothing to do'];
  }
}
