/**
 * Adding a migration from code: `enqueueMigration` (checked, on any pg Pool, Client or PoolClient,
 * so it can join the caller's transaction) and `enqueueMigrationSql` (the same INSERT as text, for
 * a schema-migration tool's SQL file). `bbm enqueue` is a thin layer over the first.
 */
import type pg from 'pg';
import { INT4_MAX, INT8_MAX, INT8_MIN, MAX_LANES } from '../store/codes.ts';
import { isTarget, resolveTarget, type Target } from '../store/catalog.ts';
import { SqlState, sqlStateOf, type Queryable } from '../store/db.ts';
import { keyBoundProblem, keyBoundsReversed, keyTypes, type Key } from '../store/keys.ts';
import { insertMigration, insertMigrationText, type NewMigration } from '../store/migration-rows.ts';
import { atomically } from '../store/tx.ts';
import { ConfigError } from './errors.ts';
import { argumentsJson, keyBoundJson } from './json-values.ts';
import type { EnqueueOptions, MigrationSpec } from './types.ts';
import { isValidWorkName } from './work-registry.ts';

export type EnqueueErrorCode = 'invalid_table' | 'invalid_column' | 'duplicate_name';

/** The database refused the migration; nothing was written. */
export class EnqueueError extends Error {
  override readonly name = 'EnqueueError';
  constructor(
    readonly code: EnqueueErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/**
 * Checks a migration against the catalog and inserts it, atomically: on a Pool in a transaction
 * of its own; on a client inside a transaction, in a savepoint of it (so it commits with the
 * caller's work, and a refusal leaves the caller's transaction usable). The check resolves the
 * table and key, and bounds the key as its kind requires: `min`/`max` for a single integer column,
 * `minKey`/`maxKey` (one value per column, each cast to its column's type) for any other. Throws
 * ConfigError for bad input (before touching the database) and EnqueueError when the database
 * refuses it.
 */
export async function enqueueMigration(
  db: pg.Pool | pg.ClientBase,
  spec: MigrationSpec,
  { check = true }: EnqueueOptions = {},
): Promise<{ id: bigint }> {
  const row = newMigration(spec);
  try {
    const id = await atomically(db, async (client) => {
      if (check) await checkTarget(client, row);
      return await insertMigration(client, row);
    });
    return { id };
  } catch (error) {
    if (sqlStateOf(error) === SqlState.uniqueViolation) {
      throw new EnqueueError('duplicate_name', `a migration named ${JSON.stringify(spec.name)} already exists`, {
        cause: error,
      });
    }
    throw error;
  }
}

/** Resolves the row's table and key in the catalog and checks its bounds against the key; throws EnqueueError. */
async function checkTarget(db: Queryable, row: NewMigration): Promise<void> {
  const target = await resolveTarget(db, row.tableName, row.columnName);
  if (!isTarget(target)) throw new EnqueueError(target.code, target.message);
  const problem =
    target.key === null ? integerKeyBoundsProblem(row, target) : await keyBoundsProblemOf(db, row, target, target.key);
  if (problem) throw new EnqueueError('invalid_column', problem);
}

/** A single integer column is bounded by min_value and max_value alone. */
function integerKeyBoundsProblem(row: NewMigration, target: Target): string | undefined {
  if (row.minKey === undefined && row.maxKey === undefined) return undefined;
  return (
    `minKey and maxKey bound a key that is not a single integer column; ` +
    `${target.schema}.${target.table}.${target.column} is one: give min and max`
  );
}

/** Any other key is bounded by min_key and max_key, which must cast to its types, in order. */
async function keyBoundsProblemOf(
  db: Queryable,
  row: NewMigration,
  target: Target,
  key: Key,
): Promise<string | undefined> {
  const name =
    key.length === 1
      ? `column ${target.schema}.${target.table}.${target.column}`
      : `key (${key.map((c) => c.name).join(', ')}) of ${target.schema}.${target.table}`;
  if (row.minValue !== undefined || row.maxValue !== undefined) {
    return `min and max bound a single integer column; the ${name} (${keyTypes(key)}) is bounded by minKey and maxKey`;
  }
  for (const [label, json] of [
    ['minKey', row.minKey],
    ['maxKey', row.maxKey],
  ] as const) {
    const problem = json === undefined ? undefined : await keyBoundProblem(db, key, label, json);
    if (problem) return `${problem} (the ${name})`;
  }
  if (
    row.minKey !== undefined &&
    row.maxKey !== undefined &&
    (await keyBoundsReversed(db, key, row.minKey, row.maxKey))
  ) {
    return `maxKey ${row.maxKey} is below minKey ${row.minKey} in the order of the ${name}`;
  }
  return undefined;
}

/**
 * The INSERT `enqueueMigration` runs, as SQL text, for a schema-migration file (drizzle-kit
 * custom migration, knex, node-pg-migrate). The input is checked as by `enqueueMigration`; the
 * catalog is not (the table may not exist yet when the text is written): bounds are checked
 * against the number of columns named, not the key's types.
 */
export function enqueueMigrationSql(spec: MigrationSpec): string {
  return insertMigrationText(newMigration(spec));
}

/** The spec, checked, as a row. The table's CHECK constraints are the backstop for SQL inserts. */
function newMigration(spec: MigrationSpec): NewMigration {
  const text = (key: 'name' | 'work' | 'table') => {
    const value: unknown = spec[key];
    if (typeof value !== 'string' || value.trim() === '')
      throw new ConfigError(`${key} must be a non-empty string, got ${JSON.stringify(value)}`);
    return value;
  };
  const name = text('name');
  const work = text('work');
  if (!isValidWorkName(work))
    throw new ConfigError(`work ${JSON.stringify(work)} is not a valid work name (letters, digits, _ . : / -)`);
  const min = bigintOf(spec, 'min');
  const max = bigintOf(spec, 'max');
  if (max !== undefined && max < (min ?? 1n)) throw new ConfigError(`max ${max} is below min ${min ?? 1n}`);
  const columnName = columnNameOf(spec.column);
  const keyBounds = keyBoundsOf(spec, columnName, min !== undefined || max !== undefined);
  const minBatchSize = integerOf(spec, 'minBatchSize', 1, INT4_MAX);
  const maxBatchSize = integerOf(spec, 'maxBatchSize', 1, INT4_MAX);
  if (minBatchSize !== undefined && maxBatchSize !== undefined && maxBatchSize < minBatchSize) {
    throw new ConfigError(`maxBatchSize ${maxBatchSize} is below minBatchSize ${minBatchSize}`);
  }
  if (spec.paused === true && spec.needsApproval === true)
    throw new ConfigError('paused and needsApproval contradict each other: a migration awaiting approval is not taken');
  const batchSize = integerOf(spec, 'batchSize', 1, INT4_MAX);
  if (batchSize === undefined) throw new ConfigError('batchSize is required');
  return {
    name,
    jobSignatureName: work,
    tableName: text('table'),
    columnName,
    batchSize,
    minValue: min,
    maxValue: max,
    ...keyBounds,
    jobArguments: argumentsJson(spec.args),
    paused: spec.paused === true,
    awaitingApproval: spec.needsApproval === true,
    maxParallelJobs: integerOf(spec, 'lanes', 1, MAX_LANES),
    targetJobMs: integerOf(spec, 'targetJobMs', 1, INT4_MAX),
    minBatchSize,
    maxBatchSize,
  };
}

function integerOf(
  spec: MigrationSpec,
  key: 'batchSize' | 'lanes' | 'targetJobMs' | 'minBatchSize' | 'maxBatchSize',
  min: number,
  max: number,
): number | undefined {
  const value: unknown = spec[key];
  if (value === undefined) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new ConfigError(`${key} must be an integer from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
  return value;
}

function bigintOf(spec: MigrationSpec, key: 'min' | 'max'): bigint | undefined {
  const value: unknown = spec[key];
  if (value === undefined) return undefined;
  const parsed =
    typeof value === 'bigint'
      ? value
      : typeof value === 'number' && Number.isSafeInteger(value)
        ? BigInt(value)
        : undefined;
  if (parsed === undefined || parsed < INT8_MIN || parsed > INT8_MAX) {
    throw new ConfigError(
      `${key} must be a bigint or a safe integer within the bigint range, got ${typeof value === 'bigint' ? value : JSON.stringify(value)}`,
    );
  }
  return parsed;
}

/**
 * column_name: a column's name, or an array of names joined by commas (what resolveTarget reads as
 * a key of several columns, in index order). An element may not be empty, hold a comma, or repeat.
 */
function columnNameOf(column: unknown): string {
  if (typeof column === 'string') {
    if (column.trim() === '') throw new ConfigError(`column must be a non-empty string, got ${JSON.stringify(column)}`);
    return column;
  }
  if (!Array.isArray(column) || column.length === 0) {
    throw new ConfigError(`column must be a column name or a non-empty array of them, got ${JSON.stringify(column)}`);
  }
  const names: readonly unknown[] = column;
  names.forEach((name, i) => {
    if (typeof name !== 'string' || name.trim() === '') {
      throw new ConfigError(`column[${i}] must be a non-empty string, got ${JSON.stringify(name)}`);
    }
    if (name.includes(',')) {
      throw new ConfigError(`column[${i}] ${JSON.stringify(name)} holds a comma, which separates a key's columns`);
    }
    if (names.slice(0, i).some((other) => typeof other === 'string' && other.trim() === name.trim())) {
      throw new ConfigError(`column[${i}] ${JSON.stringify(name)} names a column the key already has`);
    }
  });
  return names.join(',');
}

