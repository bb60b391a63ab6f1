/**
 * The statements of a rehearsal (`bbm rehearse`, src/bbm/rehearse.ts): the migration's row, its
 * key space and the sample ranges spread over it, the counters read around each sample's work (WAL
 * position, the table's row counts of the transaction, lock waits), and the stored report.
 *
 * Every key is handled as a key of one or more columns (keys.ts): an integer key as a one-column
 * key of bigint values (samplingKey), so that one set of row-value comparisons on the index finds
 * the ranges of every kind of key. Names come from the catalog (catalog.ts) and are quoted here;
 * key values travel as parameters (JSON arrays of their text) and are cast to the key's types.
 */
import type pg from 'pg';
import { sql } from 'drizzle-orm';
import { PgDialect } from 'drizzle-orm/pg-core';
import type { Target } from './catalog.ts';
import { execOne, integerLiteral, withStatement, type Queryable } from './db.ts';
import { keyList, keyRow, rangePredicate, type Key } from './keys.ts';
import { estimatedRows, keyBounds, quotedTable } from './migration-rows.ts';
import { lastValue } from './target-reads.ts';

const dialect = new PgDialect();

/** A key's first and last values, each as the text of its columns' values in key order. */
export interface KeyBounds {
  start: readonly string[];
  end: readonly string[];
}

/**
 * The key as the rehearsal's statements see it: a key that is not a single integer column as it
 * is, an integer column as a one-column key of bigint values (an int2 or int4 column compares with
 * a bigint on its index).
 */
export function samplingKey(target: Target): Key {
  return target.key ?? [{ name: target.column, typeOid: 20, typeName: 'bigint', collation: null }];
}

/** The table, schema-qualified and quoted, as SQL text. */
function tableText(target: Target): string {
  return dialect.sqlToQuery(quotedTable(target)).sql;
}

/** Runs text with parameters, naming the statement on its error (the CLI shows it). */
async function query<R extends pg.QueryResultRow>(
  db: Queryable,
  label: string,
  text: string,
  values: unknown[] = [],
): Promise<R[]> {
  try {
    return (await db.query<R>(text, values)).rows;
  } catch (error) {
    throw withStatement(error, label);
  }
}

/**
 * The key space the migration's ranges cover, as its start sets it (migration-rows.ts,
 * startMigration) or did: an integer key from min_value to max_value, or the column's maximum
 * when that is not set yet; any other key from min_key to max_key, or the key's first and last
 * values. Undefined when it holds no key (an empty table, bounds around no row).
 */
export async function keySpace(db: Queryable, migrationId: bigint, target: Target): Promise<KeyBounds | undefined> {
  // The table's ends are read in statements of their own, as the start reads them (target-reads.ts).
  if (target.key === null) {
    const last = await lastValue(db, target);
    const row = await execOne<{ lo: string; hi: string | null }>(
      db,
      sql`
        SELECT b.min_value::text AS lo, coalesce(b.max_value, ${last}::bigint)::text AS hi
        FROM batched_background_migrations b WHERE b.id = ${migrationId}`,
    );
    if (!row || row.hi === null || BigInt(row.hi) < BigInt(row.lo)) return undefined;
    return { start: [row.lo], end: [row.hi] };
  }
  const key = target.key;
  const row = await execOne<{ lo: string[] | null; hi: string[] | null; reversed: boolean | null }>(
    db,
    sql`
      WITH ${await keyBounds(db, target, key, migrationId)}
      SELECT bbm_key_text(bounds.lo) AS lo, bbm_key_text(bounds.hi) AS hi,
             (${sql.raw(keyRow(key, 'bounds.hi'))}) < (${sql.raw(keyRow(key, 'bounds.lo'))}) AS reversed
      FROM bounds`,
  );
  if (!row?.lo || !row.hi || row.reversed !== false) return undefined;
  return { start: row.lo, end: row.hi };
}

/** The key's row, `("a", "b")`, or the one column alone. */
function keyColumns(key: Key): string {
  return key.length === 1 ? keyList(key) : `(${keyList(key)})`;
}

