-- Takes a lane and a job: the first statement of a run's transaction (src/store/run-transaction.ts).
--
-- Lanes. A job runs in one of its migration's lanes: its transaction holds the lane's advisory
-- lock, (LANE_LOCK_BASE + lane, id), for lanes 0 .. max_parallel_jobs - 1, and a row lock on the
-- job's row. Ranges are cut ahead (bbm_cut_range) as job rows in status active; a lane takes one
-- with FOR UPDATE SKIP LOCKED. Both locks die with the session, so a lane killed at any instant
-- leaves its range active and unlocked, and the next lane takes it: no timeout, no sweeper. The
-- lanes the latency controller allows now (lanes_allowed) bound them further: jobs running in a
-- lane above a lowered bound finish; no new job starts there until the bound grows back.
--
-- With backstop_ms, it first sets the run's backstops for the rest of its transaction
-- (statement_timeout and idle_in_transaction_session_timeout at backstop_ms,
-- client_connection_check_interval at 1 s) and holds the quiet lock, (LOCK_NAMESPACE,
-- QUIET_LOCK_KEY), shared until the transaction ends (bbm_quiet_shared): a statement fewer per
-- run. A quiet round that keeps it longer than QUIET_TAKE_WAIT_MS has the take answer busy.
--
-- For the first runnable migration (running before active, then lowest id), not on hold, among
-- those whose work function the caller has (plus those whose job_signature_name can never name one,
-- which the caller fails) and which has a free lane:
--   * its oldest active range not locked by another lane, with the lane and the row locked;
--   * else, when it is not started, step 'start' (the caller starts it), or when ranges are left
--     to cut, step 'cut' (the caller cuts in a transaction of its own, then takes again);
--   * else its oldest failed range not locked by another lane (failed ranges are retried only
--     once every range has run);
--   * else, when no range is left at all, step 'finish' (the caller finishes the migration);
--   * else every range left is running in another lane: the lane is given back (the block's
--     subtransaction is rolled back) and the next candidate is tried.
-- Returns no row when nothing is runnable, and a row with migration_id 0 when there is work but
-- every lane of it is busy, or it is on hold. That row's look_again_ms says when to look again
-- without waiting out a backoff: at the earliest hold's end; within LANES_RECHECK_MS when a
-- candidate's lanes are bound below its lanes by a controller (lanes_allowed: a controller of any
-- worker may give one back at any moment), or when a quiet round turned the take away; sooner
-- where the migration's own jobs say when: after its last ranges, running in other lanes, end
-- (about one job's time, that of its last finished job), and in slow start after the jobs that
-- grow it a lane (GROW_AFTER_HEALTHY_JOBS of them; a quarter of LANES_RECHECK_MS before the first
-- job is timed), never sooner than LANES_RECHECK_MIN_MS. NULL when every lane of a candidate is busy
-- with ranges still waiting: only a run's end frees one, and the caller backs off. With
-- only_migration (bbm finalize), only that migration is tried, and when its lanes are all busy the
-- call waits for lane 0 instead of giving up.
--
-- The row also carries what the work function is handed beside the range: the migration's
-- job_arguments and, for a key that is not a single integer column, the job's first and last keys
-- (bbm_key_text), read with the job's row under its lock (a read beside the call, in the
-- statement's older snapshot, could miss a range cut, or see a range before a split, while the
-- take waited for the quiet lock).
--
-- The row also carries the server's WAL insert position (wal_lsn), from which bbm_finish_job
-- measures the job's WAL, and, with a job taken from the ranges not yet run, whether to cut the
-- next ranges beside or after it (cut_due: bbm_cut_due); NULL otherwise.
--
-- Its columns grew (job_min_key, job_max_key, job_arguments, look_again_ms) after 0.9: the DROP
-- lets the new row type replace the old (workers of 0.9 read the columns they know by name).
DROP FUNCTION IF EXISTS bbm_take_job(text[], text, bigint, integer);
CREATE OR REPLACE FUNCTION bbm_take_job(work_names text[], valid_name_pattern text, only_migration bigint, backstop_ms integer)
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
  k integer;
  got integer;
  busy boolean := false;
  quieted boolean := true;
  -- When to look again: the earliest hold's end; recheck_soon: within LANES_RECHECK_MS.
  look_again timestamptz;
  recheck_soon boolean := false;
  next_step text;
  jid bigint;
  jmin bigint;
  jmax bigint;
  jstatus smallint;
  jattempts integer;
  jsize integer;
  jcue boolean;
  jlo jsonb;
  jhi jsonb;
  due boolean;
