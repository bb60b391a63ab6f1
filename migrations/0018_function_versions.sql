-- The database functions are no longer defined by migrations: each has a file in sql/functions/,
-- installed after the migrations by the same migrate call, in the same transaction. This table
-- records each install's release and digest, so that an up-to-date database costs no DDL and a
-- worker of an older release never replaces a newer release's functions. Every role may read it: a
-- worker's role reads it at every start, and it holds nothing but versions and digests.
CREATE TABLE "pg_bbm_functions" (
	"id" bigint PRIMARY KEY GENERATED ALWAYS AS IDENTITY,
	"version" text NOT NULL,
	"digest" text NOT NULL,
	"installed_at" timestamp with time zone DEFAULT now() NOT NULL
);
--> statement-breakpoint
GRANT SELECT ON "pg_bbm_functions" TO PUBLIC;
