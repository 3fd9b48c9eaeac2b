-- The effective settings of every account after provider → domain → account
-- inheritance, and the rules on them that single-column checks cannot see.

CREATE VIEW email_accounts.account_settings WITH (security_invoker = true) AS
SELECT
    account.account_id,
    account.name,
    account.tenant,
    account.address,
    coalesce(account.login_id, account.address) AS login_id,
    domain.domain_name AS domain,
    preset.name AS provider,
    account.owner_role,
    account.awaiting_password,
    account.ascii_encode_password,
    account.password_set_at IS NOT NULL AS password_is_set,
    account.allow_plaintext_authentication,
    coalesce(account.extra_ca_certificate, domain.extra_ca_certificate) AS extra_ca_certificate,
    account.enable_incoming,
    incoming.protocol AS incoming_protocol,
    coalesce(account.incoming_host, domain.incoming_host,
             CASE incoming.protocol WHEN 'imap' THEN preset.imap_host WHEN 'pop3' THEN preset.pop3_host END) AS incoming_host,
    coalesce(account.incoming_port, domain.incoming_port,
             CASE incoming.protocol WHEN 'imap' THEN preset.imap_port WHEN 'pop3' THEN preset.pop3_port END) AS incoming_port,
    coalesce(account.incoming_security, domain.incoming_security,
             CASE incoming.protocol WHEN 'imap' THEN preset.imap_security WHEN 'pop3' THEN preset.pop3_security END) AS incoming_security,
    account.folders,
    account.sync_option,
    account.initial_sync_count,
    account.attachment_size_limit,
    account.default_incoming,
    account.pop3_retrieval,
    account.pop3_delete_after_days,
    account.poll_interval,
    account.enable_auto_reply,
    account.auto_reply_message,
    account.enable_outgoing,
    coalesce(account.smtp_host, domain.smtp_host, preset.smtp_host) AS smtp_host,
    coalesce(account.smtp_port, domain.smtp_port, preset.smtp_port) AS smtp_port,
    coalesce(account.smtp_security, domain.smtp_security, preset.smtp_security) AS smtp_security,
    account.no_smtp_authentication,
    account.add_signature,
    account.signature,
    account.default_outgoing,
    account.always_use_account_address_as_sender,
    account.always_use_account_name_as_sender_name,
    account.send_unsubscribe_message,
    account.track_email_status,
    account.append_to_sent_folder,
    account.sent_folder,
    account.send_limit_per_minute,
    account.send_limit_per_hour,
    account.send_limit_per_day,
    account.created_at,
    account.updated_at,
    -- What the workers look at: enabled, and signed in with a stored
    -- password (not awaited) or a connected OAuth2 grant, unless the side needs none.
    account.enable_outgoing
        AND (account.no_smtp_authentication
             OR CASE smtp_signing_in.auth_method WHEN 'oauth2' THEN oauth.state IS NOT DISTINCT FROM 'connected'
                ELSE NOT account.awaiting_password AND account.smtp_password_set_at IS NOT NULL END) AS ready_to_send,
    account.enable_incoming
        AND CASE signing_in.auth_method WHEN 'oauth2' THEN oauth.state IS NOT DISTINCT FROM 'connected'
            ELSE NOT account.awaiting_password AND account.password_set_at IS NOT NULL END AS ready_to_receive,
    signing_in.auth_method,
    CASE WHEN signing_in.client_of_domain THEN domain.oauth_client_id ELSE preset.oauth_client_id END AS oauth_client_id,
    CASE WHEN signing_in.client_of_domain THEN 'domain' WHEN preset.oauth_client_id IS NOT NULL THEN 'provider' END AS oauth_client_source,
    signing_in.oauth_tenant,
    replace(preset.oauth_token_endpoint, '{tenant}', coalesce(signing_in.oauth_tenant, 'common')) AS oauth_token_endpoint,
    replace(preset.oauth_device_authorization_endpoint, '{tenant}', coalesce(signing_in.oauth_tenant, 'common'))
        AS oauth_device_authorization_endpoint,
    preset.oauth_scopes,
    preset.oauth_client_credentials_scopes,
    CASE WHEN signing_in.auth_method <> 'oauth2' AND smtp_signing_in.auth_method <> 'oauth2' THEN NULL
         WHEN oauth.account_id IS NULL THEN 'not connected'
         WHEN oauth.state = 'consent needed' THEN 'consent needed: ' || coalesce(oauth.problem, 'connect the account again')
         ELSE oauth.state END AS oauth_state,
    account.enable_automatic_linking,
    account.reply_to_document_address,
    account.signed_envelope_sender,
    account.soft_bounce_limit,
    account.soft_bounce_days,
    account.visibility,
    account.shared_with,
    coalesce(account.smtp_login_id, account.login_id, account.address) AS smtp_login_id,
    smtp_signing_in.auth_method AS smtp_auth_method,
    account.smtp_password_set_at IS NOT NULL AS smtp_password_is_set
