/**
 * The registry data model the GC pack sweeps, in a schema of its own (`registry`) so it cannot
 * collide with an application's tables. Created by its own migrations (migrations/gc), applied
 * only when the pack is enabled (migrateGcSchema).
 */
import { sql } from 'drizzle-orm';
import {
  bigint,
  boolean,
  check,
  foreignKey,
  index,
  integer,
  pgSchema,
  primaryKey,
  text,
  timestamp,
  uniqueIndex,
} from 'drizzle-orm/pg-core';

export const registry = pgSchema('registry');

const id = () => bigint('id', { mode: 'bigint' }).primaryKey().generatedByDefaultAsIdentity();
const at = (name: string) => timestamp(name, { withTimezone: true });

/**
 * Namespaces (organisations, users): the first path segment of a repository name (`shop` of
 * `shop/web`). Deleting one sets `deleted_at` and marks its repositories deleted at once; from
 * then on nothing under it is served or accepts pushes, and gc.deleted_namespaces removes it once
 * gc.deleted_repositories has emptied its repositories.
 */
export const namespaces = registry.table(
  'namespaces',
  {
    id: id(),
    name: text('name').notNull(),
    createdAt: at('created_at').notNull().defaultNow(),
    deletedAt: at('deleted_at'),
  },
  (t) => [uniqueIndex('namespaces_name_key').on(t.name)],
);

export const repositories = registry.table(
  'repositories',
  {
    id: id(),
    name: text('name').notNull(),
    /** Null for a top-level name (`nginx`). */
    namespaceId: bigint('namespace_id', { mode: 'bigint' }),
    createdAt: at('created_at').notNull().defaultNow(),
  },
  (t) => [
    uniqueIndex('repositories_name_key').on(t.name),
    // No cascade: a namespace row goes only once its repositories are gone (through their own purge).
    foreignKey({ name: 'repositories_namespace_fkey', columns: [t.namespaceId], foreignColumns: [namespaces.id] }),
    index('repositories_namespace_idx').on(t.namespaceId),
  ],
);

/** Content-addressed layers and configs; shared by every manifest that references them. */
export const blobs = registry.table(
  'blobs',
  {
    id: id(),
    digest: text('digest').notNull(),
    size: bigint('size', { mode: 'number' }).notNull(),
    storageKey: text('storage_key').notNull(),
    createdAt: at('created_at').notNull().defaultNow(),
  },
  (t) => [uniqueIndex('blobs_digest_key').on(t.digest), check('blobs_size_not_negative', sql`${t.size} >= 0`)],
);

export const manifests = registry.table(
  'manifests',
  {
    id: id(),
    repositoryId: bigint('repository_id', { mode: 'bigint' }).notNull(),
    digest: text('digest').notNull(),
    createdAt: at('created_at').notNull().defaultNow(),
    /** Last time the manifest was pulled (or pushed); what TTL policies measure. */
    lastPulledAt: at('last_pulled_at').notNull().defaultNow(),
    /** Set by gc.ttl_expire: the manifest is no longer served, and gc.expired_cleanup deletes it. */
    expiredAt: at('expired_at'),
  },
  (t) => [
    foreignKey({
      name: 'manifests_repository_fkey',
      columns: [t.repositoryId],
      foreignColumns: [repositories.id],
    }).onDelete('cascade'),
    uniqueIndex('manifests_repository_digest_key').on(t.repositoryId, t.digest),
    index('manifests_expired_idx')
      .on(t.id)
      .where(sql`${t.expiredAt} IS NOT NULL`),
  ],
);

export const manifestBlobs = registry.table(
  'manifest_blobs',
  {
    manifestId: bigint('manifest_id', { mode: 'bigint' }).notNull(),
    blobId: bigint('blob_id', { mode: 'bigint' }).notNull(),
  },
  (t) => [
    primaryKey({ name: 'manifest_blobs_pkey', columns: [t.manifestId, t.blobId] }),
    foreignKey({
      name: 'manifest_blobs_manifest_fkey',
      columns: [t.manifestId],
      foreignColumns: [manifests.id],
    }).onDelete('cascade'),
    // No cascade: a referenced blob cannot be deleted; the orphan sweep only deletes unreferenced ones.
    foreignKey({ name: 'manifest_blobs_blob_fkey', columns: [t.blobId], foreignColumns: [blobs.id] }),
    index('manifest_blobs_blob_idx').on(t.blobId),
  ],
);

export const tags = registry.table(
  'tags',
  {
    id: id(),
    repositoryId: bigint('repository_id', { mode: 'bigint' }).notNull(),
    name: text('name').notNull(),
    manifestId: bigint('manifest_id', { mode: 'bigint' }).notNull(),
    updatedAt: at('updated_at').notNull().defaultNow(),
    /** A tag's lifetime (Quay's tag expiration): past it the tag is not served, and gc.expired_tags deletes it. */
    expiresAt: at('expires_at'),
  },
  (t) => [
    foreignKey({ name: 'tags_repository_fkey', columns: [t.repositoryId], foreignColumns: [repositories.id] }).onDelete(
      'cascade',
    ),
    foreignKey({ name: 'tags_manifest_fkey', columns: [t.manifestId], foreignColumns: [manifests.id] }).onDelete(
      'cascade',
    ),
    uniqueIndex('tags_repository_name_key').on(t.repositoryId, t.name),
  ],
);

/** Upload sessions of blobs being pushed; their bytes sit in the store under `storage_key`. */
export const uploads = registry.table(
  'uploads',
  {
    id: id(),
    repositoryId: bigint('repository_id', { mode: 'bigint' }).notNull(),
    storageKey: text('storage_key').notNull(),
    startedAt: at('started_at').notNull().defaultNow(),
    lastActivityAt: at('last_activity_at').notNull().defaultNow(),
  },
  (t) => [
    foreignKey({
      name: 'uploads_repository_fkey',
      columns: [t.repositoryId],
      foreignColumns: [repositories.id],
    }).onDelete('cascade'),
  ],
);

export const ttlPolicies = registry.table(
  'ttl_policies',
  {
    repositoryId: bigint('repository_id', { mode: 'bigint' }).primaryKey(),
    enabled: boolean('enabled').notNull().default(true),
    ttlDays: integer('ttl_days').notNull(),
  },
  (t) => [
    foreignKey({
      name: 'ttl_policies_repository_fkey',
      columns: [t.repositoryId],
      foreignColumns: [repositories.id],
    }).onDelete('cascade'),
    check('ttl_policies_ttl_days_positive', sql`${t.ttlDays} > 0`),
  ],
);

/** Repositories marked for deletion; gc.deleted_repositories removes what is under them, then them. */
export const deletedRepositories = registry.table(
  'deleted_repositories',
  {
    id: id(),
    repositoryId: bigint('repository_id', { mode: 'bigint' }).notNull(),
    deletedAt: at('deleted_at').notNull().defaultNow(),
  },
  (t) => [uniqueIndex('deleted_repositories_repository_key').on(t.repositoryId)],
);

/**
 * Where the scan for stray objects under a prefix stopped (the last key it looked at): each pass
 * looks at a bounded number of objects and the next pass continues after it, so a store of any
 * size is covered in turns without one long job. '' starts from the first key.
 */
export const strayScanCursors = registry.table('stray_scan_cursors', {
  prefix: text('prefix').primaryKey(),
  afterKey: text('after_key').notNull().default(''),
  updatedAt: at('updated_at').notNull().defaultNow(),
});
