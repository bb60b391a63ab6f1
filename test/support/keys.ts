/**
 * Helpers of the key tests (keys*.test.ts, property.test.ts): a migration over a key inserted by
 * plain SQL, a work function that touches a range through `job.range` and logs it, and the check,
 * in SQL and in the key's own order (its collations), that a migration's ranges tile its key space.
 */
import type pg from 'pg';
import { expect } from 'vitest';
import type { JobKey, Work } from '../../src/bbm/types.ts';
import { JobStatus, MigrationStatus } from '../../src/store/codes.ts';
import { migrationRow } from './engine.ts';

/** Touches the range's rows through `job.range` (any key), and says how many (row_count). */
export const touchRange: Work<JobKey> = {
  name: 'keys.touch',
  async do(job) {
    const { rowCount } = await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.range.sql}`, [
      ...job.range.params,
    ]);
    return rowCount ?? 0;
  },
};

/** A table batched on a key: its name, the key's columns in order, and the types (with their collations) its values cast to. */
export interface KeySpace {
  table: string;
  columns: readonly string[];
  /** One a column, as a cast names it: `uuid`, `text COLLATE "und-x-icu"`, `numeric`. */
  types: readonly string[];
}

/** The key as a row expression of the table's columns: `id`, or `(tenant_id, id)`. */
export function keyOf(space: KeySpace): string {
  return space.columns.length === 1 ? space.columns[0]! : `(${space.columns.join(', ')})`;
}

/** A JSON array of key values (SQL text `json`) as a list of values of the key's types, in their collations. */
function keyValuesOf(space: KeySpace, json: string): string {
  return space.types.map((type, i) => `(${json}->>${i})::${type}`).join(', ');
}

/** The same as a row (one value: the value itself), for comparisons with keyOf. */
export function keyRowOf(space: KeySpace, json: string): string {
  return space.types.length === 1 ? keyValuesOf(space, json) : `(${keyValuesOf(space, json)})`;
}

/**
 * Enqueues a migration as a user would, by plain SQL, naming only what the brief of a key
 * migration needs: the bounds are found when it starts. `extra` sets further columns by name.
 */
export async function insertKeyMigration(
  pool: pg.Pool,
  row: { name: string; table: string; column: string; work: string; batchSize: number; lanes?: number },
  extra: Record<string, unknown> = {},
): Promise<bigint> {
  const names = Object.keys(extra);
  const { rows } = await pool.query<{ id: string }>(
    `INSERT INTO batched_background_migrations
       (name, batch_size, job_signature_name, table_name, column_name, max_parallel_jobs${names.map((n) => `, ${n}`).join('')})
     VALUES ($1, $2, $3, $4, $5, $6${names.map((_, i) => `, $${i + 7}`).join('')}) RETURNING id`,
    [row.name, row.batchSize, row.work, row.table, row.column, row.lanes ?? 2, ...Object.values(extra)],
  );
  return BigInt(rows[0]!.id);
}

/** The table keyLogged writes to (the process tests' config writes the same). */
export async function createKeyLog(pool: pg.Pool): Promise<void> {
  await pool.query(
    'CREATE TABLE key_log (migration text, first_key jsonb, last_key jsonb, rows int, pid int, lane int, attempt int)',
  );
}

const asArray = (bound: JobKey): string[] => (Array.isArray(bound) ? [...bound] : [String(bound)]);

/**
 * A work function for any key: touches its range's rows through `job.range`, logs the range as it
 * saw it (in the job's transaction: a range rolled back leaves no line), then calls `after`.
 */
export function keyLogged(
  name: string,
  after?: (job: Parameters<Work<JobKey>['do']>[0]) => Promise<void>,
): Work<JobKey> {
  return {
    name,
    async do(job) {
      const { rowCount } = await job.query(`UPDATE ${job.table} SET touched = touched + 1 WHERE ${job.range.sql}`, [
        ...job.range.params,
      ]);
      await job.query(
        `INSERT INTO key_log (migration, first_key, last_key, rows, pid, lane, attempt)
         VALUES ($1, $2::jsonb, $3::jsonb, $4, $5, $6, $7)`,
        [
          job.migration.name,
          JSON.stringify(asArray(job.start)),
          JSON.stringify(asArray(job.end)),
          rowCount,
          process.pid,
          job.lane,
          job.attempt,
        ],
      );
      await after?.(job);
      return rowCount ?? 0;
    },
  };
}

/** What is wrong with a set of ranges (`lo`, `hi`: JSON arrays of keys) over the rows of `space` that match `inside`. */
interface RangeProblems {
  ranges: number;
  /** A range whose first key is after its last. */
  reversed: number;
  /** A range that starts at or before the end of the one before it (in `order`). */
  overlapping: number;
  /** Rows between a range and the one before it. */
  gaps: number;
  /** Rows inside that no range holds. */
  uncovered: number;
  /** Rows outside that a range holds. */
  outside: number;
}

async function rangeProblems(
  pool: pg.Pool,
  space: KeySpace,
  ranges: { sql: string; params: unknown[]; order: string },
  inside: string,
): Promise<RangeProblems> {
  const key = keyOf(space);
  const lo = keyRowOf(space, 'r.lo');
  const hi = keyRowOf(space, 'r.hi');
  const prev = keyRowOf(space, 'r.prev');
  const holds = `EXISTS (SELECT 1 FROM given g WHERE ${key} >= ${keyRowOf(space, 'g.lo')} AND ${key} <= ${keyRowOf(space, 'g.hi')})`;
  const { rows } = await pool.query<RangeProblems>(
    `WITH given AS (${ranges.sql}),
     r AS (SELECT g.lo, g.hi, lag(g.hi) OVER (ORDER BY ${ranges.order}) AS prev FROM given g)
     SELECT count(*)::int AS ranges,
            count(*) FILTER (WHERE ${lo} > ${hi})::int AS reversed,
            count(*) FILTER (WHERE r.prev IS NOT NULL AND ${lo} <= ${prev})::int AS overlapping,
            count(*) FILTER (WHERE r.prev IS NOT NULL AND EXISTS (
              SELECT 1 FROM ${space.table} WHERE ${key} > ${prev} AND ${key} < ${lo}))::int AS gaps,
            (SELECT count(*) FROM ${space.table} WHERE (${inside}) AND NOT ${holds})::int AS uncovered,
            (SELECT count(*) FROM ${space.table} WHERE NOT (${inside}) AND ${holds})::int AS outside
     FROM r`,
    ranges.params,
  );
  return rows[0]!;
}

/**
 * A migration done exactly once over a key: every row (of those `inside`, an SQL condition on the
 * table's row; the others untouched) touched once; the migration finished; its ranges all
 * finished, in the order of their ordinals (min_value) the order of their keys, each first key
 * at or before its last, none overlapping the one before, no row between two of them, every row
 * inside in one and none outside. With `log`, the ranges the work logged (key_log) are those
 * ranges, each logged once. No row to run: one range. Comparisons are the
 * database's, in the key's types and collations.
 */
export async function expectTiled(
  pool: pg.Pool,
  space: KeySpace,
  name: string,
  { log = false, inside = 'true', minRanges = 1 }: { log?: boolean; inside?: string; minRanges?: number } = {},
): Promise<void> {
  const { rows: touched } = await pool.query<{ inside: boolean; touched: number }>(
    `SELECT DISTINCT (${inside}) AS inside, touched FROM ${space.table} ORDER BY 1, 2`,
  );
  for (const row of touched) expect(row, name).toEqual({ inside: row.inside, touched: row.inside ? 1 : 0 });
  const migration = await migrationRow(pool, name);
  expect(migration, name).toMatchObject({ status: MigrationStatus.finished });
  const jobsOf = (param: string) => `SELECT j.min_key AS lo, j.max_key AS hi, j.min_value, j.status
                FROM batched_background_migration_jobs j WHERE j.batched_background_migration_id = ${param}`;
  const jobs = jobsOf('$1');
  const { rows: counts } = await pool.query<{ ranges: number; empty: number; unfinished: number }>(
    `SELECT count(*)::int AS ranges, count(*) FILTER (WHERE j.lo IS NULL)::int AS empty,
            count(*) FILTER (WHERE j.status <> ${JobStatus.finished})::int AS unfinished
     FROM (${jobs}) j`,
    [migration!.id],
  );
  const { rows: within } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${space.table} WHERE ${inside}`,
  );
  if (within[0]!.n === 0) {
    // One range, which holds no row (without keys for an empty table: the empty-table test says so).
    expect(counts[0], `${name}: no row to run`).toMatchObject({ ranges: 1, unfinished: 0 });
    return;
  }
  expect(counts[0], name).toMatchObject({ empty: 0, unfinished: 0 });
  expect(counts[0]!.ranges, name).toBeGreaterThanOrEqual(minRanges);
  const clean = { reversed: 0, overlapping: 0, gaps: 0, uncovered: 0, outside: 0 };
  // In the order of the ordinals: it must be the keys' order, or an overlap or a reversal shows.
  const byOrdinal = await rangeProblems(
    pool,
    space,
    { sql: jobs, params: [migration!.id], order: 'g.min_value' },
    inside,
  );
  expect(byOrdinal, `${name}: the ranges`).toEqual({ ranges: counts[0]!.ranges, ...clean });
  if (!log) return;
  const logged = `SELECT l.first_key AS lo, l.last_key AS hi FROM key_log l WHERE l.migration = $1`;
  const byKey = await rangeProblems(
    pool,
    space,
    { sql: logged, params: [name], order: keyValuesOf(space, 'g.lo') },
    inside,
  );
  expect(byKey, `${name}: the ranges the work logged`).toEqual({ ranges: counts[0]!.ranges, ...clean });
  const { rows: unmatched } = await pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM key_log l WHERE l.migration = $1 AND NOT EXISTS (
       SELECT 1 FROM (${jobsOf('$2')}) j
       WHERE ${keyRowOf(space, 'j.lo')} = ${keyRowOf(space, 'l.first_key')} AND ${keyRowOf(space, 'j.hi')} = ${keyRowOf(space, 'l.last_key')})`,
    [name, migration!.id],
  );
  expect(unmatched[0]!.n, `${name}: logged ranges that are not the migration's`).toBe(0);
}

/** (tenant, id) rows of tenants 1 to 7 holding 3, 7, 15, 1, 23, 10 and 30 ids (ids from 1): some ranges of 10 end on a tenant's last id. */
export const COMPOSITE_TENANTS_SQL = `SELECT t, i FROM unnest('{1,2,3,4,5,6,7}'::int[], '{3,7,15,1,23,10,30}'::int[]) s(t, n), generate_series(1, n) i`;

/**
 * The ranges of 10 of a key (tenant, id) over tenants of 3, 7, 15, 1, 23, 10 and 30 ids, and
 * whether each lies within one tenant (citus.test.ts cuts the same on Citus).
 */
export const COMPOSITE_RANGES: Array<[string, boolean]> = [
  ['1:1-2:7', false],
  ['3:1-3:10', true],
  ['3:11-5:4', false],
  ['5:5-5:14', true],
  ['5:15-6:1', false],
  ['6:2-7:1', false],
  ['7:2-7:11', true],
  ['7:12-7:21', true],
  ['7:22-7:30', true],
];
