-- Records a job finished, in the transaction that ran its work, before its COMMIT: deferred
-- constraints are checked first, while the work's savepoint is still open, so that a deferred
-- violation by the work fails the job rather than the run. Returns the WAL written since the take
-- (from its wal_lsn), NULL without one. A function so that its UPDATE's plan is cached: as a
-- statement of its own, with its values as literals, it was planned for every job. On a Citus
-- coordinator it makes the job commit by two-phase commit (bbm_citus_two_phase), so that a work
-- that wrote one shard commits together with this record.
CREATE OR REPLACE FUNCTION bbm_finish_job(job_id bigint, attempts integer, row_count bigint, duration_ms double precision,
                               taken_at_lsn pg_lsn)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  wal bigint;
BEGIN
  SET CONSTRAINTS ALL IMMEDIATE;
  UPDATE batched_background_migration_jobs j
  SET status = {{JOB_FINISHED}}, attempts = bbm_finish_job.attempts, row_count = bbm_finish_job.row_count,
      duration_ms = bbm_finish_job.duration_ms, started_at = pg_catalog.now(),
      finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp(),
      failure_error_code = NULL, failure_message = NULL,
      wal_bytes = pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), taken_at_lsn)::bigint
  WHERE j.id = job_id
  RETURNING j.wal_bytes INTO wal;
  PERFORM bbm_citus_two_phase();
  RETURN wal;
END
$$;
