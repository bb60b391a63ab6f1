ALTER TABLE "batched_background_migration_jobs" DROP CONSTRAINT "batched_background_migration_jobs_failure_error_code_known";--> statement-breakpoint
ALTER TABLE "batched_background_migrations" DROP CONSTRAINT "batched_background_migrations_failure_error_code_known";--> statement-breakpoint
ALTER TABLE "batched_background_migration_jobs" ADD COLUMN "batch_size" integer;--> statement-breakpoint
ALTER TABLE "batched_background_migration_jobs" ADD COLUMN "duration_ms" double precision;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "max_parallel_jobs" integer DEFAULT 1 NOT NULL;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "target_job_ms" integer;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "min_batch_size" integer;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "max_batch_size" integer;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "on_hold_until" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "hold_reason" text;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "run_errors" integer DEFAULT 0 NOT NULL;--> statement-breakpoint
CREATE INDEX "batched_background_migration_jobs_active_idx" ON "batched_background_migration_jobs" USING btree ("batched_background_migration_id","min_value") WHERE "batched_background_migration_jobs"."status" = 1;--> statement-breakpoint
ALTER TABLE "batched_background_migration_jobs" ADD CONSTRAINT "batched_background_migration_jobs_failure_error_code_known" CHECK ("batched_background_migration_jobs"."failure_error_code" IS NULL OR "batched_background_migration_jobs"."failure_error_code" IN (0, 1, 2, 3, 4, 5, 6));--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_max_parallel_jobs_range" CHECK ("batched_background_migrations"."max_parallel_jobs" BETWEEN 1 AND 256);--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_target_job_ms_positive" CHECK ("batched_background_migrations"."target_job_ms" IS NULL OR "batched_background_migrations"."target_job_ms" > 0);--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_min_batch_size_positive" CHECK ("batched_background_migrations"."min_batch_size" IS NULL OR "batched_background_migrations"."min_batch_size" > 0);--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_max_batch_size_not_below_min" CHECK ("batched_background_migrations"."max_batch_size" IS NULL OR "batched_background_migrations"."max_batch_size" >= greatest(coalesce("batched_background_migrations"."min_batch_size", 1), 1));--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_failure_error_code_known" CHECK ("batched_background_migrations"."failure_error_code" IS NULL OR "batched_background_migrations"."failure_error_code" IN (0, 1, 2, 3, 4, 5, 6));