FROM email_accounts.account
LEFT JOIN email_accounts.domain ON domain.domain_name = lower(split_part(account.address, '@', 2))
LEFT JOIN email_accounts.provider AS preset ON preset.name = coalesce(account.provider, domain.provider)
LEFT JOIN email_accounts.account_oauth AS oauth ON oauth.account_id = account.account_id
CROSS JOIN LATERAL (
    SELECT coalesce(account.incoming_protocol, domain.incoming_protocol, preset.incoming_protocol) AS protocol
) AS incoming
CROSS JOIN LATERAL (
    SELECT coalesce(account.auth_method, domain.auth_method, preset.auth_method, 'password') AS auth_method,
           domain.oauth_client_id IS NOT NULL AS client_of_domain,
           CASE WHEN domain.oauth_client_id IS NOT NULL THEN coalesce(domain.oauth_tenant, preset.oauth_tenant)
                ELSE preset.oauth_tenant END AS oauth_tenant
) AS signing_in
CROSS JOIN LATERAL (
    SELECT coalesce(account.smtp_auth_method, signing_in.auth_method) AS auth_method
) AS smtp_signing_in;

COMMENT ON VIEW email_accounts.account_settings IS
  'Effective settings of each account: its own values, else its domain''s, else its provider''s. Never shows a password (password_is_set only says whether one is stored). Row-level security of account applies.';
COMMENT ON COLUMN email_accounts.account_settings.domain IS 'The domain row the account inherits from, if any.';
COMMENT ON COLUMN email_accounts.account_settings.provider IS 'The provider preset in effect: the account''s, else its domain''s.';
COMMENT ON COLUMN email_accounts.account_settings.incoming_protocol IS 'Effective imap or pop3.';
COMMENT ON COLUMN email_accounts.account_settings.incoming_host IS 'Effective incoming server (the provider''s IMAP or POP3 host, by protocol).';
COMMENT ON COLUMN email_accounts.account_settings.incoming_port IS 'Effective incoming port.';
COMMENT ON COLUMN email_accounts.account_settings.incoming_security IS 'Effective incoming security.';
COMMENT ON COLUMN email_accounts.account_settings.smtp_host IS 'Effective SMTP server.';
COMMENT ON COLUMN email_accounts.account_settings.smtp_port IS 'Effective SMTP port.';
COMMENT ON COLUMN email_accounts.account_settings.smtp_security IS 'Effective SMTP security.';
COMMENT ON COLUMN email_accounts.account_settings.oauth_client_id IS 'The OAuth2 client in effect: the domain''s when it names one, else the provider''s.';
COMMENT ON COLUMN email_accounts.account_settings.oauth_client_source IS 'Where the OAuth2 client (and its secret) comes from: domain or provider.';
COMMENT ON COLUMN email_accounts.account_settings.oauth_tenant IS 'The tenant put into the endpoints: the client''s domain''s oauth_tenant, else the provider''s.';
COMMENT ON COLUMN email_accounts.account_settings.oauth_token_endpoint IS 'The provider''s token endpoint with {tenant} replaced (common when no tenant is set).';
COMMENT ON COLUMN email_accounts.account_settings.oauth_device_authorization_endpoint IS 'The provider''s device authorization endpoint with {tenant} replaced.';
COMMENT ON COLUMN email_accounts.account_settings.oauth_scopes IS 'Scopes asked for on behalf of the mailbox user.';
COMMENT ON COLUMN email_accounts.account_settings.oauth_client_credentials_scopes IS 'Scopes asked for with client credentials; NULL when the provider offers none.';
COMMENT ON COLUMN email_accounts.account_settings.enable_automatic_linking IS 'See account.enable_automatic_linking.';
COMMENT ON COLUMN email_accounts.account_settings.reply_to_document_address IS 'See account.reply_to_document_address.';
COMMENT ON COLUMN email_accounts.account_settings.signed_envelope_sender IS 'See account.signed_envelope_sender.';
COMMENT ON COLUMN email_accounts.account_settings.soft_bounce_limit IS 'See account.soft_bounce_limit.';
COMMENT ON COLUMN email_accounts.account_settings.soft_bounce_days IS 'See account.soft_bounce_days.';
COMMENT ON COLUMN email_accounts.account_settings.oauth_state IS
  'With auth_method oauth2: not connected, waiting for approval (a device login), connected, or consent needed: <reason> (the grant was revoked or expired, the user declined, or the servers or OAuth2 client changed; connect again). NULL for password accounts.';