BEGIN
  IF backstop_ms IS NOT NULL THEN
    PERFORM pg_catalog.set_config('statement_timeout', backstop_ms::text, true),
            pg_catalog.set_config('idle_in_transaction_session_timeout', backstop_ms::text, true),
            pg_catalog.set_config('client_connection_check_interval', '1000', true);
    quieted := bbm_quiet_shared({{QUIET_TAKE_WAIT_MS}});
  END IF;
  FOR m IN
    SELECT b.id, b.name, b.status, b.job_signature_name, b.table_name, b.column_name, b.batching_strategy,
           b.batch_size, b.max_parallel_jobs, b.target_job_ms, b.min_batch_size, b.max_batch_size, b.max_value,
           b.on_hold_until, b.lanes_allowed, b.lanes_reason, b.job_arguments
    FROM batched_background_migrations b
    WHERE b.status IN ({{RUNNABLE_STATUSES}})
      AND (only_migration IS NULL OR b.id = only_migration)
      AND (b.job_signature_name = ANY (work_names) OR b.job_signature_name !~ valid_name_pattern)
    ORDER BY b.status = {{MIGRATION_RUNNING}} DESC, b.id
    LIMIT 100
  LOOP
    -- A quiet round that held the quiet lock too long: every lane is busy (bbm_quiet_shared).
    EXIT WHEN NOT quieted;
    -- Held (set aside after run errors, or by a health signal): skipped, but it keeps the caller
    -- waiting like a busy lane, so that a worker run until done does not stop before it.
    IF m.on_hold_until IS NOT NULL AND m.on_hold_until > pg_catalog.now() THEN
      busy := true;
      look_again := least(look_again, m.on_hold_until);
      CONTINUE;
    END IF;
    BEGIN
      got := NULL;
      jid := NULL;
      jlo := NULL;
      jhi := NULL;
      next_step := NULL;
      due := NULL;
      -- The lanes the latency controller allows now (lanes_allowed), at most max_parallel_jobs.
      FOR k IN 0 .. least(m.max_parallel_jobs, coalesce(m.lanes_allowed, m.max_parallel_jobs), {{MAX_LANES}}) - 1 LOOP
        IF pg_catalog.pg_try_advisory_xact_lock({{LANE_LOCK_BASE}} + k, (m.id % {{MIGRATION_KEY_MODULUS}})::int) THEN
          got := k;
          EXIT;
        END IF;
      END LOOP;
      IF got IS NULL AND only_migration IS NOT NULL THEN
        PERFORM pg_catalog.pg_advisory_xact_lock({{LANE_LOCK_BASE}}, (m.id % {{MIGRATION_KEY_MODULUS}})::int);
        got := 0;
      END IF;
      IF got IS NULL THEN
        -- (A variable set here keeps its value when the block's subtransaction rolls back.)
        IF m.lanes_allowed < least(m.max_parallel_jobs, {{MAX_LANES}}) THEN
          recheck_soon := true;
          IF m.lanes_reason = 'slow start' THEN
            look_again := least(look_again, bbm_look_again_after_jobs(m.id, {{GROW_AFTER_HEALTHY_JOBS}}));
          END IF;
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'BBM01';
      END IF;

      IF m.status = {{MIGRATION_ACTIVE}} OR m.max_value IS NULL THEN
        next_step := 'start';
      ELSE
        SELECT j.id, j.min_value, j.max_value, j.status, j.attempts, j.batch_size, j.cut_cue, j.min_key, j.max_key
          INTO jid, jmin, jmax, jstatus, jattempts, jsize, jcue, jlo, jhi
        FROM batched_background_migration_jobs j
        WHERE j.batched_background_migration_id = m.id AND j.status = {{JOB_ACTIVE}}
        ORDER BY j.min_value
        LIMIT 1
        FOR UPDATE SKIP LOCKED;

        IF jid IS NOT NULL THEN
          due := bbm_cut_due(m.id, jcue, jsize, m.max_parallel_jobs, m.target_job_ms, m.batch_size,
                             m.min_batch_size, m.max_batch_size);
        ELSIF NOT EXISTS (
          SELECT 1 FROM batched_background_migration_jobs j
          WHERE j.batched_background_migration_id = m.id AND j.max_value >= m.max_value
        ) THEN
          next_step := 'cut';
        ELSE
          SELECT j.id, j.min_value, j.max_value, j.status, j.attempts, j.batch_size, j.min_key, j.max_key
            INTO jid, jmin, jmax, jstatus, jattempts, jsize, jlo, jhi
          FROM batched_background_migration_jobs j
          WHERE j.batched_background_migration_id = m.id AND j.status = {{JOB_FAILED}}
          ORDER BY j.id
          LIMIT 1
          FOR UPDATE SKIP LOCKED;

          IF jid IS NULL THEN
            IF EXISTS (
              SELECT 1 FROM batched_background_migration_jobs j
              WHERE j.batched_background_migration_id = m.id AND j.status IN ({{JOB_ACTIVE}}, {{JOB_FAILED}})
            ) THEN
              -- Its last ranges run in other lanes: it finishes soon, or a range fails to be retried.
              recheck_soon := true;
              look_again := least(look_again, bbm_look_again_after_jobs(m.id, 1));
              RAISE EXCEPTION USING ERRCODE = 'BBM01';
            END IF;
            next_step := 'finish';
          END IF;
        END IF;
      END IF;

      RETURN QUERY SELECT m.id, got, m.name, m.status, m.job_signature_name, m.table_name, m.column_name,
        m.batching_strategy, m.batch_size, m.max_parallel_jobs, m.target_job_ms, m.min_batch_size,
        m.max_batch_size, next_step, jid, jmin, jmax, jstatus, jattempts::integer, jsize,
        pg_catalog.pg_current_wal_insert_lsn()::text, due, bbm_key_text(jlo), bbm_key_text(jhi), m.job_arguments,
        NULL::integer;
      RETURN;
    EXCEPTION WHEN SQLSTATE 'BBM01' THEN
      busy := true;
    END;
  END LOOP;
  IF recheck_soon OR NOT quieted THEN
    look_again := least(look_again, pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => {{LANES_RECHECK_MS}} / 1000.0));
  END IF;
  IF busy OR NOT quieted THEN
    RETURN QUERY SELECT 0::bigint, NULL::integer, NULL::text, NULL::smallint, NULL::text, NULL::text,
      NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::integer,
      NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::smallint, NULL::integer, NULL::integer,
      NULL::text, NULL::boolean, NULL::text[], NULL::text[], NULL::jsonb,
      -- (greatest and least skip NULLs: no time to look again stays NULL.)
      CASE WHEN look_again IS NOT NULL
        THEN greatest(0, ceil(extract(epoch FROM look_again - pg_catalog.clock_timestamp()) * 1000))::integer
      END;
  END IF;
  RETURN;
END
$$;
