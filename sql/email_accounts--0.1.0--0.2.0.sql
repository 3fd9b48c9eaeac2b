-- email_accounts 0.1.0 → 0.2.0 (issue 13: tenants stay apart, nobody borrows the workers' superuser).
-- Run by ALTER EXTENSION email_accounts UPDATE TO '0.2.0'. Keeps every row.
--
-- Deny by default: from 0.2.0 a role bound to no tenant sees nothing. Roles
-- that relied on seeing every tenant must be bound to '*':
--     INSERT INTO email_accounts.tenant_member VALUES ('app_role', '*');
-- A NOTICE below names the members of the group roles that are bound to none.

\echo Use "ALTER EXTENSION email_accounts UPDATE TO '0.2.0'" to load this file. \quit


-- Tenants ------------------------------------------------------------------

ALTER TABLE email_accounts.tenant_member
    ADD CONSTRAINT "role_name must not be one of the email_accounts group roles"
    CHECK (role_name NOT IN ('email_accounts_admin', 'email_accounts_sender'));

COMMENT ON TABLE email_accounts.tenant_member IS
  'Binds database roles to tenants. A role that is a member of a bound role sees and uses only rows of those tenants in every table of the extension; tenant ''*'' binds a role to every tenant (and to rows without tenant). A role bound to nothing sees nothing. The group roles email_accounts_admin and email_accounts_sender cannot be bound (every tenant''s roles are their members). Only superusers change this table.';

COMMENT ON COLUMN email_accounts.tenant_member.tenant IS 'The tenant the role may see and use, or * for all tenants.';

DROP POLICY own_bindings ON email_accounts.tenant_member;

CREATE POLICY own_bindings ON email_accounts.tenant_member
    FOR SELECT USING (coalesce(pg_catalog.pg_has_role(current_user, pg_catalog.to_regrole(pg_catalog.quote_ident(role_name)), 'MEMBER'), false));

CREATE OR REPLACE FUNCTION email_accounts.tenants_of(member oid) RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
RETURN CASE
    WHEN (SELECT role.rolsuper FROM pg_catalog.pg_roles AS role WHERE role.oid = member) THEN ARRAY['*']
    ELSE (SELECT coalesce(pg_catalog.array_agg(DISTINCT binding.tenant ORDER BY binding.tenant), '{}')
            FROM email_accounts.tenant_member AS binding
           WHERE coalesce(pg_catalog.pg_has_role(member, pg_catalog.to_regrole(pg_catalog.quote_ident(binding.role_name)), 'MEMBER'), false))
END;

COMMENT ON FUNCTION email_accounts.tenants_of(oid) IS
  'The tenants a role is bound to (directly or through role membership); {*} for superusers and roles bound to every tenant; empty when it is bound to none.';

CREATE OR REPLACE FUNCTION email_accounts.current_tenants() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
RETURN email_accounts.tenants_of((SELECT role.oid FROM pg_catalog.pg_roles AS role WHERE role.rolname = current_user));

COMMENT ON FUNCTION email_accounts.current_tenants() IS
  'The tenants the current role (current_user, so after SET ROLE the role set) is bound to; {*} when bound to every tenant; empty when bound to none.';

CREATE OR REPLACE FUNCTION email_accounts.tenant_is_among(tenant text, tenants text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN '*' OPERATOR(pg_catalog.=) ANY (tenants) OR coalesce(tenant OPERATOR(pg_catalog.=) ANY (tenants), false);

COMMENT ON FUNCTION email_accounts.tenant_is_among(text, text[]) IS
  'True when a row of this tenant is visible to a role bound to these tenants: one of them is the row''s tenant, or * (every tenant, and rows without tenant).';

CREATE OR REPLACE FUNCTION email_accounts.tenant_is_visible(tenant text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN email_accounts.tenant_is_among(tenant, email_accounts.current_tenants());

COMMENT ON FUNCTION email_accounts.tenant_is_visible(text) IS
  'True when the current role may see rows of this tenant: it is bound to it or to *. Used by row-level security; a role bound to no tenant sees nothing.';

CREATE OR REPLACE FUNCTION email_accounts.bound_to_every_tenant() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN '*' OPERATOR(pg_catalog.=) ANY (email_accounts.current_tenants());

COMMENT ON FUNCTION email_accounts.bound_to_every_tenant() IS
  'True when the current role is a superuser or bound to tenant *: only such roles change the shared domains and provider presets.';

-- Accounts -----------------------------------------------------------------

ALTER TABLE email_accounts.account DROP CONSTRAINT account_name_key, DROP CONSTRAINT account_address_key;

CREATE UNIQUE INDEX "account name is unique per tenant"
    ON email_accounts.account (tenant, name) NULLS NOT DISTINCT;

CREATE UNIQUE INDEX "account address is unique per tenant"
    ON email_accounts.account (tenant, address) NULLS NOT DISTINCT;

ALTER TABLE email_accounts.account DROP CONSTRAINT "tenant must not be empty",
    ADD CONSTRAINT "tenant must not be empty or *" CHECK (tenant NOT IN ('', '*'));

-- Without the account triggers: an account 0.1.0 accepted (say, one whose
-- owner role was dropped since) must not make the update fail.
SET LOCAL session_replication_role = replica;
DO $$
DECLARE
    raised integer;
BEGIN
    UPDATE email_accounts.account SET auto_reply_interval = interval '1 hour' WHERE auto_reply_interval < interval '1 hour';
    GET DIAGNOSTICS raised = ROW_COUNT;
    IF raised > 0 THEN
        RAISE NOTICE 'email_accounts: auto_reply_interval raised to the new minimum of 1 hour on % account(s)', raised;
    END IF;
END;
$$;
SET LOCAL session_replication_role = origin;

ALTER TABLE email_accounts.account DROP CONSTRAINT "auto_reply_interval must not be negative",
    ADD CONSTRAINT "auto_reply_interval must be at least 1 hour" CHECK (auto_reply_interval >= interval '1 hour');

COMMENT ON COLUMN email_accounts.account.name IS 'Account name, unique within its tenant; used to refer to the account in functions and, with always_use_account_name_as_sender_name, as the sender name.';

COMMENT ON COLUMN email_accounts.account.address IS 'The account''s email address, bare (no display name); unique within its tenant.';

COMMENT ON COLUMN email_accounts.account.owner_role IS 'Role that owns the account: its members may call set_password() and test_account() for it, and append_to_table and on_receive_function run as it. Never one of the email_accounts group roles; with routing set, neither a superuser nor a role bound to no tenant of the account. Only its members may name it.';

COMMENT ON COLUMN email_accounts.account.auto_reply_interval IS 'A sender who got an automatic reply gets no other one from this account within this interval (RFC 3834); at least 1 hour.';

-- Passwords are bound to the servers they were set for -----------------------

ALTER TABLE email_accounts.account_secret ADD COLUMN bound_servers text;

COMMENT ON COLUMN email_accounts.account_secret.bound_servers IS 'server_binding() of the account when the password was stored: the password is only sent while the account''s servers still match it.';

CREATE FUNCTION email_accounts.server_binding(bound_account_id bigint) RETURNS text
LANGUAGE sql STABLE
RETURN (
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
               settings.smtp_host, settings.smtp_port, settings.smtp_security,
               settings.incoming_protocol, settings.incoming_host, settings.incoming_port, settings.incoming_security,
               settings.extra_ca_certificate, settings.allow_plaintext_authentication)::text, 'UTF8')), 'hex')
      FROM email_accounts.account_settings AS settings
     WHERE settings.account_id = bound_account_id);

