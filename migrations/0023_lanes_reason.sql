-- Why a migration runs in fewer lanes than max_parallel_jobs, and the share of the time a worker's lanes run
-- (foreground protection's duty cycle), for bbm status and the status page. Nullable, no default: no rewrite,
-- and workers of the previous release, which write neither, keep working.
ALTER TABLE "batched_background_migration_workers" ADD COLUMN "duty_cycle" real;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "lanes_reason" text;