-- A migration's table_name resolved as SQL reads a name (to_regclass), or NULL: to_regclass raises
-- rather than returning NULL for some malformed names ("too many dotted names", cross-database
-- references), and one bad row must not break a check over all runnable migrations (health holds:
-- which migrations' tables are being vacuumed right now).
CREATE OR REPLACE FUNCTION bbm_try_regclass(table_name text) RETURNS regclass
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN pg_catalog.to_regclass(table_name);
EXCEPTION WHEN OTHERS THEN
  RETURN NULL;
END
$$;