COMMENT ON FUNCTION email_accounts.server_binding(bigint) IS
  'SHA-256 (hex) of the settings a stored password is bound to: SMTP and incoming host, port and security, incoming protocol, extra CA, allow_plaintext_authentication. When it changes the account awaits its password again.';

-- Passwords stored by 0.1.0 are bound to the servers in effect now.
UPDATE email_accounts.account_secret SET bound_servers = email_accounts.server_binding(account_id);
ALTER TABLE email_accounts.account_secret ALTER COLUMN bound_servers SET NOT NULL;

CREATE FUNCTION email_accounts.require_password_if_servers_changed(checked_account_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE email_accounts.account SET awaiting_password = true
     WHERE account.account_id = checked_account_id AND NOT account.awaiting_password
       AND EXISTS (SELECT FROM email_accounts.account_secret AS secret
                    WHERE secret.account_id = checked_account_id
                      AND secret.bound_servers IS DISTINCT FROM email_accounts.server_binding(checked_account_id));
END;

COMMENT ON FUNCTION email_accounts.require_password_if_servers_changed(bigint) IS
  'Sets awaiting_password on an account whose stored password was set for other servers than those now in effect.';

CREATE FUNCTION email_accounts.account_servers_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM email_accounts.require_password_if_servers_changed(NEW.account_id);
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.account_servers_changed() IS
  'Trigger: an account whose servers changed since its password was set awaits its password again (unless set_password follows in the same transaction).';

CREATE FUNCTION email_accounts.account_keeps_its_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.tenant IS DISTINCT FROM OLD.tenant
       AND (EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.account_id = OLD.account_id)
            OR EXISTS (SELECT FROM email_accounts.message WHERE message.account_id = OLD.account_id)) THEN
        RAISE EXCEPTION 'account %: tenant cannot change while outbox rows or messages refer to the account', quote_literal(OLD.name)
            USING ERRCODE = 'check_violation', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = 'tenant',
                  HINT = 'Create a new account in the other tenant instead.';
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.account_keeps_its_tenant() IS
  'Trigger: refuses to move an account to another tenant once mail refers to it (SQLSTATE 23514, naming tenant).';

CREATE FUNCTION email_accounts.owner_role_problem(owner oid, account_tenant text) RETURNS text
LANGUAGE sql STABLE
RETURN CASE
    WHEN owner IS NULL THEN 'the role does not exist'
    WHEN (SELECT role.rolsuper FROM pg_catalog.pg_roles AS role WHERE role.oid = owner)
        THEN 'it is a superuser, and code never runs as one'
    WHEN (SELECT role.rolname FROM pg_catalog.pg_roles AS role WHERE role.oid = owner)
             OPERATOR(pg_catalog.=) ANY (ARRAY['email_accounts_admin', 'email_accounts_sender']::name[])
        THEN 'it is an email_accounts group role'
    WHEN NOT email_accounts.tenant_is_among(account_tenant, email_accounts.tenants_of(owner))
        THEN 'it is not bound to the account''s tenant (see tenant_member)'
END;

COMMENT ON FUNCTION email_accounts.owner_role_problem(oid, text) IS
  'Why this role may not run the append_to_table / on_receive_function code of an account of this tenant (a superuser, a group role, a role not bound to the tenant), or NULL when it may.';

CREATE OR REPLACE FUNCTION email_accounts.check_routing(checked_account_id bigint) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    checked email_accounts.account;
    owner oid;
    key_column name;
    mapping record;
    handler pg_proc;
BEGIN
    SELECT * INTO checked FROM email_accounts.account WHERE account_id = checked_account_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    owner := to_regrole(quote_ident(checked.owner_role));
    IF checked.append_to_table IS NOT NULL THEN
        key_column := email_accounts.primary_key_column(checked.append_to_table);
        IF key_column IS NULL THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'append_to_table',
                format('table %s has no single-column primary key to link messages to its rows', checked.append_to_table));
        END IF;
        FOR mapping IN SELECT key, value FROM jsonb_each(checked.append_to_columns) LOOP
            IF jsonb_typeof(mapping.value) <> 'string' OR NOT (mapping.value #>> '{}') = ANY (email_accounts.message_field_names()) THEN
                PERFORM email_accounts.raise_setting_error(checked.name, 'append_to_columns',
                    format('%s is not a message field (one of %s)', mapping.value, array_to_string(email_accounts.message_field_names(), ', ')));
            END IF;
            IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = checked.append_to_table AND attname = mapping.key
                                                      AND attnum > 0 AND NOT attisdropped) THEN
                PERFORM email_accounts.raise_setting_error(checked.name, 'append_to_columns',
                    format('table %s has no column %I', checked.append_to_table, mapping.key));
            END IF;
        END LOOP;
        IF owner IS NOT NULL AND NOT (has_table_privilege(owner, checked.append_to_table, 'INSERT')
                                      AND has_column_privilege(owner, checked.append_to_table, key_column, 'SELECT')) THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'append_to_table',
                format('owner_role %I needs INSERT on %s and SELECT on its column %I', checked.owner_role, checked.append_to_table, key_column));
        END IF;
    END IF;
    IF checked.on_receive_function IS NOT NULL THEN
        SELECT * INTO handler FROM pg_proc WHERE oid = checked.on_receive_function;
        IF handler.pronargs <> 1 OR handler.proargtypes[0] <> 'bigint'::regtype THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'on_receive_function',
                format('%s must take one argument, the message_id bigint', checked.on_receive_function));
        END IF;
        IF handler.prokind <> 'f' THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'on_receive_function',
                format('%s must be a function, not a procedure or aggregate', checked.on_receive_function));
        END IF;
        IF owner IS NOT NULL AND NOT has_function_privilege(owner, checked.on_receive_function, 'EXECUTE') THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'on_receive_function',
                format('owner_role %I may not execute %s', checked.owner_role, checked.on_receive_function));
        END IF;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.check_account_settings(checked_account_id bigint) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    settings email_accounts.account_settings;
    conflict text;
