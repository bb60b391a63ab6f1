-- Shims for workers of earlier releases, which call functions by signatures the current workers no
-- longer use, so that a rolling deploy from those releases keeps them working. Each is headed by
-- the release that may drop it. Installed after the other files: these call them.

-- May be dropped in 1.0.0. Workers of 0.7 and earlier call the three-argument take, after setting
-- the backstops and taking the quiet lock themselves: the same take, without wal_lsn and cut_due.
CREATE OR REPLACE FUNCTION bbm_take_job(work_names text[], valid_name_pattern text, only_migration bigint)
RETURNS TABLE (
  migration_id bigint, lane integer, name text, status smallint, job_signature_name text,
  table_name text, column_name text, batching_strategy text, batch_size integer,
  max_parallel_jobs integer, target_job_ms integer, min_batch_size integer, max_batch_size integer,
  step text, job_id bigint, job_min bigint, job_max bigint, job_status smallint, job_attempts integer,
  job_batch_size integer
)
LANGUAGE sql
VOLATILE
AS $$
  SELECT t.migration_id, t.lane, t.name, t.status, t.job_signature_name, t.table_name, t.column_name,
         t.batching_strategy, t.batch_size, t.max_parallel_jobs, t.target_job_ms, t.min_batch_size,
         t.max_batch_size, t.step, t.job_id, t.job_min, t.job_max, t.job_status, t.job_attempts, t.job_batch_size
  FROM bbm_take_job(work_names, valid_name_pattern, only_migration, NULL::integer) t
$$;

-- May be dropped in 1.1.0. Workers of 0.7 to 0.9 call bbm_cut_range without the key's columns:
-- they batch integer keys only.
CREATE OR REPLACE FUNCTION bbm_cut_range(
  migration_id bigint, target_schema text, target_table text, target_column text,
  expected_table_name text, expected_column_name text, expected_work text, chosen_size integer,
  key_unique boolean
)
RETURNS integer
LANGUAGE sql
VOLATILE
AS $$
  SELECT bbm_cut_range(migration_id, target_schema, target_table, target_column, expected_table_name,
                       expected_column_name, expected_work, chosen_size, key_unique, NULL::text[], NULL::oid[])
$$;

-- May be dropped in 1.0.0. Workers of 0.6 and earlier call bbm_cut_range without key_unique:
-- their cuts always scan, and 0 means nothing was cut, for whatever reason.
CREATE OR REPLACE FUNCTION bbm_cut_range(
  migration_id bigint, target_schema text, target_table text, target_column text,
  expected_table_name text, expected_column_name text, expected_work text, chosen_size integer
)
RETURNS integer
LANGUAGE sql
VOLATILE
AS $$
  SELECT coalesce(bbm_cut_range(migration_id, target_schema, target_table, target_column,
                                expected_table_name, expected_column_name, expected_work, chosen_size, false), 0)
$$;
