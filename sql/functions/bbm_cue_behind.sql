-- Where a cut's cue lies: the range with this many ranges waiting behind it, so that the cut its
-- take makes due (bbm_cut_due) finds about half the depth (bbm_cut_depth) waiting. bbm_cut_range
-- marks it among the ranges it writes, and again among those waiting when a cut finds enough of them.
CREATE OR REPLACE FUNCTION bbm_cue_behind(depth integer)
RETURNS integer
LANGUAGE sql
IMMUTABLE
AS $$
  SELECT depth / 2 - 1
$$;
