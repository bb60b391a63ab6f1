/**
 * Validation of a migration's table and column against the system catalog.
 * Names in migration rows are data: they are looked up here, and only the names
 * the catalog returns are ever quoted into SQL.
 */
import { sql } from 'drizzle-orm';
import type pg from 'pg';
import { exec, execOne, SqlState, sqlStateOf, type Queryable } from './db.ts';
import { inSavepoint } from './tx.ts';

/** A batched table and key as the catalog knows them. */
export interface Target {
  oid: number;
  schema: string;
  table: string;
  /** The key's column, or its first column. */
  column: string;
  /**
   * Whether a valid, non-partial unique index has the column as its only key: then a range of
   * n consecutive keys holds at most n rows, and ranges where the keys are dense can be cut by
   * arithmetic (sql/functions/bbm_cut_range.sql). Always false for a key that is not an integer.
   */
  unique: boolean;
  /**
   * A key that is not a single integer column (uuid, text, timestamps, numeric, or several
   * columns): its columns in index order, batched on min_key and max_key (docs/keys.md). Null for
   * a single integer column, batched on min_value and max_value.
   */
  key: readonly KeyColumn[] | null;
}

/** One column of a key that is not a single integer column. */
export interface KeyColumn {
  name: string;
  /** Its type (pg_type oid), which its values are cast to from their JSON form. */
  typeOid: number;
  /** The type's name as format_type prints it (without a type modifier), quoted where it must be: what its values are cast to in SQL text. */
  typeName: string;
  /**
   * The column's collation, schema-qualified and quoted (null for a type without one): a cast
   * value takes the database's default collation, so two values compared with no column between
   * them must name the column's.
   */
  collation: string | null;
}

export type TargetProblem = { code: 'invalid_table' | 'invalid_column'; message: string };

interface TableRow {
  oid: number | null;
  schema: string | null;
  table: string | null;
  relkind: string | null;
}

interface ColumnRow {
  ord: number;
  name: string;
  attnum: number | null;
  type_oid: number | null;
  type_name: string | null;
  type_base: string | null;
  not_null: boolean | null;
  citext: boolean;
  collation: string | null;
}

interface IndexRow {
  /** A valid, non-partial btree index leads with the columns, in order, with their types' default ordering and collations. */
  indexed: boolean;
  /** A valid, non-partial unique index has the (single) column as its only key. */
  is_unique: boolean;
}

const RELKIND_NAMES: Record<string, string> = {
  v: 'a view',
  m: 'a materialized view',
  f: 'a foreign table',
  S: 'a sequence',
  i: 'an index',
  I: 'a partitioned index',
  c: 'a composite type',
  t: 'a TOAST table',
};
/** int2, int4, int8: a single column of these is batched on min_value and max_value, with dense cuts. */
const INTEGER_TYPE_OIDS = new Set([21, 23, 20]);
/**
 * The types a key of any other kind may have: their values keep their exact value and order
 * through their JSON form (to_jsonb, then ->> and a cast), whatever the session's settings. Floats
 * are not among them (their text form depends on extra_float_digits), nor are types without a
 * btree ordering that users expect of a key.
 */
const KEY_TYPE_NAMES = new Set([
  'smallint',
  'integer',
  'bigint',
  'numeric',
  'uuid',
  'text',
  'character varying',
  'pg_catalog.bpchar',
  'date',
  'timestamp without time zone',
  'timestamp with time zone',
]);
const KEY_TYPES_TEXT =
  'smallint, integer, bigint, numeric, uuid, text, varchar, char, citext, date, timestamp, timestamptz';
/** At most this many columns in a key. */
const MAX_KEY_COLUMNS = 8;

function lookUpTable(db: Queryable, tableName: string): Promise<TableRow | undefined> {
  return execOne<TableRow>(
    db,
    sql`
      SELECT c.oid::int AS oid, n.nspname AS schema, c.relname AS table, c.relkind::text AS relkind
      FROM pg_catalog.pg_class c
      JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
      WHERE c.oid = pg_catalog.to_regclass(${tableName}::text)`,
  );
}

function lookUpColumns(db: Queryable, oid: number, names: readonly string[]): Promise<ColumnRow[]> {
  return exec<ColumnRow>(
    db,
    sql`
      SELECT k.ord::int AS ord, k.name, a.attnum::int AS attnum, a.atttypid::int AS type_oid,
             pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name,
             -- Without the modifier, as casts name it: format_type calls bpchar without one "character", which is char(1).
             CASE WHEN a.atttypid = 'pg_catalog.bpchar'::regtype THEN 'pg_catalog.bpchar'
                  ELSE pg_catalog.format_type(a.atttypid, NULL) END AS type_base, a.attnotnull AS not_null,
             -- citext is an extension's type (its name alone could be any type's).
             EXISTS (SELECT 1 FROM pg_catalog.pg_depend d JOIN pg_catalog.pg_extension e ON e.oid = d.refobjid
                     WHERE d.classid = 'pg_catalog.pg_type'::regclass AND d.objid = a.atttypid
                       AND d.refclassid = 'pg_catalog.pg_extension'::regclass AND d.deptype = 'e'
                       AND e.extname = 'citext') AS citext,
             pg_catalog.quote_ident(cn.nspname) || '.' || pg_catalog.quote_ident(co.collname) AS collation
      FROM unnest(${sql.param(names)}::text[]) WITH ORDINALITY AS k(name, ord)
      LEFT JOIN pg_catalog.pg_attribute a
        ON a.attrelid = ${oid}::oid AND a.attname = k.name AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_catalog.pg_collation co ON co.oid = a.attcollation
      LEFT JOIN pg_catalog.pg_namespace cn ON cn.oid = co.collnamespace
      ORDER BY k.ord`,
  );
}

