/**
 * pg-bbm's database functions as installed: the current text of each in a file of its own,
 * sql/functions/<name>.sql, and in compat.sql the shims kept for workers of earlier releases. The
 * migrations in migrations/ are table DDL only; the function definitions in 0000-0017 are history
 * that databases carry, replaced by these files at install (apply-schema.ts).
 *
 * The files spell the numbers that TypeScript also uses as tokens, `{{LANE_LOCK_BASE}}`, filled in
 * here from codes.ts and locks.ts, so that no number is restated by hand in SQL. What is installed,
 * and recorded in pg_bbm_functions, is the rendered text: its digest changes when a file or a
 * constant does.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  INT4_MAX,
  JobStatus,
  KEY_ORDINAL_END,
  KEY_ORDINAL_STEP,
  MAX_LANES,
  MigrationStatus,
  RUNNABLE_STATUSES,
  SERIAL_KEY_SET,
  statusCodes,
} from './codes.ts';
import {
  LANE_LOCK_BASE,
  LANES_RECHECK_MS,
  LANES_RECHECK_MIN_MS,
  GROW_AFTER_HEALTHY_JOBS,
  LOCK_NAMESPACE,
  MIGRATION_KEY_MODULUS,
  QUIET_LOCK_KEY,
  QUIET_TAKE_WAIT_MS,
} from './locks.ts';
import { CITUS_TWO_PHASE_TABLE } from './citus.ts';

/** The folder of the function files: sql/functions beside src/ and dist/ alike. */
export const FUNCTIONS_FOLDER = fileURLToPath(new URL('../../sql/functions', import.meta.url));

/** The file of shims for workers of earlier releases; installed last, since its shims call the current functions. */
export const COMPAT_FILE = 'compat.sql';

/** What each `{{TOKEN}}` of a function file stands for. */
export const SQL_TOKENS: Readonly<Record<string, string>> = {
  LOCK_NAMESPACE: String(LOCK_NAMESPACE),
  LANE_LOCK_BASE: String(LANE_LOCK_BASE),
  QUIET_LOCK_KEY: String(QUIET_LOCK_KEY),
  QUIET_TAKE_WAIT_MS: String(QUIET_TAKE_WAIT_MS),
  LANES_RECHECK_MS: String(LANES_RECHECK_MS),
  LANES_RECHECK_MIN_MS: String(LANES_RECHECK_MIN_MS),
  GROW_AFTER_HEALTHY_JOBS: String(GROW_AFTER_HEALTHY_JOBS),
  MIGRATION_KEY_MODULUS: String(MIGRATION_KEY_MODULUS),
  MAX_LANES: String(MAX_LANES),
  INT4_MAX: String(INT4_MAX),
  KEY_ORDINAL_STEP: String(KEY_ORDINAL_STEP),
  KEY_ORDINAL_END: String(KEY_ORDINAL_END),
  SERIAL_KEY_SET,
  RUNNABLE_STATUSES: statusCodes(RUNNABLE_STATUSES),
  MIGRATION_ACTIVE: String(MigrationStatus.active),
  MIGRATION_RUNNING: String(MigrationStatus.running),
  JOB_ACTIVE: String(JobStatus.active),
  JOB_FINISHED: String(JobStatus.finished),
  JOB_FAILED: String(JobStatus.failed),
  CITUS_TWO_PHASE_TABLE,
};

/** A function file as installed: its name and its text with the tokens filled in. */
export interface FunctionFile {
  name: string;
  sql: string;
}

/** The function files of one release: what `bbm migrate` installs, and what it records. */
export interface FunctionSet {
  /** The release the files come from (package.json's version): a database never goes back to an older one. */
  version: string;
  /** sha256 of the rendered files, names included, in install order. */
  digest: string;
  files: FunctionFile[];
}

/** A file's text with its tokens filled in; an unknown token is an error, never left for the server to parse. */
export function renderFunctionSql(text: string, file: string): string {
  return text.replace(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g, (_, token: string) => {
    const value = SQL_TOKENS[token];
    if (value === undefined) throw new Error(`${file}: unknown token {{${token}}}`);
    return value;
  });
}

/** The files in install order: each function's own, by name, then the shims that call them. */
export function functionFileNames(folder: string = FUNCTIONS_FOLDER): string[] {
  const names = readdirSync(folder).filter((name) => name.endsWith('.sql'));
  const own = names.filter((name) => name !== COMPAT_FILE).sort();
  return names.includes(COMPAT_FILE) ? [...own, COMPAT_FILE] : own;
}

export function digestOf(files: readonly FunctionFile[]): string {
  const hash = createHash('sha256');
  for (const { name, sql } of files) hash.update(`${name}\0${sql}\0`);
  return hash.digest('hex');
}

/** The installed package's version (package.json sits two levels up from src/store and dist/store alike). */
export function packageVersion(): string {
  const manifest = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  return manifest.version;
}

/** This release's function files, rendered. */
export function readFunctionSet(folder: string = FUNCTIONS_FOLDER, version: string = packageVersion()): FunctionSet {
  const files = functionFileNames(folder).map((name) => ({
    name,
    sql: renderFunctionSql(readFileSync(path.join(folder, name), 'utf8'), name),
  }));
  return { version, digest: digestOf(files), files };
}

/**
 * Orders release versions (`major.minor.patch`, with an optional `-prerelease`, as semver does):
 * negative when a is older than b, 0 when equal, positive when newer.
 */
export function compareVersions(a: string, b: string): number {
  const parse = (version: string) => {
    const [core = '', pre] = version.split('+')[0]!.split(/-(.*)/s);
    return { core: core.split('.').map(Number), pre: pre === undefined ? [] : pre.split('.') };
  };
  const x = parse(a);
  const y = parse(b);
  for (let i = 0; i < 3; i += 1) {
    const d = (x.core[i] ?? 0) - (y.core[i] ?? 0);
    if (d !== 0) return Math.sign(d);
  }
  // A prerelease comes before its release; prereleases compare field by field, numbers as numbers.
  if (x.pre.length === 0 || y.pre.length === 0) return Math.sign(y.pre.length - x.pre.length);
  for (let i = 0; i < Math.max(x.pre.length, y.pre.length); i += 1) {
    const p = x.pre[i];
    const q = y.pre[i];
    if (p === undefined || q === undefined) return p === undefined ? -1 : 1;
    if (p === q) continue;
    const numeric = /^\d+$/.test(p) && /^\d+$/.test(q);
    if (numeric) return Math.sign(Number(p) - Number(q));
    if (/^\d+$/.test(p) !== /^\d+$/.test(q)) return /^\d+$/.test(p) ? -1 : 1;
    return p < q ? -1 : 1;
  }
  return 0;
}
