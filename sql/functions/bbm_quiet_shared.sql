-- Takes the quiet lock, (LOCK_NAMESPACE, QUIET_LOCK_KEY), shared until the transaction ends: what
-- every run holds from its take (bbm_take_job, bbm_take_next), so that a worker measuring commits
-- with no run in flight (a quiet round, src/store/workers.ts) can wait for every run of the fleet.
-- Waits for a quiet round to end for up to wait_ms, then gives up (false), the caller's lane found
-- busy: through a pooler in transaction mode, a take waiting here holds a server connection, and a
-- quiet round needs one more for its commits; waiting takes filling the pool would stall both
-- until the pooler's own timeout (seen: 60 s through PgBouncer with a pool of 3 and 4 lanes).
-- Without a quiet round, the lock is free at once and costs no subtransaction.
CREATE OR REPLACE FUNCTION bbm_quiet_shared(wait_ms integer)
RETURNS boolean
LANGUAGE plpgsql
VOLATILE
AS $$
DECLARE
  previous text;
BEGIN
  IF pg_catalog.pg_try_advisory_xact_lock_shared({{LOCK_NAMESPACE}}, {{QUIET_LOCK_KEY}}) THEN
    RETURN true;
  END IF;
  previous := pg_catalog.current_setting('lock_timeout');
  BEGIN
    PERFORM pg_catalog.set_config('lock_timeout', wait_ms::text, true);
    PERFORM pg_catalog.pg_advisory_xact_lock_shared({{LOCK_NAMESPACE}}, {{QUIET_LOCK_KEY}});
    PERFORM pg_catalog.set_config('lock_timeout', previous, true);
    RETURN true;
  EXCEPTION WHEN lock_not_available THEN
    RETURN false;
  END;
END
$$;
