-- When a lane turned away from a migration looks again, where the migration's own jobs say when
-- (bbm_take_job): after `jobs` of its jobs, each taking as long as its last finished one (the
-- last ranges cut that finished: the jobs now running were cut beside them), a quarter of
-- LANES_RECHECK_MS before any job is timed; never sooner than LANES_RECHECK_MIN_MS nor later
-- than LANES_RECHECK_MS, the bound on any recheck.
CREATE OR REPLACE FUNCTION bbm_look_again_after_jobs(migration_id bigint, jobs integer)
RETURNS timestamptz
LANGUAGE sql
VOLATILE
AS $$
  SELECT pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => greatest(
           {{LANES_RECHECK_MIN_MS}},
           least({{LANES_RECHECK_MS}}, coalesce(jobs * (
             SELECT j.duration_ms FROM batched_background_migration_jobs j
             WHERE j.batched_background_migration_id = bbm_look_again_after_jobs.migration_id
               AND j.status = {{JOB_FINISHED}}
             ORDER BY j.max_value DESC
             LIMIT 1), {{LANES_RECHECK_MS}} / 4.0))) / 1000.0)
$$;
