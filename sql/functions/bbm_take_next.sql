-- The take of a lane that just finished a job of a migration: the next waiting range of the same
-- migration, in the same lane, as bbm_take_job would take it (the same backstops, quiet lock,
-- lane lock, row lock and columns), without going through the migrations one by one. It returns
-- no row when that is not possible (the migration no longer running, held, given fewer lanes, no
-- range waiting, the lane taken elsewhere): the caller then rolls back and calls bbm_take_job.
-- The caller still calls bbm_take_job now and then, so that a migration before this one in
-- bbm_take_job's order gets its lanes. Its columns are bbm_take_job's, and grew with them after
-- 0.9 (the DROP lets the new row type replace the old).
DROP FUNCTION IF EXISTS bbm_take_next(bigint, integer, text[], integer);
CREATE OR REPLACE FUNCTION bbm_take_next(after_migration bigint, after_lane integer, work_names text[], backstop_ms integer)
RETURNS TABLE (
  migration_id bigint, lane integer, name text, status smallint, job_signature_name text,
  table_name text, column_name text, batching_strategy text, batch_size integer,
  max_parallel_jobs integer, target_job_ms integer, min_batch_size integer, max_batch_size integer,
  step text, job_id bigint, job_min bigint, job_max bigint, job_status smallint, job_attempts integer,
  job_batch_size integer, wal_lsn text, cut_due boolean, job_min_key text[], job_max_key text[],
  job_arguments jsonb, look_again_ms integer
)
LANGUAGE plpgsql
VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  m record;
  j record;
  due boolean;
BEGIN
  PERFORM pg_catalog.set_config('statement_timeout', backstop_ms::text, true),
          pg_catalog.set_config('idle_in_transaction_session_timeout', backstop_ms::text, true),
          pg_catalog.set_config('client_connection_check_interval', '1000', true);
  IF NOT bbm_quiet_shared({{QUIET_TAKE_WAIT_MS}}) THEN
    RETURN;
  END IF;
  SELECT b.id, b.name, b.status, b.job_signature_name, b.table_name, b.column_name, b.batching_strategy,
         b.batch_size, b.max_parallel_jobs, b.target_job_ms, b.min_batch_size, b.max_batch_size, b.job_arguments
    INTO m
  FROM batched_background_migrations b
  WHERE b.id = after_migration AND b.status = {{MIGRATION_RUNNING}} AND b.max_value IS NOT NULL
    AND (b.on_hold_until IS NULL OR b.on_hold_until <= pg_catalog.now())
    AND after_lane >= 0
    AND after_lane < least(b.max_parallel_jobs, coalesce(b.lanes_allowed, b.max_parallel_jobs), {{MAX_LANES}})
    AND b.job_signature_name = ANY (work_names);
  IF NOT FOUND
     OR NOT pg_catalog.pg_try_advisory_xact_lock({{LANE_LOCK_BASE}} + after_lane, (after_migration % {{MIGRATION_KEY_MODULUS}})::int) THEN
    RETURN;
  END IF;
  SELECT a.id, a.min_value, a.max_value, a.status, a.attempts, a.batch_size, a.cut_cue, a.min_key, a.max_key INTO j
  FROM batched_background_migration_jobs a
  WHERE a.batched_background_migration_id = after_migration AND a.status = {{JOB_ACTIVE}}
  ORDER BY a.min_value
  LIMIT 1
  FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  due := bbm_cut_due(after_migration, j.cut_cue, j.batch_size, m.max_parallel_jobs, m.target_job_ms, m.batch_size,
                     m.min_batch_size, m.max_batch_size);
  RETURN QUERY SELECT m.id, after_lane, m.name, m.status, m.job_signature_name, m.table_name, m.column_name,
    m.batching_strategy, m.batch_size, m.max_parallel_jobs, m.target_job_ms, m.min_batch_size,
    m.max_batch_size, NULL::text, j.id, j.min_value, j.max_value, j.status, j.attempts::integer, j.batch_size,
    pg_catalog.pg_current_wal_insert_lsn()::text, due, bbm_key_text(j.min_key), bbm_key_text(j.max_key), m.job_arguments,
    NULL::integer;
END
$$;
