/**
 * A built-in work function: copy one column into another over each range, the classic backfill
 * before a column swap (e.g. int -> bigint), on any key (the range's predicate, Job.range). Two
 * forms: `copyColumn({ name, from, to })` with the columns in code, and `copyColumnWork`
 * (`bbm.copy_column`), one registered function that reads them from each migration's arguments.
 * Both check their ranges (Work.verify): no row whose target differs from its source.
 */
import pg from 'pg';
import type { Job, JobKey, VerifyFound, Work } from '../bbm/types.ts';
import { ConfigError } from '../bbm/errors.ts';
import { missingColumns } from '../store/catalog.ts';

const { escapeIdentifier } = pg;

export interface CopyColumnOptions {
  /** The work name migrations refer to in `job_signature_name`. */
  name: string;
  /** The column copied from. */
  from: string;
  /** The column copied into. */
  to: string;
  /** Only rows where the target differs are written, so reruns write nothing twice [true]. */
  skipUnchanged?: boolean;
}

/** What a copy needs: two different columns, and whether unchanged rows are skipped. */
interface Copy {
  from: string;
  to: string;
  skipUnchanged: boolean;
}

/** The work name of copyColumnWork. */
export const COPY_COLUMN_WORK = 'bbm.copy_column';

/** A work function that copies `from` into `to` on the rows of each range, whatever the key. */
export function copyColumn({ name, from, to, skipUnchanged = true }: CopyColumnOptions): Work<JobKey> {
  if (!from || !to || from === to)
    throw new ConfigError(`copyColumn ${name}: \`from\` and \`to\` must be two different columns`);
  const copy = { from, to, skipUnchanged };
  return { name, do: (job) => copyRange(job, copy), verify: (job) => uncopied(job, copy) };
}

/**
 * `bbm.copy_column`: copyColumn with its columns in the migration's arguments, so one registered
 * function serves every copy: enqueue with `args: { from: 'id', to: 'id_bigint' }` (and
 * optionally `skipUnchanged: false`). The arguments are data from a row: they are checked, and
 * both columns looked up in the job's table, before each range; bad ones fail the attempt with
 * what is wrong.
 */
export const copyColumnWork: Work<JobKey> = {
  name: COPY_COLUMN_WORK,
  async do(job) {
    return copyRange(job, await copyOfJob(job));
  },
  async verify(job) {
    return uncopied(job, await copyOfJob(job));
  },
};

/** The copy of a job's arguments, its columns looked up in the job's table. */
async function copyOfJob(job: Job<JobKey>): Promise<Copy> {
  const copy = copyOfArgs(job.args);
  const missing = await missingColumns({ query: job.query }, job.table, [copy.from, copy.to]);
  if (missing.length > 0) {
    throw new Error(
      `${COPY_COLUMN_WORK}: ${missing.map((name) => `column ${JSON.stringify(name)}`).join(' and ')} ` +
        `${missing.length === 1 ? 'does' : 'do'} not exist in ${job.table} (job_arguments ${JSON.stringify(job.args)})`,
    );
  }
  return copy;
}

const COPY_ARGUMENTS = new Set(['from', 'to', 'skipUnchanged']);

/** The copy a migration's arguments describe; throws an Error saying what is wrong with them. */
function copyOfArgs(args: Readonly<Record<string, unknown>>): Copy {
  const bad = (what: string) => new Error(`${COPY_COLUMN_WORK}: ${what} (job_arguments ${JSON.stringify(args)})`);
  const unknown = Object.keys(args).filter((key) => !COPY_ARGUMENTS.has(key));
  if (unknown.length > 0) {
    throw bad(
      `unknown argument ${unknown.map((key) => JSON.stringify(key)).join(', ')}; it takes from, to, skipUnchanged`,
    );
  }
  const { skipUnchanged = true } = args;
  const column = (name: 'from' | 'to'): string => {
    const value = args[name];
    if (typeof value === 'string' && value !== '') return value;
    throw bad(`argument ${name} must be a column name (a non-empty string), got ${JSON.stringify(value) ?? 'nothing'}`);
  };
  const from = column('from');
  const to = column('to');
  if (from === to) throw bad('arguments from and to name the same column');
  if (typeof skipUnchanged !== 'boolean') {
    throw bad(`argument skipUnchanged must be true or false, got ${JSON.stringify(skipUnchanged)}`);
  }
  return { from, to, skipUnchanged };
}

/** Copies on the range's rows; the number of rows written. */
async function copyRange(job: Job<JobKey>, { from, to, skipUnchanged }: Copy): Promise<number | undefined> {
  const source = escapeIdentifier(from);
  const target = escapeIdentifier(to);
  const changed = skipUnchanged ? ` AND ${target} IS DISTINCT FROM ${source}` : '';
  const { rowCount } = await job.query(
    `UPDATE ${job.table} SET ${target} = ${source} WHERE (${job.range.sql})${changed}`,
    job.range.params,
  );
  return rowCount ?? undefined;
}

/**
 * The check: rows of the range whose target differs from their source as the copy assigns it
 * (cast to the target's type, so that a copy into another type, json into jsonb or a float into
 * a numeric of some scale, compares what it wrote), and one of their keys.
 */
async function uncopied(job: Job<JobKey>, { from, to }: Copy): Promise<VerifyFound> {
  const { rows: types } = await job.query<{ type: string | null }>(
    `SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) AS type FROM pg_catalog.pg_attribute a
     WHERE a.attrelid = $1::regclass AND a.attname = $2 AND a.attnum > 0 AND NOT a.attisdropped`,
    [job.table, to],
  );
  const type = types[0]?.type;
  if (!type) throw new Error(`column ${JSON.stringify(to)} does not exist in ${job.table}`);
  const key = Array.isArray(job.start) ? `ROW(${job.column})::text` : `(${job.column})::text`;
  const { rows } = await job.query<{ rows: number; example: string | null }>(
    `SELECT count(*)::int AS rows, min(${key}) AS example FROM ${job.table} ` +
      `WHERE (${job.range.sql}) AND ${escapeIdentifier(to)} IS DISTINCT FROM CAST(${escapeIdentifier(from)} AS ${type})`,
    job.range.params,
  );
  const { rows: count, example } = rows[0]!;
  return example === null ? { rows: count } : { rows: count, example };
}
