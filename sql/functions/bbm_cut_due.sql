-- Whether the cut is due with the job a take took (bbm_take_job, bbm_take_next): the job's cue
-- (cut_cue, set by bbm_cut_range) when the cut gave it one, or the job cut larger than a fixed
-- batch size is now (the cut cuts the waiting ones again; they lie behind this one, and once cut
-- again, the ranges a lane takes are no longer larger). A job without a cue (a split half, a range
-- cut before cues existed) gets a count: what the cut will count (in one lane it runs beside this
-- job, which counts; in several, after its COMMIT, when it no longer does), from the last range
-- back, no further than the answer needs, and due too when one of those was cut larger than a
-- fixed batch size is now. Reading the cue instead of counting saves a count with every take.
CREATE OR REPLACE FUNCTION bbm_cut_due(migration_id bigint, cue boolean, job_size integer, max_parallel_jobs integer,
                            target_job_ms integer, batch_size integer, min_batch_size integer, max_batch_size integer)
RETURNS boolean
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
  due boolean;
BEGIN
  IF cue IS NOT NULL THEN
    RETURN cue OR coalesce(target_job_ms IS NULL
                           AND job_size > bbm_fixed_size(bbm_cut_due.batch_size, min_batch_size, max_batch_size), false);
  END IF;
  SELECT count(*) - CASE WHEN max_parallel_jobs > 1 THEN 1 ELSE 0 END <= bbm_cut_depth(max_parallel_jobs, target_job_ms) / 2
         OR coalesce(bool_or(w.batch_size > bbm_fixed_size(bbm_cut_due.batch_size, min_batch_size, max_batch_size)
                             AND target_job_ms IS NULL), false)
    INTO due
  FROM (SELECT a.batch_size FROM batched_background_migration_jobs a
        WHERE a.batched_background_migration_id = bbm_cut_due.migration_id AND a.status = {{JOB_ACTIVE}}
        ORDER BY a.min_value DESC
        LIMIT bbm_cut_depth(max_parallel_jobs, target_job_ms) / 2 + 2) w;
  RETURN due;
END
$$;
