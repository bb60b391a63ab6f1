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
  /** 1 (stdout, the default) or 2 (stderr: for commands whose stdout is their result). */
  destination?: 1 | 2;
}

export function createLogger({ level, format, destination = 1 }: LoggerOptions = {}): Logger {
  const tty = Boolean((destination === 1 ? process.stdout : process.stderr).isTTY);
  const resolvedLevel = level ?? (process.env.BBM_LOG_LEVEL as LevelWithSilent | undefined) ?? 'info';
  const resolvedFormat = format ?? (process.env.BBM_LOG_FORMAT as LogFormat | undefined) ?? (tty ? 'pretty' : 'json');
  const options = { level: resolvedLevel, base: { component: 'pg-bbm' } };
  if (resolvedFormat === 'pretty') {
    return pino(options, pretty({ colorize: tty, sync: true, destination, ignore: 'component,worker_pid' }));
  }
  return pino(options, pino.destination({ dest: destination, sync: true }));
}

/**
 * The logger of a Worker or finalizeMigration given none: warnings and errors only, as JSON lines
 * on stderr, so an embedding application's stdout stays its own and a failing job is still seen.
 * Pass `logger` (any pino logger, e.g. `createLogger()` or `pino({ level: 'silent' })`) to change it.
 */
export function defaultLibraryLogger(): Logger {
  return createLogger({ level: 'warn', format: 'json', destination: 2 });
}
