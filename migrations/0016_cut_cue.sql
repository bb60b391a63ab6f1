ALTER TABLE "batched_background_migration_jobs" ADD COLUMN "cut_cue" boolean;
--> statement-breakpoint
-- Fewer statements a job on the hot path (0.9.2):
--   * a fixed batch size in several lanes keeps max(32, 8 x lanes) ranges cut ahead (one lane: 16, as
--     before), so a cut, which costs about 0.5 ms of server CPU however few ranges it cuts, cuts 16
--     or more at a time;
--   * the take reads whether a cut is due from the range it takes (cut_cue, set by the cut on one
--     range of each cut) instead of counting the waiting ranges with every take; ranges without a
--     cue (split halves, ranges cut before this migration) are counted as before (bbm_cut_due).
--     A range taken that was cut larger than a lowered batch size still makes a cut due.
CREATE OR REPLACE FUNCTION bbm_cut_depth(max_parallel_jobs integer, target_job_ms integer)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT CASE WHEN target_job_ms IS NOT NULL THEN 2 * max_parallel_jobs
              WHEN max_parallel_jobs <= 1 THEN 16
              ELSE greatest(32, 8 * max_parallel_jobs) END
$$;
--> statement-breakpoint
-- Where a cut's cue lies: the range with this many ranges waiting behind it, so that the cut its
-- take makes due finds about half the depth waiting, as the count did (bbm_cut_due). The cut marks
-- it among the ranges it writes, and again among those waiting when a cut finds enough of them.
CREATE FUNCTION bbm_cue_behind(depth integer)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT depth / 2 - 1
$$;
--> statement-breakpoint
-- Whether the cut is due with the job a take took: the job's cue when the cut gave it one, or the job
-- cut larger than a fixed batch size is now (the cut cuts the waiting ones again; they lie behind
-- this one, and once cut again, the ranges a lane takes are no longer larger). A job without a cue
-- gets the count 0014's takes made: what the cut will count (in one lane it runs beside this job,
-- which counts; in several, after its COMMIT, when it no longer does), from the last range back,
-- no further than the answer needs, and due too when one of those was cut larger than a fixed
-- batch size is now.
CREATE FUNCTION bbm_cut_due(migration_id bigint, cue boolean, job_size integer, max_parallel_jobs integer,
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
        WHERE a.batched_background_migration_id = bbm_cut_due.migration_id AND a.status = 1
        ORDER BY a.min_value DESC
        LIMIT bbm_cut_depth(max_parallel_jobs, target_job_ms) / 2 + 2) w;
  RETURN due;
END
$$;
--> statement-breakpoint
-- bbm_take_job as in 0014, asking bbm_cut_due.
CREATE OR REPLACE FUNCTION bbm_take_job(work_names text[], valid_name_pattern text, only_migration bigint, backstop_ms integer)
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
  jcue boolean;
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
        SELECT j.id, j.min_value, j.max_value, j.status, j.attempts, j.batch_size, j.cut_cue
          INTO jid, jmin, jmax, jstatus, jattempts, jsize, jcue
        FROM batched_background_migration_jobs j
        WHERE j.batched_background_migration_id = m.id AND j.status = 1
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
-- bbm_take_next as in 0014, asking bbm_cut_due.
CREATE OR REPLACE FUNCTION bbm_take_next(after_migration bigint, after_lane integer, work_names text[], backstop_ms integer)
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
  j record;
  due boolean;
BEGIN
  PERFORM pg_catalog.set_config('statement_timeout', backstop_ms::text, true),
          pg_catalog.set_config('idle_in_transaction_session_timeout', backstop_ms::text, true),
          pg_catalog.set_config('client_connection_check_interval', '1000', true),
          pg_catalog.pg_advisory_xact_lock_shared(6447725, -2);
  SELECT b.id, b.name, b.status, b.job_signature_name, b.table_name, b.column_name, b.batching_strategy,
         b.batch_size, b.max_parallel_jobs, b.target_job_ms, b.min_batch_size, b.max_batch_size
    INTO m
  FROM batched_background_migrations b
  WHERE b.id = after_migration AND b.status = 4 AND b.max_value IS NOT NULL
    AND (b.on_hold_until IS NULL OR b.on_hold_until <= pg_catalog.now())
    AND after_lane >= 0
    AND after_lane < least(b.max_parallel_jobs, coalesce(b.lanes_allowed, b.max_parallel_jobs), 256)
    AND b.job_signature_name = ANY (work_names);
  IF NOT FOUND
     OR NOT pg_catalog.pg_try_advisory_xact_lock(1650617600 + after_lane, (after_migration % 2147483648)::int) THEN
    RETURN;
  END IF;
  SELECT a.id, a.min_value, a.max_value, a.status, a.attempts, a.batch_size, a.cut_cue INTO j
  FROM batched_background_migration_jobs a
  WHERE a.batched_background_migration_id = after_migration AND a.status = 1
  ORDER BY a.min_value
  LIMIT 1
  FOR UPDATE SKIP LOCKED;
  IF NOT FOUND THEN
    RETURN;
  END IF;
  due := bbm_cut_due(after_migration, j.cut_cue, j.batch_size, m.max_parallel_jobs, m.target_job_ms, m.batch_size,
                     m.min_batch_size, m.max_batch_size);
  RETURN QUERY SELECT m.id, after_lane, m.name, m.status, m.job_signature_name, m.table_name, m.column_name,
    m.batching_strategy, m.batch_size, m.max_parallel_jobs, m.target_job_ms, m.min_batch_size,
    m.max_batch_size, NULL::text, j.id, j.min_value, j.max_value, j.status, j.attempts::integer, j.batch_size,
    pg_catalog.pg_current_wal_insert_lsn()::text, due;
