-- Restoring a dump. pg_dump carries every row of the extension (each table
-- and identity sequence is a configuration table); pg_restore and a plain
-- dump fed to psql copy them back as a superuser after SET row_security =
-- off. The triggers' checks accepted those rows once: while restoring()
-- (see src/api/restore.rs) they take rows as they are, rather than check
-- them against a half-restored database (a domain restored after its
-- accounts, an account name resolved before the accounts exist) or derive
-- them again (an outbox row keeps its account, status, claim and Message-ID;
-- its recipients come from the dump, not from splitting it again).
--
-- A restore also holds the workers off until it ends: pg_restore commits
-- table by table, and a sender that claimed a restored outbox row before its
-- recipients, attachments and suppressions were in would send it wrongly, a
-- receiver that synced before the messages and cursors were in would make
-- their COPY fail. The first rows a restoring session writes into any table
-- of the extension take a shared advisory lock for the rest of the session;
-- each worker transaction that claims or stores takes it exclusively first
-- (restore_in_progress()), and waits while a superuser session holds it.

-- The lock: key 1835100524 ('mail' in ASCII), 1, in this database.
CREATE FUNCTION email_accounts.hold_workers_during_restore() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM pg_catalog.pg_advisory_lock_shared(1835100524, 1);
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.hold_workers_during_restore() IS
  'Trigger, while a dump is restored (see restoring()): holds the workers off until the restoring session ends (a shared advisory lock 1835100524, 1 for the session).';

-- Called by the workers in each transaction that claims outbox rows or
-- stores messages. Anyone may take the shared lock, so only a superuser
-- session holding it counts (a tenant cannot stop the workers this way).
CREATE FUNCTION email_accounts.restore_in_progress() RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Free: this transaction holds the lock now, so no restore starts before it ends.
    IF pg_try_advisory_xact_lock(1835100524, 1) THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT min(locks.pid)
              FROM pg_locks AS locks
              JOIN pg_stat_activity AS activity ON activity.pid = locks.pid
              JOIN pg_roles AS role ON role.oid = activity.usesysid
             WHERE locks.locktype = 'advisory' AND locks.granted
               AND locks.database = (SELECT database.oid FROM pg_database AS database WHERE database.datname = current_database())
               AND locks.classid = 1835100524::oid AND locks.objid = 1::oid AND locks.objsubid = 2
               AND role.rolsuper);
END;
$$;

COMMENT ON FUNCTION email_accounts.restore_in_progress() IS
  'Used by the workers: the process id of a superuser session restoring a dump into this database (the workers wait for it to end), or NULL, in which case the calling transaction holds off any restore until it ends.';

REVOKE EXECUTE ON FUNCTION email_accounts.restore_in_progress() FROM PUBLIC;

CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.provider
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.domain
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.tenant_member
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.account
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.account_secret
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.outbox
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.outbox_recipient
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.outbox_attachment
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.suppression
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.link_signing_key
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.message
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.message_attachment
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.sync_state
    FOR EACH STATEMENT WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.hold_workers_during_restore();