BEGIN
    SELECT * INTO settings FROM email_accounts.account_settings WHERE account_id = checked_account_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF to_regrole(quote_ident(settings.owner_role)) IS NULL THEN
        PERFORM email_accounts.raise_setting_error(settings.name, 'owner_role', format('role %I does not exist', settings.owner_role));
    END IF;
    IF settings.owner_role IN ('email_accounts_admin', 'email_accounts_sender') THEN
        PERFORM email_accounts.raise_setting_error(settings.name, 'owner_role',
            format('the group role %I cannot own an account (every tenant''s roles are its members); name a role of the account''s tenant', settings.owner_role));
    END IF;

    IF settings.enable_incoming THEN
        IF settings.incoming_protocol IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'incoming_protocol',
                'enable_incoming is on but no incoming_protocol (imap or pop3) is set on the account, its domain or its provider');
        END IF;
        IF settings.incoming_host IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'incoming_host',
                'enable_incoming is on but no incoming_host is set on the account, its domain or its provider');
        END IF;
        IF settings.incoming_port IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'incoming_port',
                'enable_incoming is on but no incoming_port is set on the account, its domain or its provider');
        END IF;
        IF settings.incoming_security IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'incoming_security',
                'enable_incoming is on but no incoming_security (ssl, starttls or none) is set on the account, its domain or its provider');
        END IF;
        conflict := email_accounts.port_security_conflict(settings.incoming_protocol, settings.incoming_port, settings.incoming_security);
        IF conflict IS NOT NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'incoming_security', 'incoming_port and incoming_security conflict: ' || conflict);
        END IF;
        IF settings.incoming_protocol = 'pop3' AND cardinality(settings.folders) > 1 THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'folders',
                'POP3 has a single mailbox, so folders must name one folder, not ' || cardinality(settings.folders));
        END IF;
        IF settings.incoming_security = 'none' AND NOT settings.allow_plaintext_authentication THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'incoming_security',
                'incoming_security none would send the password in clear text; use ssl or starttls, or set allow_plaintext_authentication');
        END IF;
    END IF;

    PERFORM email_accounts.check_routing(checked_account_id);

    IF settings.enable_outgoing THEN
        IF settings.smtp_host IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'smtp_host',
                'enable_outgoing is on but no smtp_host is set on the account, its domain or its provider');
        END IF;
        IF settings.smtp_port IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'smtp_port',
                'enable_outgoing is on but no smtp_port is set on the account, its domain or its provider');
        END IF;
        IF settings.smtp_security IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'smtp_security',
                'enable_outgoing is on but no smtp_security (ssl, starttls or none) is set on the account, its domain or its provider');
        END IF;
        conflict := email_accounts.port_security_conflict('smtp', settings.smtp_port, settings.smtp_security);
        IF conflict IS NOT NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'smtp_security', 'smtp_port and smtp_security conflict: ' || conflict);
        END IF;
        IF settings.smtp_security = 'none' AND NOT settings.no_smtp_authentication AND NOT settings.allow_plaintext_authentication THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'smtp_security',
                'smtp_security none would send the password in clear text; use ssl or starttls, set no_smtp_authentication, or set allow_plaintext_authentication');
        END IF;
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.account_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
BEGIN
    -- The worker runs append_to and on_receive code as owner_role: only its
    -- members may name it (or change what runs under it).
    IF TG_OP = 'INSERT' OR NEW.owner_role IS DISTINCT FROM OLD.owner_role
       OR NEW.append_to_table IS DISTINCT FROM OLD.append_to_table
       OR NEW.append_to_columns IS DISTINCT FROM OLD.append_to_columns
       OR NEW.on_receive_function IS DISTINCT FROM OLD.on_receive_function
       OR NEW.tenant IS DISTINCT FROM OLD.tenant THEN
        IF to_regrole(quote_ident(NEW.owner_role)) IS NOT NULL
           AND NOT pg_has_role(current_user, to_regrole(quote_ident(NEW.owner_role)), 'MEMBER') THEN
            RAISE EXCEPTION 'account %: only members of role % may make it the owner_role or change what runs as it',
                            quote_literal(NEW.name), quote_ident(NEW.owner_role)
                USING ERRCODE = 'insufficient_privilege', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = 'owner_role';
        END IF;
        IF NEW.append_to_table IS NOT NULL OR NEW.on_receive_function IS NOT NULL THEN
            problem := email_accounts.owner_role_problem(to_regrole(quote_ident(NEW.owner_role)), NEW.tenant);
            IF problem IS NOT NULL THEN
                RAISE EXCEPTION 'account %: owner_role % may not run append_to_table or on_receive_function: %',
                                quote_literal(NEW.name), quote_ident(NEW.owner_role), problem
                    USING ERRCODE = 'insufficient_privilege', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = 'owner_role',
                          HINT = 'Set owner_role to a role without superuser rights that is bound to the account''s tenant in tenant_member.';
            END IF;
        END IF;
    END IF;
    PERFORM email_accounts.check_account_settings(NEW.account_id);
    -- Mail may have waited for this account (a password, enable_outgoing),
    -- and the receiver syncs a newly enabled account at once.
    PERFORM email_accounts.wake_workers_at_commit();
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.inherited_settings_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    affected bigint;
    changed_names text[];
