-- Which database this mail belongs to. A copy of a database — CREATE
-- DATABASE … TEMPLATE, or a dump restored next to the original — has the
-- original's queued mail and POP3 accounts: sending that mail a second time
-- or taking the original's POP3 mail would be wrong. So the workers of a
-- database whose home row names another database of this cluster that still
-- exists hold off (worker_status() says so) until adopt_database()
-- is run in the copy or the original is gone (store/home.rs has the rules).

CREATE TABLE email_accounts.home (
    only_row          boolean PRIMARY KEY DEFAULT true CONSTRAINT "home has one row" CHECK (only_row),
    database_oid      oid NOT NULL,
    database_name     text NOT NULL,
    system_identifier text NOT NULL,
    adopted_at        timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE email_accounts.home IS
  'The one database whose mail this is: written by the workers when they first run here (or by adopt_database()), compared by them with the database they run in to tell a copy from the original.';
COMMENT ON COLUMN email_accounts.home.only_row IS 'Always true: the table has at most one row.';
COMMENT ON COLUMN email_accounts.home.database_oid IS 'The oid of the database that sends and receives this mail.';
COMMENT ON COLUMN email_accounts.home.database_name IS 'Its name then: with the oid, it tells pg_upgrade (which keeps both) from a restore into another cluster.';
COMMENT ON COLUMN email_accounts.home.system_identifier IS 'The database system identifier (pg_control_system()) of its cluster: another one means the dump was restored into another cluster, which then takes the mail over.';
COMMENT ON COLUMN email_accounts.home.adopted_at IS 'When that database took the mail over.';

-- A restored home row replaces the one the workers may have written first.
CREATE FUNCTION email_accounts.replace_home_on_restore() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM email_accounts.home;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.replace_home_on_restore() IS
  'Trigger, while a dump is restored (see restoring()): the dumped home row replaces the current one.';

CREATE TRIGGER replace_home_on_restore BEFORE INSERT ON email_accounts.home
    FOR EACH ROW WHEN (email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.replace_home_on_restore();

CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.home
    FOR EACH STATEMENT WHEN (email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.hold_workers_during_restore();

SELECT pg_catalog.pg_extension_config_dump('email_accounts.home', '');

REVOKE ALL ON email_accounts.home FROM PUBLIC;

CREATE FUNCTION email_accounts.adopt_database() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    DELETE FROM email_accounts.home;
    INSERT INTO email_accounts.home (database_oid, database_name, system_identifier)
    SELECT database.oid, database.datname, (SELECT control.system_identifier::text FROM pg_catalog.pg_control_system() AS control)
      FROM pg_catalog.pg_database AS database WHERE database.datname = pg_catalog.current_database();
    PERFORM email_accounts.wake_workers_at_commit();
END;
$$;

COMMENT ON FUNCTION email_accounts.adopt_database() IS
  'Superusers only: this database sends and receives its mail from now on, also while the database it was copied from is served in the same cluster (both then send what both have queued: clear one outbox first).';

REVOKE EXECUTE ON FUNCTION email_accounts.adopt_database() FROM PUBLIC;

-- This database is home from the start: a dump restored into it brings the
-- original's row, which replaces this one.
SELECT email_accounts.adopt_database();