/** The row of a JSON array of key values in parameter `$n`, cast to the key's types, in their collations. */
function keyParam(key: Key, n: number): string {
  const row = keyRow(key, `$${n}::jsonb`);
  return key.length === 1 ? row : `(${row})`;
}

/** The rows in the key space, counting up to `cap` of them on the index. */
export async function countKeys(db: Queryable, target: Target, space: KeyBounds, cap: number): Promise<number> {
  const key = samplingKey(target);
  const range = rangePredicate(key, target.column, space, 1);
  const rows = await query<{ n: number }>(
    db,
    'counting the rows of the key space',
    `SELECT count(*)::int AS n FROM (SELECT 1 FROM ${tableText(target)} WHERE ${range.sql} LIMIT ${integerLiteral(cap)}) s`,
    range.params,
  );
  return rows[0]?.n ?? 0;
}

/** The keys at the given places (0 the first) of the key space's order, walked on the index: for a space counted in full. */
export async function keysAt(
  db: Queryable,
  target: Target,
  space: KeyBounds,
  places: readonly number[],
): Promise<string[][]> {
  const key = samplingKey(target);
  const range = rangePredicate(key, target.column, space, 1);
  const rows = await query<{ k: string[] }>(
    db,
    'finding the sample ranges (keys at places in the key space)',
    `SELECT bbm_key_text(pg_catalog.jsonb_build_array(${keyList(key)})) AS k
     FROM (SELECT ${keyList(key)}, row_number() OVER (ORDER BY ${keyList(key)}) - 1 AS bbm_place
           FROM ${tableText(target)} WHERE ${range.sql}) s
     WHERE s.bbm_place = ANY ($${range.params.length + 1}::bigint[])
     ORDER BY s.bbm_place`,
    [...range.params, places],
  );
  return rows.map((row) => row.k);
}

/** What a sample of the table's pages found: its rows, those in the key space, and keys spread evenly over those. */
export interface SampledKeys {
  sampledRows: number;
  insideRows: number;
  keys: string[][];
}

/**
 * Keys spread evenly over the key space, from a sample of the table's pages (TABLESAMPLE SYSTEM,
 * `percent` of them): of the sampled rows in the key space, in key order, those at the middles of
 * `count` equal shares. For a space too large to walk: reading a share of the pages costs that
 * share of the table, never a walk of its index.
 */
export async function sampledKeys(
  db: Queryable,
  target: Target,
  space: KeyBounds,
  percent: number,
  count: number,
): Promise<SampledKeys> {
  const key = samplingKey(target);
  const range = rangePredicate(key, target.column, space, 1);
  const n = range.params.length;
  const rows = await query<{ total: string; inside: string; k: string[] | null }>(
    db,
    'finding the sample ranges (TABLESAMPLE)',
    `WITH s AS MATERIALIZED (
       SELECT ${keyList(key)}, (${range.sql}) AS bbm_inside
       FROM ${tableText(target)} TABLESAMPLE SYSTEM ($${n + 1}::float4)
     ), r AS (
       SELECT pg_catalog.jsonb_build_array(${keyList(key)}) AS k, row_number() OVER (ORDER BY ${keyList(key)}) AS bbm_rank
       FROM s WHERE s.bbm_inside
     ), c AS (
       SELECT count(*) AS total, count(*) FILTER (WHERE s.bbm_inside) AS inside FROM s
     )
     SELECT c.total::text, c.inside::text, bbm_key_text(r.k) AS k
     FROM c LEFT JOIN r ON r.bbm_rank IN (
       SELECT greatest(1, ceil(c.inside * (g + 0.5) / $${n + 2}::int))::bigint FROM generate_series(0, $${n + 2}::int - 1) g)
     ORDER BY r.bbm_rank`,
    [...range.params, percent, count],
  );
  return {
    sampledRows: Number(rows[0]?.total ?? 0),
    insideRows: Number(rows[0]?.inside ?? 0),
    keys: rows.flatMap((row) => (row.k ? [row.k] : [])),
  };
}

