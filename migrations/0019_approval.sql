ALTER TABLE "batched_background_migrations" DROP CONSTRAINT "batched_background_migrations_status_known";--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "approved_by" text;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD COLUMN "approved_at" timestamp with time zone;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_status_known" CHECK ("batched_background_migrations"."status" IN (0, 1, 2, 3, 4, 5));