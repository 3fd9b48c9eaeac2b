-- Roles, privileges and row-level security. Roles are cluster-wide, so they
-- are created only if missing and survive DROP EXTENSION.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'email_accounts_admin') THEN
        CREATE ROLE email_accounts_admin NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'email_accounts_sender') THEN
        CREATE ROLE email_accounts_sender NOLOGIN;
    END IF;
END;
$$;

COMMENT ON ROLE email_accounts_admin IS 'email_accounts: manages the accounts of the tenants its members are bound to (and, when bound to every tenant, domains and provider presets). Sees nothing by itself.';
COMMENT ON ROLE email_accounts_sender IS 'email_accounts: queues mail and reads the accounts, outbox and messages of the tenants its members are bound to; never credentials. Sees nothing by itself.';

GRANT USAGE ON SCHEMA email_accounts TO email_accounts_admin, email_accounts_sender;

GRANT SELECT ON email_accounts.provider, email_accounts.domain, email_accounts.tenant_member,
                email_accounts.account, email_accounts.account_settings
    TO email_accounts_admin, email_accounts_sender;
GRANT INSERT, UPDATE, DELETE ON email_accounts.provider, email_accounts.domain, email_accounts.account
    TO email_accounts_admin;
-- account_secret: nothing for anyone (see sql/secrets.sql), nor on
-- account_oauth_token and oauth_client_secret (sql/oauth.sql).
-- account_oauth: its state, for the accounts a role sees (account_settings joins it).
GRANT SELECT ON email_accounts.account_oauth TO email_accounts_admin, email_accounts_sender;
ALTER TABLE email_accounts.account_oauth ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_accounts ON email_accounts.account_oauth
    USING (EXISTS (SELECT FROM email_accounts.account WHERE account.account_id = account_oauth.account_id));

-- Accounts: a role sees and changes only the tenants it is bound to (none if bound to none).
ALTER TABLE email_accounts.account ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON email_accounts.account
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())));

-- Domains and presets are shared: everyone reads them, only roles bound to
-- every tenant ('*') change them (a tenant must not rewire another's servers).
ALTER TABLE email_accounts.domain ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON email_accounts.domain FOR SELECT USING (true);
CREATE POLICY roles_of_every_tenant_change ON email_accounts.domain
    USING (email_accounts.bound_to_every_tenant())
    WITH CHECK (email_accounts.bound_to_every_tenant());

ALTER TABLE email_accounts.provider ENABLE ROW LEVEL SECURITY;
CREATE POLICY everyone_reads ON email_accounts.provider FOR SELECT USING (true);
CREATE POLICY roles_of_every_tenant_change ON email_accounts.provider
    USING (email_accounts.bound_to_every_tenant())
    WITH CHECK (email_accounts.bound_to_every_tenant());

-- The outbox: senders queue and read their tenant's mail (not through
-- mailboxes private to others); admins also cancel and retry.
GRANT SELECT, INSERT ON email_accounts.outbox, email_accounts.outbox_attachment TO email_accounts_sender, email_accounts_admin;
-- Admins steer delivery (cancel, retry, reschedule), never what a row is,
-- whose it is, or a worker's claim on it.
GRANT UPDATE (status, account, account_id, priority, send_after, expires_at, next_attempt_at, last_error)
    ON email_accounts.outbox TO email_accounts_admin;
GRANT SELECT ON email_accounts.outbox_recipient, email_accounts.outbox_status TO email_accounts_sender, email_accounts_admin;
GRANT UPDATE (status, updated_at) ON email_accounts.outbox_recipient TO email_accounts_admin;
-- Which of their rows are out for delivery (outbox_status reads it), not
-- the claim's token.
GRANT SELECT (outbox_id, lease_until, attempt) ON email_accounts.outbox_claim TO email_accounts_sender, email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.global_default_outgoing() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.global_default_outgoing() TO email_accounts_sender, email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.cancel(bigint), email_accounts.retry(bigint), email_accounts.flush() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.cancel(bigint), email_accounts.retry(bigint), email_accounts.flush() TO email_accounts_admin;