/** The planner's estimate of the table's rows (summed over a partitioned table's partitions); null without statistics. */
export async function tableRowEstimate(db: Queryable, target: Target): Promise<number | null> {
  const row = await execOne<{ rows: string | null }>(db, sql`SELECT ${estimatedRows(sql`${target.oid}::oid`)} AS rows`);
  return row?.rows == null ? null : Number(row.rows);
}

/**
 * A range as a cut would make it from `from` (a key; with `after`, from the first key after it,
 * else the first at or after it), and past `past` when given (the end of the range before it):
 * its first key, and its last, the `size`-th key from there or the key space's end when fewer
 * remain. Undefined when no key is left before the end.
 */
export async function rangeFrom(
  db: Queryable,
  target: Target,
  space: KeyBounds,
  from: readonly string[],
  { after, size, past }: { after: boolean; size: number; past?: readonly string[] | undefined },
): Promise<KeyBounds | undefined> {
  const key = samplingKey(target);
  const columns = keyColumns(key);
  const where =
    `${columns} ${after ? '>' : '>='} ${keyParam(key, 1)} AND ${columns} <= ${keyParam(key, 2)}` +
    (past ? ` AND ${columns} > ${keyParam(key, 4)}` : '');
  // Named bbm_key: ORDER BY would take an output name equal to a key column (`k`) for that column.
  const scan = `SELECT pg_catalog.jsonb_build_array(${keyList(key)}) AS bbm_key FROM ${tableText(target)} WHERE ${where} ORDER BY ${keyList(key)}`;
  const rows = await query<{ first: string[]; last: string[] }>(
    db,
    'finding a sample range',
    `SELECT bbm_key_text(f.bbm_key) AS first, bbm_key_text(coalesce(e.bbm_key, $2::jsonb)) AS last
     FROM (${scan} LIMIT 1) f LEFT JOIN LATERAL (${scan} LIMIT 1 OFFSET $3::int) e ON true`,
    [JSON.stringify(from), JSON.stringify(space.end), size - 1, ...(past ? [JSON.stringify(past)] : [])],
  );
  const row = rows[0];
  return row ? { start: row.first, end: row.last } : undefined;
}

/**
 * Begins the transaction that plans a rehearsal, under the samples' statement timeout: read-only,
 * or not for a migration described by a spec (its row is inserted in it, and rolled back with it).
 */
export async function beginPlan(
  db: Queryable,
  statementTimeoutMs: number,
  { readOnly }: { readOnly: boolean },
): Promise<void> {
  await db.query(
    `BEGIN${readOnly ? ' READ ONLY' : ''}; SET LOCAL statement_timeout = ${integerLiteral(statementTimeoutMs)}`,
  );
}

/** Ends the plan's or a sample's transaction, undoing whatever it did. */
export async function rollBack(db: Queryable): Promise<void> {
  await db.query('ROLLBACK');
}

/** A sample's limits: those of a job (run-transaction.ts, runPrologue). */
export interface SampleLimits {
  /** statement_timeout: the run's backstop, or the session's own where tighter. */
  statementTimeoutMs: number;
  /** idle_in_transaction_session_timeout: the run's backstop. */
  backstopMs: number;
}

/**
 * Begins a sample's transaction with a job's server-side limits (what bbm_take_job sets, and the
 * session's tighter statement_timeout; the session's lock_timeout, which a job keeps, stays), and
 * returns its backend's pid, for the lock watch.
 */
export async function beginSample(db: Queryable, limits: SampleLimits): Promise<number> {
  const text =
    `BEGIN; SELECT pg_catalog.set_config('statement_timeout', '${integerLiteral(limits.statementTimeoutMs)}', true), ` +
    `pg_catalog.set_config('idle_in_transaction_session_timeout', '${integerLiteral(limits.backstopMs)}', true), ` +
    `pg_catalog.set_config('client_connection_check_interval', '1000', true); ` +
    'SELECT pg_catalog.pg_backend_pid() AS pid';
  let results: unknown;
  try {
    results = await db.query(text);
  } catch (error) {
    throw withStatement(error, "beginning a sample's transaction");
  }
  const list = Array.isArray(results) ? (results as pg.QueryResult<{ pid: number }>[]) : [];
  const pid = list.at(-1)?.rows[0]?.pid;
  if (pid === undefined) throw new Error("beginning a sample's transaction returned no backend pid");
  return pid;
}