END
$$;
--> statement-breakpoint
-- bbm_cut_range as in 0015, with a cue on the range that makes the next cut due, and again on the
-- range that should have been when a cut finds enough ranges waiting.
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
  r record;
  depth integer;
  waiting integer;
  stale boolean;
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
  looked_size integer;
BEGIN
  -- Before the lock: most calls find enough ranges waiting, none cut larger than they would be now.
  SELECT bbm_cut_depth(b.max_parallel_jobs, b.target_job_ms),
         CASE WHEN b.target_job_ms IS NULL THEN bbm_fixed_size(b.batch_size, b.min_batch_size, b.max_batch_size, chosen_size) END
    INTO depth, size
  FROM batched_background_migrations b WHERE b.id = migration_id;
  looked_size := size;
  SELECT count(*)::int, coalesce(bool_or(w.batch_size > size), false) INTO waiting, stale
  FROM (SELECT a.batch_size FROM batched_background_migration_jobs a
        WHERE a.batched_background_migration_id = migration_id AND a.status = 1
        ORDER BY a.min_value DESC
        LIMIT depth / 2 + 2) w;
  IF waiting > depth / 2 AND NOT stale THEN
    -- A cue taken while lanes still held ranges before it comes early, and its cut cuts nothing:
    -- the range where the cue should have been becomes it, so the next cut is not lost (one a lane
    -- holds is skipped, not waited for; the lanes then run the queue dry, and cut themselves).
    UPDATE batched_background_migration_jobs c SET cut_cue = true
    WHERE c.id = (SELECT a.id FROM batched_background_migration_jobs a
                  WHERE a.batched_background_migration_id = migration_id AND a.status = 1
                  ORDER BY a.min_value DESC
                  OFFSET bbm_cue_behind(depth) LIMIT 1
                  FOR UPDATE SKIP LOCKED)
      AND c.cut_cue IS DISTINCT FROM true;
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
  depth := bbm_cut_depth(m.max_parallel_jobs, m.target_job_ms);
  size := CASE WHEN m.target_job_ms IS NULL
               THEN bbm_fixed_size(m.batch_size, m.min_batch_size, m.max_batch_size, chosen_size)
               ELSE greatest(coalesce(m.min_batch_size, 1),
                             least(coalesce(m.max_batch_size, 2147483647), coalesce(chosen_size, m.batch_size))) END;
  -- A fixed batch size lowered since the last ranges were cut: the ranges at the end that wait,
  -- cut larger than that, are cut again at the new size, so that the change shows within a range
  -- or so per lane, as it did when only two per lane were cut ahead. A range a lane holds, or any
  -- that has run, ends the walk: ranges stay contiguous. (A larger batch size shows once the
  -- ranges cut before it have run; split halves are smaller than they were cut and stay.) Only
  -- when the look before the lock saw such a range, or when the size changed while this call waited
  -- for the lock (the look used the old one), and no further back than the ranges cut ahead
  -- (unbounded, the walk was planned as a sort of all the migration's ranges).
  IF (stale OR size IS DISTINCT FROM looked_size) AND m.target_job_ms IS NULL THEN
    FOR r IN
      SELECT j.id, j.status, j.batch_size FROM batched_background_migration_jobs j
      WHERE j.batched_background_migration_id = m.id ORDER BY j.max_value DESC
      LIMIT depth + 1
    LOOP
      EXIT WHEN r.status <> 1 OR NOT coalesce(r.batch_size > size, false);
      PERFORM 1 FROM batched_background_migration_jobs j WHERE j.id = r.id AND j.status = 1 FOR UPDATE SKIP LOCKED;
      EXIT WHEN NOT FOUND;
      DELETE FROM batched_background_migration_jobs j WHERE j.id = r.id;
    END LOOP;
  END IF;
  -- Counted again under the lock: the count above may be stale.
  SELECT count(*)::int INTO waiting FROM batched_background_migration_jobs a
  WHERE a.batched_background_migration_id = m.id AND a.status = 1;
  SELECT j.max_value, j.dense_cuts INTO last_end, last_dense FROM batched_background_migration_jobs j
  WHERE j.batched_background_migration_id = m.id ORDER BY j.max_value DESC LIMIT 1;
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
      ends := '{}';
      FOR i IN 1 .. least(depth - waiting - cut, 15 - last_dense) LOOP
        EXIT WHEN start_id::numeric + (i - 1)::numeric * size > m.max_value;
        ends := ends || least(start_id::numeric + i::numeric * size - 1, m.max_value::numeric)::bigint;
      END LOOP;
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
  -- The cue (bbm_cue_behind), or the first range cut when fewer are.
  INSERT INTO batched_background_migration_jobs
    (batched_background_migration_id, min_value, max_value, status, attempts, batch_size, dense_cuts, cut_cue)
  SELECT m.id, r.s, r.e, 1, 0, size, r.d, r.i = greatest(1, cut - bbm_cue_behind(depth))
  FROM unnest(starts, stops, denses) WITH ORDINALITY AS r(s, e, d, i);
  IF cut > 0 AND ((m.target_job_ms IS NOT NULL AND m.batch_size <> size) OR m.run_errors > 0) THEN
    UPDATE batched_background_migrations b
    SET batch_size = CASE WHEN m.target_job_ms IS NOT NULL THEN size ELSE b.batch_size END,
        run_errors = 0, updated_at = pg_catalog.now()
    WHERE b.id = m.id;
  END IF;
  RETURN cut;
END
$$;
