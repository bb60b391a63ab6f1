-- Cuts the next ranges of a running migration as job rows in status active, for its lanes to take
-- (bbm_take_job), in a short transaction of its own (src/store/jobs.ts). It holds the migration's
-- cursor lock, (LOCK_NAMESPACE, id), until the transaction ends, so cuts of one migration never
-- overlap; ranges stay contiguous. It returns the number of ranges cut, or NULL when the migration
-- has none left to cut (or its row no longer names what the caller validated: table, column, work).
--
-- Depth. It keeps bbm_cut_depth ranges waiting or running, and cuts only once half of them or
-- fewer wait: the look before the lock returns 0 when more do. In several lanes, ranges the other
-- lanes hold count as waiting until they commit, so up to one a lane is allowed for. One range of
-- each cut carries the cue (cut_cue, at bbm_cue_behind): the take of that range says the next cut
-- is due, without counting; a cut that finds enough waiting moves the cue to the first range no
-- lane holds from where it should have been, so that the next cut is not lost.
--
-- Size. A migration with a target_job_ms cuts at the caller's chosen_size (its controller's) and
-- writes it back to batch_size; one without cuts at bbm_fixed_size. A fixed batch size lowered
-- since the last ranges were cut: the ranges at the end that wait, cut larger than that, are cut
-- again at the new size, so that the change shows within a range or so per lane. That walk runs
-- when the look before the lock saw such a range, or when the size changed while this call waited
-- for the lock (the look used the old one).
--
-- Dense cuts. Where the key column has a unique index on it alone (key_unique, from the worker's
-- catalog lookup), a range [start, start + size - 1] holds at most size rows, so where the keys
-- are dense its end needs no index scan. After a scan that found the keys dense (its `size` rows
-- spanned at most 1.0625 x size keys), the next 15 ranges are cut by arithmetic, their end keys
-- looked up in one probe (`= ANY`): the first whose end key is missing may lie in a gap and goes
-- back to the scan. dense_cuts records which: NULL, a scan found the keys sparse; 0, a scan found
-- them dense; k, the k-th range cut by arithmetic since. Why: on a table rewritten over and over,
-- the scan's heap visibility checks cost about 1 ms per 1,000 keys, a fifth of a 1,000-row UPDATE.
-- A range cut by arithmetic holds fewer rows than a scan would give it where keys are missing
-- inside it (about 6 % fewer at the density bound), never more. (spirit's optimistic chunker cuts
-- auto-increment keys by arithmetic the same way.) All ranges of a call are written in one INSERT.
--
-- Keys. A key that is not a single integer column (key_columns, in index order, of types
-- key_types; NULL for an integer key) is cut the same way on its index, with row-value
-- comparisons of the key's values (JSON arrays, cast to the columns' types) in the columns' own
-- collations: a range runs from the first key after the last range's end, [start, end] inclusive,
-- its end the size-th key from there. Its min_value and max_value hold its place in the order of
-- the ranges instead (KEY_ORDINAL_STEP apart, the last ending at KEY_ORDINAL_END, the migration's
-- max_value), so that everything that orders ranges (the takes, the look before the lock, the walk
-- that cuts waiting ranges again, the split) orders these alike. An empty key space gets one
-- range with NULL keys.
CREATE OR REPLACE FUNCTION bbm_cut_range(
  migration_id bigint, target_schema text, target_table text, target_column text,
  expected_table_name text, expected_column_name text, expected_work text, chosen_size integer,
  key_unique boolean, key_columns text[], key_types oid[]
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
  held integer;
  last_key jsonb;
  first_key jsonb;
  end_key jsonb;
  final boolean;
  key_list text;
  end_list text;
  key_row text;
  key_desc text;
  key_probe text;
  key_probes text[] := '{}';
  lead_probes text[] := '{}';
  next_probes text[] := '{}';
  tail_probes text[] := '{}';
  from_key jsonb;
  from_probe integer;
  tail_count integer;
  tail_key jsonb;
  tail_final boolean;
  lo jsonb;
  lead_value text;
  lead_distributed boolean := false;
  lead text;
  probe integer;
  op text;
  min_keys jsonb[] := '{}';
  max_keys jsonb[] := '{}';
BEGIN
  -- Before the lock: most calls find enough ranges waiting, none cut larger than they would be now.
  -- In several lanes, ranges the other lanes hold count as waiting until they commit: up to one a lane.
  SELECT bbm_cut_depth(b.max_parallel_jobs, b.target_job_ms),
         CASE WHEN b.target_job_ms IS NULL THEN bbm_fixed_size(b.batch_size, b.min_batch_size, b.max_batch_size, chosen_size) END,
         least(greatest(b.max_parallel_jobs, 1), {{MAX_LANES}}) - 1
    INTO depth, size, held
  FROM batched_background_migrations b WHERE b.id = migration_id;
  looked_size := size;
  SELECT count(*)::int, coalesce(bool_or(w.batch_size > size), false) INTO waiting, stale
  FROM (SELECT a.batch_size FROM batched_background_migration_jobs a
        WHERE a.batched_background_migration_id = migration_id AND a.status = {{JOB_ACTIVE}}
        ORDER BY a.min_value DESC
        LIMIT depth / 2 + held + 2) w;
  IF waiting > depth / 2 + held AND NOT stale THEN
    -- A cue taken with more ranges waiting than it was cut for (the depth lowered, a stale cue):
    -- its cut cuts nothing, and the first range a lane does not hold from where the cue should have
    -- been on becomes it, so the next cut is not lost.
    UPDATE batched_background_migration_jobs c SET cut_cue = true
    WHERE c.id = (SELECT a.id FROM batched_background_migration_jobs a
                  WHERE a.batched_background_migration_id = migration_id AND a.status = {{JOB_ACTIVE}}
                    AND a.min_value >= (SELECT w.min_value FROM batched_background_migration_jobs w
                                        WHERE w.batched_background_migration_id = migration_id AND w.status = {{JOB_ACTIVE}}
                                        ORDER BY w.min_value DESC
                                        OFFSET bbm_cue_behind(depth) LIMIT 1)
                  ORDER BY a.min_value
                  LIMIT 1
                  FOR UPDATE SKIP LOCKED)
      AND c.cut_cue IS DISTINCT FROM true;
    RETURN 0;
  END IF;
  PERFORM pg_catalog.pg_advisory_xact_lock({{LOCK_NAMESPACE}}, (migration_id % {{MIGRATION_KEY_MODULUS}})::int);
  SELECT b.id, b.min_value, b.max_value, b.batch_size, b.target_job_ms, b.min_batch_size, b.max_batch_size,
         b.max_parallel_jobs, b.run_errors, b.min_key, b.max_key
    INTO m
  FROM batched_background_migrations b
  WHERE b.id = migration_id AND b.status = {{MIGRATION_RUNNING}} AND b.max_value IS NOT NULL
    AND b.table_name = expected_table_name AND b.column_name = expected_column_name
    AND b.job_signature_name = expected_work
    AND (b.batching_strategy IS NULL OR b.batching_strategy = '{{SERIAL_KEY_SET}}');
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  depth := bbm_cut_depth(m.max_parallel_jobs, m.target_job_ms);
  size := CASE WHEN m.target_job_ms IS NULL
               THEN bbm_fixed_size(m.batch_size, m.min_batch_size, m.max_batch_size, chosen_size)
               ELSE greatest(coalesce(m.min_batch_size, 1),
                             least(coalesce(m.max_batch_size, {{INT4_MAX}}), coalesce(chosen_size, m.batch_size))) END;
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
      EXIT WHEN r.status <> {{JOB_ACTIVE}} OR NOT coalesce(r.batch_size > size, false);
      PERFORM 1 FROM batched_background_migration_jobs j WHERE j.id = r.id AND j.status = {{JOB_ACTIVE}} FOR UPDATE SKIP LOCKED;
      EXIT WHEN NOT FOUND;
      DELETE FROM batched_background_migration_jobs j WHERE j.id = r.id;
    END LOOP;
  END IF;
  -- Counted again under the lock: the count above may be stale.
  SELECT count(*)::int INTO waiting FROM batched_background_migration_jobs a
  WHERE a.batched_background_migration_id = m.id AND a.status = {{JOB_ACTIVE}};
  SELECT j.max_value, j.dense_cuts, j.max_key INTO last_end, last_dense, last_key FROM batched_background_migration_jobs j
  WHERE j.batched_background_migration_id = m.id ORDER BY j.max_value DESC LIMIT 1;
  IF key_columns IS NOT NULL THEN
    -- The key as a list ("a", "b"), and as a row of the values in $n (a JSON array) cast to its
    -- types, without their modifiers (format_type names bpchar without one "character", char(1));
    -- and its first column equal to the first value in $1 (lead_value, below).
    SELECT string_agg(format('%I', c.name), ', ' ORDER BY c.i),
           string_agg(format('e.%I', c.name), ', ' ORDER BY c.i),
           string_agg(format('(($%%1$s->>%s)::%s)', c.i - 1, c.type_name), ', ' ORDER BY c.i),
           max(format('%I = (($1->>0)::%s) AND ', c.name, c.type_name)) FILTER (WHERE c.i = 1),
           string_agg(format('%I DESC', c.name), ', ' ORDER BY c.i)
      INTO key_list, end_list, key_row, lead_value, key_desc
    FROM (SELECT k.name, k.i, CASE WHEN k.t = 'pg_catalog.bpchar'::regtype THEN 'pg_catalog.bpchar'
                                   ELSE pg_catalog.format_type(k.t, NULL) END AS type_name
          FROM unnest(key_columns, key_types) WITH ORDINALITY AS k(name, t, i)) c;
    -- A key of several columns on a Citus table distributed by its first column (a tenant id): a
    -- range is cut within the value of its start's first column where it can (lead_probes), a read
    -- of one shard where a read across values merges all of them on the coordinator, and its job
    -- is a statement on one shard too. Elsewhere the probe across values runs alone.
    IF cardinality(key_columns) > 1 AND pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL THEN
      EXECUTE 'SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_dist_partition p WHERE p.logicalrelid = $1
                              AND pg_catalog.column_to_column_name(p.logicalrelid, p.partkey) = $2)'
        INTO lead_distributed USING pg_catalog.format('%I.%I', target_schema, target_table)::regclass, key_columns[1];
    END IF;
    -- The first key of the next range, its end (the size-th key from there, at most the last key)
    -- and whether that end is the last key: $1 the last range's end (or the first key), $2 the last
    -- key; the first probe of each list takes $1 itself ('>=', the first range), the second the key
    -- after it ('>'). The walk to the end reads the key's columns alone, and the end is made JSON
    -- once: built in the walk, the JSON of every key passed cost about 3 times the walk (1.5 against
    -- 0.4 ms for 1,000 uuids).
    FOREACH op IN ARRAY ARRAY['>=', '>'] LOOP
      FOREACH lead IN ARRAY CASE WHEN lead_distributed THEN ARRAY['', lead_value] ELSE ARRAY[''] END LOOP
        key_probe := format(
          'SELECT (SELECT pg_catalog.jsonb_build_array(%1$s) FROM %2$I.%3$I WHERE %9$s(%1$s) %6$s (%4$s) AND (%1$s) <= (%5$s) ORDER BY %1$s LIMIT 1), '
          'CASE WHEN e.%8$I IS NOT NULL THEN pg_catalog.jsonb_build_array(%7$s) END, coalesce((%7$s) >= (%5$s), true) '
          'FROM (VALUES (1)) v LEFT JOIN LATERAL ('
          'SELECT %1$s FROM %2$I.%3$I WHERE %9$s(%1$s) %6$s (%4$s) AND (%1$s) <= (%5$s) ORDER BY %1$s LIMIT 1 OFFSET $3) e ON true',
          key_list, target_schema, target_table, format(key_row, 1), format(key_row, 2), op, end_list, key_columns[1], lead);
        IF lead = '' THEN
          key_probes := key_probes || key_probe;
        ELSE
          lead_probes := lead_probes || key_probe;
        END IF;
      END LOOP;
      IF lead_distributed THEN
        -- The first key after $1 (its next value's first), and the keys of $1's value from $1 (at
        -- most $3): how many, the last, and whether it is the last key.
        next_probes := next_probes || format(
          'SELECT pg_catalog.jsonb_build_array(%1$s) FROM %2$I.%3$I WHERE (%1$s) %6$s (%4$s) AND (%1$s) <= (%5$s) ORDER BY %1$s LIMIT 1',
          key_list, target_schema, target_table, format(key_row, 1), format(key_row, 2), op);
        tail_probes := tail_probes || format(
          'SELECT count(*)::int, (pg_catalog.array_agg(pg_catalog.jsonb_build_array(%1$s) ORDER BY %8$s))[1], '
          'coalesce(bool_or((%1$s) >= (%5$s)), false) '
          'FROM (SELECT %1$s FROM %2$I.%3$I WHERE %7$s(%1$s) %6$s (%4$s) AND (%1$s) <= (%5$s) ORDER BY %1$s LIMIT $3) w',
          key_list, target_schema, target_table, format(key_row, 1), format(key_row, 2), op, lead_value, key_desc);
      END IF;
    END LOOP;
  END IF;
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
    IF key_columns IS NOT NULL THEN
      probe := CASE WHEN last_end IS NULL THEN 1 ELSE 2 END;
      lo := CASE WHEN last_end IS NULL THEN m.min_key ELSE last_key END;
      end_key := NULL;
      IF lead_distributed THEN
        -- Within lo's first column value; where lo was its last key, within the next key's. A value
        -- with fewer keys left than size ends the range at its last key when a quarter of size or
        -- more are left (a job on one shard cost about a fifth of one on all 32, measured by
        -- bench:citus), and is crossed into the next values otherwise (the probe below), so that a
        -- table of many small tenants is not cut into as many small jobs.
        from_key := lo;
        from_probe := probe;
        EXECUTE lead_probes[probe] INTO first_key, end_key, final USING lo, m.max_key, size - 1;
        IF first_key IS NULL THEN
          EXECUTE next_probes[probe] INTO first_key USING lo, m.max_key;
          IF first_key IS NOT NULL THEN
            from_key := first_key;
            from_probe := 1;
            EXECUTE lead_probes[1] INTO first_key, end_key, final USING first_key, m.max_key, size - 1;
          END IF;
        END IF;
        IF first_key IS NOT NULL AND end_key IS NULL THEN
          EXECUTE tail_probes[from_probe] INTO tail_count, tail_key, tail_final USING from_key, m.max_key, size;
          IF tail_count * 4 >= size THEN
            end_key := tail_key;
            final := tail_final;
          END IF;
        END IF;
      END IF;
      IF end_key IS NULL THEN
        EXECUTE key_probes[probe] INTO first_key, end_key, final USING lo, m.max_key, size - 1;
      END IF;
      IF final THEN
        end_id := m.max_value;
        end_key := m.max_key;
      ELSE
        end_id := start_id + {{KEY_ORDINAL_STEP}} - 1;
        IF end_id >= m.max_value THEN
          RAISE EXCEPTION 'migration % has more ranges than the key''s ordinals allow', m.id;
        END IF;
      END IF;
      starts := starts || start_id;
      stops := stops || end_id;
      denses := denses || NULL::smallint;
      min_keys := min_keys || coalesce(first_key, end_key);
      max_keys := max_keys || end_key;
      cut := cut + 1;
      last_end := end_id;
      last_key := end_key;
      CONTINUE;
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
  IF key_columns IS NULL THEN
    INSERT INTO batched_background_migration_jobs
      (batched_background_migration_id, min_value, max_value, status, attempts, batch_size, dense_cuts, cut_cue)
    SELECT m.id, r.s, r.e, {{JOB_ACTIVE}}, 0, size, r.d, r.i = greatest(1, cut - bbm_cue_behind(depth))
    FROM unnest(starts, stops, denses) WITH ORDINALITY AS r(s, e, d, i);
  ELSE
    INSERT INTO batched_background_migration_jobs
      (batched_background_migration_id, min_value, max_value, status, attempts, batch_size, cut_cue, min_key, max_key)
    SELECT m.id, r.s, r.e, {{JOB_ACTIVE}}, 0, size, r.i = greatest(1, cut - bbm_cue_behind(depth)), r.lo, r.hi
    FROM unnest(starts, stops, min_keys, max_keys) WITH ORDINALITY AS r(s, e, lo, hi, i);
  END IF;
  IF cut > 0 AND ((m.target_job_ms IS NOT NULL AND m.batch_size <> size) OR m.run_errors > 0) THEN
    UPDATE batched_background_migrations b
    SET batch_size = CASE WHEN m.target_job_ms IS NOT NULL THEN size ELSE b.batch_size END,
        run_errors = 0, updated_at = pg_catalog.now()
    WHERE b.id = m.id;
  END IF;
  RETURN cut;
END
$$;