/**
 * Whether an index serves the key: a valid, non-partial btree index whose leading columns are the
 * key's, in order, each with its type's default btree ordering and the column's own collation, so
 * that ORDER BY the key and comparisons with it walk the index (a text_pattern_ops index or one in
 * another collation orders differently).
 */
function lookUpIndex(db: Queryable, oid: number, attnums: readonly number[]): Promise<IndexRow | undefined> {
  return execOne<IndexRow>(
    db,
    sql`
      WITH key AS (SELECT k.attnum, k.i - 1 AS pos FROM unnest(${sql.param(attnums)}::int[]) WITH ORDINALITY AS k(attnum, i))
      SELECT EXISTS (
               SELECT 1
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_catalog.pg_am am ON am.oid = ic.relam
               WHERE i.indrelid = ${oid}::oid AND am.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL
                 AND i.indnkeyatts >= (SELECT count(*) FROM key)
                 AND NOT EXISTS (
                   SELECT 1 FROM key
                   JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = key.attnum
                   LEFT JOIN pg_catalog.pg_opclass oc ON oc.oid = i.indclass[key.pos]
                   WHERE i.indkey[key.pos] <> key.attnum OR NOT coalesce(oc.opcdefault, false)
                      OR i.indcollation[key.pos] <> a.attcollation)
                 -- Every column ascending (0), or every one descending with NULLS FIRST (3), which
                 -- scans backwards as ascending: mixed directions make ORDER BY the key a sort.
                 AND (SELECT min(i.indoption[key.pos]) = max(i.indoption[key.pos])
                             AND min(i.indoption[key.pos]) IN (0, 3) FROM key)
             ) AS indexed,
             EXISTS (
               SELECT 1
               FROM pg_catalog.pg_index i
               WHERE i.indrelid = ${oid}::oid AND (SELECT count(*) FROM key) = 1
                 AND i.indkey[0] = (SELECT attnum FROM key) AND i.indnkeyatts = 1
                 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
             ) AS is_unique`,
  );
}

/**
 * What to_regclass raises instead of answering NULL: names it refuses outright. Such a name is a
 * bad table name, as much as one that resolves to nothing. (PostgreSQL 16 and later answer NULL
 * for most malformed names; earlier versions raise 42602 or 22023 for them.)
 */
const NOT_A_TABLE_NAME = new Set<string>([
  SqlState.undefinedTable, // 42P01
  SqlState.syntaxError, // 42601: improper relation name (too many dotted names)
  SqlState.invalidName, // 42602: invalid name syntax
  SqlState.featureNotSupported, // 0A000: cross-database references are not implemented
  SqlState.invalidParameterValue, // 22023
  SqlState.invalidSchemaName, // 3F000: schema does not exist
]);

/**
 * Whether an error raised by the lookup says the table name names no table. Anything else (no
 * privilege, a pooler's server connection in a state of another client's, a lost connection, a
 * timeout) says nothing about the table: the caller gets it thrown, to retry or fail the run.
 */
export function isNotATableName(error: unknown): boolean {
  const state = sqlStateOf(error);
  return state !== undefined && NOT_A_TABLE_NAME.has(state);
}

/**
 * Must run inside a transaction: the lookup runs in a savepoint, because to_regclass returns NULL
 * for most malformed names but raises for some ("too many dotted names", cross-database
 * references), and the error must not abort the caller's transaction. Those errors are a bad
 * table name (invalid_table); every other error is thrown.
 *
 * `table_name` is read as SQL would read it (optionally schema-qualified, unquoted parts folded
 * to lower case, resolved through search_path). `column_name` is a column's exact name, or, when
 * no column has that name, a key of several columns named in index order, separated by commas
 * (spaces around a name are not part of it), e.g. `tenant_id,id`.
 */
export async function resolveTarget(
  db: Queryable,
  tableName: string,
  columnName: string,
): Promise<Target | TargetProblem> {
  try {
    return await inSavepoint(db, () => lookUp(db, tableName, columnName));
  } catch (error) {
    if (isNotATableName(error)) {
      return { code: 'invalid_table', message: `table ${JSON.stringify(tableName)}: ${(error as Error).message}` };
    }
    throw error;
  }
}

