/**
 * SQL text over a key that is not a single integer column (Target.key, docs/keys.md): the key's
 * columns as a list, its values (a JSON array, as min_key and max_key store them) as a row of the
 * key's types, and the predicate a work function is handed for its range (Job.range). Every
 * comparison of keys happens in the database, on the key's row, in the columns' own collations:
 * never in JavaScript, and never as `a > x OR (a = x AND b > y)`, which the planner cannot bound.
 * Names and types come from the catalog (catalog.ts) and are quoted here.
 */
import pg from 'pg';
import { sql } from 'drizzle-orm';
import type { KeyColumn } from './catalog.ts';
import { KEY_ORDINAL_END } from './codes.ts';
import { execOne, sqlStateOf, type Queryable } from './db.ts';
import { inSavepoint } from './tx.ts';

export type Key = readonly KeyColumn[];

const { escapeIdentifier } = pg;

/** The key's columns, quoted, in index order: `"tenant_id", "id"`. */
export function keyList(key: Key): string {
  return key.map((column) => escapeIdentifier(column.name)).join(', ');
}

/** The same, descending: the order that finds the last key (an index scanned backwards). */
export function keyListDescending(key: Key): string {
  return key.map((column) => `${escapeIdentifier(column.name)} DESC`).join(', ');
}

/** The key's values as one JSON array: what min_key and max_key hold. */
export function keyJson(key: Key): string {
  return `pg_catalog.jsonb_build_array(${keyList(key)})`;
}

/**
 * A JSON array of key values (`json`, SQL text of a jsonb value) as a row of the key's types, in
 * the columns' collations (a comparison of two such rows is in the key's order, not the database's).
 */
export function keyRow(key: Key, json: string): string {
  return key
    .map((column, i) => {
      const value = `((${json}) ->> ${i})::${column.typeName}`;
      return column.collation === null ? value : `${value} COLLATE ${column.collation}`;
    })
    .join(', ');
}

/**
 * A bound as written by hand (a lone value, or an array) in its canonical form: the array of its
 * values cast to the key's types and back. A bound is read once, by the start: `'01/02/2024'` in
 * that session's DateStyle, `'now'` as then, `1.50` as numeric; every cut after reads the same
 * values, whatever its session's settings.
 */
export function canonicalKey(key: Key, json: string): string {
  return `CASE WHEN ${json} IS NULL THEN NULL ELSE pg_catalog.jsonb_build_array(${keyRow(key, asKeyArray(json))}) END`;
}

/** A JSON value of a key's bounds as written to min_key or max_key by hand: a lone value becomes a one-value array. */
export function asKeyArray(json: string): string {
  return `CASE WHEN ${json} IS NULL THEN NULL WHEN pg_catalog.jsonb_typeof(${json}) = 'array' THEN ${json} ELSE pg_catalog.jsonb_build_array(${json}) END`;
}

/**
 * A key as stored (`json`, SQL text of a jsonb value: a JSON array, or a lone value as given at
 * enqueue) as a text[] of each value's exact text, in column order; NULL for NULL
 * (sql/functions/bbm_key_text.sql, which the takes call too). What operators are shown: never a
 * JavaScript number, which would round a numeric or a bigint.
 */
export function keyTextArray(json: string): string {
  return `bbm_key_text(${asKeyArray(json)})`;
}

/**
 * A range's predicate for a work function: `sql` with placeholders numbered from `first`, and its
 * parameters. An integer key (`key` null) is `"id" BETWEEN $1 AND $2`; any other is a comparison
 * of the key's row with the range's first and last keys, cast to the key's types; an empty key
 * space (no keys) is `false`. A range of a key of several columns within one value of its first
 * column is that value and the rest of the key, `"tenant" = $1 AND "id" >= $2 AND "id" <= $3`:
 * the same rows, estimated by the planner on all of the key (a row comparison is estimated on its
 * first column), and on Citus, with the table distributed by that column, a statement on one
 * shard (the row comparison goes to all).
 */
