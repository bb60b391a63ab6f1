/**
 * Statements of approval: a migration enqueued with `needsApproval` (status awaiting_approval)
 * waits, untaken, until an operator approves it; who did and when stays on its row.
 */
import { sql } from 'drizzle-orm';
import { exec, execOne, type Queryable } from './db.ts';
import { MigrationStatus } from './codes.ts';

export interface Approval {
  approvedBy: string;
  approvedAt: Date;
}

/**
 * awaiting_approval -> active, recording who approved it. Null when no migration of that name
 * awaits approval (the status guard makes two approvals at once approve it once).
 */
export async function approveMigration(db: Queryable, name: string, by: string): Promise<Approval | null> {
  const row = await execOne<{ approved_by: string; approved_at: Date }>(
    db,
    sql`
      UPDATE batched_background_migrations
      SET status = ${MigrationStatus.active}, approved_by = ${by}, approved_at = now(), updated_at = now()
      WHERE name = ${name} AND status = ${MigrationStatus.awaiting_approval}
      RETURNING approved_by, approved_at`,
  );
  return row ? { approvedBy: row.approved_by, approvedAt: row.approved_at } : null;
}

/** The approvals recorded, by migration id (the few migrations that needed one). */
export async function approvals(db: Queryable): Promise<Map<bigint, Approval>> {
  const rows = await exec<{ id: string; approved_by: string; approved_at: Date }>(
    db,
    sql`SELECT id, approved_by, approved_at FROM batched_background_migrations WHERE approved_at IS NOT NULL`,
  );
  return new Map(rows.map((r) => [BigInt(r.id), { approvedBy: r.approved_by, approvedAt: r.approved_at }]));
}
