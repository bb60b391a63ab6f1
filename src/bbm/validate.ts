/**
 * A runner's checks of the migrations it takes: the work function, batching strategy, table and
 * column of the row, asked of the catalog once per migration while its row names the same ones.
 */
import { SERIAL_KEY_SET } from '../store/codes.ts';
import { isTarget, resolveTarget } from '../store/catalog.ts';
import type { Queryable } from '../store/db.ts';
import { keyBoundsProblem, keyList } from '../store/keys.ts';
import type { ValidatedMigration } from '../store/jobs.ts';
import { quotedTable } from '../store/migration-rows.ts';
import type { TakenMigration } from '../store/run-transaction.ts';
import { BbmError } from './errors.ts';
import { dialect } from './job.ts';
import type { JobKey, Work } from './types.ts';
import { isValidWorkName, type WorkRegistry } from './work-registry.ts';

/** What a runner remembers of a migration it validated. */
export interface Validated extends ValidatedMigration {
  work: Work<JobKey>;
  /** The table and key columns as jobs see them (Job.table, Job.column), quoted once. */
  quoted: { table: string; column: string };
  /** Set when a cut after a job found no range left to cut: none is sent after its jobs until one succeeds again. */
  cutDone?: boolean;
  /**
   * The fixed size the migration cut at when last taken: a lower one has the ranges still
   * waiting cut again (bbm_cut_range), so it clears `cutDone`.
   */
  fixedSize?: number;
}

export class Validations {
  /**
   * Migrations validated (catalog lookups included), by id. A take of a job checks the row still
   * names what was validated; entries go when a migration ends or its table errors.
   */
  readonly #validated = new Map<bigint, Validated>();

  constructor(private readonly registry: WorkRegistry) {}

  /**
   * The migration checked, or the error it must fail with; `not_mine` when its work function is
   * one this worker does not have (a run bound to one migration can take it: finalize).
   */
  async check(db: Queryable, migration: TakenMigration): Promise<Validated | BbmError | 'not_mine'> {
    const names = {
      tableName: migration.tableName,
      columnName: migration.columnName,
      jobSignatureName: migration.jobSignatureName,
    };
    const cached = this.#validated.get(migration.id);
    if (
      cached &&
      cached.tableName === names.tableName &&
      cached.columnName === names.columnName &&
      cached.jobSignatureName === names.jobSignatureName
    ) {
      return cached;
    }
    const work = this.registry.get(migration.jobSignatureName);
    if (!work && isValidWorkName(migration.jobSignatureName)) return 'not_mine';
    if (!work) {
      return new BbmError(
        'invalid_job_signature',
        `job_signature_name ${JSON.stringify(migration.jobSignatureName)} can never name a work function ` +
          '(letters, digits and _ . : / - only, at most 200)',
      );
    }
    if (migration.batchingStrategy !== null && migration.batchingStrategy !== SERIAL_KEY_SET) {
      return new BbmError(
        'invalid_batching_strategy',
        `batching_strategy ${JSON.stringify(migration.batchingStrategy)} is not supported; use NULL or '${SERIAL_KEY_SET}'`,
      );
    }
    const target = await resolveTarget(db, migration.tableName, migration.columnName);
    if (!isTarget(target)) return new BbmError(target.code, target.message);
    const bounds = await keyBoundsProblem(db, migration.id, target.key);
    if (bounds) return new BbmError('invalid_column', bounds);
    const quoted = {
      table: dialect.sqlToQuery(quotedTable(target)).sql,
      column: target.key ? keyList(target.key) : dialect.escapeName(target.column),
    };
    const validated: Validated = { ...names, target, work, quoted };
    this.#validated.set(migration.id, validated);
    return validated;
  }

  forget(id: bigint): void {
    this.#validated.delete(id);
  }

  /** Forgets every migration: a table or column went missing, and the catalog is asked again. */
  clear(): void {
    this.#validated.clear();
  }
}