async function lookUp(db: Queryable, tableName: string, columnName: string): Promise<Target | TargetProblem> {
  const table = await lookUpTable(db, tableName);
  if (!table || table.oid === null || table.schema === null || table.table === null) {
    return { code: 'invalid_table', message: `table ${JSON.stringify(tableName)} does not exist or is not visible` };
  }
  const qualified = `${table.schema}.${table.table}`;
  if (table.relkind !== 'r' && table.relkind !== 'p') {
    const kind = RELKIND_NAMES[table.relkind ?? ''] ?? `of relkind ${table.relkind}`;
    return { code: 'invalid_table', message: `${qualified} is ${kind}, not a table` };
  }
  let columns = await lookUpColumns(db, table.oid, [columnName]);
  if (columns[0]?.attnum === null && columnName.includes(',')) {
    const names = columnName.split(',').map((name) => name.trim());
    const problem = keyListProblem(names, columnName);
    if (problem) return { code: 'invalid_column', message: problem };
    columns = await lookUpColumns(db, table.oid, names);
  }
  const missing = columns.find((c) => c.attnum === null || c.type_oid === null);
  if (missing) {
    return { code: 'invalid_column', message: `column ${JSON.stringify(missing.name)} does not exist in ${qualified}` };
  }
  const first = columns[0]!;
  const integer = columns.length === 1 && INTEGER_TYPE_OIDS.has(first.type_oid!);
  const keyName =
    columns.length === 1
      ? `column ${qualified}.${first.name}`
      : `key (${columns.map((c) => c.name).join(', ')}) of ${qualified}`;
  if (!integer) {
    for (const c of columns) {
      if (c.citext && c.type_base !== 'citext') {
        return {
          code: 'invalid_column',
          message:
            `column ${qualified}.${c.name} is ${c.type_name}, whose operators are not on the search_path: ` +
            `comparisons of its values would compare them as text; add the extension's schema to the role's search_path`,
        };
      }
      if (!KEY_TYPE_NAMES.has(c.type_base ?? '') && !c.citext) {
        return {
          code: 'invalid_column',
          message: `column ${qualified}.${c.name} is ${c.type_name}; a key's columns may be ${KEY_TYPES_TEXT}`,
        };
      }
      if (!c.not_null) {
        return {
          code: 'invalid_column',
          message:
            `column ${qualified}.${c.name} may hold NULL, and rows with a NULL key would never be in a range; ` +
            `make it NOT NULL (ALTER TABLE ... ALTER COLUMN ... SET NOT NULL) or batch on another key`,
        };
      }
    }
  }
  const index = await lookUpIndex(
    db,
    table.oid,
    columns.map((c) => c.attnum!),
  );
  if (!index?.indexed) {
    const leading = columns.length === 1 ? 'leading with it' : 'whose leading columns are these, in this order';
    return {
      code: 'invalid_column',
      message:
        `${keyName} has no valid, non-partial btree index ${leading}` +
        `${integer ? ' (ascending, or descending NULLS FIRST)' : " (in the columns' own collations, with their default ordering, all ascending or all descending NULLS FIRST)"}; batching it would scan the table`,
    };
  }
  return {
    oid: table.oid,
    schema: table.schema,
    table: table.table,
    column: first.name,
    unique: integer && index.is_unique,
    key: integer
      ? null
      : columns.map((c) => ({
          name: c.name,
          typeOid: c.type_oid!,
          typeName: c.type_base!,
          collation: c.collation,
        })),
  };
}

/** What is wrong with a key named as a list of columns, if anything. */
function keyListProblem(names: readonly string[], columnName: string): string | undefined {
  if (names.some((name) => name.length === 0)) {
    return `column_name ${JSON.stringify(columnName)} has an empty column name in its list`;
  }
  if (new Set(names).size !== names.length) {
    return `column_name ${JSON.stringify(columnName)} names a column twice`;
  }
  if (names.length > MAX_KEY_COLUMNS) {
    return `column_name ${JSON.stringify(columnName)} names ${names.length} columns; a key has at most ${MAX_KEY_COLUMNS}`;
  }
  return undefined;
}

export function isTarget(value: Target | TargetProblem): value is Target {
  return 'oid' in value;
}

/** Runs text with parameters: a pool, a client, or a job's query handle (Job.query). */
export interface TextQueryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/**
 * The names among `names` that are not columns of `table` (a name as SQL reads it: Job.table, say,
 * quoted and schema-qualified), in their order; every name when no such table is visible. System
 * columns (ctid, xmin…) and dropped ones are not columns here.
 */
export async function missingColumns(db: TextQueryable, table: string, names: readonly string[]): Promise<string[]> {
  const { rows } = await db.query<{ name: string }>(
    `SELECT k.name
     FROM unnest($2::text[]) WITH ORDINALITY AS k(name, ord)
     WHERE NOT EXISTS (
       SELECT 1 FROM pg_catalog.pg_attribute a
       WHERE a.attrelid = pg_catalog.to_regclass($1::text) AND a.attname = k.name AND a.attnum > 0 AND NOT a.attisdropped)
     ORDER BY k.ord`,
    [table, names],
  );
  return rows.map((row) => row.name);
}
