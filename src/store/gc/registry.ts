/**
 * The registry's own operations on its data model (pushes, pulls, uploads, deletions), as the
 * GC pack's demo and tests drive them. A real registry has its own; these show the contract the
 * sweeps rely on: references go through manifest_blobs, pulls refresh last_pulled_at, and an
 * expired manifest is never served.
 */
import { sql } from 'drizzle-orm';
import { exec, execOne, type Queryable } from '../db.ts';

/** A push into a namespace that is being deleted. */
export class NamespaceDeletedError extends Error {
  override readonly name = 'NamespaceDeletedError';
  readonly code = 'namespace_deleted';

  constructor(readonly namespace: string) {
    super(`namespace ${JSON.stringify(namespace)} is being deleted: it accepts no pushes`);
  }
}

/** The namespace of a repository name: its first path segment, or null for a top-level name. */
export const namespaceOf = (repository: string): string | null =>
  repository.includes('/') ? repository.slice(0, repository.indexOf('/')) : null;

/**
 * Finds or creates a repository (and its namespace) for a push. Refused with a
 * NamespaceDeletedError when the namespace is being deleted.
 */
export async function createRepository(db: Queryable, name: string): Promise<bigint> {
  const namespace = namespaceOf(name);
  let namespaceId: bigint | null = null;
  if (namespace !== null) {
    const ns = await execOne<{ id: string; deleted: boolean }>(
      db,
      sql`INSERT INTO registry.namespaces (name) VALUES (${namespace})
          ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id, deleted_at IS NOT NULL AS deleted`,
    );
    if (ns!.deleted) throw new NamespaceDeletedError(namespace);
    namespaceId = BigInt(ns!.id);
  }
  const row = await execOne<{ id: string }>(
    db,
    sql`INSERT INTO registry.repositories (name, namespace_id) VALUES (${name}, ${namespaceId})
        ON CONFLICT (name) DO UPDATE SET name = excluded.name RETURNING id`,
  );
  return BigInt(row!.id);
}

/** Records a blob (content-addressed: one row per digest). Returns its id. */
export async function upsertBlob(
  db: Queryable,
  blob: { digest: string; size: number; storageKey: string },
): Promise<bigint> {
  const row = await execOne<{ id: string }>(
    db,
    sql`INSERT INTO registry.blobs (digest, size, storage_key) VALUES (${blob.digest}, ${blob.size}, ${blob.storageKey})
        ON CONFLICT (digest) DO UPDATE SET digest = excluded.digest RETURNING id`,
  );
  return BigInt(row!.id);
}

/** Records a manifest of a repository referencing blobs, and points `tag` at it. */
export async function upsertManifest(
  db: Queryable,
  m: { repositoryId: bigint; digest: string; blobIds: readonly bigint[]; tag?: string | undefined },
): Promise<bigint> {
  const row = await execOne<{ id: string }>(
    db,
    sql`INSERT INTO registry.manifests (repository_id, digest) VALUES (${m.repositoryId}, ${m.digest})
        ON CONFLICT (repository_id, digest) DO UPDATE SET last_pulled_at = now(), expired_at = NULL RETURNING id`,
  );
  const manifestId = BigInt(row!.id);
  await exec(
    db,
    sql`INSERT INTO registry.manifest_blobs (manifest_id, blob_id)
        SELECT ${manifestId}, unnest(${sql.param(m.blobIds.map(String))}::bigint[]) ON CONFLICT DO NOTHING`,
  );
  if (m.tag !== undefined) {
    await exec(
      db,
      sql`INSERT INTO registry.tags (repository_id, name, manifest_id) VALUES (${m.repositoryId}, ${m.tag}, ${manifestId})
          ON CONFLICT (repository_id, name) DO UPDATE SET manifest_id = excluded.manifest_id, updated_at = now()`,
    );
  }
  return manifestId;
}

export interface PulledManifest {
  id: bigint;
  digest: string;
  blobs: Array<{ digest: string; storageKey: string }>;
}

/**
 * Resolves a tag or digest to a manifest, refreshing its pull time. Expired manifests, tags past
 * their expiry, and deleted repositories and namespaces are absent.
 */