/**
 * min_key and max_key as JSON text, checked against what can be known without the catalog: they
 * bound a key that is not a single integer column, so not with min or max, nor min or max with a
 * key of several columns; and a bound has one value per column named.
 */
function keyBoundsOf(
  spec: MigrationSpec,
  columnName: string,
  integerBounds: boolean,
): Pick<NewMigration, 'minKey' | 'maxKey'> {
  const columns = columnName.includes(',') ? columnName.split(',').length : 1;
  const min = keyBoundJson(spec.minKey, 'minKey');
  const max = keyBoundJson(spec.maxKey, 'maxKey');
  if (integerBounds && (min || max)) {
    throw new ConfigError(
      'min and max bound a single integer column, minKey and maxKey any other key: give one pair, not both',
    );
  }
  if (integerBounds && columns > 1) {
    throw new ConfigError(
      `min and max bound a single integer column; a key of several columns (${columnName}) is bounded by minKey and maxKey`,
    );
  }
  for (const [label, bound] of [
    ['minKey', min],
    ['maxKey', max],
  ] as const) {
    if (bound && bound.count !== columns) {
      throw new ConfigError(
        `${label} ${bound.json} has ${bound.count} value${bound.count === 1 ? '' : 's'}; ` +
          `the key ${JSON.stringify(columnName)} has ${columns} column${columns === 1 ? '' : 's'}: give one value per column`,
      );
    }
  }
  return { minKey: min?.json, maxKey: max?.json };
}
