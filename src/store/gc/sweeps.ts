/**
 * The statements of the GC sweeps. Each works on one ID range of its table, inside the job's
 * transaction, and is safe to run again on the same range.
 */
import { sql } from 'drizzle-orm';
import { exec, type Queryable } from '../db.ts';

const ago = (ms: number) => sql`now() - make_interval(secs => ${ms / 1000}::float8)`;

interface BlobRef {
  id: bigint;
  storageKey: string;
  size: number;
}

/**
 * Locks the blobs of the range that look orphaned (no manifest references them) and are older
 * than the grace period. A blob being referenced right now (its reference's foreign key check
 * holds a lock on it) is skipped; once locked, no new reference to it can commit.
 */
export async function lockOrphanCandidates(
  db: Queryable,
  start: bigint,
  end: bigint,
  graceMs: number,
): Promise<BlobRef[]> {
  const rows = await exec<{ id: string; storage_key: string; size: string }>(
    db,
    sql`
      SELECT b.id, b.storage_key, b.size FROM registry.blobs b
      WHERE b.id BETWEEN ${start}::bigint AND ${end}::bigint AND b.created_at < ${ago(graceMs)}
        AND NOT EXISTS (SELECT 1 FROM registry.manifest_blobs mb WHERE mb.blob_id = b.id)
      ORDER BY b.id
      FOR UPDATE OF b SKIP LOCKED`,
  );
  return rows.map((r) => ({ id: BigInt(r.id), storageKey: r.storage_key, size: Number(r.size) }));
}

/**
 * Which of `ids` are referenced now. A statement of its own, after the lock: its snapshot sees
 * references committed after the candidates were read.
 */
export async function referencedBlobs(db: Queryable, ids: readonly bigint[]): Promise<Set<bigint>> {
  if (ids.length === 0) return new Set();
  const rows = await exec<{ blob_id: string }>(
    db,
    sql`SELECT DISTINCT blob_id FROM registry.manifest_blobs WHERE blob_id = ANY(${sql.param(ids.map(String))}::bigint[])`,
  );
  return new Set(rows.map((r) => BigInt(r.blob_id)));
}

export async function deleteBlobRows(db: Queryable, ids: readonly bigint[]): Promise<number> {
  if (ids.length === 0) return 0;
  const rows = await exec<{ id: string }>(
    db,
    sql`DELETE FROM registry.blobs WHERE id = ANY(${sql.param(ids.map(String))}::bigint[]) RETURNING id`,
  );
  return rows.length;
}

/** Deletes the upload sessions of the range idle longer than `idleMs`; returns their staging objects. */
export async function deleteStaleUploads(db: Queryable, start: bigint, end: bigint, idleMs: number): Promise<string[]> {
  const rows = await exec<{ storage_key: string }>(
    db,
    sql`
      DELETE FROM registry.uploads
      WHERE id BETWEEN ${start}::bigint AND ${end}::bigint AND last_activity_at < ${ago(idleMs)}
      RETURNING storage_key`,
  );
  return rows.map((r) => r.storage_key);
}

/** Marks expired the manifests of the range not pulled within their repository's enabled TTL policy. */
export async function expireManifests(db: Queryable, start: bigint, end: bigint): Promise<number> {
  const rows = await exec<{ id: string }>(
    db,
    sql`
      UPDATE registry.manifests m SET expired_at = now()
      FROM registry.ttl_policies p
      WHERE m.id BETWEEN ${start}::bigint AND ${end}::bigint AND m.expired_at IS NULL
        AND p.repository_id = m.repository_id AND p.enabled
        AND m.last_pulled_at < now() - make_interval(days => p.ttl_days)
      RETURNING m.id`,
  );
  return rows.length;
}

/**
 * Deletes the expired manifests of the range (their tags and blob links go with them; blobs left
 * unreferenced are the orphan sweep's), at most `limit`, oldest ids first.
 */
export async function deleteExpiredManifests(
  db: Queryable,
  start: bigint,
  end: bigint,
  limit: number,
): Promise<number> {
  const rows = await exec<{ id: string }>(
    db,
    sql`
      DELETE FROM registry.manifests WHERE id IN (
        SELECT id FROM registry.manifests
        WHERE id BETWEEN ${start}::bigint AND ${end}::bigint AND expired_at IS NOT NULL
        ORDER BY id LIMIT ${limit}
      )
      RETURNING id`,
  );
  return rows.length;
}

/**
 * Deletes the manifests of the range that belong to repositories marked deleted (with their tags
 * and blob links), then those repositories that have no manifest left, with their uploads,
 * policies and markers. Returns the counts and the staging objects of the uploads removed.
 */
export async function purgeDeletedRepositories(
  db: Queryable,
  start: bigint,
  end: bigint,
): Promise<{ manifests: number; repositories: number; uploadKeys: string[] }> {
  const manifests = await exec<{ id: string }>(
    db,
    sql`
      DELETE FROM registry.manifests m USING registry.deleted_repositories d
      WHERE m.id BETWEEN ${start}::bigint AND ${end}::bigint AND m.repository_id = d.repository_id
      RETURNING m.id`,
  );
  const emptied = await exec<{ repository_id: string }>(
    db,
    sql`
      SELECT d.repository_id FROM registry.deleted_repositories d
      WHERE NOT EXISTS (SELECT 1 FROM registry.manifests m WHERE m.repository_id = d.repository_id)
      FOR UPDATE OF d SKIP LOCKED`,
  );
  const ids = sql.param(emptied.map((r) => r.repository_id));
  const uploads = await exec<{ storage_key: string }>(
    db,
    sql`DELETE FROM registry.uploads WHERE repository_id = ANY(${ids}::bigint[]) RETURNING storage_key`,
  );
  const repositories = await exec<{ id: string }>(
    db,
    sql`DELETE FROM registry.repositories WHERE id = ANY(${ids}::bigint[]) RETURNING id`,
  );
  await exec(db, sql`DELETE FROM registry.deleted_repositories WHERE repository_id = ANY(${ids}::bigint[])`);
  return {
    manifests: manifests.length,
    repositories: repositories.length,
    uploadKeys: uploads.map((u) => u.storage_key),
  };
}

/** Which of `keys` a row of `table` (blobs or uploads) still points at. */
export async function keysInUse(
  db: Queryable,
  table: 'blobs' | 'uploads',
  keys: readonly string[],
): Promise<Set<string>> {
  if (keys.length === 0) return new Set();
  const rows = await exec<{ storage_key: string }>(
    db,
    sql`SELECT storage_key FROM ${sql.identifier('registry')}.${sql.identifier(table)} WHERE storage_key = ANY(${sql.param(keys)}::text[])`,
  );
  return new Set(rows.map((r) => r.storage_key));
}