COMMENT ON COLUMN email_accounts.account_settings.extra_ca_certificate IS 'Effective extra CA: the account''s, else its domain''s.';
COMMENT ON COLUMN email_accounts.account_settings.login_id IS 'Login name of the incoming side (and of SMTP unless smtp_login_id is set): login_id, else the address.';
COMMENT ON COLUMN email_accounts.account_settings.password_is_set IS 'Whether set_password() has stored the incoming side''s password (side both or incoming).';
COMMENT ON COLUMN email_accounts.account_settings.ready_to_send IS
  'Outgoing is enabled and the SMTP side can sign in (its own stored password, which the account is not awaiting, or with smtp_auth_method oauth2 a connected grant), or SMTP needs no sign-in: the sender worker uses only such accounts.';
COMMENT ON COLUMN email_accounts.account_settings.ready_to_receive IS
  'Incoming is enabled and the incoming side can sign in (its stored password, which the account is not awaiting, or with auth_method oauth2 a connected grant): the receiver worker syncs only such accounts.';
COMMENT ON COLUMN email_accounts.account_settings.auth_method IS 'Effective password or oauth2 of the incoming side (and of SMTP unless smtp_auth_method says otherwise): the account''s, else its domain''s, else its provider''s, else password.';
COMMENT ON COLUMN email_accounts.account_settings.visibility IS 'See account.visibility.';
COMMENT ON COLUMN email_accounts.account_settings.shared_with IS 'See account.shared_with.';
COMMENT ON COLUMN email_accounts.account_settings.smtp_login_id IS 'Login name the SMTP side uses: smtp_login_id, else login_id, else the address.';
COMMENT ON COLUMN email_accounts.account_settings.smtp_auth_method IS 'Effective password or oauth2 of the SMTP side: the account''s smtp_auth_method, else auth_method.';
COMMENT ON COLUMN email_accounts.account_settings.smtp_password_is_set IS 'Whether set_password() has stored the SMTP side''s password (side both or smtp).';