BEGIN
    IF TG_TABLE_NAME = 'domain' THEN
        changed_names := ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN OLD.domain_name END, CASE WHEN TG_OP <> 'DELETE' THEN NEW.domain_name END];
        FOR affected IN
            SELECT account_id FROM email_accounts.account WHERE lower(split_part(address, '@', 2)) = ANY (changed_names)
        LOOP
            PERFORM email_accounts.check_account_settings(affected);
            PERFORM email_accounts.require_password_if_servers_changed(affected);
        END LOOP;
    ELSE
        changed_names := ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN OLD.name END, CASE WHEN TG_OP <> 'DELETE' THEN NEW.name END];
        FOR affected IN
            SELECT account_settings.account_id FROM email_accounts.account_settings WHERE provider = ANY (changed_names)
        LOOP
            PERFORM email_accounts.check_account_settings(affected);
            PERFORM email_accounts.require_password_if_servers_changed(affected);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER keep_tenant BEFORE UPDATE OF tenant ON email_accounts.account
    FOR EACH ROW EXECUTE FUNCTION email_accounts.account_keeps_its_tenant();

CREATE TRIGGER require_password_for_new_servers AFTER UPDATE ON email_accounts.account
    FOR EACH ROW EXECUTE FUNCTION email_accounts.account_servers_changed();

-- The outbox ---------------------------------------------------------------

DROP FUNCTION email_accounts.global_default_outgoing();

CREATE FUNCTION email_accounts.global_default_outgoing(OUT account_id bigint, OUT name text, OUT address_domain text,
                                                       OUT attachment_size_limit bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT ROW(account.account_id, account.name, split_part(account.address, '@', 2), account.attachment_size_limit)
          FROM email_accounts.account WHERE account.default_outgoing AND account.tenant IS NULL);

COMMENT ON FUNCTION email_accounts.global_default_outgoing() IS
  'The account with default_outgoing among accounts without a tenant (id, name, address domain, attachment_size_limit), or NULLs.';

