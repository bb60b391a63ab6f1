/** What the dispatcher (main.ts) hands every command: its flags, output, config and database. */
import type pg from 'pg';
import type { DatabaseTarget } from '../bbm/databases.ts';
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
  /** The command's database (for a command over all of them, the first). */
  pool: pg.Pool;
  databaseUrl: string;
  /** Its name among the config's `databases`; undefined without them. */
  database: string | undefined;
  /** Every database the command may work on (`--database` applied): one, unless the config names several. */
  databases: readonly DatabaseTarget[];
  /** A pool of each database (made once, ended with the command). */
  poolOf: (target: DatabaseTarget) => pg.Pool;
  /** Text with the database URL and password masked. */
  mask: (text: string) => string;
  /** Prints `data` as JSON with --json, else `text`. */
  print: (data: unknown, text: () => string) => void;
}