-- What is wrong with a protocol/port/security combination, or NULL. Only the
-- well-known ports are judged: anything else may be a deliberate choice.
CREATE FUNCTION email_accounts.port_security_conflict(protocol text, port integer, security text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE
    WHEN protocol = 'smtp' AND security = 'ssl' AND port IN (25, 587)
        THEN format('port %s expects STARTTLS (or plain SMTP), not ssl (TLS from the first byte); use starttls, or port 465 for ssl', port)
    WHEN protocol = 'smtp' AND security <> 'ssl' AND port = 465
        THEN format('port 465 expects ssl (TLS from the first byte), not %s', security)
    WHEN protocol = 'imap' AND port IN (110, 995)
        THEN format('port %s is a POP3 port, but the protocol is imap', port)
    WHEN protocol = 'pop3' AND port IN (143, 993)
        THEN format('port %s is an IMAP port, but the protocol is pop3', port)
    WHEN protocol IN ('imap', 'pop3') AND security = 'ssl' AND port IN (143, 110)
        THEN format('port %s expects STARTTLS (or no TLS), not ssl (TLS from the first byte); use starttls, or port %s for ssl',
                    port, CASE port WHEN 143 THEN 993 ELSE 995 END)
    WHEN protocol IN ('imap', 'pop3') AND security <> 'ssl' AND port IN (993, 995)
        THEN format('port %s expects ssl (TLS from the first byte), not %s', port, security)
END;

COMMENT ON FUNCTION email_accounts.port_security_conflict(text, integer, text) IS
  'Why a protocol (smtp, imap, pop3), port and security (ssl, starttls, none) do not go together on a well-known port, or NULL when they do.';

CREATE FUNCTION email_accounts.raise_setting_error(account_name text, field text, problem text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'account %: %', quote_literal(account_name), problem
        USING ERRCODE = 'check_violation', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = field,
              HINT = format('Fix %s on the account, or on its domain or provider where it is inherited from.', field);
END;
$$;

COMMENT ON FUNCTION email_accounts.raise_setting_error(text, text, text) IS
  'Raises check_violation (23514) naming the account and the field; used by check_account_settings().';

-- append_to_table, append_to_columns and on_receive_function of one account.
-- Runs as the caller: an account it cannot see is not checked (and not named).
CREATE FUNCTION email_accounts.check_routing(checked_account_id bigint) RETURNS void
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
    IF checked.on_bounce_function IS NOT NULL THEN
        SELECT * INTO handler FROM pg_proc WHERE oid = checked.on_bounce_function;
        IF handler.pronargs <> 2 OR handler.proargtypes[0] <> 'bigint'::regtype OR handler.proargtypes[1] <> 'text'::regtype THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'on_bounce_function',
                format('%s must take two arguments, the outbox_id bigint and the address text', checked.on_bounce_function));
        END IF;
        IF handler.prokind <> 'f' THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'on_bounce_function',
                format('%s must be a function, not a procedure or aggregate', checked.on_bounce_function));
        END IF;
        IF owner IS NOT NULL AND NOT has_function_privilege(owner, checked.on_bounce_function, 'EXECUTE') THEN
            PERFORM email_accounts.raise_setting_error(checked.name, 'on_bounce_function',
                format('owner_role %I may not execute %s', checked.owner_role, checked.on_bounce_function));
        END IF;
    END IF;
END;
$$;

COMMENT ON FUNCTION email_accounts.check_routing(bigint) IS
  'Checks an account''s append_to_table (single-column primary key, owner_role may insert), append_to_columns (existing columns, known message fields), on_receive_function (takes one bigint) and on_bounce_function (takes a bigint and a text; owner_role may execute them); raises check_violation naming the field.';

-- Checks the effective settings of one account; raises naming the field.
-- Runs as the caller (row-level security applies): another tenant's account
-- is neither checked nor named. Domain and provider changes call it as the
-- extension owner, from inherited_settings_changed().
CREATE FUNCTION email_accounts.check_account_settings(checked_account_id bigint) RETURNS void
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

    IF (settings.auth_method = 'oauth2' AND settings.enable_incoming)
       OR (settings.smtp_auth_method = 'oauth2' AND settings.enable_outgoing AND NOT settings.no_smtp_authentication) THEN
        IF settings.oauth_token_endpoint IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'oauth_token_endpoint',
                'auth_method is oauth2 but the account''s provider has no oauth_token_endpoint (name a provider that has one, e.g. office365)');
        END IF;
        IF settings.oauth_client_id IS NULL THEN
            PERFORM email_accounts.raise_setting_error(settings.name, 'oauth_client_id',
                'auth_method is oauth2 but no oauth_client_id is set on the account''s domain or provider (register an application at the provider first; see README "OAuth2")');
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

COMMENT ON FUNCTION email_accounts.check_account_settings(bigint) IS
  'Checks the effective settings of one account (servers present for enabled sides, ports that fit their security, POP3 with one folder, no clear-text passwords unless allowed, an existing owner role) and raises check_violation naming the field.';

