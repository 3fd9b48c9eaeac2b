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
-- of the extension take two shared advisory locks, (1835100524, 1) against
-- the sender and (1835100524, 2) against the receiver ('mail' in ASCII, then
-- the worker), for the rest of the session; each worker transaction that
-- claims or stores first takes its own one exclusively (restore_in_progress()),
-- and claims or stores nothing while a superuser session holds or waits for it.

-- The sessions that hold or wait for a worker's restore lock in this database.
CREATE FUNCTION email_accounts.restore_lock_holders(worker integer)
RETURNS TABLE (process_id integer, role_name name, superuser boolean, exclusive boolean, granted boolean)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT locks.pid, role.rolname, role.rolsuper, locks.mode = 'ExclusiveLock', locks.granted
      FROM pg_locks AS locks
      JOIN pg_stat_activity AS activity ON activity.pid = locks.pid
      JOIN pg_roles AS role ON role.oid = activity.usesysid
     WHERE locks.locktype = 'advisory'
       AND locks.database = (SELECT database.oid FROM pg_database AS database WHERE database.datname = current_database())
       AND locks.classid = 1835100524::oid AND locks.objid = worker::oid AND locks.objsubid = 2
$$;

COMMENT ON FUNCTION email_accounts.restore_lock_holders(integer) IS
  'The sessions holding or waiting for a worker''s restore lock (1835100524, worker) in this database: process, role, whether a superuser, exclusive (a worker) or shared (a restore), granted.';

REVOKE EXECUTE ON FUNCTION email_accounts.restore_lock_holders(integer) FROM PUBLIC;

CREATE FUNCTION email_accounts.hold_workers_during_restore() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    worker integer;
    blocker record;
BEGIN
    FOREACH worker IN ARRAY ARRAY[1, 2] LOOP
        -- A worker holds its lock for one claim or store. Anyone may take an
        -- advisory lock: one held by a role that is not a superuser stops the
        -- restore with its name rather than hanging it.
        WHILE NOT pg_try_advisory_lock_shared(1835100524, worker) LOOP
            SELECT holder.process_id, holder.role_name INTO blocker
              FROM email_accounts.restore_lock_holders(worker) AS holder
             WHERE holder.exclusive AND holder.granted AND NOT holder.superuser
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'process % (role %) holds the email_accounts restore lock (1835100524, %): end it, then restore again',
                                blocker.process_id, blocker.role_name, worker
                    USING ERRCODE = 'lock_not_available';
            END IF;
            PERFORM pg_sleep(0.01);
        END LOOP;
    END LOOP;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.hold_workers_during_restore() IS
  'Trigger, while a dump is restored (see restoring()): holds the workers off until the restoring session ends (shared advisory locks 1835100524, 1 and 2 for the session).';

-- Called by a worker (1 sender, 2 receiver) first in each transaction that
-- claims outbox rows or stores messages. Only a superuser session holding
-- (or waiting for) the shared lock counts: a tenant holding it stops nothing
-- (the worker then goes on without the lock; see README "Backups").
CREATE FUNCTION email_accounts.restore_in_progress(worker integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Free: this transaction holds the lock now, so no restore starts before it ends.
    IF pg_try_advisory_xact_lock(1835100524, worker) THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT min(holder.process_id) FROM email_accounts.restore_lock_holders(worker) AS holder
             WHERE NOT holder.exclusive AND holder.superuser);
END;
$$;

COMMENT ON FUNCTION email_accounts.restore_in_progress(integer) IS
  'Used by the workers (1 sender, 2 receiver): the process id of a superuser session restoring a dump into this database (the worker waits for it to end), or NULL, in which case the calling transaction holds off any restore until it ends.';

REVOKE EXECUTE ON FUNCTION email_accounts.restore_in_progress(integer) FROM PUBLIC;

-- On every table of the extension: the first rows a restore writes anywhere hold the workers off.
DO $$
DECLARE
    restored text;
BEGIN
    FOREACH restored IN ARRAY ARRAY['provider', 'domain', 'tenant_member', 'account', 'account_secret', 'outbox',
                                    'outbox_recipient', 'outbox_attachment', 'outbox_claim', 'suppression', 'link_signing_key',
                                    'message', 'message_attachment', 'sync_state', 'oauth_client_secret',
                                    'account_oauth', 'account_oauth_token', 'template'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.%I
                 FOR EACH STATEMENT WHEN (email_accounts.restoring())
                 EXECUTE FUNCTION email_accounts.hold_workers_during_restore()', restored);
    END LOOP;
END;
$$;