-- Rows of the tenant, but not of the mailboxes private to others
-- (sql/mailbox_visibility.sql; the subquery is evaluated once per query).
ALTER TABLE email_accounts.outbox ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_mailboxes ON email_accounts.outbox
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants()))
           AND (account_id IS NULL OR account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[])))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants()))
                AND (account_id IS NULL OR account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[])));
ALTER TABLE email_accounts.outbox_recipient ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_mail ON email_accounts.outbox_recipient
    USING (EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = outbox_recipient.outbox_id));
ALTER TABLE email_accounts.outbox_claim ENABLE ROW LEVEL SECURITY;
CREATE POLICY claims_of_visible_mail ON email_accounts.outbox_claim
    USING (EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = outbox_claim.outbox_id));
ALTER TABLE email_accounts.outbox_attachment ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_mail ON email_accounts.outbox_attachment
    USING (EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = outbox_attachment.outbox_id))
    WITH CHECK (EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = outbox_attachment.outbox_id));

-- Suppression: senders read their tenant's list, admins maintain it.
GRANT SELECT ON email_accounts.suppression TO email_accounts_sender, email_accounts_admin;
GRANT INSERT, UPDATE, DELETE ON email_accounts.suppression TO email_accounts_admin;
ALTER TABLE email_accounts.suppression ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_rows ON email_accounts.suppression
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())));
-- A suppression that mail of a mailbox private to others caused does not
-- show whom that mailbox wrote to (the sender still honours it).
CREATE POLICY rows_of_visible_mail ON email_accounts.suppression AS RESTRICTIVE FOR SELECT
    USING (outbox_id IS NULL OR EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = suppression.outbox_id));

-- Functions that read secrets check the caller themselves (superuser, the
-- account's owner role, or an admin who may see the account's tenant).
REVOKE EXECUTE ON FUNCTION email_accounts.rotate_encryption_key() FROM PUBLIC;
-- The account checks run as the role changing the account (row-level
-- security applies to them), so admins must be able to call them.
REVOKE EXECUTE ON FUNCTION email_accounts.check_account_settings(bigint), email_accounts.check_routing(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.check_account_settings(bigint), email_accounts.check_routing(bigint) TO email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.require_password_if_servers_changed(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION email_accounts.password_bound_elsewhere(bigint) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION email_accounts.inherited_settings_changed() FROM PUBLIC;
-- Trigger functions that run as the extension's owner write the rows that
-- NEW and OLD name: attached to a table of a role's own (a temporary one
-- will do), they would write any tenant's rows for it. CREATE TRIGGER needs
-- EXECUTE on the function; firing our own triggers does not.
REVOKE EXECUTE ON FUNCTION email_accounts.account_keeps_its_tenant(),
                           email_accounts.account_keeps_private_mail_private(),
                           email_accounts.account_servers_changed(),
                           email_accounts.forget_deleted_replies(),
                           email_accounts.outbox_after_insert(),
                           email_accounts.outbox_cancel_untaken_claim(),
                           email_accounts.system_sends_as_itself() FROM PUBLIC;

-- The inbox: senders and admins read their tenant's messages and sync state
-- (not those of mailboxes private to others); the receiver worker writes
-- them. sync_now() checks the account is visible.
GRANT SELECT ON email_accounts.message, email_accounts.message_attachment, email_accounts.sync_state,
                email_accounts.inbox, email_accounts.sync_status
    TO email_accounts_sender, email_accounts_admin;
GRANT DELETE ON email_accounts.message TO email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.reparse(bigint), email_accounts.link_reply(bigint),
                           email_accounts.auto_reply(bigint, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.reparse(bigint) TO email_accounts_admin;

ALTER TABLE email_accounts.message ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_mailboxes ON email_accounts.message
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())) AND account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[]));
ALTER TABLE email_accounts.message_attachment ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_mail ON email_accounts.message_attachment
    USING (EXISTS (SELECT FROM email_accounts.message WHERE message.message_id = message_attachment.message_id));
ALTER TABLE email_accounts.sync_state ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_mailboxes ON email_accounts.sync_state
    USING (EXISTS (SELECT FROM email_accounts.account WHERE account.account_id = sync_state.account_id)
           AND account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[]));
REVOKE EXECUTE ON FUNCTION email_accounts.record_sync(bigint, text, integer, text, text, integer) FROM PUBLIC;
