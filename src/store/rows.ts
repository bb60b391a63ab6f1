/**
 * The rows of pg-bbm's tables as drizzle infers them from the schema (schema.ts): the one shape of
 * each row, which the store's narrower types pick their columns from.
 */
import type { batchedBackgroundMigrationJobs, batchedBackgroundMigrations } from './schema.ts';

/** A row of batched_background_migrations. */
export type StoredMigration = typeof batchedBackgroundMigrations.$inferSelect;
/** A row of batched_background_migration_jobs. */
export type StoredJob = typeof batchedBackgroundMigrationJobs.$inferSelect;
