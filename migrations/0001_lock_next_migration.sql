-- Takes the advisory lock of the first runnable migration whose lock is free and returns its id
-- (NULL when there is none). Runnable: active (1) or running (4), running first, then lowest id;
-- among those whose work function the caller has, plus those whose job_signature_name can never
-- name a work function (the caller fails them as invalid_job_signature).
--
-- The lock key is (6447725, id), 6447725 being 0x62626d, "bbm". Locks are tried one candidate at
-- a time, in order, so a run never holds more than the one it returns. A function, so its plan
-- is made once per connection rather than once per run.
CREATE FUNCTION bbm_lock_next_migration(work_names text[], valid_name_pattern text)
RETURNS bigint
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
  candidate bigint;
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
  END LOOP;
  RETURN NULL;
END
$$;