-- Why a role may not run an account's append_to_table / on_receive_function
-- code, or NULL when it may. User code never runs as a superuser, as a group
-- role, or as a role that is not bound to the account's tenant. The receiver
-- asks again before each run (role attributes and bindings change).
CREATE FUNCTION email_accounts.owner_role_problem(owner oid, account_tenant text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
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
END;
$$;

COMMENT ON FUNCTION email_accounts.owner_role_problem(oid, text) IS
  'Why this role may not run the append_to_table / on_receive_function code of an account of this tenant (a superuser, a group role, a role not bound to the tenant), or NULL when it may.';

CREATE FUNCTION email_accounts.account_changed() RETURNS trigger
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
       OR NEW.on_bounce_function IS DISTINCT FROM OLD.on_bounce_function
       OR NEW.enable_automatic_linking IS DISTINCT FROM OLD.enable_automatic_linking
       OR NEW.tenant IS DISTINCT FROM OLD.tenant THEN
        IF to_regrole(quote_ident(NEW.owner_role)) IS NOT NULL
           AND NOT pg_has_role(current_user, to_regrole(quote_ident(NEW.owner_role)), 'MEMBER') THEN
            RAISE EXCEPTION 'account %: only members of role % may make it the owner_role or change what runs as it',
                            quote_literal(NEW.name), quote_ident(NEW.owner_role)
                USING ERRCODE = 'insufficient_privilege', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = 'owner_role';
        END IF;
        IF NEW.append_to_table IS NOT NULL OR NEW.on_receive_function IS NOT NULL OR NEW.on_bounce_function IS NOT NULL
           OR NEW.enable_automatic_linking THEN
            problem := email_accounts.owner_role_problem(to_regrole(quote_ident(NEW.owner_role)), NEW.tenant);
            IF problem IS NOT NULL THEN
                RAISE EXCEPTION 'account %: owner_role % may not run append_to_table, on_receive_function, on_bounce_function or automatic linking: %',
                                quote_literal(NEW.name), quote_ident(NEW.owner_role), problem
                    USING ERRCODE = 'insufficient_privilege', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = 'owner_role',
                          HINT = 'Set owner_role to a role without superuser rights that is bound to the account''s tenant in tenant_member.';
            END IF;
        END IF;
    END IF;
    -- Sharing names roles that exist; the group roles would share with
    -- every tenant's roles, which is what visibility tenant is for.
    IF TG_OP = 'INSERT' OR NEW.shared_with IS DISTINCT FROM OLD.shared_with THEN
        SELECT reader INTO problem FROM unnest(NEW.shared_with) AS reader
         WHERE to_regrole(quote_ident(reader)) IS NULL OR reader IN ('email_accounts_admin', 'email_accounts_sender')
            OR reader LIKE 'pg\_%'
         LIMIT 1;
        IF FOUND THEN
            PERFORM email_accounts.raise_setting_error(NEW.name, 'shared_with',
                format('shared_with names %s, which is not a role it can be shared with (an existing role other than the email_accounts group roles and the predefined pg_ roles)',
                       quote_ident(problem)));
        END IF;
    END IF;
    -- Checked when named (not on every later check: deleting the template
    -- must not block the account's, or its domain's, other changes).
    IF NEW.auto_reply_template IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.auto_reply_template IS DISTINCT FROM OLD.auto_reply_template)
       AND NOT EXISTS (SELECT FROM email_accounts.template
                        WHERE template.name = NEW.auto_reply_template AND template.language IS NULL
                          AND (template.tenant IS NULL OR template.tenant = NEW.tenant))
    THEN
        PERFORM email_accounts.raise_setting_error(NEW.name, 'auto_reply_template',
            format('there is no template %s without language (the automatic reply''s) for the account''s tenant',
                   quote_literal(NEW.auto_reply_template)));
    END IF;
    PERFORM email_accounts.check_account_settings(NEW.account_id);
    -- Mail may have waited for this account (a password, enable_outgoing),
    -- and the receiver syncs a newly enabled account at once.
    PERFORM email_accounts.wake_workers_at_commit();
    RETURN NULL;