export async function pullManifest(
  db: Queryable,
  repository: string,
  reference: string,
): Promise<PulledManifest | null> {
  const row = await execOne<{ id: string; digest: string }>(
    db,
    sql`
      UPDATE registry.manifests m SET last_pulled_at = now()
      FROM registry.repositories r
      WHERE r.name = ${repository} AND m.repository_id = r.id AND m.expired_at IS NULL
        AND (m.digest = ${reference}
             OR m.id = (SELECT t.manifest_id FROM registry.tags t
                        WHERE t.repository_id = r.id AND t.name = ${reference} AND (t.expires_at IS NULL OR t.expires_at > now())))
        AND NOT EXISTS (SELECT 1 FROM registry.deleted_repositories d WHERE d.repository_id = r.id)
        AND NOT EXISTS (SELECT 1 FROM registry.namespaces n WHERE n.id = r.namespace_id AND n.deleted_at IS NOT NULL)
      RETURNING m.id, m.digest`,
  );
  if (!row) return null;
  const blobs = await exec<{ digest: string; storage_key: string }>(
    db,
    sql`SELECT b.digest, b.storage_key FROM registry.manifest_blobs mb JOIN registry.blobs b ON b.id = mb.blob_id
        WHERE mb.manifest_id = ${BigInt(row.id)} ORDER BY b.id`,
  );
  return {
    id: BigInt(row.id),
    digest: row.digest,
    blobs: blobs.map((b) => ({ digest: b.digest, storageKey: b.storage_key })),
  };
}

export async function startUpload(db: Queryable, repositoryId: bigint, storageKey: string): Promise<bigint> {
  const row = await execOne<{ id: string }>(
    db,
    sql`INSERT INTO registry.uploads (repository_id, storage_key) VALUES (${repositoryId}, ${storageKey}) RETURNING id`,
  );
  return BigInt(row!.id);
}

export async function touchUpload(db: Queryable, uploadId: bigint): Promise<void> {
  await exec(db, sql`UPDATE registry.uploads SET last_activity_at = now() WHERE id = ${uploadId}`);
}

export async function setTtlPolicy(
  db: Queryable,
  repositoryId: bigint,
  policy: { enabled: boolean; ttlDays: number },
): Promise<void> {
  await exec(
    db,
    sql`INSERT INTO registry.ttl_policies (repository_id, enabled, ttl_days) VALUES (${repositoryId}, ${policy.enabled}, ${policy.ttlDays})
        ON CONFLICT (repository_id) DO UPDATE SET enabled = excluded.enabled, ttl_days = excluded.ttl_days`,
  );
}

/** Marks a repository deleted: it is no longer served, and gc.deleted_repositories removes its contents. */
export async function markRepositoryDeleted(db: Queryable, repositoryId: bigint): Promise<void> {
  await exec(
    db,
    sql`INSERT INTO registry.deleted_repositories (repository_id) VALUES (${repositoryId}) ON CONFLICT DO NOTHING`,
  );
}

/**
 * Marks a namespace deleted, and every repository under it, in one statement: from its commit on,
 * nothing under it is served or accepts pushes. False when there is no such namespace.
 */
export async function markNamespaceDeleted(db: Queryable, namespace: string): Promise<boolean> {
  const rows = await exec<{ id: string }>(
    db,
    sql`
      WITH ns AS (
        UPDATE registry.namespaces SET deleted_at = coalesce(deleted_at, now()) WHERE name = ${namespace} RETURNING id
      ), marked AS (
        INSERT INTO registry.deleted_repositories (repository_id)
        SELECT r.id FROM registry.repositories r JOIN ns ON r.namespace_id = ns.id
        ON CONFLICT DO NOTHING
      )
      SELECT id FROM ns`,
  );
  return rows.length > 0;
}

/** Sets (or, with null, clears) a tag's expiry; past it the tag is not served and gc.expired_tags deletes it. */
export async function setTagExpiry(
  db: Queryable,
  repositoryId: bigint,
  tag: string,
  expiresAt: Date | null,
): Promise<boolean> {
  const rows = await exec<{ id: string }>(
    db,
    sql`UPDATE registry.tags SET expires_at = ${expiresAt?.toISOString() ?? null}::timestamptz
        WHERE repository_id = ${repositoryId} AND name = ${tag} RETURNING id`,
  );
  return rows.length > 0;
}