CREATE OR REPLACE FUNCTION email_accounts.choose_outgoing_account(account_name text, sender text, tenant text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.account;
    matches integer;
BEGIN
    IF account_name IS NOT NULL THEN
        -- The row's own tenant's account of that name (for a row without
        -- tenant, the one without tenant); a row without tenant may also name
        -- any account it can see, if only one has the name.
        SELECT * INTO chosen FROM email_accounts.account
         WHERE name = account_name AND account.tenant IS NOT DISTINCT FROM choose_outgoing_account.tenant;
        IF chosen.account_id IS NULL AND choose_outgoing_account.tenant IS NULL THEN
            SELECT count(*) INTO matches FROM email_accounts.account WHERE name = account_name;
            IF matches > 1 THEN
                PERFORM email_accounts.raise_outbox_error('account',
                    format('account name %s is ambiguous: accounts of several tenants have it; name the tenant too', quote_literal(account_name)),
                    'ambiguous_parameter');
            END IF;
            SELECT * INTO chosen FROM email_accounts.account WHERE name = account_name;
        END IF;
        IF chosen.account_id IS NULL THEN
            PERFORM email_accounts.raise_outbox_error('account', format('no account named %s', quote_literal(account_name)), 'foreign_key_violation');
        END IF;
        IF NOT chosen.enable_outgoing THEN
            PERFORM email_accounts.raise_outbox_error('account', format('account %s has enable_outgoing off', quote_literal(account_name)));
        END IF;
        RETURN chosen.account_id;
    END IF;
    IF sender IS NOT NULL THEN
        SELECT * INTO chosen FROM email_accounts.account
         WHERE lower(address) = lower(email_accounts.mailbox_address(sender)) AND enable_outgoing
           AND (choose_outgoing_account.tenant IS NULL OR account.tenant = choose_outgoing_account.tenant)
         ORDER BY account.tenant IS NOT DISTINCT FROM choose_outgoing_account.tenant DESC, account.account_id
         LIMIT 1;
        IF FOUND THEN
            RETURN chosen.account_id;
        END IF;
    END IF;
    IF tenant IS NOT NULL THEN
        SELECT * INTO chosen FROM email_accounts.account
         WHERE default_outgoing AND account.tenant = choose_outgoing_account.tenant;
        IF FOUND THEN
            RETURN chosen.account_id;
        END IF;
    END IF;
    RETURN (email_accounts.global_default_outgoing()).account_id;
END;
$$;

COMMENT ON FUNCTION email_accounts.choose_outgoing_account(text, text, text) IS
  'The account mail is sent through: the one named (error if unknown, ambiguous or not enabled for outgoing), else the enabled account whose address is the sender''s, else the tenant''s default outgoing, else the global default outgoing, else NULL. Only accounts of the row''s tenant (when it has one) and the global default qualify.';

CREATE FUNCTION email_accounts.check_outbox_account(outbox_tenant text, chosen_account_id bigint) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF chosen_account_id IS NULL
       OR chosen_account_id = (email_accounts.global_default_outgoing()).account_id
       OR EXISTS (SELECT FROM email_accounts.account
                   WHERE account.account_id = chosen_account_id AND account.tenant IS NOT DISTINCT FROM outbox_tenant) THEN
        RETURN;
    END IF;
    PERFORM email_accounts.raise_outbox_error('account_id',
        format('account %s is not an account of the row''s tenant (%s)', chosen_account_id, coalesce(quote_literal(outbox_tenant), 'none')));
END;
$$;

COMMENT ON FUNCTION email_accounts.check_outbox_account(text, bigint) IS
  'Raises check_violation (naming account_id) unless the account is of the outbox row''s tenant or is the global default outgoing account.';

CREATE OR REPLACE FUNCTION email_accounts.outbox_before_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    header record;
    problem text;
    bound_tenants text[];
    account_tenant text;
    account_domain text;
BEGIN
    PERFORM email_accounts.check_mailboxes('to_addresses', NEW.to_addresses);
    PERFORM email_accounts.check_mailboxes('cc_addresses', NEW.cc_addresses);
    PERFORM email_accounts.check_mailboxes('bcc_addresses', NEW.bcc_addresses);
    PERFORM email_accounts.check_mailboxes('reply_to', NEW.reply_to);
    IF cardinality(NEW.to_addresses) + cardinality(NEW.cc_addresses) + cardinality(NEW.bcc_addresses) = 0 THEN
        PERFORM email_accounts.raise_outbox_error('to_addresses', 'the message has no recipients (to, cc and bcc are all empty)');
    END IF;
    FOR header IN SELECT key, value FROM jsonb_each(NEW.headers) LOOP
        IF jsonb_typeof(header.value) <> 'string' THEN
            PERFORM email_accounts.raise_outbox_error('headers', format('the value of header %s must be a JSON string', quote_literal(header.key)));
        END IF;
        problem := email_accounts.header_problem(header.key, header.value #>> '{}');
        IF problem IS NOT NULL THEN
            PERFORM email_accounts.raise_outbox_error('headers', problem);
        END IF;
    END LOOP;

    -- A role bound to exactly one tenant queues mail of that tenant.
    IF NEW.tenant IS NULL THEN
        bound_tenants := email_accounts.current_tenants();
        IF cardinality(bound_tenants) = 1 AND bound_tenants[1] <> '*' THEN
            NEW.tenant := bound_tenants[1];
        END IF;
    END IF;
    -- account_id is always chosen here, never taken from the row: the choice
    -- is of the row's tenant (or the global default), so an inserted row
    -- cannot point across tenants (updates are checked by outbox_before_update).
    NEW.account_id := email_accounts.choose_outgoing_account(NEW.account, NEW.sender, NEW.tenant);
    IF NEW.account_id IS NOT NULL THEN
        SELECT name, tenant, split_part(address, '@', 2) INTO NEW.account, account_tenant, account_domain
          FROM email_accounts.account WHERE account_id = NEW.account_id;
        IF NOT FOUND THEN
            -- The global default, which roles bound to a tenant cannot see; the
            -- row stays the tenant's (see system_sends_as_itself).
            SELECT fallback.name, fallback.address_domain INTO NEW.account, account_domain
              FROM email_accounts.global_default_outgoing() AS fallback;
        END IF;
        NEW.tenant := coalesce(NEW.tenant, account_tenant);
    END IF;

    NEW.attempts := 0;
    NEW.lease_until := NULL;
    NEW.claim_token := NULL;
    NEW.sent_at := NULL;
    NEW.next_attempt_at := greatest(NEW.send_after, now());
    IF NEW.account_id IS NULL THEN
        NEW.status := 'error';
        NEW.last_error := 'no account to send through: name one in account, or set default_outgoing on an account of the tenant or on one without tenant; then call email_accounts.retry()';
    ELSE
        NEW.status := 'queued';
        NEW.last_error := NULL;
    END IF;
    IF NEW.in_reply_to IS NOT NULL AND cardinality(NEW."references") = 0 THEN
        NEW."references" := ARRAY[NEW.in_reply_to];
    END IF;
    IF NEW.message_id IS NULL THEN
        NEW.message_id := format('<%s@%s>', replace(gen_random_uuid()::text, '-', ''),
            coalesce(account_domain,
                     split_part(email_accounts.mailbox_address(NEW.sender), '@', 2),
                     'email-accounts.invalid'));
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_before_insert() IS
  'Trigger: checks a new outbox row (addresses, recipients, headers, account), chooses its account (of the row''s tenant, or the global default), and fixes its Message-ID and initial status.';

CREATE FUNCTION email_accounts.outbox_before_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.account_id IS DISTINCT FROM OLD.account_id OR NEW.tenant IS DISTINCT FROM OLD.tenant
       OR (NEW.status IN ('queued', 'retry') AND NEW.status IS DISTINCT FROM OLD.status) THEN
        PERFORM email_accounts.check_outbox_account(NEW.tenant, NEW.account_id);
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT (NEW.status = 'cancelled' AND OLD.status IN ('queued', 'retry', 'error'))
       AND NOT (NEW.status IN ('queued', 'error') AND OLD.status IN ('retry', 'failed', 'expired', 'cancelled', 'error')) THEN
        PERFORM email_accounts.raise_outbox_error('status',
            format('a row that is %s cannot be made %s: only cancel() and retry() moves are allowed (queued, retry or error to cancelled; retry, failed, expired, cancelled or error to queued)',
                   OLD.status, NEW.status),
            'insufficient_privilege');
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_before_update() IS
  'Trigger (for roles other than superusers, the sender among them): an outbox row''s account stays one of its tenant (or the global default) when the row is changed, and its status moves only as cancel() and retry() move it (42501).';

CREATE TRIGGER check_account BEFORE UPDATE ON email_accounts.outbox
    FOR EACH ROW WHEN (pg_catalog.current_setting('is_superuser') <> 'on')
    EXECUTE FUNCTION email_accounts.outbox_before_update();

CREATE FUNCTION email_accounts.system_sends_as_itself() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL
       AND NEW.account_id = (email_accounts.global_default_outgoing()).account_id THEN
        IF cardinality(NEW.reply_to) = 0 THEN
            NEW.reply_to := ARRAY[NEW.sender];
        END IF;
        NEW.sender := NULL;
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.system_sends_as_itself() IS
  'Trigger: a tenant''s row sent through the global default outgoing account goes out from that account''s own address; the sender it asked for becomes its Reply-To.';

CREATE TRIGGER system_sends_as_itself BEFORE INSERT OR UPDATE OF account_id, tenant, sender ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL)
    EXECUTE FUNCTION email_accounts.system_sends_as_itself();

-- Mail 0.1.0 queued for a tenant through the system's account goes out from that account's address.
UPDATE email_accounts.outbox SET sender = sender WHERE status NOT IN ('sent', 'sending') AND tenant IS NOT NULL AND sender IS NOT NULL;

CREATE OR REPLACE FUNCTION email_accounts.outbox_attachment_before_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued email_accounts.outbox;
    size_limit bigint;
BEGIN
    SELECT * INTO queued FROM email_accounts.outbox WHERE outbox_id = NEW.outbox_id;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    size_limit := coalesce((SELECT attachment_size_limit FROM email_accounts.account WHERE account_id = queued.account_id),
                           (SELECT fallback.attachment_size_limit FROM email_accounts.global_default_outgoing() AS fallback
                             WHERE fallback.account_id = queued.account_id));
    IF octet_length(NEW.content) > size_limit THEN
        PERFORM email_accounts.raise_outbox_error('attachments',
            format('attachment %s (%s) is %s bytes, over the attachment_size_limit of account %s (%s bytes)',
                   NEW.position, NEW.filename, octet_length(NEW.content), quote_literal(queued.account), size_limit),
            'program_limit_exceeded');
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.raise_outbox_error(field text, problem text, code text DEFAULT 'check_violation') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '%: %', field, problem
        USING ERRCODE = code, SCHEMA = 'email_accounts', TABLE = 'outbox', COLUMN = field;
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.check_mailboxes(field text, mailboxes text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mailbox text;
BEGIN
    FOREACH mailbox IN ARRAY coalesce(mailboxes, '{}') LOOP
        IF mailbox IS NULL OR NOT email_accounts.is_valid_mailbox(mailbox) THEN
            PERFORM email_accounts.raise_outbox_error(field, format('%s is not a valid email address', coalesce(quote_literal(mailbox), 'NULL')));
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.raise_setting_error(account_name text, field text, problem text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'account %: %', quote_literal(account_name), problem
        USING ERRCODE = 'check_violation', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = field,
              HINT = format('Fix %s on the account, or on its domain or provider where it is inherited from.', field);
END;
$$;

DROP FUNCTION email_accounts.send(text[], text, text, text, text[], text[], text[], email_accounts.attachment[], jsonb, text, text, smallint, timestamptz, timestamptz, regclass, text, text);

CREATE FUNCTION email_accounts.send(
    "to"            text[] DEFAULT '{}',
    subject         text DEFAULT '',
    body_text       text DEFAULT NULL,
    body_html       text DEFAULT NULL,
    cc              text[] DEFAULT '{}',
    bcc             text[] DEFAULT '{}',
    reply_to        text[] DEFAULT '{}',
    attachments     email_accounts.attachment[] DEFAULT '{}',
    headers         jsonb DEFAULT '{}',
    account         text DEFAULT NULL,
    sender          text DEFAULT NULL,
    priority        smallint DEFAULT 0,
    send_after      timestamptz DEFAULT now(),
    expires_at      timestamptz DEFAULT NULL,
    reference_table regclass DEFAULT NULL,
    reference_id    text DEFAULT NULL,
    in_reply_to     text DEFAULT NULL,
    tenant          text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued bigint;
    file email_accounts.attachment;
    position integer := 0;
BEGIN
    INSERT INTO email_accounts.outbox (to_addresses, subject, body_text, body_html, cc_addresses, bcc_addresses, reply_to,
                                       headers, account, sender, priority, send_after, expires_at, reference_table,
                                       reference_id, in_reply_to, tenant)
    VALUES (coalesce("to", '{}'), coalesce(subject, ''), body_text, body_html, coalesce(cc, '{}'), coalesce(bcc, '{}'),
            coalesce(reply_to, '{}'), coalesce(headers, '{}'), account, sender, coalesce(priority, 0),
            coalesce(send_after, now()), expires_at, reference_table, reference_id, in_reply_to, tenant)
    RETURNING outbox_id INTO queued;
    -- A bad attachment raises, and the whole call (the row above too) is undone.
    FOREACH file IN ARRAY coalesce(attachments, '{}') LOOP
        position := position + 1;
        IF file.filename IS NULL OR btrim(file.filename) = '' THEN
            PERFORM email_accounts.raise_outbox_error('attachments', format('attachment %s has no filename', position));
        END IF;
        IF file.content IS NULL THEN
            PERFORM email_accounts.raise_outbox_error('attachments', format('attachment %s (%s) has no content', position, file.filename));
        END IF;
        INSERT INTO email_accounts.outbox_attachment (outbox_id, position, filename, content_type, content, content_id)
        VALUES (queued, position, file.filename, coalesce(file.content_type, 'application/octet-stream'), file.content, file.content_id);
    END LOOP;
    RETURN queued;
END;
$$;

COMMENT ON FUNCTION email_accounts.send(text[], text, text, text, text[], text[], text[], email_accounts.attachment[], jsonb, text, text, smallint, timestamptz, timestamptz, regclass, text, text, text) IS
  'Queues a message in the caller''s transaction and returns its outbox_id; delivered after commit, never on rollback. Call with named arguments, e.g. send("to" => ''{ann@example.com}'', subject => ''Hi'', body_text => ''…''). tenant: for roles that see several tenants (default: the caller''s only tenant, else the account''s).';

CREATE OR REPLACE FUNCTION email_accounts.cancel(id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE email_accounts.outbox SET status = 'cancelled'
     WHERE outbox_id = id AND status IN ('queued', 'retry', 'error');
    RETURN FOUND;
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.auto_reply(answered_message_id bigint, recipient text, reply_subject text, refusal text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    incoming email_accounts.message;
    settings email_accounts.account;
    queued bigint;
BEGIN
    SELECT * INTO incoming FROM email_accounts.message WHERE message_id = answered_message_id;
    SELECT * INTO settings FROM email_accounts.account WHERE account_id = incoming.account_id;
    IF NOT settings.enable_auto_reply THEN
        RETURN NULL;
    END IF;
    IF refusal IS NULL AND EXISTS (
        SELECT FROM email_accounts.outbox
         WHERE outbox.account_id = settings.account_id
           AND outbox.headers ->> 'Auto-Submitted' = 'auto-replied'
           AND lower(recipient) = ANY (outbox.to_addresses)
           AND outbox.created_at > now() - settings.auto_reply_interval)
    THEN
        refusal := format('%s already got an automatic reply within %s', recipient, settings.auto_reply_interval);
    END IF;
    IF refusal IS NOT NULL THEN
        UPDATE email_accounts.message SET no_auto_reply_reason = refusal WHERE message_id = answered_message_id;
        RETURN NULL;
    END IF;
    queued := email_accounts.send(
        "to" => ARRAY[lower(recipient)],
        subject => reply_subject,
        body_text => settings.auto_reply_message,
        account => settings.name,
        headers => jsonb_build_object('Auto-Submitted', 'auto-replied', 'X-Auto-Response-Suppress', 'All'),
        in_reply_to => CASE WHEN incoming.internet_message_id ~ '^<[^<>\s]+>$' THEN incoming.internet_message_id END,
        reference_table => incoming.reference_table,
        reference_id => incoming.reference_id,
        tenant => incoming.tenant);
    UPDATE email_accounts.message SET auto_reply_outbox_id = queued WHERE message_id = answered_message_id;
    RETURN queued;
END;
$$;

CREATE FUNCTION email_accounts.suppression_before_write() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.outbox_id IS NOT NULL AND NOT EXISTS (
        SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = NEW.outbox_id AND outbox.tenant IS NOT DISTINCT FROM NEW.tenant) THEN
        RAISE EXCEPTION 'outbox_id: no outbox row % of this tenant', NEW.outbox_id
            USING ERRCODE = 'foreign_key_violation', SCHEMA = 'email_accounts', TABLE = 'suppression', COLUMN = 'outbox_id';
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.suppression_before_write() IS
  'Trigger: a suppression''s outbox_id must be a message of the same tenant that the caller can see (SQLSTATE 23503).';

CREATE TRIGGER check_outbox BEFORE INSERT OR UPDATE ON email_accounts.suppression
    FOR EACH ROW EXECUTE FUNCTION email_accounts.suppression_before_write();

-- Link keys: numbered keys, rotated; links expire ---------------------------

-- 0.1.0's one key becomes key 1: the links it signed keep working.
ALTER TABLE email_accounts.link_signing_key DROP CONSTRAINT link_signing_key_pkey,
    DROP CONSTRAINT "there is one link signing key", DROP COLUMN singleton,
    ADD COLUMN key_id integer;
UPDATE email_accounts.link_signing_key SET key_id = 1;
ALTER TABLE email_accounts.link_signing_key ALTER COLUMN key_id SET NOT NULL, ADD PRIMARY KEY (key_id),
    ADD CONSTRAINT "key_id must be positive" CHECK (key_id > 0),
    ADD CONSTRAINT "key must be 32 bytes" CHECK (octet_length(key) = 32);

COMMENT ON TABLE email_accounts.link_signing_key IS
  'The keys of unsubscribe and open-tracking links: the newest makes new links, every kept one still opens its links until they expire. The sender makes key 1 when it first needs one; rotate_link_signing_key() adds the next and drops those whose links have all expired. Readable by no role; kept by pg_dump so links in mail already sent stay valid.';
COMMENT ON COLUMN email_accounts.link_signing_key.key_id IS 'The key''s number, named in every link it made.';
COMMENT ON COLUMN email_accounts.link_signing_key.key IS '32 random bytes.';
COMMENT ON COLUMN email_accounts.link_signing_key.created_at IS 'When the key was made; it made new links until the next one was.';

CREATE FUNCTION email_accounts.rotate_link_signing_key() RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lifetime interval := coalesce(nullif(current_setting('email_accounts.link_token_lifetime', true), ''), '365 days')::interval;
    new_key integer;
BEGIN
    LOCK TABLE email_accounts.link_signing_key IN EXCLUSIVE MODE;
    INSERT INTO email_accounts.link_signing_key (key_id, key)
    SELECT coalesce(max(key_id), 0) + 1, email_accounts.random_bytes(32) FROM email_accounts.link_signing_key
    RETURNING key_id INTO new_key;
    -- A key stopped making links when the next one was made; once that is
    -- longer ago than the links' lifetime, none of its links is valid.
    DELETE FROM email_accounts.link_signing_key AS retired
     WHERE EXISTS (SELECT FROM email_accounts.link_signing_key AS newer
                    WHERE newer.key_id > retired.key_id AND newer.created_at < now() - lifetime);
    RETURN new_key;
END;
$$;

COMMENT ON FUNCTION email_accounts.rotate_link_signing_key() IS
  'Superusers: makes a new key current for unsubscribe and tracking links (links already sent keep working until they expire, email_accounts.link_token_lifetime) and drops keys all of whose links have expired. Returns the new key id.';

REVOKE EXECUTE ON FUNCTION email_accounts.rotate_link_signing_key() FROM PUBLIC;

-- Privileges and row-level security -----------------------------------------

COMMENT ON ROLE email_accounts_admin IS 'email_accounts: manages the accounts of the tenants its members are bound to (and, when bound to every tenant, domains and provider presets). Sees nothing by itself.';

COMMENT ON ROLE email_accounts_sender IS 'email_accounts: queues mail and reads the accounts, outbox and messages of the tenants its members are bound to; never credentials. Sees nothing by itself.';

DROP POLICY unbound_roles_change ON email_accounts.domain;
DROP POLICY unbound_roles_change ON email_accounts.provider;

CREATE POLICY roles_of_every_tenant_change ON email_accounts.domain
    USING (email_accounts.bound_to_every_tenant())
    WITH CHECK (email_accounts.bound_to_every_tenant());

CREATE POLICY roles_of_every_tenant_change ON email_accounts.provider
    USING (email_accounts.bound_to_every_tenant())
    WITH CHECK (email_accounts.bound_to_every_tenant());

REVOKE UPDATE ON email_accounts.outbox, email_accounts.outbox_recipient FROM email_accounts_admin;

GRANT UPDATE (status, account, account_id, priority, send_after, expires_at, next_attempt_at, last_error)
    ON email_accounts.outbox TO email_accounts_admin;

GRANT UPDATE (status, updated_at) ON email_accounts.outbox_recipient TO email_accounts_admin;

REVOKE EXECUTE ON FUNCTION email_accounts.global_default_outgoing() FROM PUBLIC;

GRANT EXECUTE ON FUNCTION email_accounts.global_default_outgoing() TO email_accounts_sender, email_accounts_admin;

REVOKE EXECUTE ON FUNCTION email_accounts.check_account_settings(bigint), email_accounts.check_routing(bigint) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION email_accounts.check_account_settings(bigint), email_accounts.check_routing(bigint) TO email_accounts_admin;

REVOKE EXECUTE ON FUNCTION email_accounts.require_password_if_servers_changed(bigint) FROM PUBLIC;

-- SQL functions in Rust: no longer SECURITY DEFINER; tenant arguments ------

DROP FUNCTION email_accounts.set_password(text, text);
CREATE FUNCTION email_accounts.set_password(
	"account" TEXT, /* & str */
	"password" TEXT, /* & str */
	"tenant" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_password_wrapper';

DROP FUNCTION email_accounts.test_account(text);
CREATE FUNCTION email_accounts.test_account(
	"account" TEXT, /* & str */
	"tenant" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS jsonb /* pgrx :: JsonB */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'test_account_wrapper';

DROP FUNCTION email_accounts.sync_now(text);
CREATE FUNCTION email_accounts.sync_now(
	"account" TEXT, /* & str */
	"tenant" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"folder" TEXT,  /* String */
	"new_messages" INT,  /* i32 */
	"state" TEXT,  /* String */
	"error_kind" TEXT,  /* Option < String > */
	"error" TEXT  /* Option < String > */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sync_now_wrapper';

CREATE OR REPLACE FUNCTION email_accounts.reparse(
	"message_id" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'reparse_wrapper';

CREATE OR REPLACE FUNCTION email_accounts.rotate_encryption_key() RETURNS INT /* i32 */
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'rotate_encryption_key_wrapper';

COMMENT ON FUNCTION email_accounts.set_password(text, text, text) IS
  'Stores the password of an account (by name; in tenant, when names are ambiguous), encrypted with AES-256-GCM under the current key of the key file email_accounts.keys and bound to the account''s current servers; ends awaiting_password. Callable by superusers, members of the account''s owner_role, and email_accounts_admin members bound to the account''s tenant, judged for the current role (also inside security-restricted code). Pass the password as a bind parameter so it never appears in query text.';

COMMENT ON FUNCTION email_accounts.sync_now(text, text) IS
  'Asks the receiver worker to sync the account (by name; in tenant, when names are ambiguous) now and waits: one row per folder with the new messages and the outcome. Only for accounts the caller can see.';

COMMENT ON FUNCTION email_accounts.reparse(bigint) IS
  'Parses a stored message again from its raw bytes and links it again; for messages the caller can see (email_accounts_admin). True when it parsed.';

COMMENT ON FUNCTION email_accounts.test_account(text, text) IS
  'Connects and logs in to the account''s SMTP server and its IMAP or POP3 server (as enabled), verifying TLS, and returns per protocol: ok, elapsed_ms, host, port, security, greeting, capabilities, and on failure error.kind (dns, connect, timeout, tls, auth, protocol) with error.message in the server''s words. Bounded by email_accounts.connect_timeout.';

CREATE OR REPLACE FUNCTION email_accounts.test_all()
RETURNS TABLE (account text, ok boolean, result jsonb)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT tested.name, (report ->> 'ok')::boolean, report
      FROM email_accounts.account AS tested
     CROSS JOIN LATERAL email_accounts.test_account(tested.name, tested.tenant) AS report
     WHERE tested.enable_incoming OR tested.enable_outgoing
     ORDER BY tested.name
$$;

-- Rows 0.1.0 let point across tenants (a tenant admin could re-point its
-- mail at another tenant's account) are kept, but wait in error for retry().
DO $$
DECLARE
    repointed integer;
    unlinked integer;
    group_owned text;
BEGIN
    UPDATE email_accounts.outbox AS queued
       SET status = 'error', account_id = NULL, account = NULL,
           last_error = 'email_accounts 0.2.0: its account was not one of this row''s tenant; email_accounts.retry() chooses one that is'
      FROM email_accounts.account
     WHERE account.account_id = queued.account_id AND account.tenant IS DISTINCT FROM queued.tenant
       AND NOT (account.tenant IS NULL AND account.default_outgoing)
       AND queued.status <> 'sent';
    GET DIAGNOSTICS repointed = ROW_COUNT;
    UPDATE email_accounts.suppression SET outbox_id = NULL
     WHERE outbox_id IS NOT NULL AND NOT EXISTS (
        SELECT FROM email_accounts.outbox
         WHERE outbox.outbox_id = suppression.outbox_id AND outbox.tenant IS NOT DISTINCT FROM suppression.tenant);
    GET DIAGNOSTICS unlinked = ROW_COUNT;
    IF repointed + unlinked > 0 THEN
        RAISE NOTICE 'email_accounts: % outbox row(s) pointed at another tenant''s account and now wait in error; % suppression(s) lost their link to another tenant''s mail',
                     repointed, unlinked;
    END IF;
    SELECT string_agg(quote_literal(name), ', ') INTO group_owned
      FROM email_accounts.account WHERE owner_role IN ('email_accounts_admin', 'email_accounts_sender');
    IF group_owned IS NOT NULL THEN
        RAISE NOTICE 'email_accounts: accounts % are owned by a group role, which 0.2.0 refuses on their next change: give them an owner_role of their tenant', group_owned;
    END IF;
END;
$$;

-- Roles that saw every tenant in 0.1.0 because they were bound to none now see nothing.
DO $$
DECLARE
    unbound text;
BEGIN
    SELECT string_agg(DISTINCT member.rolname, ', ' ORDER BY member.rolname) INTO unbound
      FROM pg_catalog.pg_auth_members AS membership
      JOIN pg_catalog.pg_roles AS member ON member.oid = membership.member
     WHERE membership.roleid IN (SELECT oid FROM pg_catalog.pg_roles WHERE rolname IN ('email_accounts_admin', 'email_accounts_sender'))
       AND NOT member.rolsuper
       AND cardinality(email_accounts.tenants_of(member.oid)) = 0;
    IF unbound IS NOT NULL THEN
        RAISE NOTICE 'email_accounts 0.2.0 denies by default: % bound to no tenant and now see nothing; bind them in email_accounts.tenant_member (tenant ''*'' for every tenant)', unbound;
    END IF;
END;
$$;
