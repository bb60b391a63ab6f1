ALTER TABLE "batched_background_migrations" ADD COLUMN "lanes_allowed" integer;--> statement-breakpoint
ALTER TABLE "batched_background_migrations" ADD CONSTRAINT "batched_background_migrations_lanes_allowed_positive" CHECK ("batched_background_migrations"."lanes_allowed" IS NULL OR "batched_background_migrations"."lanes_allowed" >= 1);
--> statement-breakpoint
-- bbm_take_job as in 0006, but a migration's lanes are also bounded by lanes_allowed: the lanes
-- the latency controller allows now (NULL: all of max_parallel_jobs). Jobs already running in a
-- lane above the new bound finish; no new job starts there until the bound grows back.
CREATE OR REPLACE FUNCTION bbm_take_job(work_names text[], valid_name_pattern text, only_migration bigint)
RETURNS TABLE (
  migration_id bigint, lane integer, name text, status smallint, job_signature_name text,
  table_name text, column_name text, batching_strategy text, batch_size integer,
  max_parallel_jobs integer, target_job_ms integer, min_batch_size integer, max_batch_size integer,
  step text, job_id bigint, job_min bigint, job_max bigint, job_status smallint, job_attempts integer,
  job_batch_size integer
)
LANGUAGE plpgsql
VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  m record;
  k integer;
  got integer;
  busy boolean := false;
  next_step text;
  jid bigint;
  jmin bigint;
  jmax bigint;
  jstatus smallint;
  jattempts integer;
  jsize integer;
BEGIN
  FOR m IN
    SELECT b.id, b.name, b.status, b.job_signature_name, b.table_name, b.column_name, b.batching_strategy,
           b.batch_size, b.max_parallel_jobs, b.target_job_ms, b.min_batch_size, b.max_batch_size, b.max_value,
           b.on_hold_until, b.lanes_allowed
    FROM batched_background_migrations b
    WHERE b.status IN (1, 4)
      AND (only_migration IS NULL OR b.id = only_migration)
      AND (b.job_signature_name = ANY (work_names) OR b.job_signature_name !~ valid_name_pattern)
    ORDER BY b.status = 4 DESC, b.id
    LIMIT 100
  LOOP
    -- Held (set aside after run errors, or by a health signal): skipped, but it keeps the caller
    -- waiting like a busy lane, so that a worker run until done does not stop before it.
    IF m.on_hold_until IS NOT NULL AND m.on_hold_until > pg_catalog.now() THEN
      busy := true;
      CONTINUE;
    END IF;
    BEGIN
      got := NULL;
      jid := NULL;
      next_step := NULL;
      -- The lanes the latency controller allows now (lanes_allowed), at most max_parallel_jobs.
      FOR k IN 0 .. least(m.max_parallel_jobs, coalesce(m.lanes_allowed, m.max_parallel_jobs), 256) - 1 LOOP
        IF pg_catalog.pg_try_advisory_xact_lock(1650617600 + k, (m.id % 2147483648)::int) THEN
          got := k;
          EXIT;
        END IF;
      END LOOP;
      IF got IS NULL AND only_migration IS NOT NULL THEN
        PERFORM pg_catalog.pg_advisory_xact_lock(1650617600, (m.id % 2147483648)::int);
        got := 0;
      END IF;
      IF got IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'BBM01';
      END IF;

      IF m.status = 1 OR m.max_value IS NULL THEN
        next_step := 'start';
      ELSE
        SELECT j.id, j.min_value, j.max_value, j.status, j.attempts, j.batch_size
          INTO jid, jmin, jmax, jstatus, jattempts, jsize
        FROM batched_background_migration_jobs j
        WHERE j.batched_background_migration_id = m.id AND j.status = 1
        ORDER BY j.min_value
        LIMIT 1
        FOR UPDATE SKIP LOCKED;

        IF jid IS NULL AND NOT EXISTS (
          SELECT 1 FROM batched_background_migration_jobs j
          WHERE j.batched_background_migration_id = m.id AND j.max_value >= m.max_value
        ) THEN
          next_step := 'cut';
        ELSIF jid IS NULL THEN
          SELECT j.id, j.min_value, j.max_value, j.status, j.attempts, j.batch_size
            INTO jid, jmin, jmax, jstatus, jattempts, jsize
          FROM batched_background_migration_jobs j
          WHERE j.batched_background_migration_id = m.id AND j.status = 3
          ORDER BY j.id
          LIMIT 1
          FOR UPDATE SKIP LOCKED;

          IF jid IS NULL THEN
            IF EXISTS (
              SELECT 1 FROM batched_background_migration_jobs j
              WHERE j.batched_background_migration_id = m.id AND j.status IN (1, 3)
            ) THEN
              RAISE EXCEPTION USING ERRCODE = 'BBM01';
            END IF;
            next_step := 'finish';
          END IF;
        END IF;
      END IF;

      RETURN QUERY SELECT m.id, got, m.name, m.status, m.job_signature_name, m.table_name, m.column_name,
        m.batching_strategy, m.batch_size, m.max_parallel_jobs, m.target_job_ms, m.min_batch_size,
        m.max_batch_size, next_step, jid, jmin, jmax, jstatus, jattempts::integer, jsize;
      RETURN;
    EXCEPTION WHEN SQLSTATE 'BBM01' THEN
      busy := true;
    END;
  END LOOP;
  IF busy THEN
    RETURN QUERY SELECT 0::bigint, NULL::integer, NULL::text, NULL::smallint, NULL::text, NULL::text,
      NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::integer,
      NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::smallint, NULL::integer, NULL::integer;
  END IF;
  RETURN;
END
$$;