END;
$$;

-- What a stored password is bound to: every effective setting that decides
-- where it is sent (servers, ports, security, trusted CAs, clear text). A
-- password is only ever sent where its binding still matches.
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

-- What OAuth2 tokens are bound to: the servers they are sent to (as for
-- passwords), and the token endpoint and client the refresh token is sent to.
CREATE FUNCTION email_accounts.oauth_binding(bound_account_id bigint) RETURNS text
LANGUAGE sql STABLE
RETURN (
    SELECT pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to((pg_catalog.jsonb_build_array(
               email_accounts.server_binding(bound_account_id), settings.oauth_token_endpoint,
               settings.oauth_client_id, settings.oauth_client_source, settings.login_id)
               -- An SMTP login of its own is bound too (left out when the same, so
               -- the bindings of accounts connected before smtp_login_id stay).
               OPERATOR(pg_catalog.||) CASE WHEN settings.smtp_login_id OPERATOR(pg_catalog.<>) settings.login_id
                                            THEN pg_catalog.jsonb_build_array(settings.smtp_login_id)
                                            ELSE '[]'::jsonb END)::text, 'UTF8')), 'hex')
      FROM email_accounts.account_settings AS settings
     WHERE settings.account_id = bound_account_id);

COMMENT ON FUNCTION email_accounts.oauth_binding(bigint) IS
  'SHA-256 (hex) of what an account''s OAuth2 tokens are bound to: server_binding() plus the token endpoint, the OAuth2 client and the logins (an app-only token opens whichever mailbox is named). When it changes the account needs consent again.';

-- Whether a password that a side of the account signs in with was stored
-- for other servers than those now in effect. A side that signs in with no
-- password (not enabled, no SMTP authentication, OAuth2) does not count: its
-- stale row must not keep the account awaiting a password it never uses.
CREATE FUNCTION email_accounts.password_bound_elsewhere(checked_account_id bigint) RETURNS boolean
LANGUAGE sql STABLE
RETURN EXISTS (
    SELECT FROM email_accounts.account_secret AS secret
      JOIN email_accounts.account_settings AS settings ON settings.account_id = secret.account_id
     WHERE secret.account_id = checked_account_id
       AND secret.bound_servers IS DISTINCT FROM email_accounts.server_binding(checked_account_id)
       AND CASE secret.side
               WHEN 'incoming' THEN (settings.enable_incoming OR (settings.enable_outgoing AND settings.append_to_sent_folder))
                                    AND settings.auth_method = 'password'
               ELSE settings.enable_outgoing AND NOT settings.no_smtp_authentication AND settings.smtp_auth_method = 'password'
           END);

COMMENT ON FUNCTION email_accounts.password_bound_elsewhere(bigint) IS
  'True when a stored password of a side that signs in with one (incoming: IMAP/POP3 or the Sent folder copy; smtp) was set for other servers than the account''s current ones (server_binding()).';

-- An account whose servers changed since its password was stored awaits a
-- new one, and one connected by OAuth2 needs consent again: whoever may
-- redirect an account must not receive its password or tokens.
CREATE FUNCTION email_accounts.require_password_if_servers_changed(checked_account_id bigint) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    UPDATE email_accounts.account SET awaiting_password = true
     WHERE account.account_id = checked_account_id AND NOT account.awaiting_password
       AND email_accounts.password_bound_elsewhere(checked_account_id);
    UPDATE email_accounts.account_oauth
       SET state = 'consent needed', refreshing_until = NULL, refresh_lease = NULL, updated_at = now(),
           problem = 'the account''s servers, login or OAuth2 client changed since it was connected; connect it again'
     WHERE account_oauth.account_id = checked_account_id AND account_oauth.state <> 'consent needed'
       AND account_oauth.bound_settings IS DISTINCT FROM email_accounts.oauth_binding(checked_account_id);
END;

COMMENT ON FUNCTION email_accounts.require_password_if_servers_changed(bigint) IS
  'Sets awaiting_password on an account whose stored password was set for other servers than those now in effect, and marks its OAuth2 grant consent needed when the servers or OAuth2 client changed since it was connected.';

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

