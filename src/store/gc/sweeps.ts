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
 * and blob links), then the marked repositories that have no manifest left (see
 * purgeEmptiedRepositories). Returns the counts and the staging objects of the uploads removed.
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
  return { manifests: manifests.length, ...(await purgeEmptiedRepositories(db)) };
}

/**
 * Deletes the repositories marked deleted that have no manifest left (all of them, or those under
 * `namespaceIds`), with their uploads, policies and markers; returns how many, and the staging
 * objects of the uploads removed. A marker another job holds is skipped (it purges it).
 */
async function purgeEmptiedRepositories(
  db: Queryable,
  namespaceIds?: readonly string[],
): Promise<{ repositories: number; uploadKeys: string[] }> {
  const inNamespaces =
    namespaceIds === undefined
      ? sql`true`
      : sql`EXISTS (SELECT 1 FROM registry.repositories r
                    WHERE r.id = d.repository_id AND r.namespace_id = ANY(${sql.param(namespaceIds)}::bigint[]))`;
  const emptied = await exec<{ repository_id: string }>(
    db,
    sql`
      SELECT d.repository_id FROM registry.deleted_repositories d
      WHERE NOT EXISTS (SELECT 1 FROM registry.manifests m WHERE m.repository_id = d.repository_id) AND ${inNamespaces}
      FOR UPDATE OF d SKIP LOCKED`,
  );
  if (emptied.length === 0) return { repositories: 0, uploadKeys: [] };
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
  return { repositories: repositories.length, uploadKeys: uploads.map((u) => u.storage_key) };
}

/**
 * For the namespaces of the range marked deleted: marks deleted any repository under them not
 * marked yet (one a push created while the namespace was being deleted), purges those of their
 * repositories gc.deleted_repositories has emptied, and deletes the namespaces left with no
 * repository. A namespace whose repositories still hold manifests stays for a later pass.
 */
export async function purgeDeletedNamespaces(
  db: Queryable,
  start: bigint,
  end: bigint,
): Promise<{ namespaces: number; repositories: number; uploadKeys: string[] }> {
  const deleted = await exec<{ id: string }>(
    db,
    sql`
      SELECT id FROM registry.namespaces
      WHERE id BETWEEN ${start}::bigint AND ${end}::bigint AND deleted_at IS NOT NULL
      ORDER BY id FOR UPDATE SKIP LOCKED`,
  );
  if (deleted.length === 0) return { namespaces: 0, repositories: 0, uploadKeys: [] };
  const ids = deleted.map((n) => n.id);
  await exec(
    db,
    sql`
      INSERT INTO registry.deleted_repositories (repository_id)
      SELECT r.id FROM registry.repositories r WHERE r.namespace_id = ANY(${sql.param(ids)}::bigint[])
      ON CONFLICT DO NOTHING`,
  );
  const purged = await purgeEmptiedRepositories(db, ids);
  const namespaces = await exec<{ id: string }>(
    db,
    sql`
      DELETE FROM registry.namespaces n
      WHERE n.id = ANY(${sql.param(ids)}::bigint[])
        AND NOT EXISTS (SELECT 1 FROM registry.repositories r WHERE r.namespace_id = n.id)
      RETURNING n.id`,
  );
  return { namespaces: namespaces.length, ...purged };
}

/**
 * Deletes the tags of the range past their expiry, and marks expired the manifests that no live
 * tag references any more (an expired tag, deleted here or not yet, does not count), which hands
 * them to gc.expired_cleanup, and their blobs then to the orphan sweep. Returns both counts.
 */
export async function expireTags(
  db: Queryable,
  start: bigint,
  end: bigint,
): Promise<{ tags: number; manifests: number }> {
  const rows = await exec<{ tags: number; manifests: number }>(
    db,
    sql`
      WITH gone AS (
        DELETE FROM registry.tags
        WHERE id BETWEEN ${start}::bigint AND ${end}::bigint AND expires_at <= now()
        RETURNING id, manifest_id
      ), untagged AS (
        UPDATE registry.manifests m SET expired_at = now()
        WHERE m.id IN (SELECT manifest_id FROM gone) AND m.expired_at IS NULL
          AND NOT EXISTS (
            SELECT 1 FROM registry.tags t
            WHERE t.manifest_id = m.id AND t.id NOT IN (SELECT id FROM gone)
              AND (t.expires_at IS NULL OR t.expires_at > now()))
        RETURNING m.id
      )
      SELECT (SELECT count(*)::int FROM gone) AS tags, (SELECT count(*)::int FROM untagged) AS manifests`,
  );
  return rows[0] ?? { tags: 0, manifests: 0 };
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

/**
 * Where the stray scan of `prefix` resumes (the key after which it lists; '' for the start),
 * locked until the job ends: two passes never scan the same stretch at once.
 */
export async function lockStrayScanCursor(db: Queryable, prefix: string): Promise<string> {
  await exec(db, sql`INSERT INTO registry.stray_scan_cursors (prefix) VALUES (${prefix}) ON CONFLICT DO NOTHING`);
  const rows = await exec<{ after_key: string }>(
    db,
    sql`SELECT after_key FROM registry.stray_scan_cursors WHERE prefix = ${prefix} FOR UPDATE`,
  );
  return rows[0]?.after_key ?? '';
}

/** Records where the stray scan of `prefix` stopped; committed with the job's deletions, or not at all. */
export async function saveStrayScanCursor(db: Queryable, prefix: string, afterKey: string): Promise<void> {
  await exec(
    db,
    sql`UPDATE registry.stray_scan_cursors SET after_key = ${afterKey}, updated_at = now() WHERE prefix = ${prefix}`,
  );
}
