-- How many ranges bbm_cut_range keeps cut ahead of the lanes; a cut is due once half of them or
-- fewer wait. A call of bbm_cut_range costs the server about 0.5 ms of CPU however few ranges it
-- cuts, so a fixed batch size keeps many cut ahead (16 in one lane, max(32, 8 x lanes) in several)
-- and a call cuts half of that or more. An adaptive size (target_job_ms) keeps two per lane: its
-- sizes change with every job, and ranges cut ahead would run at an old one.
CREATE OR REPLACE FUNCTION bbm_cut_depth(max_parallel_jobs integer, target_job_ms integer)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT CASE WHEN target_job_ms IS NOT NULL THEN 2 * max_parallel_jobs
              WHEN max_parallel_jobs <= 1 THEN 16
              ELSE greatest(32, 8 * max_parallel_jobs) END
$$;
