-- Restoring a dump. pg_dump carries every row of the extension (each table
-- is a configuration table); pg_restore and a plain dump fed to psql copy
-- them back as a superuser with row_security off. The checks of the triggers
-- accepted those rows once: on restore they are taken as they are, not
-- checked again against a half-restored database (a domain restored after
-- its accounts, an account name resolved before the accounts exist) nor
-- re-derived (an outbox row keeps its account, status, claim and Message-ID;
-- its recipients come from the dump, not from splitting it again).
--
-- Only a superuser can restore this way (RLS-protected tables refuse other
-- roles with row_security off), and a superuser can switch triggers off
-- anyway: no role gains anything.

CREATE FUNCTION email_accounts.restoring() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
-- Inlined into the triggers' WHEN clauses: operators are qualified, as the
-- body is parsed with the caller's search_path.
RETURN pg_catalog.current_setting('row_security') OPERATOR(pg_catalog.=) 'off'
       AND pg_catalog.current_setting('is_superuser') OPERATOR(pg_catalog.=) 'on';

COMMENT ON FUNCTION email_accounts.restoring() IS
  'True while a superuser writes with row_security off, as pg_restore and a plain pg_dump script do: the triggers then take rows as they were dumped (see README "Backups").';
