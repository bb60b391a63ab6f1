-- bbm_lock_next_migration now tells "nothing to run" (NULL) from "there is work, but other
-- workers hold every candidate's lock" (0, never a migration id), so a run needs no second query
-- to know which it is, and "runnable" is defined here only.
CREATE OR REPLACE FUNCTION bbm_lock_next_migration(work_names text[], valid_name_pattern text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
  candidate bigint;
  busy boolean := false;
BEGIN
  FOR candidate IN
    SELECT id FROM batched_background_migrations
    WHERE status IN (1, 4)
      AND (job_signature_name = ANY (work_names) OR job_signature_name !~ valid_name_pattern)
    ORDER BY status = 4 DESC, id
    LIMIT 100
  LOOP
    IF pg_catalog.pg_try_advisory_xact_lock(6447725, (candidate % 2147483648)::int) THEN
      RETURN candidate;
    END IF;
    busy := true;
  END LOOP;
  RETURN CASE WHEN busy THEN 0 END;
END
$$;