-- The outbox rows of a deleted account lose it (ON DELETE SET NULL), and with
-- it their visibility: those of a mailbox private to some would become the
-- whole tenant's. So they go with the account, as its messages do.
CREATE FUNCTION email_accounts.account_keeps_private_mail_private() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF OLD.visibility <> 'tenant' THEN
        DELETE FROM email_accounts.outbox WHERE outbox.account_id = OLD.account_id;
    END IF;
    RETURN OLD;
END;
$$;

COMMENT ON FUNCTION email_accounts.account_keeps_private_mail_private() IS
  'Trigger: deleting an account whose visibility is private or shared deletes its outbox rows too (as its messages are): without their account they would become the whole tenant''s.';

-- Outbox rows and messages carry the account's tenant: moving the account
-- to another tenant would make them point across tenants.
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

CREATE FUNCTION email_accounts.account_touched() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

-- A domain or provider change re-checks every account that inherits from it.
CREATE FUNCTION email_accounts.inherited_settings_changed() RETURNS trigger
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

COMMENT ON FUNCTION email_accounts.account_changed() IS 'Trigger: checks an account''s effective settings after it is inserted or updated.';
COMMENT ON FUNCTION email_accounts.account_touched() IS 'Trigger: keeps account.updated_at current.';
COMMENT ON FUNCTION email_accounts.inherited_settings_changed() IS 'Trigger: re-checks the accounts that inherit from a changed domain or provider.';

-- A restore takes rows as they were dumped (see sql/restore.sql).
CREATE TRIGGER check_settings AFTER INSERT OR UPDATE ON email_accounts.account
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.account_changed();
CREATE TRIGGER touch BEFORE UPDATE ON email_accounts.account
    FOR EACH ROW EXECUTE FUNCTION email_accounts.account_touched();
CREATE TRIGGER keep_tenant BEFORE UPDATE OF tenant ON email_accounts.account
    FOR EACH ROW EXECUTE FUNCTION email_accounts.account_keeps_its_tenant();
CREATE TRIGGER keep_private_mail_private BEFORE DELETE ON email_accounts.account
    FOR EACH ROW EXECUTE FUNCTION email_accounts.account_keeps_private_mail_private();
-- (Not on INSERT: a new account has no password yet.)
CREATE TRIGGER require_password_for_new_servers AFTER UPDATE ON email_accounts.account
    FOR EACH ROW EXECUTE FUNCTION email_accounts.account_servers_changed();
CREATE TRIGGER check_inheriting_accounts AFTER INSERT OR UPDATE OR DELETE ON email_accounts.domain
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.inherited_settings_changed();
CREATE TRIGGER check_inheriting_accounts AFTER UPDATE OR DELETE ON email_accounts.provider
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.inherited_settings_changed();

-- Any write to a table the sending settings come from counts as a settings
-- change from its transaction's commit until it ends (src/worker/wake.rs
-- SETTINGS): a sender never uses settings it read during the flush of
-- another commit across such a change. Every statement, deletes and
-- TRUNCATE included, and while restoring (the row triggers above leave
-- those out).
CREATE FUNCTION email_accounts.sending_settings_changed() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM email_accounts.settings_change_at_commit();
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.sending_settings_changed() IS
  'Statement trigger of account, domain, provider and account_oauth: the transaction counts as a change of sending settings when it commits.';

CREATE TRIGGER count_settings_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON email_accounts.account
    FOR EACH STATEMENT EXECUTE FUNCTION email_accounts.sending_settings_changed();
CREATE TRIGGER count_settings_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON email_accounts.domain
    FOR EACH STATEMENT EXECUTE FUNCTION email_accounts.sending_settings_changed();
CREATE TRIGGER count_settings_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON email_accounts.provider
    FOR EACH STATEMENT EXECUTE FUNCTION email_accounts.sending_settings_changed();
CREATE TRIGGER count_settings_change AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON email_accounts.account_oauth
    FOR EACH STATEMENT EXECUTE FUNCTION email_accounts.sending_settings_changed();
