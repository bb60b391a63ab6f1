-- A key's values as the takes hand them to a worker (bbm_take_job, bbm_take_next): a JSON array
-- of them (a job's min_key or max_key) as text[], in the array's order, each value's text exact
-- (numbers too: no JSON parsing in JavaScript). NULL stays NULL.
CREATE OR REPLACE FUNCTION bbm_key_text(key jsonb)
RETURNS text[]
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT CASE WHEN key IS NOT NULL
              THEN ARRAY(SELECT e.v FROM pg_catalog.jsonb_array_elements_text(key) WITH ORDINALITY AS e(v, i) ORDER BY e.i) END
$$;
