-- Fewer statements per job (0.8). Every statement of a run's round trips costs the server a
-- parse, a plan and a result, and the worker a result to read: measured on this machine, a
-- statement of set_config calls cost 30-40 µs of server CPU, the record's UPDATE 50-90 µs of
-- planning, and a cut that found enough ranges waiting 130 µs; a job of 1,000 rows costs about
-- 5 ms. So the run's settings, the quiet lock and the WAL position move into bbm_take_job, the
-- record into bbm_finish_job (its plan cached), and bbm_cut_range cuts its arithmetic ranges with
-- one probe and one INSERT; the take also says whether a cut is due with the job, so a worker
-- sends none when enough ranges wait.
--
-- How many ranges are cut ahead is unchanged: up to two per lane waiting or running, cut again
-- once one per lane or fewer are. bbm_cut_depth says it for both the take and the cut. (Four and
-- two would halve the cuts, about 50 µs of server CPU a job, but a batch_size changed by an
-- operator would wait for twice as many ranges of the old size.)
CREATE FUNCTION bbm_cut_depth(max_parallel_jobs integer)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT 2 * max_parallel_jobs
$$;
--> statement-breakpoint
-- bbm_take_job as in 0009, and:
--   * with backstop_ms, it first sets the run's backstops for the rest of its transaction
--     (statement_timeout and idle_in_transaction_session_timeout at backstop_ms,
--     client_connection_check_interval at 1 s) and holds the quiet lock, (6447725, -2), shared
--     until the transaction ends; the caller used to send both as a statement of their own;
--   * it returns the server's WAL insert position (wal_lsn), from which bbm_finish_job measures
--     the job's WAL;
--   * with a job taken from the ranges not yet run, cut_due says whether to cut the next ranges
--     beside or after it: whether bbm_cut_range, counting the ranges waiting or running then
--     (as they are now), would cut. NULL otherwise.
CREATE FUNCTION bbm_take_job(work_names text[], valid_name_pattern text, only_migration bigint, backstop_ms integer)
RETURNS TABLE (
  migration_id bigint, lane integer, name text, status smallint, job_signature_name text,
  table_name text, column_name text, batching_strategy text, batch_size integer,
  max_parallel_jobs integer, target_job_ms integer, min_batch_size integer, max_batch_size integer,
  step text, job_id bigint, job_min bigint, job_max bigint, job_status smallint, job_attempts integer,
  job_batch_size integer, wal_lsn text, cut_due boolean
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
  next_step text;
  jid bigint;
  jmin bigint;
  jmax bigint;
  jstatus smallint;
  jattempts integer;
  jsize integer;
  due boolean;
BEGIN
  IF backstop_ms IS NOT NULL THEN
    PERFORM pg_catalog.set_config('statement_timeout', backstop_ms::text, true),
            pg_catalog.set_config('idle_in_transaction_session_timeout', backstop_ms::text, true),
            pg_catalog.set_config('client_connection_check_interval', '1000', true),
            pg_catalog.pg_advisory_xact_lock_shared(6447725, -2);
  END IF;
  FOR m IN
    SELECT b.id, b.name, b.status, b.job_signature_name, b.table_name, b.column_name, b.batching_strategy,
           b.batch_size, b.max_parallel_jobs, b.target_job_ms, b.min_batch_size, b.max_batch_size, b.max_value,
           b.on_hold_until, b.lanes_allowed
    FROM batched_background_migrations b
    WHERE b.status IN (1, 4)
      AND (only_migration IS NULL OR b.id = only_migration)
      AND (b.job_signature_name = ANY (work_names) OR b.job_signature_name !~ valid_name_pattern)
    ORDER BY b.status = 4 DESC, b.id
    LIMIT 100
  LOOP
    -- Held (set aside after run errors, or by a health signal): skipped, but it keeps the caller
    -- waiting like a busy lane, so that a worker run until done does not stop before it.
    IF m.on_hold_until IS NOT NULL AND m.on_hold_until > pg_catalog.now() THEN
      busy := true;
      CONTINUE;
    END IF;
    BEGIN
      got := NULL;
      jid := NULL;
      next_step := NULL;
      due := NULL;
      -- The lanes the latency controller allows now (lanes_allowed), at most max_parallel_jobs.
      FOR k IN 0 .. least(m.max_parallel_jobs, coalesce(m.lanes_allowed, m.max_parallel_jobs), 256) - 1 LOOP
        IF pg_catalog.pg_try_advisory_xact_lock(1650617600 + k, (m.id % 2147483648)::int) THEN
          got := k;
          EXIT;
        END IF;
      END LOOP;
      IF got IS NULL AND only_migration IS NOT NULL THEN
        PERFORM pg_catalog.pg_advisory_xact_lock(1650617600, (m.id % 2147483648)::int);
        got := 0;
      END IF;
      IF got IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'BBM01';
      END IF;

      IF m.status = 1 OR m.max_value IS NULL THEN
        next_step := 'start';
      ELSE
        SELECT j.id, j.min_value, j.max_value, j.status, j.attempts, j.batch_size
          INTO jid, jmin, jmax, jstatus, jattempts, jsize
        FROM batched_background_migration_jobs j
        WHERE j.batched_background_migration_id = m.id AND j.status = 1
        ORDER BY j.min_value
        LIMIT 1
        FOR UPDATE SKIP LOCKED;

        IF jid IS NOT NULL THEN
          -- What the cut will count: in one lane it runs beside this job, which counts; in
          -- several, after its COMMIT, when it no longer does.
          SELECT count(*) - CASE WHEN m.max_parallel_jobs > 1 THEN 1 ELSE 0 END
                   <= bbm_cut_depth(m.max_parallel_jobs) / 2 INTO due
          FROM batched_background_migration_jobs a
          WHERE a.batched_background_migration_id = m.id AND a.status = 1;
        ELSIF NOT EXISTS (
          SELECT 1 FROM batched_background_migration_jobs j
          WHERE j.batched_background_migration_id = m.id AND j.max_value >= m.max_value
        ) THEN
          next_step := 'cut';
        ELSE
          SELECT j.id, j.min_value, j.max_value, j.status, j.attempts, j.batch_size
            INTO jid, jmin, jmax, jstatus, jattempts, jsize
          FROM batched_background_migration_jobs j
          WHERE j.batched_background_migration_id = m.id AND j.status = 3
          ORDER BY j.id
          LIMIT 1
          FOR UPDATE SKIP LOCKED;

          IF jid IS NULL THEN
            IF EXISTS (
              SELECT 1 FROM batched_background_migration_jobs j
              WHERE j.batched_background_migration_id = m.id AND j.status IN (1, 3)
            ) THEN
              RAISE EXCEPTION USING ERRCODE = 'BBM01';
            END IF;
            next_step := 'finish';
          END IF;
        END IF;
      END IF;

      RETURN QUERY SELECT m.id, got, m.name, m.status, m.job_signature_name, m.table_name, m.column_name,
        m.batching_strategy, m.batch_size, m.max_parallel_jobs, m.target_job_ms, m.min_batch_size,
        m.max_batch_size, next_step, jid, jmin, jmax, jstatus, jattempts::integer, jsize,
        pg_catalog.pg_current_wal_insert_lsn()::text, due;
      RETURN;
    EXCEPTION WHEN SQLSTATE 'BBM01' THEN
      busy := true;
    END;
  END LOOP;
  IF busy THEN
    RETURN QUERY SELECT 0::bigint, NULL::integer, NULL::text, NULL::smallint, NULL::text, NULL::text,
      NULL::text, NULL::text, NULL::integer, NULL::integer, NULL::integer, NULL::integer, NULL::integer,
      NULL::text, NULL::bigint, NULL::bigint, NULL::bigint, NULL::smallint, NULL::integer, NULL::integer,
      NULL::text, NULL::boolean;
  END IF;
  RETURN;
END
$$;
--> statement-breakpoint
-- Workers before 0.8 call the three-argument take (after setting the backstops and taking the
-- quiet lock themselves): the same take, without the new columns.
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
--> statement-breakpoint
-- Records a job finished, in the transaction that ran its work, before its COMMIT: deferred
-- constraints are checked first, while the work's savepoint is still open, so that a deferred
-- violation by the work fails the job rather than the run. Returns the WAL written since the take
-- (from its wal_lsn), NULL without one. A function so that its UPDATE's plan is cached: as a
-- statement of its own, with its values as literals, it was planned for every job.
CREATE FUNCTION bbm_finish_job(job_id bigint, attempts integer, row_count bigint, duration_ms double precision,
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
  SET status = 2, attempts = bbm_finish_job.attempts, row_count = bbm_finish_job.row_count,
      duration_ms = bbm_finish_job.duration_ms, started_at = pg_catalog.now(),
      finished_at = pg_catalog.clock_timestamp(), updated_at = pg_catalog.clock_timestamp(),
      failure_error_code = NULL, failure_message = NULL,
      wal_bytes = pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), taken_at_lsn)::bigint
  WHERE j.id = job_id
  RETURNING j.wal_bytes INTO wal;
  RETURN wal;
