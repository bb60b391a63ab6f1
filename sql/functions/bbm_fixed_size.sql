-- The size a migration without a target_job_ms cuts at: its batch_size, or the smaller size the
-- caller asks for (foreground protection cuts at a share of the size while commits are slow;
-- never larger), within min_batch_size and max_batch_size. src/bbm/run.ts (fixedSizeOf) computes
-- the same size without chosen_size: change both together.
CREATE OR REPLACE FUNCTION bbm_fixed_size(batch_size integer, min_batch_size integer, max_batch_size integer,
                               chosen_size integer DEFAULT NULL)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT greatest(coalesce(min_batch_size, 1),
                  least(coalesce(max_batch_size, {{INT4_MAX}}), batch_size, coalesce(chosen_size, batch_size)))
$$;
