CREATE TABLE "registry"."stray_scan_cursors" (
	"prefix" text PRIMARY KEY NOT NULL,
	"after_key" text DEFAULT '' NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL
);