/** The session's lock_timeout in ms (0: none), which jobs keep. */
export async function sessionLockTimeoutMs(db: Queryable): Promise<number> {
  const row = await execOne<{ ms: number }>(
    db,
    sql`SELECT s.setting::int AS ms FROM pg_catalog.pg_settings s WHERE s.name = 'lock_timeout'`,
  );
  return row?.ms ?? 0;
}

/** The rows a range holds (a job's own predicate: Job.range). */
export async function countRange(
  db: Queryable,
  target: Target,
  range: { sql: string; params: unknown[] },
): Promise<number> {
  const rows = await query<{ n: number }>(
    db,
    "counting a sample range's rows",
    `SELECT count(*)::int AS n FROM ${tableText(target)} WHERE ${range.sql}`,
    range.params,
  );
  return rows[0]?.n ?? 0;
}

/**
 * What a sample's transaction did so far to the table (summed over a partitioned table's
 * partitions): its rows inserted, updated (of them HOT) and deleted, as the transaction's own
 * statistics count them (pg_stat_get_xact_*: the cumulative views see a transaction only once it
 * ends), and the WAL insert position; with `since`, the WAL written from there (every session's).
 */
export interface SampleCounters {
  lsn: string;
  walBytes: number | null;
  inserted: number;
  updated: number;
  hotUpdated: number;
  deleted: number;
}

export async function sampleCounters(db: Queryable, target: Target, since: string | null): Promise<SampleCounters> {
  const oid = `${integerLiteral(target.oid)}::oid`;
  const rows = await query<{
    lsn: string;
    wal_bytes: string | null;
    inserted: string;
    updated: string;
    hot_updated: string;
    deleted: string;
  }>(
    db,
    "reading a sample's counters",
    `SELECT pg_catalog.pg_current_wal_insert_lsn()::text AS lsn,
            pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), $1::pg_lsn)::text AS wal_bytes,
            coalesce(sum(pg_catalog.pg_stat_get_xact_tuples_inserted(r.relid)), 0)::text AS inserted,
            coalesce(sum(pg_catalog.pg_stat_get_xact_tuples_updated(r.relid)), 0)::text AS updated,
            coalesce(sum(pg_catalog.pg_stat_get_xact_tuples_hot_updated(r.relid)), 0)::text AS hot_updated,
            coalesce(sum(pg_catalog.pg_stat_get_xact_tuples_deleted(r.relid)), 0)::text AS deleted
     FROM (SELECT t.relid FROM pg_catalog.pg_partition_tree(${oid}) t WHERE t.isleaf
           UNION SELECT ${oid}::regclass) r`,
    [since],
  );
  const row = rows[0]!;
  return {
    lsn: row.lsn,
    walBytes: row.wal_bytes === null ? null : Number(row.wal_bytes),
    inserted: Number(row.inserted),
    updated: Number(row.updated),
    hotUpdated: Number(row.hot_updated),
    deleted: Number(row.deleted),
  };
}

/** The locks a backend waits for now: when each wait began (its identity) and how long it has lasted. */
export async function lockWaits(db: Queryable, pid: number): Promise<{ since: string; ms: number }[]> {
  return query<{ since: string; ms: number }>(
    db,
    'watching a sample for lock waits',
    `SELECT l.waitstart::text AS since, (extract(epoch FROM pg_catalog.clock_timestamp() - l.waitstart) * 1000)::float8 AS ms
     FROM pg_catalog.pg_locks l WHERE l.pid = $1 AND NOT l.granted AND l.waitstart IS NOT NULL`,
    [pid],
  );
}

/** Stores a rehearsal's report on its migration's row, in a statement of its own. */
export async function storeRehearsal(db: Queryable, migrationId: bigint, report: unknown): Promise<void> {
  await query(
    db,
    "storing the rehearsal's report",
    'UPDATE batched_background_migrations SET rehearsal = $2::jsonb WHERE id = $1',
    [String(migrationId), JSON.stringify(report)],
  );
}
