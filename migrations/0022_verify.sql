-- The error-code checks gain code 7 (verification_failed). NOT VALID: the rows already there passed the
-- narrower check, and validating would scan the jobs table under the ALTER's exclusive lock.
ALTER TABLE "batched_background_migration_jobs" DROP CONSTRAINT "batched_background_migration_jobs_failure_error_code_known";--> statement-breakpoint
ALTER TABLE "batched_background_migrations" DROP CONSTRAINT "batched_background_migrations_failure_error_code_known";--> statement-breakpoint
ALTER TABLE "batched_background_migration_jobs" ADD COLUMN "verified_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "verified_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "verify_rows_found" bigint DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "verify_ranges_rerun" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "rehearsal" jsonb;--> statement-breakpoint
ALTER TABLE "batched_background_migration_jobs" ADD CONSTRAINT "batched_background_migration_jobs_failure_error_code_known" CHECK ("batched_background_migration_jobs"."failure_error_code" IS NULL OR "batched_background_migration_jobs"."failure_error_code" IN (0, 1, 2, 3, 4, 5, 6, 7)) NOT VALID;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_failure_error_code_known" CHECK ("batched_background_migrations"."failure_error_code" IS NULL OR "batched_background_migrations"."failure_error_code" IN (0, 1, 2, 3, 4, 5, 6, 7)) NOT VALID;