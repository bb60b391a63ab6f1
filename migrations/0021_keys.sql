ALTER TABLE "batched_background_migration_jobs" ADD COLUMN "min_key" jsonb;--> statement-breakpoint
ALTER TABLE "batched_background_migration_jobs" ADD COLUMN "max_key" jsonb;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "min_key" jsonb;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "max_key" jsonb;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "job_arguments" jsonb DEFAULT '{}'::jsonb NOT NULL;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_job_arguments_object" CHECK (jsonb_typeof("batched_background_migrations"."job_arguments") = 'object');--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_keys_values" CHECK (coalesce(jsonb_typeof("batched_background_migrations"."min_key"), 'array') NOT IN ('object', 'null') AND coalesce(jsonb_typeof("batched_background_migrations"."max_key"), 'array') NOT IN ('object', 'null'));