export function rangePredicate(
  key: Key | null,
  column: string,
  bounds: { start: unknown; end: unknown } | { start: readonly string[] | null; end: readonly string[] | null },
  first: number,
): { sql: string; params: unknown[] } {
  if (!Number.isSafeInteger(first) || first < 1) throw new RangeError(`bad first placeholder ${first}`);
  if (key === null) {
    return {
      sql: `${escapeIdentifier(column)} BETWEEN $${first} AND $${first + 1}`,
      params: [bounds.start, bounds.end],
    };
  }
  const start = bounds.start as readonly string[] | null;
  const end = bounds.end as readonly string[] | null;
  if (start === null || end === null) return { sql: 'false', params: [] };
  if (key.length > 1 && start[0] === end[0]) {
    // Within one value of the first column: that value, and the rest of the key between the ends.
    const [lead, ...rest] = key;
    const between = rangePredicate(rest, column, { start: start.slice(1), end: end.slice(1) }, first + 1);
    return {
      sql: `${escapeIdentifier(lead!.name)} = $${first}::${lead!.typeName} AND ${between.sql}`,
      params: [start[0], ...between.params],
    };
  }
  const row = (from: number) => key.map((column, i) => `$${from + i}::${column.typeName}`).join(', ');
  const columns = key.length === 1 ? keyList(key) : `(${keyList(key)})`;
  const values = (from: number) => (key.length === 1 ? row(from) : `(${row(from)})`);
  return {
    sql: `${columns} >= ${values(first)} AND ${columns} <= ${values(first + key.length)}`,
    params: [...start, ...end],
  };
}

/**
 * What is wrong with a migration's bounds for its key, if anything: min_value and max_value bound
 * an integer key, min_key and max_key any other (each a value, or an array of one value per
 * column, that casts to the key's types). Must run inside a transaction (see keyBoundProblem).
 */
export async function keyBoundsProblem(
  db: Queryable,
  migrationId: bigint,
  key: Key | null,
): Promise<string | undefined> {
  const row = await execOne<{
    min_key: string | null;
    max_key: string | null;
    min_value: string;
    max_value: string | null;
  }>(
    db,
    sql`SELECT min_key::text, max_key::text, min_value::text, max_value::text FROM batched_background_migrations WHERE id = ${migrationId}`,
  );
  if (!row) return undefined;
  if (key === null) {
    return row.min_key !== null || row.max_key !== null
      ? 'min_key and max_key bound a key that is not a single integer column; an integer key is bounded by min_value and max_value'
      : undefined;
  }
  // min_value is 1 unless set (the ranges' order starts there); max_value is NULL until the start sets KEY_ORDINAL_END.
  const bound =
    row.max_value !== null && BigInt(row.max_value) !== KEY_ORDINAL_END
      ? 'max_value'
      : BigInt(row.min_value) !== 1n
        ? 'min_value'
        : undefined;
  if (bound) {
    return `${bound} bounds an integer key; a key of ${keyTypes(key)} is bounded by min_key and max_key`;
  }
  for (const [name, value] of [
    ['min_key', row.min_key],
    ['max_key', row.max_key],
  ] as const) {
    const problem = value === null ? undefined : await keyBoundProblem(db, key, name, value);
    if (problem) return problem;
  }
  if (row.min_key !== null && row.max_key !== null && (await keyBoundsReversed(db, key, row.min_key, row.max_key))) {
    return `min_key ${row.min_key} is after max_key ${row.max_key} in the key's order`;
  }
  return undefined;
}

/** The key's types, in column order: `integer, uuid`. */
export function keyTypes(key: Key): string {
  return key.map((c) => c.typeName).join(', ');
}

/**
 * What is wrong with one bound of a key, if anything: `json` (the text of a JSON value) must be a
 * value, or an array of one value per column, that casts to the key's types; `label` names it in
 * the message. Must run inside a transaction: the casts run in a savepoint, and an error of the
 * data class (22xxx: not a uuid, a bad date) is the answer.
 */
export async function keyBoundProblem(
  db: Queryable,
  key: Key,
  label: string,
  json: string,
): Promise<string | undefined> {
  const parsed: unknown = JSON.parse(json);
  const values = Array.isArray(parsed) ? parsed : [parsed];
  const expected = `${key.length === 1 ? 'a value' : `an array of ${key.length} values`} of ${keyTypes(key)}`;
  if (values.length !== key.length || values.some((v) => v === null || typeof v === 'object')) {
    return `${label} ${json} is not ${expected}`;
  }
  try {
    await inSavepoint(db, () => db.query(`SELECT ${keyRow(key, asKeyArray('$1::jsonb'))}`, [json]));
  } catch (error) {
    if (!sqlStateOf(error)?.startsWith('22')) throw error;
    return `${label} ${json} is not ${expected}: ${(error as Error).message}`;
  }
  return undefined;
}

/**
 * Whether bound `max` comes before bound `min` in the key's order (its columns' collations), both
 * bounds the text of JSON values that keyBoundProblem passed.
 */
export async function keyBoundsReversed(db: Queryable, key: Key, min: string, max: string): Promise<boolean> {
  const { rows } = await db.query<{ reversed: boolean }>(
    `SELECT (${keyRow(key, asKeyArray('$2::jsonb'))}) < (${keyRow(key, asKeyArray('$1::jsonb'))}) AS reversed`,
    [min, max],
  );
  return rows[0]?.reversed === true;
}