END
$$;
--> statement-breakpoint
-- bbm_cut_range as in 0012, and:
--   * arithmetic ranges (dense cuts) are cut together: as many as are wanted and allowed before the
--     next scan, their end keys looked up in one probe (`= ANY`), written in one INSERT. The first
--     whose end key is missing goes to the scan, as before; the ranges are the ones 0012 cut.
CREATE OR REPLACE FUNCTION bbm_cut_range(
  migration_id bigint, target_schema text, target_table text, target_column text,
  expected_table_name text, expected_column_name text, expected_work text, chosen_size integer,
  key_unique boolean
)
RETURNS integer
LANGUAGE plpgsql
VOLATILE
AS $$
#variable_conflict use_column
DECLARE
  m record;
  depth integer;
  waiting integer;
  last_end bigint;
  last_dense smallint;
  start_id bigint;
  size integer;
  end_id bigint;
  dense smallint;
  ends bigint[];
  present bigint[];
  e bigint;
  missing boolean;
  starts bigint[] := '{}';
  stops bigint[] := '{}';
  denses smallint[] := '{}';
  cut integer := 0;
BEGIN
  SELECT bbm_cut_depth(b.max_parallel_jobs) INTO depth
  FROM batched_background_migrations b WHERE b.id = migration_id;
  SELECT count(*)::int INTO waiting FROM batched_background_migration_jobs a
  WHERE a.batched_background_migration_id = migration_id AND a.status = 1;
  IF waiting > depth / 2 THEN
    RETURN 0;
  END IF;
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
    RETURN NULL;
  END IF;
  depth := bbm_cut_depth(m.max_parallel_jobs);
  -- Counted again under the lock: the count above may be stale.
  SELECT count(*)::int INTO waiting FROM batched_background_migration_jobs a
  WHERE a.batched_background_migration_id = m.id AND a.status = 1;
  SELECT j.max_value, j.dense_cuts INTO last_end, last_dense FROM batched_background_migration_jobs j
  WHERE j.batched_background_migration_id = m.id ORDER BY j.max_value DESC LIMIT 1;
  size := greatest(coalesce(m.min_batch_size, 1), least(coalesce(m.max_batch_size, 2147483647),
            CASE WHEN m.target_job_ms IS NULL THEN least(m.batch_size, coalesce(chosen_size, m.batch_size))
                 ELSE coalesce(chosen_size, m.batch_size) END));
  WHILE waiting + cut < depth LOOP
    IF last_end IS NULL THEN
      start_id := m.min_value;
    ELSIF last_end < m.max_value THEN
      start_id := last_end + 1;
    ELSIF cut = 0 THEN
      RETURN NULL;
    ELSE
      EXIT;
    END IF;
    missing := false;
    IF key_unique AND last_dense IS NOT NULL AND last_dense < 15 THEN
      -- The next ranges by arithmetic, up to the last value; in numeric, since start + n * size can
      -- pass the ends of bigint.
      ends := ARRAY(
        SELECT least(start_id::numeric + i::numeric * size - 1, m.max_value::numeric)::bigint
        FROM pg_catalog.generate_series(1, least(depth - waiting - cut, 15 - last_dense)) i
        WHERE start_id::numeric + (i - 1)::numeric * size <= m.max_value
        ORDER BY i);
      -- A range whose last key is missing may lie in a gap: the scan looks (one probe for all).
      EXECUTE format('SELECT array_agg(%3$I::bigint) FROM %1$I.%2$I WHERE %3$I = ANY ($1)',
                     target_schema, target_table, target_column)
        INTO present USING ends;
      FOREACH e IN ARRAY ends LOOP
        IF e < m.max_value AND NOT coalesce(e = ANY (present), false) THEN
          missing := true;
          EXIT;
        END IF;
        starts := starts || start_id;
        stops := stops || e;
        last_dense := last_dense + 1;
        denses := denses || last_dense;
        cut := cut + 1;
        last_end := e;
        EXIT WHEN e >= m.max_value;
        start_id := e + 1;
      END LOOP;
      CONTINUE WHEN NOT missing AND cardinality(ends) > 0;
    END IF;
    EXECUTE format('SELECT %3$I::bigint FROM %1$I.%2$I WHERE %3$I >= $1 AND %3$I <= $2 ORDER BY %3$I LIMIT 1 OFFSET $3',
                   target_schema, target_table, target_column)
      INTO end_id USING start_id, m.max_value, size - 1;
    dense := CASE WHEN key_unique AND end_id IS NOT NULL AND end_id::numeric - start_id + 1 <= size * 1.0625 THEN 0 END;
    end_id := coalesce(end_id, m.max_value);
    starts := starts || start_id;
    stops := stops || end_id;
    denses := denses || dense;
    cut := cut + 1;
    last_end := end_id;
    last_dense := dense;
  END LOOP;
  INSERT INTO batched_background_migration_jobs
    (batched_background_migration_id, min_value, max_value, status, attempts, batch_size, dense_cuts)
  SELECT m.id, r.s, r.e, 1, 0, size, r.d FROM unnest(starts, stops, denses) AS r(s, e, d);
  IF cut > 0 AND ((m.target_job_ms IS NOT NULL AND m.batch_size <> size) OR m.run_errors > 0) THEN
    UPDATE batched_background_migrations b
    SET batch_size = CASE WHEN m.target_job_ms IS NOT NULL THEN size ELSE b.batch_size END,
        run_errors = 0, updated_at = pg_catalog.now()
    WHERE b.id = m.id;
  END IF;
  RETURN cut;
END
$$;
