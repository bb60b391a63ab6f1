-- Health holds: which runnable migrations' tables are being vacuumed right now.
--
-- A migration's table_name is read as SQL reads a name, so it is resolved with to_regclass; but
-- to_regclass raises (rather than returning NULL) for some malformed names ("too many dotted
-- names", cross-database references), and one bad row must not break the check for the others.
CREATE FUNCTION bbm_try_regclass(table_name text) RETURNS regclass
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN pg_catalog.to_regclass(table_name);
EXCEPTION WHEN OTHERS THEN
  RETURN NULL;
END
$$;
