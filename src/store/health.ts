/**
 * Database health signals that health holds and throttles read: WAL waiting to be archived,
 * replicas lagging, the oldest open transaction, replication slots, vacuums running. They need
 * the pg_monitor role (or superuser) to see everything; without it, or without archiving or
 * replicas, they report what they can see (or nothing) rather than fail. The vacuums are matched
 * to the migrations' tables by the hold (migration-rows.ts, holdVacuumingMigrations).
 */
import { sql } from 'drizzle-orm';
import { exec, execOne, type Queryable } from './db.ts';

/**
 * The signals' reads, as SQL of their own: the coordinator of a Citus cluster reads them on its
 * worker nodes too (citus-nodes.ts). Each reads this server and no parameter.
 */
export const SIGNAL_SQL = {
  /**
   * `ready`: WAL segments waiting for the archiver; NULL when archiving is off, or when the role
   * may not list the archiver's directory (pg_monitor, or superuser, may).
   */
  readyWal: `
    SELECT CASE WHEN current_setting('archive_mode') <> 'off'
                 AND pg_catalog.has_function_privilege('pg_catalog.pg_ls_archive_statusdir()', 'EXECUTE')
                THEN (SELECT count(*) FROM pg_catalog.pg_ls_archive_statusdir() WHERE name LIKE '%.ready')
           END AS ready`,
  /** `lag`: the largest replay lag of a streaming replica in bytes, NULL without replicas. */
  replicaLag: `SELECT max(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), replay_lsn)) AS lag
               FROM pg_catalog.pg_stat_replication`,
  /** `age_ms`, `pid`: the oldest transaction holding back vacuum (see oldestTransaction); no row when none. */
  oldestTransaction: `
    SELECT age_ms, pid FROM (
      SELECT extract(epoch FROM now() - xact_start) * 1000 AS age_ms, pid
      FROM pg_catalog.pg_stat_activity
      WHERE datname = current_database() AND xact_start IS NOT NULL AND pid <> pg_catalog.pg_backend_pid()
        AND backend_type = 'client backend' AND (backend_xid IS NOT NULL OR backend_xmin IS NOT NULL)
      UNION ALL
      SELECT extract(epoch FROM now() - prepared) * 1000, NULL
      FROM pg_catalog.pg_prepared_xacts WHERE database = current_database()
    ) open ORDER BY age_ms DESC LIMIT 1`,
  /**
   * `relid`, `schema`, `relname`, `kind`: the vacuums running in this database, each of a kind:
   * `vacuum` (a manual VACUUM), `anti-wraparound autovacuum` or `autovacuum`. Other roles'
   * vacuums, autovacuum's included, are visible with pg_monitor.
   */
  vacuums: `
    SELECT p.relid, n.nspname AS schema, c.relname,
           CASE WHEN a.backend_type IS DISTINCT FROM 'autovacuum worker' THEN 'vacuum'
                WHEN a.query LIKE '%(to prevent wraparound)' THEN 'anti-wraparound autovacuum'
                ELSE 'autovacuum' END AS kind
    FROM pg_catalog.pg_stat_progress_vacuum p
    JOIN pg_catalog.pg_class c ON c.oid = p.relid
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_catalog.pg_stat_activity a ON a.pid = p.pid
    WHERE p.datname = current_database()`,
  /** `name`, `type`, `retained`, `safe`: the replication slots that retain WAL (see replicationSlots). */
  slots: `
    SELECT slot_name AS name, slot_type AS type,
           pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn) AS retained,
           safe_wal_size AS safe
    FROM pg_catalog.pg_replication_slots
    WHERE restart_lsn IS NOT NULL AND NOT pg_catalog.pg_is_in_recovery()`,
} as const;

/** WAL segments waiting for the archiver, or null when archiving is off or not visible. */
export async function readyWalSegments(db: Queryable): Promise<number | null> {
  const row = await execOne<{ ready: string | null }>(db, sql.raw(SIGNAL_SQL.readyWal));
  return row?.ready == null ? null : Number(row.ready);
}

/** The largest replay lag of a streaming replica, in bytes of WAL; null without replicas. */
export async function maxReplicaLagBytes(db: Queryable): Promise<number | null> {
  const row = await execOne<{ lag: string | null }>(db, sql.raw(SIGNAL_SQL.replicaLag));
  return row?.lag == null ? null : Number(row.lag);
}

/**
 * The oldest transaction open in this database that holds back vacuum's horizon (it has an xid
 * or a snapshot), or a prepared transaction: its age and backend pid (null for a prepared one).
 * Other roles' transactions are visible with pg_monitor (pg_read_all_stats); without it, only
 * this role's own. Null when none is open.
 */
export async function oldestTransaction(db: Queryable): Promise<{ ageMs: number; pid: number | null } | null> {
  const row = await execOne<{ age_ms: number; pid: number | null }>(db, sql.raw(SIGNAL_SQL.oldestTransaction));
  return row ? { ageMs: Number(row.age_ms), pid: row.pid } : null;
}

/** Whether the server is a standby (in recovery): it takes no writes, so no run can do anything there. */
export async function inRecovery(db: Queryable): Promise<boolean> {
  const row = await execOne<{ standby: boolean }>(db, sql`SELECT pg_catalog.pg_is_in_recovery() AS standby`);
  return row?.standby ?? false;
}

/** A replication slot as the slot hold sees it. */
export interface SlotWal {
  name: string;
  type: 'logical' | 'physical';
  /** WAL the slot keeps from being removed: from its restart_lsn to the current position. */
  retainedBytes: number;
  /** WAL that may still be written before the slot is invalidated; null unless max_slot_wal_keep_size is set. */
  safeWalBytes: number | null;
}

/**
 * The server's replication slots that retain WAL (a restart_lsn), with what they retain. Any role
 * may read pg_replication_slots; on a standby there is no current WAL position to measure from,
 * and none is read.
 */
export async function replicationSlots(db: Queryable): Promise<SlotWal[]> {
  const rows = await exec<SlotRow>(db, sql.raw(SIGNAL_SQL.slots));
  return slotsOf(rows);
}

/** A row of SIGNAL_SQL.slots. */
export interface SlotRow {
  name: string;
  type: string;
  retained: string | number;
  safe: string | number | null;
}

export function slotsOf(rows: SlotRow[]): SlotWal[] {
  return rows.map((row) => ({
    name: row.name,
    type: row.type === 'logical' ? 'logical' : 'physical',
    retainedBytes: Math.max(0, Number(row.retained)),
    safeWalBytes: row.safe === null ? null : Number(row.safe),
  }));
}
