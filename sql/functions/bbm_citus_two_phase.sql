-- On a Citus coordinator, makes the calling transaction commit by two-phase commit: an empty DELETE
-- from {{CITUS_TWO_PHASE_TABLE}}, a Citus local table, is a modification of a placement on the
-- coordinator, and Citus then prepares every worker node the transaction wrote on and records its
-- decision beside the coordinator's own commit (src/store/citus.ts says why a job needs it). Without
-- that table (no Citus, or migrate could not add it) it does nothing: a catalog lookup.
CREATE OR REPLACE FUNCTION bbm_citus_two_phase()
RETURNS void
LANGUAGE plpgsql
VOLATILE
AS $$
BEGIN
  IF pg_catalog.to_regclass('public.{{CITUS_TWO_PHASE_TABLE}}') IS NOT NULL THEN
    DELETE FROM public.{{CITUS_TWO_PHASE_TABLE}};
  END IF;
END
$$;
