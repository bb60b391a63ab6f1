-- bbm_cut_ranges: bbm_cut_range (0011) cutting up to `ranges` ranges in one call, under one take
-- of the migration's cursor lock, one read of its row and one count of its waiting ranges. Workers
-- cut the ranges ahead of their lanes with it, beside a running job, on a connection of their own.
-- It cuts no more than bring the migration's active ranges to two per lane, and returns how many
-- it cut. bbm_cut_range stays for workers of earlier versions during a rolling deploy.
CREATE OR REPLACE FUNCTION bbm_cut_ranges(
  migration_id bigint, target_schema text, target_table text, target_column text,
  expected_table_name text, expected_column_name text, expected_work text, chosen_size integer,
  ranges integer
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  m record;
  last_end bigint;
  start_id bigint;
  size integer;
  end_id bigint;
  wanted integer;
  cut integer := 0;
BEGIN
  PERFORM pg_catalog.pg_advisory_xact_lock(6447725, (migration_id % 2147483648)::int);
  SELECT b.id, b.min_value, b.max_value, b.batch_size, b.target_job_ms, b.min_batch_size, b.max_batch_size,
         b.max_parallel_jobs, b.run_errors
    INTO m
  FROM batched_background_migrations b
  WHERE b.id = migration_id AND b.status = 4 AND b.max_value IS NOT NULL
    AND b.table_name = expected_table_name AND b.column_name = expected_column_name
    AND b.job_signature_name = expected_work
    AND (b.batching_strategy IS NULL OR b.batching_strategy = 'serial_key_set');
  IF NOT FOUND THEN
    RETURN 0;
  END IF;
  wanted := least(greatest(ranges, 1), 2 * m.max_parallel_jobs - (
    SELECT count(*) FROM batched_background_migration_jobs a
    WHERE a.batched_background_migration_id = m.id AND a.status = 1)::integer);
  IF wanted <= 0 THEN
    RETURN 0;
  END IF;
  SELECT j.max_value INTO last_end FROM batched_background_migration_jobs j
  WHERE j.batched_background_migration_id = m.id ORDER BY j.max_value DESC LIMIT 1;
  size := greatest(coalesce(m.min_batch_size, 1), least(coalesce(m.max_batch_size, 2147483647),
            CASE WHEN m.target_job_ms IS NULL THEN least(m.batch_size, coalesce(chosen_size, m.batch_size))
                 ELSE coalesce(chosen_size, m.batch_size) END));
  WHILE cut < wanted LOOP
    IF last_end IS NULL THEN
      start_id := m.min_value;
    ELSIF last_end < m.max_value THEN
      start_id := last_end + 1;
    ELSE
      EXIT;
    END IF;
    EXECUTE format('SELECT %3$I::bigint FROM %1$I.%2$I WHERE %3$I >= $1 AND %3$I <= $2 ORDER BY %3$I LIMIT 1 OFFSET $3',
                   target_schema, target_table, target_column)
      INTO end_id USING start_id, m.max_value, size - 1;
    last_end := coalesce(end_id, m.max_value);
    INSERT INTO batched_background_migration_jobs
      (batched_background_migration_id, min_value, max_value, status, attempts, batch_size)
    VALUES (m.id, start_id, last_end, 1, 0, size);
    cut := cut + 1;
  END LOOP;
  IF cut > 0 AND ((m.target_job_ms IS NOT NULL AND m.batch_size <> size) OR m.run_errors > 0) THEN
    UPDATE batched_background_migrations b
    SET batch_size = CASE WHEN m.target_job_ms IS NOT NULL THEN size ELSE b.batch_size END,
        run_errors = 0, updated_at = pg_catalog.now()
    WHERE b.id = m.id;
  END IF;
  RETURN cut;
END
$$;
--> statement-breakpoint
-- One implementation: workers of earlier versions still call bbm_cut_range, which now cuts one
-- range through bbm_cut_ranges.
CREATE OR REPLACE FUNCTION bbm_cut_range(
  migration_id bigint, target_schema text, target_table text, target_column text,
  expected_table_name text, expected_column_name text, expected_work text, chosen_size integer
)
RETURNS integer
LANGUAGE sql
VOLATILE
AS $$
  SELECT bbm_cut_ranges(migration_id, target_schema, target_table, target_column,
                        expected_table_name, expected_column_name, expected_work, chosen_size, 1)
$$;
