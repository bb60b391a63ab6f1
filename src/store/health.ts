/**
 * Database health signals that throttles read: WAL waiting to be archived, and replicas lagging.
 * Both need the pg_monitor role (or superuser); without it, or without archiving or replicas,
 * they report nothing rather than fail.
 */
import { sql } from 'drizzle-orm';
import { execOne, SqlState, sqlStateOf, type Queryable } from './db.ts';

/** WAL segments waiting for the archiver, or null when archiving is off or not visible. */
export async function readyWalSegments(db: Queryable): Promise<number | null> {
  try {
    const row = await execOne<{ archiving: boolean; ready: string | null }>(
      db,
      sql`
        SELECT current_setting('archive_mode') <> 'off' AS archiving,
               CASE WHEN current_setting('archive_mode') <> 'off'
                    THEN (SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready')
               END AS ready`,
    );
    return row?.archiving && row.ready !== null ? Number(row.ready) : null;
  } catch (error) {
    if (sqlStateOf(error) === SqlState.insufficientPrivilege) return null;
    throw error;
  }
}

/** The largest replay lag of a streaming replica, in bytes of WAL; null without replicas. */
export async function maxReplicaLagBytes(db: Queryable): Promise<number | null> {
  const row = await execOne<{ lag: string | null }>(
    db,
    sql`SELECT max(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)) AS lag FROM pg_catalog.pg_stat_replication`,
  );
  return row?.lag == null ? null : Number(row.lag);
}
