/** What the dispatcher (main.ts) hands every command: its flags, output, config and database. */
import type pg from 'pg';
import type { Config } from '../bbm/types.ts';
import type { Flags } from './args.ts';

export interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  env: NodeJS.ProcessEnv;
  /** Whether output goes to a terminal (progress bars, redrawing, pretty logs). */
  tty: boolean;
}

/** What every command gets. */
export interface Context {
  command: string;
  flags: Flags;
  io: Io;
  config: Config | undefined;
  pool: pg.Pool;
  databaseUrl: string;
  /** Text with the database URL and password masked. */
  mask: (text: string) => string;
  /** Prints `data` as JSON with --json, else `text`. */
  print: (data: unknown, text: () => string) => void;
}
