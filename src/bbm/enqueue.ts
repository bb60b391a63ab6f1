/**
 * Adding a migration from code: `enqueueMigration` (checked, on any pg Pool, Client or PoolClient,
 * so it can join the caller's transaction) and `enqueueMigrationSql` (the same INSERT as text, for
 * a schema-migration tool's SQL file). `bbm enqueue` is a thin layer over the first.
 */
import type pg from 'pg';
import { INT4_MAX, INT8_MAX, INT8_MIN, MAX_LANES } from '../store/codes.ts';
import { isTarget, resolveTarget } from '../store/catalog.ts';
import { SqlState, sqlStateOf } from '../store/db.ts';
import { insertMigration, insertMigrationText, type NewMigration } from '../store/migration-rows.ts';
import { atomically } from '../store/tx.ts';
import { ConfigError } from './errors.ts';
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
 * caller's work, and a refusal leaves the caller's transaction usable). Throws ConfigError for
 * bad input (before touching the database) and EnqueueError when the database refuses it.
 */
export async function enqueueMigration(
  db: pg.Pool | pg.ClientBase,
  spec: MigrationSpec,
  { check = true }: EnqueueOptions = {},
): Promise<{ id: bigint }> {
  const row = newMigration(spec);
  try {
    const id = await atomically(db, async (client) => {
      if (check) {
        const target = await resolveTarget(client, row.tableName, row.columnName);
        if (!isTarget(target)) throw new EnqueueError(target.code, target.message);
      }
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

/**
 * The INSERT `enqueueMigration` runs, as SQL text, for a schema-migration file (drizzle-kit
 * custom migration, knex, node-pg-migrate). The input is checked as by `enqueueMigration`; the
 * catalog is not (the table may not exist yet when the text is written).
 */
export function enqueueMigrationSql(spec: MigrationSpec): string {
  return insertMigrationText(newMigration(spec));
}

/** The spec, checked, as a row. The table's CHECK constraints are the backstop for SQL inserts. */
function newMigration(spec: MigrationSpec): NewMigration {
  const text = (key: 'name' | 'work' | 'table' | 'column') => {
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
    columnName: text('column'),
    batchSize,
    minValue: min,
    maxValue: max,
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
