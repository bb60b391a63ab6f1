/**
 * Reads of a migration's own table (its bounds, a range's middle), each a statement of its own
 * that touches none of pg-bbm's tables; the statements that write pg-bbm's rows take the values
 * read as constants.
 *
 * Why apart: on Citus, a statement that reads a distributed or reference table is planned by Citus
 * as a whole, and Citus refuses most statements that also write a table of the coordinator from
 * such a read ("non-IMMUTABLE functions are not allowed in CASE or COALESCE statements" for an
 * UPDATE with now() beside it; "complex joins are only supported when all distributed tables are
 * co-located" for a correlated subquery; "direct joins between distributed and local tables are not
 * supported"). A read of the target alone is one Citus plans: max() and ORDER BY … LIMIT on each
 * shard, merged on the coordinator. What the write then guards is said where it is written.
 */
import pg from 'pg';
import { sql, type SQL } from 'drizzle-orm';
import type { Target } from './catalog.ts';
import { citusInstalled } from './citus.ts';
import { execOne, type Queryable } from './db.ts';
import { keyJson, keyList, keyListDescending, keyRow, type Key } from './keys.ts';

const { escapeIdentifier } = pg;

/** The table, schema-qualified and quoted (catalog names). */
function quotedTable(target: Target): SQL {
  return sql`${sql.identifier(target.schema)}.${sql.identifier(target.table)}`;
}

function tableText(target: Target): string {
  return `${escapeIdentifier(target.schema)}.${escapeIdentifier(target.table)}`;
}

/** The integer key column's largest value in the table, as text; null on an empty table. */
export async function lastValue(db: Queryable, target: Target): Promise<string | null> {
  const column = sql.identifier(target.column);
  const row = await execOne<{ last: string | null }>(
    db,
    sql`SELECT max(${column})::text AS last FROM ${quotedTable(target)}`,
  );
  return row?.last ?? null;
}

/**
 * A key's first and last values in the table (the output is named `bbm_key`: ORDER BY would take
 * an output name equal to a key column, such as `k`, for that column), each the JSON array min_key and max_key hold (as text); nulls on an empty table. */
export async function keyEnds(
  db: Queryable,
  target: Target,
  key: Key,
): Promise<{ first: string | null; last: string | null }> {
  const table = quotedTable(target);
  const first = await execOne<{ bbm_key: string }>(
    db,
    sql`SELECT ${sql.raw(keyJson(key))}::text AS bbm_key FROM ${table} ORDER BY ${sql.raw(keyList(key))} LIMIT 1`,
  );
  const last = await execOne<{ bbm_key: string }>(
    db,
    sql`SELECT ${sql.raw(keyJson(key))}::text AS bbm_key FROM ${table} ORDER BY ${sql.raw(keyListDescending(key))} LIMIT 1`,
  );
  return { first: first?.bbm_key ?? null, last: last?.bbm_key ?? null };
}

/** The rows of an integer range [start, end], counted up to `cap` on the index. */
export async function rowsInRange(
  db: Queryable,
  target: Target,
  start: bigint,
  end: bigint,
  cap: number,
): Promise<number> {
  const column = sql.identifier(target.column);
  const row = await execOne<{ n: number }>(
    db,
    sql`SELECT count(*)::int AS n FROM (
          SELECT 1 FROM ${quotedTable(target)} WHERE ${column} >= ${start}::bigint AND ${column} <= ${end}::bigint
          LIMIT ${cap}::int) r`,
  );
  return row?.n ?? 0;
}

/** The value at place `offset` (0 the first) of an integer range [start, end], as text; null past its last row. */
export async function valueAt(
  db: Queryable,
  target: Target,
  start: bigint,
  end: bigint,
  offset: number,
): Promise<string | null> {
  const column = sql.identifier(target.column);
  const row = await execOne<{ v: string }>(
    db,
    sql`SELECT ${column}::bigint::text AS v FROM ${quotedTable(target)}
        WHERE ${column} >= ${start}::bigint AND ${column} <= ${end}::bigint
        ORDER BY ${column} LIMIT 1 OFFSET ${offset}::int`,
  );
  return row?.v ?? null;
}

/** A key range between two stored keys (JSON text), inclusive: its predicate over the table's key, with the keys as $1 and $2. */
function keyRangeSql(key: Key, lower: '>=' | '>'): string {
  return `(${keyList(key)}) ${lower} (${keyRow(key, '$1::jsonb')}) AND (${keyList(key)}) <= (${keyRow(key, '$2::jsonb')})`;
}

/** The rows of a key range [lo, hi] (stored keys, JSON text), counted up to `cap` on the index. */
export async function rowsInKeyRange(
  db: Queryable,
  target: Target,
  key: Key,
  lo: string,
  hi: string,
  cap: number,
): Promise<number> {
  const { rows } = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM (SELECT 1 FROM ${tableText(target)} WHERE ${keyRangeSql(key, '>=')} LIMIT $3) r`,
    [lo, hi, cap],
  );
  return rows[0]?.n ?? 0;
}

/**
 * The key at place `offset` (0 the first) of the key range from `lo` to `hi` (stored keys, JSON
 * text; `lo` itself excluded when `after`), as JSON text; null past its last row.
 */
export async function keyAt(
  db: Queryable,
  target: Target,
  key: Key,
  { lo, hi, after }: { lo: string; hi: string; after: boolean },
  offset: number,
): Promise<string | null> {
  const { rows } = await db.query<{ bbm_key: string }>(
    `SELECT ${keyJson(key)}::text AS bbm_key FROM ${tableText(target)} WHERE ${keyRangeSql(key, after ? '>' : '>=')}
     ORDER BY ${keyList(key)} LIMIT 1 OFFSET $3`,
    [lo, hi, offset],
  );
  return rows[0]?.bbm_key ?? null;
}

/**
 * The rows of a hash-distributed Citus table, estimated on its shards (their reltuples, read on
 * the worker nodes): the coordinator's own figure for it is 0. Null for any other table, and
 * while no shard has been analyzed or vacuumed.
 */
export async function shardRowEstimate(db: Queryable, target: Target): Promise<bigint | null> {
  if (!(await citusInstalled(db))) return null;
  const row = await execOne<{ rows: string | null }>(
    db,
    sql`SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition
                                  WHERE logicalrelid = ${target.oid}::oid AND partmethod = 'h')
                    THEN (SELECT sum(nullif(result, '')::float8)::bigint
                          FROM pg_catalog.run_command_on_shards(${target.oid}::oid::regclass,
                                 'SELECT nullif(reltuples, -1) FROM pg_catalog.pg_class WHERE oid = ''%s''::regclass')
                          WHERE success)
               END AS rows`,
  );
  return row?.rows == null ? null : BigInt(row.rows);
}
