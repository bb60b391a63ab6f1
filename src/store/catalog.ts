/**
 * Validation of a migration's table and column against the system catalog.
 * Names in migration rows are data: they are looked up here, and only the names
 * the catalog returns are ever quoted into SQL.
 */
import { sql } from 'drizzle-orm';
import { execOne, SqlState, sqlStateOf, type Queryable } from './db.ts';
import { inSavepoint } from './tx.ts';

/** A batched table and column as the catalog knows them. */
export interface Target {
  oid: number;
  schema: string;
  table: string;
  column: string;
  /**
   * Whether a valid, non-partial unique index has the column as its only key: then a range of
   * n consecutive keys holds at most n rows, and ranges where the keys are dense can be cut by
   * arithmetic (sql/functions/bbm_cut_range.sql).
   */
  unique: boolean;
}

export type TargetProblem = { code: 'invalid_table' | 'invalid_column'; message: string };

interface CatalogRow {
  oid: number | null;
  schema: string | null;
  table: string | null;
  relkind: string | null;
  attname: string | null;
  type_oid: number | null;
  type_name: string | null;
  indexed: boolean | null;
  is_unique: boolean | null;
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
/** int2, int4, int8: the key types whose ranges the engine can split. */
const INTEGER_TYPE_OIDS = new Set([21, 23, 20]);

function lookUp(db: Queryable, tableName: string, columnName: string): Promise<CatalogRow | undefined> {
  return execOne<CatalogRow>(
    db,
    sql`
      WITH rel AS (
        SELECT c.oid, n.nspname, c.relname, c.relkind
        FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid = pg_catalog.to_regclass(${tableName}::text)
      )
      SELECT rel.oid::int AS oid, rel.nspname AS schema, rel.relname AS table, rel.relkind::text AS relkind,
             a.attname AS attname, a.atttypid::int AS type_oid,
             pg_catalog.format_type(a.atttypid, a.atttypmod) AS type_name,
             EXISTS (
               SELECT 1
               FROM pg_catalog.pg_index i
               JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid
               JOIN pg_catalog.pg_am am ON am.oid = ic.relam
               WHERE i.indrelid = rel.oid AND i.indkey[0] = a.attnum
                 AND am.amname = 'btree' AND i.indisvalid AND i.indpred IS NULL
             ) AS indexed,
             EXISTS (
               SELECT 1
               FROM pg_catalog.pg_index i
               WHERE i.indrelid = rel.oid AND i.indkey[0] = a.attnum AND i.indnkeyatts = 1
                 AND i.indisunique AND i.indisvalid AND i.indpred IS NULL AND i.indexprs IS NULL
             ) AS is_unique
      FROM rel
      LEFT JOIN pg_catalog.pg_attribute a
        ON a.attrelid = rel.oid AND a.attname = ${columnName}::text AND a.attnum > 0 AND NOT a.attisdropped`,
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
 * to lower case, resolved through search_path); `column_name` must match the column exactly.
 */
export async function resolveTarget(
  db: Queryable,
  tableName: string,
  columnName: string,
): Promise<Target | TargetProblem> {
  let row: CatalogRow | undefined;
  try {
    row = await inSavepoint(db, () => lookUp(db, tableName, columnName));
  } catch (error) {
    if (isNotATableName(error)) {
      return { code: 'invalid_table', message: `table ${JSON.stringify(tableName)}: ${(error as Error).message}` };
    }
    throw error;
  }
  if (!row || row.oid === null || row.schema === null || row.table === null) {
    return { code: 'invalid_table', message: `table ${JSON.stringify(tableName)} does not exist or is not visible` };
  }
  const qualified = `${row.schema}.${row.table}`;
  if (row.relkind !== 'r' && row.relkind !== 'p') {
    const kind = RELKIND_NAMES[row.relkind ?? ''] ?? `of relkind ${row.relkind}`;
    return { code: 'invalid_table', message: `${qualified} is ${kind}, not a table` };
  }
  if (row.attname === null || row.type_oid === null) {
    return { code: 'invalid_column', message: `column ${JSON.stringify(columnName)} does not exist in ${qualified}` };
  }
  if (!INTEGER_TYPE_OIDS.has(row.type_oid)) {
    return {
      code: 'invalid_column',
      message: `column ${qualified}.${row.attname} is ${row.type_name}; batching needs smallint, integer or bigint`,
    };
  }
  if (!row.indexed) {
    return {
      code: 'invalid_column',
      message: `column ${qualified}.${row.attname} has no valid, non-partial btree index leading with it; batching it would scan the table`,
    };
  }
  return { oid: row.oid, schema: row.schema, table: row.table, column: row.attname, unique: row.is_unique === true };
}

export function isTarget(value: Target | TargetProblem): value is Target {
  return 'oid' in value;
}
