/** pino, configured once. JSON lines by default, as production log pipelines want. */
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export function createLogger(level: LevelWithSilent = (process.env.BBM_LOG_LEVEL as LevelWithSilent | undefined) ?? 'info'): Logger {
  return pino({ level, base: { component: 'pg-bbm' } });
}
