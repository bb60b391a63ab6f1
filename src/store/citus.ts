/**
 * What `bbm migrate` sets up on a Citus coordinator so that a job's work and its record commit
 * atomically (docs/citus.md).
 *
 * A job's transaction writes pg-bbm's job row on the coordinator and the work's rows on the worker
 * nodes. Citus commits a write that reached one worker node (a router write: one shard) in one
 * phase: it sends that node COMMIT just before the coordinator commits its own part, so a crash
 * between the two leaves the work committed and the job not, and the range runs again. Citus commits
 * by two-phase commit (PREPARE on the workers, then the coordinator's commit with a record of the
 * decision in pg_dist_transaction, then COMMIT PREPARED; its recovery settles the rest from that
 * record) when the transaction modified a placement on the coordinator too. So pg-bbm keeps an
 * always empty Citus local table, CITUS_TWO_PHASE_TABLE (its one placement is on the coordinator),
 * and every job's record deletes from it (nothing): sql/functions/bbm_citus_two_phase.sql, called by
 * bbm_finish_job and by the final sweep's record. pg-bbm's own tables stay plain tables of the
 * coordinator: as Citus tables, Citus would refuse the engine's statements (volatile functions in
 * their UPDATEs, among others).
 */
import type pg from 'pg';
import { withStatement, type Queryable } from './db.ts';

/** The always empty Citus local table whose (empty) DELETE makes Citus commit a job by two-phase commit. */
export const CITUS_TWO_PHASE_TABLE = 'bbm_citus_two_phase_marker';

/**
 * Whether the database has the citus extension: statements that name Citus' functions or catalog
 * tables fail where it has not, so they run only after this says yes.
 */
export async function citusInstalled(db: Queryable): Promise<boolean> {
  const { rows } = await db.query<{ citus: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'citus') AS citus`,
  );
  return rows[0]?.citus ?? false;
}

/** What migrate found of Citus: absent, or whether jobs commit by two-phase commit (and why not). */
export type CitusSetup = { twoPhaseCommit: true } | { twoPhaseCommit: false; reason: string } | null;

/**
 * On a database with the citus extension, creates CITUS_TWO_PHASE_TABLE and adds it to Citus'
 * metadata (citus_add_local_table_to_metadata) unless it is there: no DDL when it is, so a role
 * without DDL privileges can run `bbm run`. Runs in migrate's transaction, under its lock. When
 * Citus cannot add it (the coordinator not in pg_dist_node: citus_set_coordinator_host), the
 * schema is migrated all the same and the reason returned; jobs whose work writes one shard then
 * commit in one phase.
 */
export async function setUpCitus(client: pg.ClientBase): Promise<CitusSetup> {
  if (!(await citusInstalled(client))) return null;
  const table = `public.${CITUS_TWO_PHASE_TABLE}`;
  const present = await client.query<{ added: boolean }>(
    `SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition WHERE logicalrelid = pg_catalog.to_regclass($1)) AS added`,
    [table],
  );
  if (present.rows[0]?.added) return { twoPhaseCommit: true };
  await client.query('SAVEPOINT bbm_citus');
  try {
    await client.query(`CREATE TABLE IF NOT EXISTS ${table} (CONSTRAINT ${CITUS_TWO_PHASE_TABLE}_empty CHECK (false))`);
    await client.query('SELECT citus_add_local_table_to_metadata($1)', [table]);
    await client.query('RELEASE SAVEPOINT bbm_citus');
    return { twoPhaseCommit: true };
  } catch (error) {
    try {
      await client.query('ROLLBACK TO SAVEPOINT bbm_citus');
    } catch (rollbackError) {
      throw withStatement(rollbackError, 'ROLLBACK TO SAVEPOINT bbm_citus');
    }
    return { twoPhaseCommit: false, reason: (error as Error).message };
  }
}
