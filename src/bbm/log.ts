/** pino, configured once: JSON lines (what log pipelines want), or pretty lines for people. */
import { pino, type Logger, type LevelWithSilent } from 'pino';
import pretty from 'pino-pretty';

export type { Logger };

export const LOG_LEVELS: readonly LevelWithSilent[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];
export type LogFormat = 'json' | 'pretty';

export interface LoggerOptions {
  /** Default: BBM_LOG_LEVEL, else info. */
  level?: LevelWithSilent;
  /** Default: BBM_LOG_FORMAT, else pretty when the destination is a terminal and JSON otherwise. */
  format?: LogFormat;
  /** 1 (stdout, the default), 2 (stderr: for commands whose stdout is their result), or a stream (pretty only). */
  destination?: 1 | 2 | NodeJS.WritableStream;
  /**
   * Pretty lines of one line each, for a person at a terminal (`bbm run`'s live display): the
   * message, the migration, the job's range and the error's message; no fields, no stacks.
   */
  terse?: boolean;
  /**
   * Applied to every line before it is written (e.g. the CLI's `connectionMasker`): a database's
   * error may quote its password (the server's "database "…" does not exist" does, when it is one).
   */
  mask?: (line: string) => string;
}

const TERSE_LINE =
  '{msg}{if bbm_name}: {bbm_name}{end}{if job_start} [{job_start}..{job_end}] attempt {attempt}{end}{if err.message}: {err.message}{end}';

export function createLogger({ level, format, destination = 1, terse = false, mask }: LoggerOptions = {}): Logger {
  const tty =
    typeof destination === 'number' ? Boolean((destination === 1 ? process.stdout : process.stderr).isTTY) : true;
  const resolvedLevel = level ?? ((process.env.BBM_LOG_LEVEL || undefined) as LevelWithSilent | undefined) ?? 'info';
  const resolvedFormat =
    format ?? ((process.env.BBM_LOG_FORMAT || undefined) as LogFormat | undefined) ?? (tty ? 'pretty' : 'json');
  const options = {
    level: resolvedLevel,
    base: { component: 'pg-bbm' },
    ...(mask && { hooks: { streamWrite: mask } }),
  };
  if (resolvedFormat === 'pretty') {
    const terseness = terse && { hideObject: true, messageFormat: TERSE_LINE, translateTime: 'HH:MM:ss' };
    return pino(
      options,
      pretty({ colorize: tty, sync: true, destination, ignore: 'component,worker_pid', ...terseness }),
    );
  }
  return pino(
    options,
    typeof destination === 'number' ? pino.destination({ dest: destination, sync: true }) : destination,
  );
}

/**
 * The logger of a Worker or finalizeMigration given none: warnings and errors only, as JSON lines
 * on stderr, so an embedding application's stdout stays its own and a failing job is still seen.
 * Pass `logger` (any pino logger, e.g. `createLogger()` or `pino({ level: 'silent' })`) to change it.
 */
export function defaultLibraryLogger(): Logger {
  return createLogger({ level: 'warn', format: 'json', destination: 2 });
}

/**
 * The field names of log lines and error reports, spelled once (as the registry's bbm.go keeps
 * its log keys together): the run's correlation id, the migration's and the job's fields.
 */
export const CORRELATION_ID = 'correlation_id';

export function migrationFields(migration: { id: bigint; name: string; work?: string }): {
  bbm_id: string;
  bbm_name: string;
  work?: string;
} {
  return {
    bbm_id: String(migration.id),
    bbm_name: migration.name,
    ...(migration.work !== undefined && { work: migration.work }),
  };
}

export function jobFields(job: {
  id: bigint;
  start: bigint;
  end: bigint;
  startKey?: readonly string[] | null | undefined;
  endKey?: readonly string[] | null | undefined;
  attempt: number;
  lane?: number;
}): {
  job_id: string;
  job_start: string;
  job_end: string;
  attempt: number;
  lane?: number;
} {
  return {
    job_id: String(job.id),
    job_start: boundText(job.start, job.startKey),
    job_end: boundText(job.end, job.endKey),
    attempt: job.attempt,
    ...(job.lane !== undefined && { lane: job.lane }),
  };
}

/**
 * A range's bound as logs and messages show it: an integer key's value, or the key's values (a
 * range of a key that is not a single integer column, whose start and end are its place in the
 * order of ranges, shown only when it has no keys): one value as it is, several as `(a, b)`.
 */
export function boundText(ordinal: bigint, keys: readonly string[] | null | undefined): string {
  if (!keys) return String(ordinal);
  return keys.length === 1 ? keys[0]! : `(${keys.join(', ')})`;
}

/** A range as logs and messages show it: `start..end` (boundText). */
export function rangeText(range: {
  start: bigint;
  end: bigint;
  startKey?: readonly string[] | null | undefined;
  endKey?: readonly string[] | null | undefined;
}): string {
  return `${boundText(range.start, range.startKey)}..${boundText(range.end, range.endKey)}`;
}
