-- email_accounts 0.2.0 → 0.3.0: dumps restore every row, claims name their
-- sender. Run by ALTER EXTENSION email_accounts UPDATE; the workers of the
-- 0.3.0 library wait for it (README "Upgrading").

-- Restoring a dump takes rows as they were dumped (sql/restore.sql, src/api/restore.rs).
CREATE  FUNCTION "restoring"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'restoring_wrapper';
CREATE  FUNCTION "current_user_is_superuser"() RETURNS bool /* bool */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'current_user_is_superuser_wrapper';

COMMENT ON FUNCTION email_accounts.restoring() IS
  'True while a superuser session writes after SET row_security = off, as pg_restore and plain dump scripts do (not when row_security comes from ALTER DATABASE/ROLE, and not for code running as another user): the triggers then take rows as they were dumped (see README "Backups").';
COMMENT ON FUNCTION email_accounts.current_user_is_superuser() IS
  'Whether the current user (not the session''s role, which is_superuser shows) is a superuser: the outbox update checks run for everyone else.';

-- The outbox update check judged is_superuser, the session's role: routing
-- code running as a tenant's role inside the worker skipped it.
DROP TRIGGER check_account ON email_accounts.outbox;
CREATE TRIGGER check_account BEFORE UPDATE ON email_accounts.outbox
    FOR EACH ROW WHEN (NOT email_accounts.current_user_is_superuser())
    EXECUTE FUNCTION email_accounts.outbox_before_update();

DROP TRIGGER check_settings ON email_accounts.account;
-- A restore takes rows as they were dumped (see sql/restore.sql).
CREATE TRIGGER check_settings AFTER INSERT OR UPDATE ON email_accounts.account
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.account_changed();
DROP TRIGGER check_inheriting_accounts ON email_accounts.domain;
CREATE TRIGGER check_inheriting_accounts AFTER INSERT OR UPDATE OR DELETE ON email_accounts.domain
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.inherited_settings_changed();

DROP TRIGGER check_inheriting_accounts ON email_accounts.provider;
CREATE TRIGGER check_inheriting_accounts AFTER UPDATE OR DELETE ON email_accounts.provider
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.inherited_settings_changed();

-- Every preset is dumped, the built-in ones too (a DBA may have changed
-- one). CREATE EXTENSION has made them again when a dump is restored: a
-- restored preset of the same name replaces the one just made.
CREATE FUNCTION email_accounts.restore_over_built_in_preset() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE email_accounts.provider
       SET (description, incoming_protocol, imap_host, imap_port, imap_security, pop3_host, pop3_port, pop3_security,
            smtp_host, smtp_port, smtp_security, built_in)
         = (NEW.description, NEW.incoming_protocol, NEW.imap_host, NEW.imap_port, NEW.imap_security, NEW.pop3_host,
            NEW.pop3_port, NEW.pop3_security, NEW.smtp_host, NEW.smtp_port, NEW.smtp_security, NEW.built_in)
     WHERE name = NEW.name;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.restore_over_built_in_preset() IS
  'Trigger, while a dump is restored (see restoring()): a restored preset replaces the built-in one of the same name that CREATE EXTENSION made.';

CREATE TRIGGER restore_over_built_in_preset BEFORE INSERT ON email_accounts.provider
    FOR EACH ROW WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.restore_over_built_in_preset();

SELECT pg_catalog.pg_extension_config_dump('email_accounts.provider', '');
COMMENT ON COLUMN email_accounts.provider.built_in IS 'True for the presets shipped with the extension (CREATE EXTENSION makes them; a restored dump replaces them with the rows as they were dumped).';

DROP TRIGGER check_and_resolve ON email_accounts.outbox;
-- A restore takes rows as they were dumped, recipients included (see sql/restore.sql).
CREATE TRIGGER check_and_resolve BEFORE INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.outbox_before_insert();
DROP TRIGGER system_sends_as_itself ON email_accounts.outbox;
CREATE TRIGGER system_sends_as_itself BEFORE INSERT OR UPDATE OF account_id, tenant, sender ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL AND NOT email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.system_sends_as_itself();
DROP TRIGGER split_recipients ON email_accounts.outbox;
CREATE TRIGGER split_recipients AFTER INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.outbox_after_insert();
DROP TRIGGER check_size ON email_accounts.outbox_attachment;
CREATE TRIGGER check_size BEFORE INSERT OR UPDATE OF content ON email_accounts.outbox_attachment
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.outbox_attachment_before_insert();
DROP TRIGGER check_outbox ON email_accounts.suppression;
CREATE TRIGGER check_outbox BEFORE INSERT OR UPDATE ON email_accounts.suppression
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.suppression_before_write();

-- Identity sequences are dumped only when named: a restored database hands out fresh ids.
SELECT pg_catalog.pg_extension_config_dump('email_accounts.account_account_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.outbox_outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.message_message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.message_attachment_attachment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.suppression_suppression_id_seq', '');

-- message.reply_to_message_id: no foreign key to the table itself (pg_dump
-- warns of a cycle); a trigger does its ON DELETE SET NULL.
ALTER TABLE email_accounts.message DROP CONSTRAINT message_reply_to_message_id_fkey;
CREATE FUNCTION email_accounts.forget_deleted_replies() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE email_accounts.message AS reply SET reply_to_message_id = NULL
      FROM deleted WHERE reply.reply_to_message_id = deleted.message_id;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.forget_deleted_replies() IS
  'Trigger: the replies to deleted messages get reply_to_message_id NULL (what ON DELETE SET NULL would do; see the column).';

CREATE TRIGGER forget_deleted_replies AFTER DELETE ON email_accounts.message
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION email_accounts.forget_deleted_replies();

-- Which sender holds a claim (sql/outbox_claims.sql).
ALTER TABLE email_accounts.outbox
    ADD COLUMN sender_process_id integer,
    ADD COLUMN sender_started_at timestamptz;

COMMENT ON COLUMN email_accounts.outbox.sender_process_id IS 'While sending: the process id of the sender worker that claimed the row.';
COMMENT ON COLUMN email_accounts.outbox.sender_started_at IS 'While sending: when that sender process started; with sender_process_id it names one incarnation, so a reused process id is not mistaken for it.';

-- A restore holds the workers off until it ends (sql/restore.sql).
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
                                    'outbox_recipient', 'outbox_attachment', 'suppression', 'link_signing_key',
                                    'message', 'message_attachment', 'sync_state'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.%I
                 FOR EACH STATEMENT WHEN (email_accounts.restoring())
                 EXECUTE FUNCTION email_accounts.hold_workers_during_restore()', restored);
    END LOOP;
END;
$$;

-- The workers of the 0.3.0 library waited for this update: wake them when it commits.
SELECT email_accounts.wake_workers_at_commit();
