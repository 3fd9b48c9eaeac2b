-- email_accounts 0.3.0 → 0.4.0: OAuth2 sign-in (issue 15). Run by ALTER
-- EXTENSION email_accounts UPDATE; the workers of the 0.4.0 library wait
-- for it (README "Upgrading"). Accounts that inherited office365 or outlook
-- with a password keep signing in with it (auth_method set to password on
-- the account): the presets now say oauth2.

CREATE FUNCTION email_accounts.oauth_scopes_are_valid(scopes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN NOT EXISTS (SELECT FROM unnest(scopes) AS scope WHERE scope IS NULL OR scope !~ '^[^\s]+$');

COMMENT ON FUNCTION email_accounts.oauth_scopes_are_valid(text[]) IS
  'True when no scope in the array is NULL, empty or contains white space (scopes are sent space-separated).';

ALTER TABLE email_accounts.provider
    ADD COLUMN auth_method       text CONSTRAINT "provider auth_method must be password or oauth2" CHECK (auth_method IN ('password', 'oauth2')),
    ADD COLUMN oauth_token_endpoint text
                      CONSTRAINT "provider oauth_token_endpoint must be an https:// URL" CHECK (oauth_token_endpoint ~ '^https://[^\s]+$'),
    ADD COLUMN oauth_device_authorization_endpoint text
                      CONSTRAINT "provider oauth_device_authorization_endpoint must be an https:// URL"
                      CHECK (oauth_device_authorization_endpoint ~ '^https://[^\s]+$'),
    ADD COLUMN oauth_scopes      text[] CONSTRAINT "provider oauth_scopes must not contain empty scopes or scopes with blanks"
                      CHECK (email_accounts.oauth_scopes_are_valid(oauth_scopes)),
    ADD COLUMN oauth_client_credentials_scopes text[]
                      CONSTRAINT "provider oauth_client_credentials_scopes must not contain empty scopes or scopes with blanks"
                      CHECK (email_accounts.oauth_scopes_are_valid(oauth_client_credentials_scopes)),
    ADD COLUMN oauth_client_id   text CONSTRAINT "provider oauth_client_id must not be empty or contain blanks" CHECK (oauth_client_id ~ '^[^\s]+$'),
    ADD COLUMN oauth_tenant      text CONSTRAINT "provider oauth_tenant must be letters, digits, dots or dashes" CHECK (oauth_tenant ~ '^[A-Za-z0-9.-]+$');

COMMENT ON COLUMN email_accounts.provider.auth_method IS 'How accounts of this provider sign in unless their domain or the account says otherwise: password or oauth2; NULL means password.';
COMMENT ON COLUMN email_accounts.provider.oauth_token_endpoint IS 'OAuth2 token endpoint (https); {tenant} is replaced by the effective oauth_tenant (Microsoft identity platform).';
COMMENT ON COLUMN email_accounts.provider.oauth_device_authorization_endpoint IS 'OAuth2 device authorization endpoint (RFC 8628) used by oauth_device_login(); {tenant} is replaced as in oauth_token_endpoint. NULL when the provider allows no device login for mail.';
COMMENT ON COLUMN email_accounts.provider.oauth_scopes IS 'Scopes asked for on behalf of a mailbox user (device login, refresh), e.g. IMAP, POP and SMTP access and offline_access.';
COMMENT ON COLUMN email_accounts.provider.oauth_client_credentials_scopes IS 'Scopes asked for with client credentials (app-only access to mailboxes); NULL when the provider offers no app-only mail access.';
COMMENT ON COLUMN email_accounts.provider.oauth_client_id IS 'The OAuth2 client (application) registered at the provider, used by accounts whose domain names none. Its secret is set with set_oauth_client_secret() and stored encrypted.';
COMMENT ON COLUMN email_accounts.provider.oauth_tenant IS 'Default tenant put into the endpoints'' {tenant} (Microsoft: organizations, consumers, common, or a directory id).';

ALTER TABLE email_accounts.domain
    ADD COLUMN auth_method          text CONSTRAINT "domain auth_method must be password or oauth2" CHECK (auth_method IN ('password', 'oauth2')),
    ADD COLUMN oauth_client_id      text CONSTRAINT "domain oauth_client_id must not be empty or contain blanks" CHECK (oauth_client_id ~ '^[^\s]+$'),
    ADD COLUMN oauth_tenant         text CONSTRAINT "domain oauth_tenant must be letters, digits, dots or dashes" CHECK (oauth_tenant ~ '^[A-Za-z0-9.-]+$');

COMMENT ON COLUMN email_accounts.domain.auth_method IS 'password or oauth2 for the domain''s accounts that do not choose; NULL inherits the provider''s.';
COMMENT ON COLUMN email_accounts.domain.oauth_client_id IS 'The organisation''s own OAuth2 client (application) at the provider; when set, the domain''s accounts use it (with its secret from set_oauth_client_secret() and oauth_tenant) instead of the provider''s.';
COMMENT ON COLUMN email_accounts.domain.oauth_tenant IS 'Tenant (Microsoft directory id or domain) of the domain''s OAuth2 client, put into the provider''s endpoints; NULL uses the provider''s oauth_tenant.';

-- A worker parses every extra CA certificate on each connection it opens:
-- their text is limited (a bundle of every public CA is about 220 KB). An
-- account or domain already holding more stops the update with this
-- constraint's name; shorten the value and update again.
ALTER TABLE email_accounts.domain
    ADD CONSTRAINT "domain extra_ca_certificate length must be at most 262144 bytes" CHECK (octet_length(extra_ca_certificate) <= 262144);
ALTER TABLE email_accounts.account
    ADD CONSTRAINT "extra_ca_certificate length must be at most 262144 bytes" CHECK (octet_length(extra_ca_certificate) <= 262144);
COMMENT ON COLUMN email_accounts.account.extra_ca_certificate IS 'Extra trusted CA certificate(s), PEM, at most 256 KiB, for mail servers with a private CA; NULL inherits the domain''s. Certificates are always verified.';
COMMENT ON COLUMN email_accounts.domain.extra_ca_certificate IS 'Extra trusted CA certificate(s), PEM, at most 256 KiB, for mail servers with a private CA; accounts inherit it.';

ALTER TABLE email_accounts.account
    ADD COLUMN auth_method text CONSTRAINT "auth_method must be password or oauth2" CHECK (auth_method IN ('password', 'oauth2')),
    ADD COLUMN enable_automatic_linking boolean NOT NULL DEFAULT false,
    ADD COLUMN reply_to_document_address boolean NOT NULL DEFAULT false,
    ADD COLUMN signed_envelope_sender boolean NOT NULL DEFAULT false,
    ADD COLUMN soft_bounce_limit integer CONSTRAINT "soft_bounce_limit must be positive" CHECK (soft_bounce_limit > 0),
    ADD COLUMN soft_bounce_days integer NOT NULL DEFAULT 7
               CONSTRAINT "soft_bounce_days must be between 1 and 365" CHECK (soft_bounce_days BETWEEN 1 AND 365),
    ADD COLUMN on_bounce_function regprocedure,
    ADD COLUMN auto_reply_template text,
    -- Issue 19: who may read a mailbox, and SMTP credentials of its own.
    ADD COLUMN visibility  text NOT NULL DEFAULT 'tenant'
               CONSTRAINT "visibility must be tenant, private or shared" CHECK (visibility IN ('tenant', 'private', 'shared')),
    ADD COLUMN shared_with name[] NOT NULL DEFAULT '{}'
               CONSTRAINT "shared_with must not contain empty or NULL role names"
               CHECK (array_position(shared_with, NULL) IS NULL AND array_position(shared_with, '') IS NULL),
    ADD COLUMN smtp_login_id text CONSTRAINT "smtp_login_id must not be empty or contain control characters" CHECK (smtp_login_id ~ '^[^[:cntrl:]]+$'),
    ADD COLUMN smtp_auth_method text CONSTRAINT "smtp_auth_method must be password or oauth2" CHECK (smtp_auth_method IN ('password', 'oauth2')),
    ADD COLUMN smtp_password_set_at timestamptz,
    ADD CONSTRAINT "visibility shared needs at least one role in shared_with"
        CHECK (visibility <> 'shared' OR cardinality(shared_with) >= 1),
    ADD CONSTRAINT "signed_envelope_sender needs an address whose local part has at most 24 characters"
        CHECK (NOT signed_envelope_sender OR octet_length(split_part(address, '@', 1)) <= 24),
    DROP CONSTRAINT "auto_reply_message is required when enable_auto_reply is on",
    ADD CONSTRAINT "auto_reply_message or auto_reply_template is required when enable_auto_reply is on"
        CHECK (NOT enable_auto_reply OR btrim(coalesce(auto_reply_message, '')) <> '' OR auto_reply_template IS NOT NULL);

COMMENT ON COLUMN email_accounts.account.enable_automatic_linking IS 'Incoming mail to a document address of this account (local+<table>=<id>@domain, see document_address()) is linked to that application row, even when it answers nothing (ERPNext "Enable Automatic Linking"); the row must exist and be readable by owner_role.';
COMMENT ON COLUMN email_accounts.account.reply_to_document_address IS 'Outgoing mail about an application row (reference_table/reference_id) gets that row''s document address as Reply-To, so answers come back linked; send(reply_to_document => ...) or outbox.reply_to_document decide per message.';
COMMENT ON COLUMN email_accounts.account.signed_envelope_sender IS 'Mail goes out with the envelope sender local+b<key>-<outbox id>-<signature>@domain (VERP-style, signed with the link signing key), and a delivery report about this account''s mail counts only when it comes back to such an address with a valid signature (or, for a complaint, returns the mail with one as Return-Path): a forged report naming a Message-ID changes nothing. Needs a server that takes and delivers sub-addresses (recipient delimiter +).';
COMMENT ON COLUMN email_accounts.account.soft_bounce_limit IS 'Suppress an address (reason soft_bounce) once this many messages to it in soft_bounce_days came back delayed, with a 4.x.x failure or a full mailbox (5.2.2); NULL never does.';
COMMENT ON COLUMN email_accounts.account.soft_bounce_days IS 'The window of soft_bounce_limit, in days.';
COMMENT ON COLUMN email_accounts.account.on_bounce_function IS 'Function (outbox_id bigint, address text) called as owner_role for each recipient a delivery report or complaint recorded (outbox_recipient.report says what came back), in the transaction that stores the report; an error there is recorded on the report and stops nothing else.';
COMMENT ON COLUMN email_accounts.account.auto_reply_template IS 'A template (see the template table) the automatic reply is made from instead of auto_reply_message, over the incoming message''s fields: from (Name <address>), subject, reply_subject (Re: …), received_at, account, account_address.';
COMMENT ON COLUMN email_accounts.account.owner_role IS 'Role that owns the account: its members may call set_password() and test_account() for it, and append_to_table, on_receive_function and on_bounce_function run as it. Never one of the email_accounts group roles; with routing set, neither a superuser nor a role bound to no tenant of the account. Only its members may name it.';
COMMENT ON COLUMN email_accounts.account.auth_method IS 'password (set_password()) or oauth2 (an access token by SASL XOAUTH2/OAUTHBEARER: oauth_device_login(), set_oauth_refresh_token() or connect_oauth_client_credentials()); NULL inherits the domain''s, then the provider''s, else password.';

COMMENT ON COLUMN email_accounts.account.visibility IS 'Who sees the account''s mail (message, inbox, sync_status, its outbox rows and their recipients and attachments) and may send through it or sync it: tenant (every role of the tenant), private (members of owner_role), shared (members of owner_role or of a role in shared_with). email_accounts_admin members of the tenant and superusers always do. The account row itself stays visible to the tenant, and set_password() and test_account() stay with owner_role members and admins. Only admins change it.';
COMMENT ON COLUMN email_accounts.account.shared_with IS 'With visibility shared: the roles (and their members) that see the account''s mail and may send through it, besides owner_role. Existing roles, not the email_accounts group roles.';
COMMENT ON COLUMN email_accounts.account.smtp_login_id IS 'Login name of the SMTP side when it differs from the incoming side''s (a relay with credentials of its own); NULL uses login_id, else the address.';
COMMENT ON COLUMN email_accounts.account.smtp_auth_method IS 'password or oauth2 for the SMTP side when it differs from the incoming side''s; NULL uses the effective auth_method.';
COMMENT ON COLUMN email_accounts.account.smtp_password_set_at IS 'When set_password() last stored the SMTP side''s password (side both or smtp); NULL when none is stored. Not a secret.';
COMMENT ON COLUMN email_accounts.account.password_set_at IS 'When set_password() last stored the incoming side''s password (side both or incoming); NULL when none is stored. Not a secret.';
COMMENT ON COLUMN email_accounts.account.login_id IS 'Login name when it differs from the address (for both sides, unless smtp_login_id is set); NULL logs in with the address.';
COMMENT ON COLUMN email_accounts.account.awaiting_password IS 'The password will be given later: workers skip the account until set_password() is called, which clears this (once no stored password of either side is bound to other servers).';

-- Passwords per side (sql/secrets.sql): the stored one serves both sides, as before.
ALTER TABLE email_accounts.account_secret
    ADD COLUMN side text NOT NULL DEFAULT 'incoming' CONSTRAINT "side must be incoming or smtp" CHECK (side IN ('incoming', 'smtp')),
    DROP CONSTRAINT account_secret_pkey,
    ADD PRIMARY KEY (account_id, side);
COMMENT ON TABLE email_accounts.account_secret IS
  'Encrypted account passwords, one per side (incoming, smtp). Readable by no role but superusers (and useless without the key file email_accounts.keys in the data directory). Written only by set_password() and rotate_encryption_key().';
COMMENT ON COLUMN email_accounts.account_secret.side IS 'Which side signs in with it: incoming (IMAP or POP3, and the Sent folder copy) or smtp. set_password(side => both) writes one row of each.';

-- The data changes below are not checked again by the triggers (an
-- account that no longer passes today's checks must not stop the update),
-- and do not count as the accounts' own changes (updated_at).
ALTER TABLE email_accounts.account DISABLE TRIGGER check_settings, DISABLE TRIGGER touch,
    DISABLE TRIGGER require_password_for_new_servers;
ALTER TABLE email_accounts.provider DISABLE TRIGGER check_inheriting_accounts;

-- Accounts that sign in to office365 or outlook with a password now (the
-- presets turn to oauth2 below) keep doing so until someone connects them.
UPDATE email_accounts.account
   SET auth_method = 'password'
  FROM email_accounts.account AS inheriting
  LEFT JOIN email_accounts.domain ON domain.domain_name = lower(split_part(inheriting.address, '@', 2))
 WHERE account.account_id = inheriting.account_id AND account.auth_method IS NULL
   AND coalesce(inheriting.provider, domain.provider) IN ('office365', 'outlook');

UPDATE email_accounts.provider
   SET description = CASE name
           WHEN 'gmail' THEN 'Gmail and Google Workspace (an app password, or OAuth2 with a refresh token from your own app)'
           WHEN 'outlook' THEN 'Outlook.com, Hotmail and Live personal accounts (OAuth2 only)'
           WHEN 'office365' THEN 'Microsoft 365 / Office 365 / Exchange Online (OAuth2)' END
 WHERE built_in AND name IN ('gmail', 'outlook', 'office365');
-- OAuth2 endpoints and scopes of the providers that sign in with it. No
-- client id: each organisation registers its own application (README).
UPDATE email_accounts.provider
   SET auth_method = 'oauth2',
       oauth_token_endpoint = 'https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token',
       oauth_device_authorization_endpoint = 'https://login.microsoftonline.com/{tenant}/oauth2/v2.0/devicecode',
       oauth_scopes = ARRAY['https://outlook.office.com/IMAP.AccessAsUser.All', 'https://outlook.office.com/POP.AccessAsUser.All',
                            'https://outlook.office.com/SMTP.Send', 'offline_access'],
       oauth_client_credentials_scopes = CASE name WHEN 'office365' THEN ARRAY['https://outlook.office365.com/.default'] END,
       oauth_tenant = CASE name WHEN 'office365' THEN 'organizations' ELSE 'consumers' END
 WHERE built_in AND name IN ('office365', 'outlook');
-- Google allows no device login for mail scopes: an application gets the
-- refresh token (authorization code flow) and hands it to set_oauth_refresh_token().
UPDATE email_accounts.provider
   SET oauth_token_endpoint = 'https://oauth2.googleapis.com/token',
       oauth_scopes = ARRAY['https://mail.google.com/']
 WHERE built_in AND name = 'gmail';

-- Each stored password now serves the SMTP side under a row of its own.
INSERT INTO email_accounts.account_secret (account_id, key_id, nonce, ciphertext, updated_at, bound_servers, side)
SELECT account_id, key_id, nonce, ciphertext, updated_at, bound_servers, 'smtp' FROM email_accounts.account_secret;
UPDATE email_accounts.account SET smtp_password_set_at = password_set_at WHERE password_set_at IS NOT NULL;

ALTER TABLE email_accounts.account ENABLE TRIGGER check_settings, ENABLE TRIGGER touch,
    ENABLE TRIGGER require_password_for_new_servers;
ALTER TABLE email_accounts.provider ENABLE TRIGGER check_inheriting_accounts;

CREATE OR REPLACE FUNCTION email_accounts.restore_over_built_in_preset() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE email_accounts.provider
       SET (description, incoming_protocol, imap_host, imap_port, imap_security, pop3_host, pop3_port, pop3_security,
            smtp_host, smtp_port, smtp_security, built_in, auth_method, oauth_token_endpoint,
            oauth_device_authorization_endpoint, oauth_scopes, oauth_client_credentials_scopes, oauth_client_id, oauth_tenant)
         = (NEW.description, NEW.incoming_protocol, NEW.imap_host, NEW.imap_port, NEW.imap_security, NEW.pop3_host,
            NEW.pop3_port, NEW.pop3_security, NEW.smtp_host, NEW.smtp_port, NEW.smtp_security, NEW.built_in, NEW.auth_method,
            NEW.oauth_token_endpoint, NEW.oauth_device_authorization_endpoint, NEW.oauth_scopes,
            NEW.oauth_client_credentials_scopes, NEW.oauth_client_id, NEW.oauth_tenant)
     WHERE name = NEW.name;
    IF FOUND THEN
        RETURN NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TABLE email_accounts.oauth_client_secret (
    provider    text UNIQUE REFERENCES email_accounts.provider (name) ON UPDATE CASCADE ON DELETE CASCADE,
    domain_name text UNIQUE REFERENCES email_accounts.domain (domain_name) ON UPDATE CASCADE ON DELETE CASCADE,
    key_id      integer NOT NULL,
    nonce       bytea NOT NULL,
    ciphertext  bytea NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "an OAuth2 client secret belongs to a provider or a domain" CHECK ((provider IS NULL) <> (domain_name IS NULL))
);

COMMENT ON TABLE email_accounts.oauth_client_secret IS
  'Encrypted secrets of the OAuth2 clients named by provider.oauth_client_id and domain.oauth_client_id. Readable by no role but superusers; written only by set_oauth_client_secret() and rotate_encryption_key().';
COMMENT ON COLUMN email_accounts.oauth_client_secret.provider IS 'The provider whose oauth_client_id this secret belongs to (or NULL).';
COMMENT ON COLUMN email_accounts.oauth_client_secret.domain_name IS 'The domain whose oauth_client_id this secret belongs to (or NULL).';
COMMENT ON COLUMN email_accounts.oauth_client_secret.key_id IS 'Which key of the key file encrypted it.';
COMMENT ON COLUMN email_accounts.oauth_client_secret.nonce IS 'The random 96-bit nonce of this encryption.';
COMMENT ON COLUMN email_accounts.oauth_client_secret.ciphertext IS 'The encrypted client secret with its authentication tag.';
COMMENT ON COLUMN email_accounts.oauth_client_secret.updated_at IS 'When the secret was last written or re-encrypted.';

REVOKE ALL ON email_accounts.oauth_client_secret FROM PUBLIC;
ALTER TABLE email_accounts.oauth_client_secret ENABLE ROW LEVEL SECURITY;

CREATE TABLE email_accounts.account_oauth (
    account_id   bigint PRIMARY KEY REFERENCES email_accounts.account (account_id) ON DELETE CASCADE,
    grant_type   text NOT NULL
                 CONSTRAINT "account_oauth grant_type must be device_code, refresh_token or client_credentials"
                 CHECK (grant_type IN ('device_code', 'refresh_token', 'client_credentials')),
    state        text NOT NULL
                 CONSTRAINT "account_oauth state must be waiting for approval, connected or consent needed"
                 CHECK (state IN ('waiting for approval', 'connected', 'consent needed')),
    problem      text,
    bound_settings text NOT NULL,
    access_token_expires_at timestamptz,
    device_login_expires_at timestamptz,
    next_request_at timestamptz,
    refreshing_until timestamptz,
    refresh_lease uuid,
    refreshed_at timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- The device logins waiting for approval, which the receiver looks at on
-- every round (three statements): not a read of every OAuth2 account.
CREATE INDEX account_oauth_waiting ON email_accounts.account_oauth (next_request_at)
    WHERE state = 'waiting for approval';

COMMENT ON TABLE email_accounts.account_oauth IS
  'OAuth2 state of each account that was connected (or is being connected) with oauth_device_login(), set_oauth_refresh_token() or connect_oauth_client_credentials(). The tokens themselves are in account_oauth_token. account_settings.oauth_state says the same in words.';
COMMENT ON COLUMN email_accounts.account_oauth.account_id IS 'The account.';
COMMENT ON COLUMN email_accounts.account_oauth.grant_type IS 'How access tokens are obtained: device_code (a device login not approved yet), refresh_token, or client_credentials (app-only).';
COMMENT ON COLUMN email_accounts.account_oauth.state IS 'waiting for approval (a device login), connected, or consent needed (see problem): only a person can fix it, by connecting the account again.';
COMMENT ON COLUMN email_accounts.account_oauth.problem IS 'Why consent is needed, or the last failed token request (the provider''s words; never a token).';
COMMENT ON COLUMN email_accounts.account_oauth.bound_settings IS 'oauth_binding() when the account was connected: tokens are only sent while the servers and the OAuth2 client still match it.';
COMMENT ON COLUMN email_accounts.account_oauth.access_token_expires_at IS 'When the stored access token expires; the workers renew it shortly before.';
COMMENT ON COLUMN email_accounts.account_oauth.device_login_expires_at IS 'When the device login waiting for approval expires.';
COMMENT ON COLUMN email_accounts.account_oauth.next_request_at IS 'The token endpoint is not asked before this: the device login''s polling interval, or a back-off after a failed request.';
COMMENT ON COLUMN email_accounts.account_oauth.refreshing_until IS 'A worker may renew the access token until then; the other waits rather than using the refresh token at the same time.';
COMMENT ON COLUMN email_accounts.account_oauth.refresh_lease IS 'Names the worker''s lease (refreshing_until): only what that worker obtained under it is stored.';
COMMENT ON COLUMN email_accounts.account_oauth.refreshed_at IS 'When an access token was last obtained.';
COMMENT ON COLUMN email_accounts.account_oauth.updated_at IS 'When the row last changed.';

CREATE TABLE email_accounts.account_oauth_token (
    account_id bigint PRIMARY KEY REFERENCES email_accounts.account_oauth (account_id) ON DELETE CASCADE,
    key_id     integer NOT NULL,
    nonce      bytea NOT NULL,
    ciphertext bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE email_accounts.account_oauth_token IS
  'Encrypted OAuth2 tokens of an account (refresh token, access token, or the pending device login), as one sealed JSON object bound to the account id. Readable by no role but superusers.';
COMMENT ON COLUMN email_accounts.account_oauth_token.account_id IS 'The account; bound into the encryption.';
COMMENT ON COLUMN email_accounts.account_oauth_token.key_id IS 'Which key of the key file encrypted it.';
COMMENT ON COLUMN email_accounts.account_oauth_token.nonce IS 'The random 96-bit nonce of this encryption.';
COMMENT ON COLUMN email_accounts.account_oauth_token.ciphertext IS 'The encrypted tokens with their authentication tag.';
COMMENT ON COLUMN email_accounts.account_oauth_token.updated_at IS 'When the tokens were last written or re-encrypted.';

REVOKE ALL ON email_accounts.account_oauth_token FROM PUBLIC;
ALTER TABLE email_accounts.account_oauth_token ENABLE ROW LEVEL SECURITY;

SELECT pg_catalog.pg_extension_config_dump('email_accounts.oauth_client_secret', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.account_oauth', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.account_oauth_token', '');

CREATE OR REPLACE VIEW email_accounts.account_settings WITH (security_invoker = true) AS
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

COMMENT ON COLUMN email_accounts.account_settings.ready_to_send IS
  'Outgoing is enabled and the account can sign in (a stored password it is not awaiting, or with oauth2 a connected grant), or SMTP needs no sign-in: the sender worker uses only such accounts.';
COMMENT ON COLUMN email_accounts.account_settings.ready_to_receive IS
  'Incoming is enabled and the account can sign in (a stored password it is not awaiting, or with oauth2 a connected grant): the receiver worker syncs only such accounts.';
COMMENT ON COLUMN email_accounts.account_settings.auth_method IS 'Effective password or oauth2: the account''s, else its domain''s, else its provider''s, else password.';
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

-- Issue 19: stale rows of sides that sign in with no password do not count (sql/account_settings.sql).
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
CREATE OR REPLACE FUNCTION email_accounts.require_password_if_servers_changed(checked_account_id bigint) RETURNS void
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

COMMENT ON COLUMN email_accounts.sync_state.last_error_kind IS 'dns, connect, timeout, tls, auth, oauth (getting an OAuth2 token, or a server refusing it), protocol, or store (the database refused a message).';

-- Privileges (sql/security.sql).
GRANT SELECT ON email_accounts.account_oauth TO email_accounts_admin, email_accounts_sender;
ALTER TABLE email_accounts.account_oauth ENABLE ROW LEVEL SECURITY;
CREATE POLICY rows_of_visible_accounts ON email_accounts.account_oauth
    USING (EXISTS (SELECT FROM email_accounts.account WHERE account.account_id = account_oauth.account_id));

-- A restore holds the workers off from the new tables too (sql/restore.sql).
DO $$
DECLARE
    restored text;
BEGIN
    FOREACH restored IN ARRAY ARRAY['oauth_client_secret', 'account_oauth', 'account_oauth_token'] LOOP
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.%I
                 FOR EACH STATEMENT WHEN (email_accounts.restoring())
                 EXECUTE FUNCTION email_accounts.hold_workers_during_restore()', restored);
    END LOOP;
END;
$$;

-- The SQL functions of src/api/oauth.rs.
CREATE  FUNCTION "set_oauth_refresh_token"(
	"account" TEXT, /* & str */
	"refresh_token" TEXT, /* & str */
	"tenant" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_oauth_refresh_token_wrapper';

CREATE  FUNCTION "oauth_device_login"(
	"account" TEXT, /* & str */
	"tenant" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS TABLE (
	"verification_uri" TEXT,  /* String */
	"user_code" TEXT,  /* String */
	"expires_at" timestamp with time zone,  /* pgrx :: datum :: TimestampWithTimeZone */
	"message" TEXT  /* String */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'oauth_device_login_wrapper';

CREATE  FUNCTION "connect_oauth_client_credentials"(
	"account" TEXT, /* & str */
	"tenant" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS timestamp with time zone /* pgrx :: datum :: TimestampWithTimeZone */
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'connect_oauth_client_credentials_wrapper';

CREATE  FUNCTION "set_oauth_client_secret"(
	"secret" TEXT, /* & str */
	"provider" TEXT DEFAULT NULL, /* Option < & str > */
	"domain" TEXT DEFAULT NULL /* Option < & str > */
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_oauth_client_secret_wrapper';

COMMENT ON FUNCTION email_accounts.test_account(text, text) IS
  'Connects and logs in to the account''s SMTP server and its IMAP or POP3 server (as enabled), verifying TLS, and returns auth_method, per protocol: ok, elapsed_ms, host, port, security, greeting, capabilities, sasl_mechanism, and on failure error.kind (dns, connect, timeout, tls, auth, oauth, protocol) with error.message in the server''s words; for OAuth2 accounts also oauth: state, whether the access token was still valid or renewed now (stored in the caller''s transaction), and the failed step. Never shows a token. Bounded by email_accounts.connect_timeout.';
COMMENT ON FUNCTION email_accounts.set_oauth_refresh_token(text, text, text) IS
  'Connects an account with auth_method oauth2 by a refresh token that an application obtained (authorization code flow): stores it encrypted and bound to the account''s servers and OAuth2 client, without asking the provider (the workers get an access token at first use; test_account() checks it now). Same callers as set_password(); pass the token as a bind parameter.';
COMMENT ON FUNCTION email_accounts.oauth_device_login(text, text) IS
  'Starts a device login (RFC 8628) for an account with auth_method oauth2 and returns the verification URI, the user code, when it expires and a message to show. The receiver worker polls the token endpoint and connects the account once the user approved (account_settings.oauth_state: waiting for approval, then connected). Same callers as set_password().';
COMMENT ON FUNCTION email_accounts.connect_oauth_client_credentials(text, text) IS
  'Connects an account with auth_method oauth2 by client credentials (app-only; the provider needs oauth_client_credentials_scopes and the client a secret) and returns when the first access token expires. An app-only token opens any mailbox the application was granted: superusers and email_accounts_admin members bound to every tenant only; changing the account''s login or servers afterwards needs it connected again.';
COMMENT ON FUNCTION email_accounts.set_oauth_client_secret(text, text, text) IS
  'Stores, encrypted and write-only, the secret of the OAuth2 client named by a provider''s or a domain''s oauth_client_id (name exactly one). Superusers and email_accounts_admin members bound to every tenant.';
COMMENT ON FUNCTION email_accounts.rotate_encryption_key() IS
  'Superusers only: adds a new current encryption key to email_accounts.keys, re-encrypts every stored password, OAuth2 token and OAuth2 client secret with it, keeps the older keys (other databases of the cluster and restored dumps may still need them), and returns the new key id.';

-- Automatic linking (sql/document_links.sql): document addresses, Reply-To to them, send(reply_to_document).
CREATE  FUNCTION "tagged_address"(
	"address" TEXT, /* & str */
	"table" TEXT, /* & str */
	"id" TEXT /* & str */
) RETURNS TEXT /* alloc::string::String */
IMMUTABLE STRICT PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'tagged_address_wrapper';
COMMENT ON FUNCTION email_accounts.tagged_address(text, text, text) IS
  'The address with a sub-address naming row id of table (local+<table>=<id>@domain, percent-encoded); see document_address().';

ALTER TABLE email_accounts.outbox ADD COLUMN reply_to_document boolean;

COMMENT ON COLUMN email_accounts.outbox.reply_to_document IS
  'With reference_table/reference_id: Reply-To is that row''s document address (see document_address()), so answers come back linked; NULL follows the account''s reply_to_document_address.';

-- The document address of a row for an account: the tenant's (or the only
-- visible) default incoming account when none is named. Runs as the caller:
-- only accounts it can see, and only those with automatic linking on.
CREATE FUNCTION email_accounts.document_address(reference_table regclass, reference_id text, account text DEFAULT NULL,
                                                tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.account;
    candidate email_accounts.account;
    matches integer := 0;
BEGIN
    IF reference_table IS NULL OR reference_id IS NULL OR reference_id = '' THEN
        RAISE EXCEPTION 'document_address needs a reference_table and a reference_id'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOR candidate IN
        SELECT * FROM email_accounts.account
         WHERE (CASE WHEN document_address.account IS NULL THEN account.default_incoming ELSE account.name = document_address.account END)
           AND (document_address.tenant IS NULL OR account.tenant = document_address.tenant)
    LOOP
        matches := matches + 1;
        chosen := candidate;
    END LOOP;
    IF matches <> 1 THEN
        RAISE EXCEPTION '%', CASE WHEN matches = 0 THEN format('no account %s is visible', coalesce(quote_literal(document_address.account), 'that is a default incoming account'))
                                  ELSE format('%s accounts match; name the account and its tenant', matches) END
            USING ERRCODE = CASE WHEN matches = 0 THEN 'undefined_object' ELSE 'ambiguous_parameter' END;
    END IF;
    IF NOT chosen.enable_automatic_linking THEN
        RAISE EXCEPTION 'account %: enable_automatic_linking is off, so mail to a document address would not be linked', quote_literal(chosen.name)
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Turn enable_automatic_linking on for the account.';
    END IF;
    -- Schema-qualified, so the receiver (whatever its search_path) finds the same table.
    RETURN email_accounts.tagged_address(chosen.address,
        (SELECT pg_catalog.format('%I.%I', namespace.nspname, class.relname)
           FROM pg_catalog.pg_class AS class JOIN pg_catalog.pg_namespace AS namespace ON namespace.oid = class.relnamespace
          WHERE class.oid = reference_table),
        reference_id);
END;
$$;

COMMENT ON FUNCTION email_accounts.document_address(regclass, text, text, text) IS
  'The mail address of an application row for automatic linking: the account''s address with a sub-address naming the table and key (local+<table>=<id>@domain, percent-encoded, so any name round-trips). The account is the named one (in tenant) or the default incoming account; it must have enable_automatic_linking on. Runs as the caller.';

DROP FUNCTION email_accounts.send(text[], text, text, text, text[], text[], text[], email_accounts.attachment[], jsonb, text, text, smallint, timestamptz, timestamptz, regclass, text, text, text);
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
    tenant          text DEFAULT NULL,
    reply_to_document boolean DEFAULT NULL,
    template        text DEFAULT NULL,
    context         jsonb DEFAULT NULL,
    language        text DEFAULT NULL
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
                                       reference_id, in_reply_to, tenant, reply_to_document, template, context, language)
    VALUES (coalesce("to", '{}'), coalesce(subject, ''), body_text, body_html, coalesce(cc, '{}'), coalesce(bcc, '{}'),
            coalesce(reply_to, '{}'), coalesce(headers, '{}'), account, sender, coalesce(priority, 0),
            coalesce(send_after, now()), expires_at, reference_table, reference_id, in_reply_to, tenant, reply_to_document,
            template, context, language)
    RETURNING outbox_id INTO queued;
    -- After the template's own attachments, if any.
    SELECT count(*) INTO position FROM email_accounts.outbox_attachment WHERE outbox_attachment.outbox_id = queued;
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

COMMENT ON FUNCTION email_accounts.send(text[], text, text, text, text[], text[], text[], email_accounts.attachment[], jsonb, text, text, smallint, timestamptz, timestamptz, regclass, text, text, text, boolean, text, jsonb, text) IS
  'Queues a message in the caller''s transaction and returns its outbox_id; delivered after commit, never on rollback. Call with named arguments, e.g. send("to" => ''{ann@example.com}'', subject => ''Hi'', body_text => ''…''). tenant: for roles that see several tenants (default: the caller''s only tenant, else the account''s). reply_to_document: with reference_table/reference_id, Reply-To is the row''s document address (NULL: the account''s reply_to_document_address). template, context, language: render the subject and bodies not given from a template (see the template table) over context, in language.';

-- Mail that comes back (sql/delivery_reports.sql).
ALTER TABLE email_accounts.message
    ADD COLUMN kind text NOT NULL DEFAULT 'mail'
        CONSTRAINT "message kind must be mail, delivery_report or complaint"
        CHECK (kind IN ('mail', 'delivery_report', 'complaint'));

COMMENT ON COLUMN email_accounts.message.kind IS
  'mail; delivery_report (a bounce or delay notice for mail we sent) or complaint (a feedback report): those are recorded on the outbox and never routed (no reply link, append_to, on_receive or auto reply).';

ALTER TABLE email_accounts.outbox_recipient
    DROP CONSTRAINT "recipient status must be pending, sent, deferred, failed or suppressed",
    ADD CONSTRAINT "recipient status must be pending, sent, deferred, failed, suppressed, bounced or complained"
        CHECK (status IN ('pending', 'sent', 'deferred', 'failed', 'suppressed', 'bounced', 'complained')),
    ADD COLUMN report text CONSTRAINT "report must be bounced, delayed, soft_bounce or complained"
        CHECK (report IN ('bounced', 'delayed', 'soft_bounce', 'complained')),
    ADD COLUMN report_status text,
    ADD COLUMN report_diagnostic text,
    ADD COLUMN report_remote_mta text,
    ADD COLUMN reported_at timestamptz,
    ADD COLUMN report_message_id bigint;

COMMENT ON COLUMN email_accounts.outbox_recipient.report IS
  'What came back after the server took the mail: bounced (a permanent failure, 5.x.x: status bounced), soft_bounce (a failure with a 4.x.x code), delayed (a warning; the status is unchanged) or complained (the recipient called it spam: status complained).';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_status IS 'The enhanced status code of the report (RFC 3463), e.g. 5.1.1.';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_diagnostic IS 'The remote server''s words (Diagnostic-Code).';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_remote_mta IS 'The server that refused it (Remote-MTA).';
COMMENT ON COLUMN email_accounts.outbox_recipient.reported_at IS 'When the report was stored.';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_message_id IS 'The stored report (message.message_id).';

ALTER TABLE email_accounts.outbox
    DROP CONSTRAINT "status must be queued, sending, retry, sent, failed, expired, cancelled or error",
    ADD CONSTRAINT "status must be queued, sending, retry, sent, failed, expired, cancelled, error or bounced"
        CHECK (status IN ('queued', 'sending', 'retry', 'sent', 'failed', 'expired', 'cancelled', 'error', 'bounced'));

-- Where soft bounces of an address are counted (soft_bounce_limit): only
-- recipients something came back for, a small part of the table.
CREATE INDEX "reported recipients by address"
    ON email_accounts.outbox_recipient (lower(address), reported_at) WHERE report IS NOT NULL;

-- Records a recognised report (stored as stored_message_id) on the outbox
-- mail it is about. recognised: {kind, original_message_id, signed_outbox_id,
-- signed_recipient, signature_problem, recipients: [{address, final, action,
-- status, diagnostic, remote_mta, hard}]}; signed_outbox_id and
-- signed_recipient are what a signed envelope sender named, verified by the
-- receiver. Returns the recipients it recorded; why none is said in the
-- report's routing_error.
CREATE FUNCTION email_accounts.record_delivery_report(stored_message_id bigint, recognised jsonb)
RETURNS TABLE (reported_outbox_id bigint, reported_address text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stored email_accounts.message;
    sent_mail email_accounts.outbox;
    sending email_accounts.account;
    reported jsonb := coalesce(recognised->'recipients', '[]');
    signed_recipient text := lower(recognised->>'signed_recipient');
    named jsonb;
    outcome text;
    matched_address text;
    soft_failures bigint;
    recorded integer := 0;
    complaint boolean := recognised->>'kind' = 'complaint';
BEGIN
    SELECT * INTO stored FROM email_accounts.message WHERE message_id = stored_message_id;
    UPDATE email_accounts.message SET kind = CASE WHEN complaint THEN 'complaint' ELSE 'delivery_report' END
     WHERE message_id = stored_message_id;
    IF recognised->>'signature_problem' IS NOT NULL THEN
        UPDATE email_accounts.message
           SET routing_error = format('delivery report: %s', left(recognised->>'signature_problem', 255))
         WHERE message_id = stored_message_id;
        RETURN;
    END IF;
    -- Only mail sent through an account of the report's tenant: a report
    -- cannot touch another tenant's outbox. (Through the global default
    -- outgoing account, that is the mail of every tenant it sent for: its
    -- reports come back to its own mailbox, of no tenant.)
    IF signed_recipient IS NOT NULL THEN
        SELECT outbox.* INTO sent_mail
          FROM email_accounts.outbox JOIN email_accounts.account AS through ON through.account_id = outbox.account_id
         WHERE outbox.outbox_id = (recognised->>'signed_outbox_id')::bigint
           AND through.tenant IS NOT DISTINCT FROM stored.tenant;
    ELSE
        SELECT outbox.* INTO sent_mail
          FROM email_accounts.outbox JOIN email_accounts.account AS through ON through.account_id = outbox.account_id
         WHERE outbox.message_id = recognised->>'original_message_id'
           AND through.tenant IS NOT DISTINCT FROM stored.tenant;
    END IF;
    IF NOT FOUND THEN
        UPDATE email_accounts.message
           SET routing_error = CASE WHEN signed_recipient IS NOT NULL
                   THEN format('delivery report: outbox row %s of its signed envelope sender is gone', recognised->>'signed_outbox_id')
                   ELSE format('delivery report: no mail of this tenant has the Message-ID %s',
                               coalesce(left(recognised->>'original_message_id', 255), '(none returned)')) END
         WHERE message_id = stored_message_id;
        RETURN;
    END IF;
    SELECT * INTO sending FROM email_accounts.account WHERE account_id = sent_mail.account_id;
    -- Unsigned reports count only for an account that does not sign, and
    -- never across tenants (a tenant's mail through the global account).
    IF signed_recipient IS NULL AND (sending.signed_envelope_sender OR sent_mail.tenant IS DISTINCT FROM stored.tenant) THEN
        UPDATE email_accounts.message
           SET routing_error = CASE WHEN sending.signed_envelope_sender
                   THEN format('delivery report: account %s signs its envelope sender (signed_envelope_sender), and this report came back to no signed address',
                               quote_literal(sending.name))
                   ELSE format('delivery report: mail of tenant %s through account %s is matched only by a signed envelope sender (turn signed_envelope_sender on)',
                               quote_literal(sent_mail.tenant), quote_literal(sending.name)) END
         WHERE message_id = stored_message_id;
        RETURN;
    END IF;
    IF signed_recipient IS NOT NULL THEN
        -- Only the recipient the signature was made for: the report's entry
        -- for it, else its only entry (an alias the mail went on to), else
        -- (a complaint with the recipient redacted) the recipient itself.
        reported := coalesce(
            (SELECT jsonb_agg(entry) FROM jsonb_array_elements(reported) AS entry
              WHERE lower(entry->>'address') = signed_recipient OR lower(entry->>'final') = signed_recipient),
            CASE WHEN jsonb_array_length(reported) = 1 THEN jsonb_build_array(reported->0 || jsonb_build_object('address', signed_recipient))
                 WHEN complaint AND jsonb_array_length(reported) = 0 THEN jsonb_build_array(jsonb_build_object('address', signed_recipient))
                 ELSE '[]' END);
    ELSIF complaint AND jsonb_array_length(reported) = 0 THEN
        -- A complaint whose recipient is redacted, about mail to one recipient: that one.
        reported := coalesce((SELECT jsonb_agg(jsonb_build_object('address', only_one.address))
                                FROM email_accounts.outbox_recipient AS only_one
                               WHERE only_one.outbox_id = sent_mail.outbox_id
                              HAVING count(*) = 1), '[]');
    END IF;
    FOR named IN SELECT * FROM jsonb_array_elements(reported) LOOP
        outcome := CASE WHEN complaint THEN 'complained'
                        WHEN named->>'action' = 'delayed' THEN 'delayed'
                        WHEN named->>'action' = 'failed' AND (named->>'hard')::boolean THEN 'bounced'
                        WHEN named->>'action' = 'failed' THEN 'soft_bounce' END;
        CONTINUE WHEN outcome IS NULL;
        -- (Two recipients of one row may differ only in case, or be an alias and its target.)
        FOR matched_address IN
            UPDATE email_accounts.outbox_recipient AS recipient
               SET report = outcome, report_status = left(named->>'status', 16), report_diagnostic = left(named->>'diagnostic', 1000),
                   report_remote_mta = left(named->>'remote_mta', 255), reported_at = now(),
                   report_message_id = stored_message_id,
                   status = CASE outcome WHEN 'bounced' THEN 'bounced' WHEN 'complained' THEN 'complained' ELSE recipient.status END,
                   updated_at = now()
             WHERE recipient.outbox_id = sent_mail.outbox_id
               -- Only what the server took: a report never decides for pending or deferred recipients.
               AND recipient.status IN ('sent', 'bounced', 'complained')
               AND lower(recipient.address) IN (lower(named->>'address'), lower(named->>'final'))
               -- A late delay warning never hides a bounce or complaint recorded before.
               AND NOT (outcome IN ('delayed', 'soft_bounce') AND coalesce(recipient.report, '') IN ('bounced', 'complained'))
            RETURNING recipient.address
        LOOP
            recorded := recorded + 1;
            reported_outbox_id := sent_mail.outbox_id;
            reported_address := matched_address;
            RETURN NEXT;
            -- Not mailed again (for this tenant): complaints, and bounces that
            -- say the mailbox is gone (5.1.x, 5.2.1) — not policy, content or
            -- size refusals (5.7.x DMARC, 5.3.4, 5.2.2 full), which say nothing
            -- about the address.
            IF outcome = 'complained' OR (outcome = 'bounced' AND named->>'status' ~ '^5\.(1\.[0-9]{1,3}|2\.1)$') THEN
                INSERT INTO email_accounts.suppression (tenant, address, reason, outbox_id)
                VALUES (sent_mail.tenant, lower(matched_address), CASE outcome WHEN 'bounced' THEN 'bounce' ELSE 'complaint' END,
                        sent_mail.outbox_id)
                ON CONFLICT DO NOTHING;
            -- Soft failures (delays, 4.x.x, a full mailbox) suppress once the
            -- sending account's soft_bounce_limit of messages in soft_bounce_days had one.
            ELSIF sending.soft_bounce_limit IS NOT NULL
                  AND (outcome IN ('delayed', 'soft_bounce') OR named->>'status' = '5.2.2') THEN
                SELECT count(DISTINCT recipient.outbox_id) INTO soft_failures
                  FROM email_accounts.outbox_recipient AS recipient
                  JOIN email_accounts.outbox AS earlier ON earlier.outbox_id = recipient.outbox_id
                 WHERE lower(recipient.address) = lower(matched_address) AND recipient.report IS NOT NULL
                   AND recipient.reported_at > now() - make_interval(days => sending.soft_bounce_days)
                   AND (recipient.report IN ('delayed', 'soft_bounce') OR recipient.report_status = '5.2.2')
                   AND earlier.tenant IS NOT DISTINCT FROM sent_mail.tenant;
                IF soft_failures >= sending.soft_bounce_limit THEN
                    INSERT INTO email_accounts.suppression (tenant, address, reason, outbox_id)
                    VALUES (sent_mail.tenant, lower(matched_address), 'soft_bounce', sent_mail.outbox_id)
                    ON CONFLICT DO NOTHING;
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    -- The mail bounced when every recipient did.
    UPDATE email_accounts.outbox SET status = 'bounced'
     WHERE outbox.outbox_id = sent_mail.outbox_id AND outbox.status = 'sent'
       AND NOT EXISTS (SELECT FROM email_accounts.outbox_recipient AS recipient
                        WHERE recipient.outbox_id = sent_mail.outbox_id AND recipient.status <> 'bounced');
    IF recorded = 0 THEN
        UPDATE email_accounts.message
           SET routing_error = format('delivery report: it names no recipient of outbox row %s', sent_mail.outbox_id)
         WHERE message_id = stored_message_id;
    END IF;
END;
$$;

COMMENT ON COLUMN email_accounts.suppression.reason IS
  'Why: unsubscribed (by a link or List-Unsubscribe), bounce (the mailbox is gone: 5.1.x, 5.2.1), complaint (a feedback report), soft_bounce (soft_bounce_limit reached), or whatever a person entered.';
COMMENT ON COLUMN email_accounts.suppression.outbox_id IS 'The message whose unsubscribe link was used, or that bounced or was complained about, if any.';

COMMENT ON FUNCTION email_accounts.record_delivery_report(bigint, jsonb) IS
  'Used by the receiver: records a recognised delivery report or complaint (the stored message stored_message_id) on the outbox mail it is about — the row and recipient its verified signed envelope sender names, else the row whose Message-ID it returns — sent through an account of the report''s tenant: per recipient bounced / soft_bounce / delayed / complained with status code, diagnostic and remote MTA (a delay never replaces a bounce or complaint); bounces saying the mailbox is gone (5.1.x, 5.2.1) and complaints are added to suppression, soft failures once soft_bounce_limit is reached; the mail is bounced when every recipient is. Only signed reports count for an account with signed_envelope_sender, and for a tenant''s mail through the global default account. Returns the recipients it recorded.';

REVOKE EXECUTE ON FUNCTION email_accounts.record_delivery_report(bigint, jsonb) FROM PUBLIC;

-- Per account and day: what was sent, and what came back.
CREATE VIEW email_accounts.bounces WITH (security_invoker = true) AS
SELECT
    coalesce(account.name, outbox.account) AS account,
    outbox.tenant,
    outbox.sent_at::date AS day,
    count(*) AS sent,
    count(*) FILTER (WHERE recipient.report = 'bounced') AS hard_bounces,
    count(*) FILTER (WHERE recipient.report = 'soft_bounce') AS soft_bounces,
    count(*) FILTER (WHERE recipient.report = 'delayed') AS delayed,
    count(*) FILTER (WHERE recipient.report = 'complained') AS complaints,
    round(count(*) FILTER (WHERE recipient.report = 'bounced')::numeric / count(*), 4) AS bounce_rate
FROM email_accounts.outbox
JOIN email_accounts.outbox_recipient AS recipient USING (outbox_id)
LEFT JOIN email_accounts.account USING (account_id)
WHERE outbox.sent_at IS NOT NULL AND recipient.status IN ('sent', 'bounced', 'complained')
GROUP BY 1, 2, 3;

COMMENT ON VIEW email_accounts.bounces IS 'Recipients the server took, per sending account, tenant and day, and what came back for them (row-level security applies).';
COMMENT ON COLUMN email_accounts.bounces.day IS 'The day the mail was sent (the session''s time zone).';
COMMENT ON COLUMN email_accounts.bounces.sent IS 'Recipients the server accepted.';
COMMENT ON COLUMN email_accounts.bounces.hard_bounces IS 'Of them, bounced permanently (5.x.x).';
COMMENT ON COLUMN email_accounts.bounces.soft_bounces IS 'Failures reported with a 4.x.x code.';
COMMENT ON COLUMN email_accounts.bounces.delayed IS 'Delay warnings.';
COMMENT ON COLUMN email_accounts.bounces.complaints IS 'Spam complaints (feedback reports).';
COMMENT ON COLUMN email_accounts.bounces.bounce_rate IS 'hard_bounces / sent.';

GRANT SELECT ON email_accounts.bounces TO email_accounts_admin, email_accounts_sender;

-- Lets an address be mailed again (a DBA who knows the mailbox works now).
CREATE FUNCTION email_accounts.unsuppress(address text, tenant text DEFAULT NULL) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH removed AS (
        DELETE FROM email_accounts.suppression AS suppressed
         WHERE lower(suppressed.address) = lower(unsuppress.address)
           AND (unsuppress.tenant IS NULL OR suppressed.tenant IS NOT DISTINCT FROM unsuppress.tenant)
        RETURNING 1)
    SELECT count(*)::integer FROM removed;
END;

COMMENT ON FUNCTION email_accounts.unsuppress(text, text) IS
  'Removes an address from suppression (all tenants the caller may change, or the one named) so it is mailed again; returns how many entries it removed. Runs as the caller (email_accounts_admin: row-level security applies).';

REVOKE EXECUTE ON FUNCTION email_accounts.unsuppress(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.unsuppress(text, text) TO email_accounts_admin;

-- on_bounce_function is checked like on_receive_function (sql/account_settings.sql).
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

-- Turning automatic linking on, or naming an on_bounce_function, needs membership in the owner role (sql/account_settings.sql).
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

-- Email templates (sql/templates.sql).
-- What the tenant of mail being queued is, before its account is chosen:
-- the row's, else the caller's only tenant.
CREATE FUNCTION email_accounts.queuing_tenant(given text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bound_tenants text[];
BEGIN
    IF given IS NOT NULL THEN
        RETURN given;
    END IF;
    bound_tenants := email_accounts.current_tenants();
    IF cardinality(bound_tenants) = 1 AND bound_tenants[1] <> '*' THEN
        RETURN bound_tenants[1];
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.queuing_tenant(text) IS
  'The tenant of mail being queued: the one given, else the caller''s only tenant, else NULL.';

-- email_accounts.claim_on_insert (src/worker/new_mail.rs): the idle sender
-- a new outbox row is claimed for by its inserting transaction.
CREATE  FUNCTION "sender_for_new_mail"(
	"account_id" bigint /* i64 */
) RETURNS TABLE (
	"sender_process_id" INT,  /* i32 */
	"sender_started_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"lease_until" timestamp with time zone  /* TimestampWithTimeZone */
)
STRICT VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'sender_for_new_mail_wrapper';

CREATE  FUNCTION "claim_never_taken"(
	"sender_process_id" INT, /* i32 */
	"sender_started_at" timestamp with time zone, /* TimestampWithTimeZone */
	"outbox_id" bigint /* i64 */
) RETURNS bool /* bool */
STRICT VOLATILE PARALLEL SAFE COST 1000
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'claim_never_taken_wrapper';

COMMENT ON FUNCTION email_accounts.claim_never_taken(integer, timestamp with time zone, bigint) IS
  'Whether the outbox row with this id, claimed on insert for the sender process with this process id and start and without a claim token, was never taken by it (so its mail has not gone out): true when that sender started in this database since the last server start or crash restart and does not list the row as taken. A take writes nothing to the row; it lists it on the worker board while it holds the row''s lock, so an answer given under the row''s lock stays true. From the worker board; a role that is not a superuser gets true only for a row it can see claimed that way.';

COMMENT ON FUNCTION email_accounts.sender_for_new_mail(bigint) IS
  'One row or none: the idle sender worker a new outbox row of the given account is claimed for (its process id and start), and the claim''s lease. None unless email_accounts.claim_on_insert is on and a sender of this database has nothing to do; at most 10 rows of one transaction. Called by the outbox''s insert trigger; the sender is woken with the rows'' accounts ahead of the commit''s flush (it reads their settings meanwhile) and told at commit.';

-- src/worker/wake.rs: a change of sending settings, counted at commit.
CREATE  FUNCTION "settings_change_at_commit"() RETURNS void
STRICT VOLATILE PARALLEL UNSAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'settings_change_at_commit_wrapper';

COMMENT ON FUNCTION email_accounts.settings_change_at_commit() IS
  'Counts the current transaction as a change of sending settings from its commit until it ends: a sender does not use settings it read during another commit''s flush across it. Called by the statement triggers of the tables those settings come from.';

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

CREATE OR REPLACE FUNCTION email_accounts.outbox_before_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    header record;
    problem text;
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
    NEW.tenant := email_accounts.queuing_tenant(NEW.tenant);
    -- Mail made from a template (sql/templates.sql) is rendered now, in the
    -- caller's transaction: an error reaches the application at once. The
    -- tenant decides which template, so a named account settles it first.
    NEW.template_id := NULL;
    NEW.template_language := NULL;
    IF NEW.template IS NOT NULL THEN
        IF NEW.tenant IS NULL AND NEW.account IS NOT NULL THEN
            NEW.tenant := (SELECT min(account.tenant) FROM email_accounts.account WHERE account.name = NEW.account
                           HAVING count(*) = 1);
        END IF;
        NEW := email_accounts.apply_template(NEW);
    END IF;
    -- account_id is always chosen here, never taken from the row: the choice
    -- is of the row's tenant (or the global default), so an inserted row
    -- cannot point across tenants (updates are checked by outbox_check_update).
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
        -- A mailbox private to others (sql/mailbox_visibility.sql): said
        -- here, naming it, rather than by the row-level check's generic error.
        IF NEW.account_id = ANY (email_accounts.hidden_mailboxes()) THEN
            PERFORM email_accounts.raise_mailbox_hidden(NEW.account);
        END IF;
    END IF;

    NEW.attempts := 0;
    NEW.lease_until := NULL;
    NEW.claim_token := NULL;
    NEW.sender_process_id := NULL;
    NEW.sender_started_at := NULL;
    NEW.sent_at := NULL;
    NEW.next_attempt_at := greatest(NEW.send_after, now());
    IF NEW.account_id IS NULL THEN
        NEW.status := 'error';
        NEW.last_error := 'no account to send through: name one in account, or set default_outgoing on an account of the tenant or on one without tenant; then call email_accounts.retry()';
    ELSE
        NEW.status := 'queued';
        NEW.last_error := NULL;
        -- email_accounts.claim_on_insert: a row due now is claimed here for
        -- an idle sender (the attempt counted, without a token: the sender
        -- takes the row without writing to it). This transaction's commit
        -- makes the claim durable, so the sender needs no flush of its own
        -- before the wire.
        IF NEW.next_attempt_at <= now() AND (NEW.expires_at IS NULL OR NEW.expires_at > now()) THEN
            SELECT taker.sender_process_id, taker.sender_started_at, taker.lease_until
              INTO NEW.sender_process_id, NEW.sender_started_at, NEW.lease_until
              FROM email_accounts.sender_for_new_mail(NEW.account_id) AS taker;
            IF NEW.sender_process_id IS NOT NULL THEN
                NEW.status := 'sending';
                NEW.attempts := 1;
            END IF;
        END IF;
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

CREATE  FUNCTION "template_problem"(
	"subject" TEXT, /* Option < & str > */
	"body_text" TEXT, /* Option < & str > */
	"body_html" TEXT /* Option < & str > */
) RETURNS TEXT /* Option < String > */
IMMUTABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'template_problem_wrapper';
CREATE  FUNCTION "included_template_names"(
	"subject" TEXT, /* Option < & str > */
	"body_text" TEXT, /* Option < & str > */
	"body_html" TEXT /* Option < & str > */
) RETURNS TEXT[] /* Vec < String > */
IMMUTABLE PARALLEL SAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'included_template_names_wrapper';
CREATE  FUNCTION "render_chosen_template"(
	"template_id" bigint, /* i64 */
	"context" jsonb, /* JsonB */
	"language" TEXT, /* Option < & str > */
	"tenant" TEXT, /* Option < & str > */
	"template_name" TEXT /* & str */
) RETURNS TABLE (
	"subject" TEXT,  /* Option < String > */
	"body_text" TEXT,  /* Option < String > */
	"body_html" TEXT  /* Option < String > */
)
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'render_chosen_template_wrapper';
COMMENT ON FUNCTION email_accounts.template_problem(text, text, text) IS
  'Why a template''s subject, body_text and body_html do not compile (the part, line and error), or NULL; used when a template is saved.';
COMMENT ON FUNCTION email_accounts.included_template_names(text, text, text) IS
  'The templates a template''s parts name in {% include %}, {% import %}, {% from %} or {% extends %} with a literal name.';
COMMENT ON FUNCTION email_accounts.render_chosen_template(bigint, jsonb, text, text, text) IS
  'Renders the template row template_id over context in language, its includes chosen for tenant; raises 22023 naming template_name, the language, the part, line and missing variable. Compiled templates are kept per session until the row or an included one changes. Used by apply_template() and render_template().';

-- Email templates (issue 17): subject, text and HTML body in Jinja syntax,
-- one row per tenant, name and language, rendered when mail is queued (in
-- the caller's transaction) by send(template => …) or an INSERT INTO outbox
-- naming template, context and language. Rendering: src/api/templates.rs
-- and mail/src/template/.

CREATE TABLE email_accounts.template (
    template_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant       text,
    name         text NOT NULL
                 CONSTRAINT "template name must not be empty or contain | or control characters"
                 CHECK (name ~ '^[^|[:cntrl:]]+$' AND btrim(name) = name),
    language     text CONSTRAINT "language must be a BCP 47 tag such as pt-BR"
                 CHECK (language ~ '^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$'),
    subject      text CONSTRAINT "subject must be one line of at most 1000 bytes"
                 CHECK (subject !~ '[\r\n]' AND octet_length(subject) <= 1000),
    body_text    text CONSTRAINT "body_text must be at most 1 MB" CHECK (octet_length(body_text) <= 1048576),
    body_html    text CONSTRAINT "body_html must be at most 1 MB" CHECK (octet_length(body_html) <= 1048576),
    attachments  email_accounts.attachment[] NOT NULL DEFAULT '{}',
    account      text,
    description  text,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT "a template needs a subject, body_text or body_html"
        CHECK (subject IS NOT NULL OR body_text IS NOT NULL OR body_html IS NOT NULL)
);

CREATE UNIQUE INDEX "one template per tenant, name and language"
    ON email_accounts.template (tenant, name, lower(language)) NULLS NOT DISTINCT;
CREATE INDEX template_by_name ON email_accounts.template (name);

COMMENT ON TABLE email_accounts.template IS
  'Mail templates in Jinja syntax (minijinja): rendered over a JSON context when mail naming them is queued. One row per tenant, name and language; a tenant''s own template comes before the shared one (tenant NULL), and pt-BR falls back to pt, then to the row without language. email_accounts_admin manages the templates of its tenants, senders read them.';
COMMENT ON COLUMN email_accounts.template.template_id IS 'Surrogate key.';
COMMENT ON COLUMN email_accounts.template.tenant IS 'The tenant whose mail uses it; NULL: shared by every tenant (changed only by roles bound to every tenant).';
COMMENT ON COLUMN email_accounts.template.name IS 'What send(template => …) and {% include ''…'' %} name it by.';
COMMENT ON COLUMN email_accounts.template.language IS 'BCP 47 language tag (pt-BR, de); NULL: the default, used when no row of the wanted language or its base language exists. Dates and numbers are formatted for the language the mail asks for.';
COMMENT ON COLUMN email_accounts.template.subject IS 'The subject (one line after rendering).';
COMMENT ON COLUMN email_accounts.template.body_text IS 'The plain-text body; not escaped.';
COMMENT ON COLUMN email_accounts.template.body_html IS 'The HTML body; every {{ value }} is HTML-escaped (|safe to opt out).';
COMMENT ON COLUMN email_accounts.template.attachments IS 'Files attached to every mail made from it, before the mail''s own.';
COMMENT ON COLUMN email_accounts.template.account IS 'The account mail from it is sent through when the mail names none.';
COMMENT ON COLUMN email_accounts.template.description IS 'What the template is for.';
COMMENT ON COLUMN email_accounts.template.updated_at IS 'When the row last changed.';

-- Saving checks the syntax of every part and that the templates it includes
-- exist (for its tenant, or shared), raising 22023 with the part and line.
CREATE FUNCTION email_accounts.template_before_write() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    problem text;
    included text;
    position integer;
BEGIN
    problem := email_accounts.template_problem(NEW.subject, NEW.body_text, NEW.body_html);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'template %: %', quote_literal(NEW.name), problem
            USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template',
                  COLUMN = coalesce(substring(problem from '(subject|body_text|body_html)'), 'body_text');
    END IF;
    FOREACH included IN ARRAY email_accounts.included_template_names(NEW.subject, NEW.body_text, NEW.body_html) LOOP
        IF included = NEW.name THEN
            RAISE EXCEPTION 'template %: it includes itself', quote_literal(NEW.name)
                USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template';
        END IF;
        IF NOT EXISTS (SELECT FROM email_accounts.template
                        WHERE template.name = included AND (template.tenant IS NULL OR template.tenant = NEW.tenant)) THEN
            RAISE EXCEPTION 'template %: it includes template %, which does not exist for its tenant', quote_literal(NEW.name), quote_literal(included)
                USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template',
                      HINT = 'Create the included template first (a shared template may include only shared ones).';
        END IF;
    END LOOP;
    FOR position IN 1 .. coalesce(cardinality(NEW.attachments), 0) LOOP
        IF NEW.attachments[position].filename IS NULL OR btrim(NEW.attachments[position].filename) = ''
           OR NEW.attachments[position].filename ~ '[\r\n]' OR NEW.attachments[position].content IS NULL
           OR NEW.attachments[position].content_id ~ '[<>\r\n]' THEN
            RAISE EXCEPTION 'template %: attachment % needs a filename (one line) and content, and a content_id without <, > or line breaks', quote_literal(NEW.name), position
                USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'template', COLUMN = 'attachments';
        END IF;
    END LOOP;
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.template_before_write() IS
  'Trigger: refuses a template whose parts do not compile or that includes a template its tenant does not have (22023, naming the part and line), and sets updated_at.';

CREATE TRIGGER check_template BEFORE INSERT OR UPDATE ON email_accounts.template
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.template_before_write();

-- The row a name stands for: the tenant's own before the shared one; the
-- wanted language, then its base languages (pt-BR, pt), then the row
-- without language. Runs as the caller: row-level security applies.
CREATE FUNCTION email_accounts.choose_template(wanted_tenant text, wanted_name text, wanted_language text)
RETURNS email_accounts.template
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    SELECT template.*
      FROM email_accounts.template
     WHERE template.name = wanted_name
       AND (template.tenant = wanted_tenant OR template.tenant IS NULL)
       AND (template.language IS NULL
            OR lower(wanted_language) = lower(template.language)
            OR lower(wanted_language) LIKE lower(template.language) || '-%')
     ORDER BY template.tenant IS NULL, template.language IS NULL, length(template.language) DESC
     LIMIT 1;
END;

COMMENT ON FUNCTION email_accounts.choose_template(text, text, text) IS
  'The template row wanted_name stands for, for wanted_tenant in wanted_language: the tenant''s own before the shared one, the language, then its base languages (pt-BR → pt), then the default (language NULL). All NULL when there is none. Runs as the caller.';

-- Fills a new outbox row from its template (called by outbox_before_insert):
-- subject, body_text and body_html the row leaves empty, the account it
-- names none of, and template_language.
CREATE FUNCTION email_accounts.apply_template(queued email_accounts.outbox) RETURNS email_accounts.outbox
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.template;
    rendered record;
BEGIN
    chosen := email_accounts.choose_template(queued.tenant, queued.template, queued.language);
    IF chosen.template_id IS NULL THEN
        RAISE EXCEPTION 'template: there is no template % for tenant %', quote_literal(queued.template), coalesce(quote_literal(queued.tenant), '(none)')
            USING ERRCODE = 'invalid_parameter_value', SCHEMA = 'email_accounts', TABLE = 'outbox', COLUMN = 'template';
    END IF;
    SELECT * INTO rendered
      FROM email_accounts.render_chosen_template(chosen.template_id, coalesce(queued.context, '{}'), queued.language,
                                                 queued.tenant, queued.template);
    IF coalesce(queued.subject, '') = '' THEN
        queued.subject := coalesce(rendered.subject, '');
    END IF;
    queued.body_text := coalesce(queued.body_text, rendered.body_text);
    queued.body_html := coalesce(queued.body_html, rendered.body_html);
    queued.account := coalesce(queued.account, chosen.account);
    queued.template_id := chosen.template_id;
    queued.template_language := chosen.language;
    RETURN queued;
END;
$$;

COMMENT ON FUNCTION email_accounts.apply_template(email_accounts.outbox) IS
  'Renders the template a new outbox row names (choose_template(), then render_chosen_template()) into the parts the row leaves empty; raises 22023 naming the template, language, part, line and missing variable.';

-- Template attachments go first, positions 1…n (send() puts the mail's own after them).
CREATE FUNCTION email_accounts.attach_template_files() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO email_accounts.outbox_attachment (outbox_id, position, filename, content_type, content, content_id)
    SELECT NEW.outbox_id, file.position, file.filename, coalesce(file.content_type, 'application/octet-stream'), file.content,
           file.content_id
      FROM email_accounts.template,
           unnest(template.attachments) WITH ORDINALITY AS file (filename, content_type, content, content_id, position)
     WHERE template.template_id = NEW.template_id;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.attach_template_files() IS
  'Trigger: copies the attachments of the template a new outbox row was rendered from (positions 1…n), so a retry sends the same bytes.';

-- Previewing in psql.
CREATE FUNCTION email_accounts.render_template(name text, context jsonb DEFAULT '{}', language text DEFAULT NULL,
                                               tenant text DEFAULT NULL)
RETURNS TABLE (subject text, body_text text, body_html text, template_language text, template_tenant text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.template;
    wanted_tenant text := email_accounts.queuing_tenant(render_template.tenant);
BEGIN
    chosen := email_accounts.choose_template(wanted_tenant, render_template.name, render_template.language);
    IF chosen.template_id IS NULL THEN
        RAISE EXCEPTION 'there is no template % for tenant %', quote_literal(render_template.name), coalesce(quote_literal(wanted_tenant), '(none)')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN QUERY
    SELECT rendered.subject, rendered.body_text, rendered.body_html, chosen.language, chosen.tenant
      FROM email_accounts.render_chosen_template(chosen.template_id, coalesce(render_template.context, '{}'),
                                                 render_template.language, wanted_tenant, render_template.name) AS rendered;
END;
$$;

COMMENT ON FUNCTION email_accounts.render_template(text, jsonb, text, text) IS
  'Renders a template as mail queued now would be (for previewing): subject, body_text, body_html, and which row was used (its language and tenant). tenant: for roles that see several (default: the caller''s only tenant). Runs as the caller.';

ALTER TABLE email_accounts.outbox
    ADD COLUMN template text,
    ADD COLUMN context jsonb,
    ADD COLUMN language text CONSTRAINT "outbox language must be a BCP 47 tag such as pt-BR"
                             CHECK (language ~ '^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$'),
    ADD COLUMN template_language text,
    ADD COLUMN template_id bigint;

COMMENT ON COLUMN email_accounts.outbox.template IS 'The template the mail was made from (set on insert: subject and bodies the row leaves empty are rendered from it, and kept, so a retry sends the same text).';
COMMENT ON COLUMN email_accounts.outbox.context IS 'The JSON object the template was rendered over.';
COMMENT ON COLUMN email_accounts.outbox.language IS 'The language the mail was asked for in (BCP 47): picks the template row and formats dates and numbers.';
COMMENT ON COLUMN email_accounts.outbox.template_language IS 'The language of the template row used (NULL: its default row).';
COMMENT ON COLUMN email_accounts.outbox.template_id IS 'The template row used (set on insert; the row may since have changed or gone).';

CREATE TRIGGER attach_template_files AFTER INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.template_id IS NOT NULL AND NOT email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.attach_template_files();

ALTER TABLE email_accounts.template ENABLE ROW LEVEL SECURITY;
-- Shared templates: for roles bound to some tenant (a role bound to none sees nothing).
CREATE POLICY readable ON email_accounts.template FOR SELECT
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants()))
           OR (tenant IS NULL AND cardinality((SELECT email_accounts.current_tenants())) > 0));
CREATE POLICY tenant_rows ON email_accounts.template
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())));
GRANT SELECT ON email_accounts.template TO email_accounts_sender, email_accounts_admin;
GRANT INSERT, UPDATE, DELETE ON email_accounts.template TO email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.render_chosen_template(bigint, jsonb, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.render_chosen_template(bigint, jsonb, text, text, text)
    TO email_accounts_sender, email_accounts_admin;
-- Compiling is for saving templates (the trigger runs as the one saving).
REVOKE EXECUTE ON FUNCTION email_accounts.template_problem(text, text, text),
                          email_accounts.included_template_names(text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.template_problem(text, text, text),
                          email_accounts.included_template_names(text, text, text) TO email_accounts_admin;
REVOKE EXECUTE ON FUNCTION email_accounts.render_template(text, jsonb, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.render_template(text, jsonb, text, text) TO email_accounts_sender, email_accounts_admin;

SELECT pg_catalog.pg_extension_config_dump('email_accounts.template', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.template_template_id_seq', '');

-- A restore's first template rows hold the workers off too (sql/restore.sql).
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.template
    FOR EACH STATEMENT WHEN (email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.hold_workers_during_restore();

-- The automatic reply may be made from a template (sql/inbox_routing.sql).
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
        -- From a template, its own subject (reply_subject is in the context).
        subject => CASE WHEN settings.auto_reply_template IS NULL
                          OR (email_accounts.choose_template(incoming.tenant, settings.auto_reply_template, NULL)).subject IS NULL
                        THEN reply_subject END,
        body_text => CASE WHEN settings.auto_reply_template IS NULL THEN settings.auto_reply_message END,
        template => settings.auto_reply_template,
        context => CASE WHEN settings.auto_reply_template IS NOT NULL THEN
                       jsonb_build_object('from', incoming.from_address,
                                          'subject', incoming.subject, 'reply_subject', reply_subject,
                                          'received_at', incoming.received_at, 'account', settings.name,
                                          'account_address', settings.address) END,
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

-- Deleting outbox rows sets these references to NULL: without indexes, each
-- deleted row read every message and suppression (sql/inbox.sql, sql/suppression.sql).
CREATE INDEX message_auto_reply_outbox ON email_accounts.message (auto_reply_outbox_id) WHERE auto_reply_outbox_id IS NOT NULL;
CREATE INDEX suppression_outbox ON email_accounts.suppression (outbox_id) WHERE outbox_id IS NOT NULL;

-- (The workers of the new library wait for this update; the library's
-- utility hook wakes them when it commits.)

-- Issue 18: one launcher serves every database; worker_status() names each worker's database.
DROP FUNCTION email_accounts.worker_status();
CREATE  FUNCTION email_accounts."worker_status"() RETURNS TABLE (
	"database" TEXT,  /* Option < String > */
	"role" TEXT,  /* String */
	"worker_name" TEXT,  /* String */
	"pid" INT,  /* Option < i32 > */
	"state" TEXT,  /* String */
	"started_at" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"config_reloads" bigint,  /* i64 */
	"fallback_poll_interval_ms" bigint,  /* i64 */
	"wake_requests" bigint,  /* i64 */
	"latch_wakeups" bigint,  /* i64 */
	"timeouts" bigint  /* i64 */
)
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'worker_status_wrapper';

COMMENT ON FUNCTION email_accounts.worker_status() IS
  'One row per background worker: the launcher (database NULL), then the receiver and senders of this database (listed before they start), then (for superusers and pg_monitor members) those of every other database the launcher serves; each with its process id, what it is doing, when it started, configuration reloads, the fallback poll interval in use, wake-up requests (one per committing transaction that queued mail, flush(), sync_now()), wake-ups by its latch (those requests and PostgreSQL''s own signals) and by timeout. Read from shared memory.';

-- Issue 18: a copy of a database does not send or receive the original's mail (sql/home.sql).
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

-- Issue 19: who may read a mailbox (sql/mailbox_visibility.sql, sql/security.sql).

-- Runs as the caller (current_user, so after SET ROLE the role set), under
-- the account table's own row-level security: accounts of tenants it cannot
-- see are not listed, their rows are hidden by the tenant check already.
-- Called once per query, as (SELECT email_accounts.hidden_mailboxes()).
-- PL/pgSQL for its kept plan (see tenants_of() in sql/tenants.sql).
CREATE FUNCTION email_accounts.hidden_mailboxes() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(account.account_id ORDER BY account.account_id), '{}')
          FROM email_accounts.account
         WHERE account.visibility <> 'tenant'
           AND NOT coalesce(pg_has_role(current_user, to_regrole('email_accounts_admin'), 'MEMBER'), false)
           AND NOT coalesce(pg_has_role(current_user, to_regrole(quote_ident(account.owner_role)), 'MEMBER'), false)
           AND NOT (account.visibility = 'shared'
                    AND EXISTS (SELECT FROM unnest(account.shared_with) AS reader (role_name)
                                 WHERE coalesce(pg_has_role(current_user, to_regrole(quote_ident(reader.role_name)), 'MEMBER'), false))));
END;
$$;

COMMENT ON FUNCTION email_accounts.hidden_mailboxes() IS
  'The accounts of the current role''s tenants whose mail it may not see or send: visibility private or shared, and it is neither a member of owner_role, nor (for shared) of a role in shared_with, nor of email_accounts_admin. Superusers see everything (row-level security does not apply to them).';

-- The error send() and sync_now() give, naming the account (anyone may
-- raise it: it says nothing the caller cannot see).
CREATE FUNCTION email_accounts.raise_mailbox_hidden(account_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'account %: its mail is private to the members of its owner role (and the roles it is shared with)', quote_literal(account_name)
        USING ERRCODE = 'insufficient_privilege', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = 'visibility',
              HINT = 'Send through another account, or ask an email_accounts admin to share it (visibility, shared_with).';
END;
$$;

COMMENT ON FUNCTION email_accounts.raise_mailbox_hidden(text) IS
  'Raises insufficient_privilege (42501) naming an account whose visibility excludes the current role.';

DROP POLICY tenant_rows ON email_accounts.outbox;
DROP POLICY tenant_rows ON email_accounts.message;
DROP POLICY rows_of_visible_accounts ON email_accounts.sync_state;
CREATE POLICY rows_of_visible_mailboxes ON email_accounts.outbox
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants()))
           AND (account_id IS NULL OR account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[])))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants()))
                AND (account_id IS NULL OR account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[])));
CREATE POLICY rows_of_visible_mailboxes ON email_accounts.message
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())) AND account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[]));
CREATE POLICY rows_of_visible_mailboxes ON email_accounts.sync_state
    USING (EXISTS (SELECT FROM email_accounts.account WHERE account.account_id = sync_state.account_id)
           AND account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[]));

CREATE OR REPLACE VIEW email_accounts.sync_status WITH (security_invoker = true) AS
SELECT settings.name AS account,
       settings.incoming_protocol AS protocol,
       folders.folder,
       CASE
           WHEN NOT settings.enable_incoming THEN 'disabled'
           WHEN NOT settings.ready_to_receive THEN 'awaiting password'
           WHEN state.last_sync_at IS NULL THEN 'never synced'
           WHEN state.last_error IS NOT NULL THEN 'failing'
           ELSE 'ok'
       END AS state,
       state.last_sync_at,
       state.last_success_at,
       state.last_new_messages,
       state.messages_stored,
       state.consecutive_failures,
       state.last_error_kind,
       state.last_error,
       state.next_attempt_at,
       state.uidvalidity,
       state.last_uid,
       settings.account_id
  FROM email_accounts.account_settings AS settings
 CROSS JOIN LATERAL unnest(settings.folders) AS folders(folder)
  LEFT JOIN email_accounts.sync_state AS state ON state.account_id = settings.account_id AND state.folder = folders.folder
 WHERE settings.enable_incoming
   AND settings.account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[])
 ORDER BY settings.name, folders.folder;

COMMENT ON VIEW email_accounts.sync_status IS 'One row per incoming account and folder (of the mailboxes whose mail the role sees, see account.visibility): ok, failing (with why), never synced or awaiting password; when it last synced and tries next.';

COMMENT ON COLUMN email_accounts.sync_status.account_id IS 'The account (names are unique only per tenant).';

-- Issue 19: the effective settings say what each side signs in with (sql/account_settings.sql).
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

-- Issue 19: set_password(side => both | incoming | smtp) (src/api/password.rs).
DROP FUNCTION email_accounts.set_password(text, text, text);
CREATE FUNCTION email_accounts."set_password"(
	"account" TEXT, /* & str */
	"password" TEXT, /* & str */
	"tenant" TEXT DEFAULT NULL, /* Option < & str > */
	"side" TEXT DEFAULT 'both' /* & str */
) RETURNS void
VOLATILE PARALLEL UNSAFE
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'set_password_of_side_wrapper';

COMMENT ON FUNCTION email_accounts.set_password(text, text, text, text) IS
  'Stores the password of an account (by name; in tenant, when names are ambiguous) for side both (the default), incoming (IMAP/POP3 and the Sent folder copy) or smtp, encrypted with AES-256-GCM under the current key of the key file email_accounts.keys and bound to the account''s current servers; ends awaiting_password. The other side''s password is left as it is. Callable by superusers, members of the account''s owner_role, and email_accounts_admin members bound to the account''s tenant, judged for the current role (also inside security-restricted code). Pass the password as a bind parameter so it never appears in query text.';

-- Issue 19: a private or shared account's outbox rows go with it (sql/account_settings.sql).
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

CREATE TRIGGER keep_private_mail_private BEFORE DELETE ON email_accounts.account
    FOR EACH ROW EXECUTE FUNCTION email_accounts.account_keeps_private_mail_private();

-- Issue 19: replies link only to mail their readers may see (sql/inbox_routing.sql).
-- A reply in one mailbox may point at mail of another (reply_to_outbox_id,
-- reply_to_message_id, and the reference it copies) only when whoever sees
-- the reply sees that mail too: the same account, an account the whole
-- tenant sees, or a private mailbox's own owner role receiving it privately.
CREATE FUNCTION email_accounts.mail_may_be_linked(original_account_id bigint, reply_account_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN original_account_id IS NULL
        OR original_account_id = reply_account_id
        OR EXISTS (SELECT FROM email_accounts.account AS original
                    WHERE original.account_id = original_account_id
                      AND (original.visibility = 'tenant'
                           OR EXISTS (SELECT FROM email_accounts.account AS reply
                                       WHERE reply.account_id = reply_account_id AND reply.visibility = 'private'
                                         AND reply.owner_role = original.owner_role)));
END;
$$;

COMMENT ON FUNCTION email_accounts.mail_may_be_linked(bigint, bigint) IS
  'Whether a message received by one account may be linked to mail of another: no account, the same one, one of visibility tenant, or a private reply mailbox of the same owner_role (whoever sees the reply sees the original).';

REVOKE EXECUTE ON FUNCTION email_accounts.mail_may_be_linked(bigint, bigint) FROM PUBLIC;

-- Links a message to the mail it answers, found in one look-up: In-Reply-To
-- first, then the References from the newest; for each id an outbox mail
-- before an earlier incoming message. Only within the message's tenant, and
-- only to mail that everyone who sees this message may see too (see
-- mail_may_be_linked()). Returns whether it linked.
CREATE OR REPLACE FUNCTION email_accounts.link_reply(linked_message_id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    incoming email_accounts.message;
    answered record;
BEGIN
    SELECT * INTO incoming FROM email_accounts.message WHERE message_id = linked_message_id;
    SELECT found.* INTO answered
      FROM (SELECT incoming.in_reply_to AS id, 0 AS rank
            UNION ALL
            SELECT reference, position FROM unnest(incoming."references") WITH ORDINALITY AS refs(reference, position)
           ) AS ids
     CROSS JOIN LATERAL (
            SELECT 0 AS source, outbox.outbox_id, NULL::bigint AS message_id, outbox.reference_table, outbox.reference_id
              FROM email_accounts.outbox
             WHERE outbox.message_id = ids.id AND outbox.tenant IS NOT DISTINCT FROM incoming.tenant
               AND email_accounts.mail_may_be_linked(outbox.account_id, incoming.account_id)
            UNION ALL
            -- (The messages with that Message-ID found first, then the
            -- earliest of them: ordered in one query, a plan made while the
            -- inbox looked empty could walk its whole primary key instead.)
            (SELECT 1, NULL, earlier.message_id, earlier.reference_table, earlier.reference_id
               FROM (SELECT same.message_id, same.reference_table, same.reference_id
                       FROM email_accounts.message AS same
                      WHERE same.internet_message_id = ids.id AND same.message_id <> linked_message_id
                        AND same.tenant IS NOT DISTINCT FROM incoming.tenant
                        AND email_accounts.mail_may_be_linked(same.account_id, incoming.account_id)
                     OFFSET 0) AS earlier
              ORDER BY earlier.message_id
              LIMIT 1)
           ) AS found
     WHERE ids.id IS NOT NULL
     ORDER BY ids.rank = 0 DESC, ids.rank DESC, found.source
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE email_accounts.message
       SET reply_to_outbox_id = answered.outbox_id,
           reply_to_message_id = answered.message_id,
           reference_table = coalesce(answered.reference_table, message.reference_table),
           reference_id = CASE WHEN answered.reference_table IS NOT NULL THEN answered.reference_id ELSE message.reference_id END
     WHERE message_id = linked_message_id;
    RETURN true;
END;
$$;

COMMENT ON FUNCTION email_accounts.link_reply(bigint) IS
  'Links an incoming message to the mail it answers (In-Reply-To, else References newest first; outbox mail before earlier incoming messages; same tenant only, and not to mail of a mailbox private to others than those who see this one) and copies that mail''s reference_table/reference_id. Returns whether a link was found.';

-- Issue 19 (sql/security.sql).
-- A suppression that mail of a mailbox private to others caused does not
-- show whom that mailbox wrote to (the sender still honours it).
CREATE POLICY rows_of_visible_mail ON email_accounts.suppression AS RESTRICTIVE FOR SELECT
    USING (outbox_id IS NULL OR EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = suppression.outbox_id));
REVOKE EXECUTE ON FUNCTION email_accounts.password_bound_elsewhere(bigint) FROM PUBLIC;

-- Row-level security evaluates the caller's tenants once per query, not once
-- per row (sql/tenants.sql, sql/security.sql): 20,000 suppressions read by a
-- role with 21 bindings took 2.8 s.
CREATE OR REPLACE FUNCTION email_accounts.tenant_is_among(tenant text, tenants text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN tenants OPERATOR(pg_catalog.&&) ARRAY['*', tenant];
ALTER POLICY tenant_rows ON email_accounts.account
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())));
ALTER POLICY tenant_rows ON email_accounts.suppression
    USING (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())))
    WITH CHECK (email_accounts.tenant_is_among(tenant, (SELECT email_accounts.current_tenants())));
COMMENT ON FUNCTION email_accounts.tenant_is_visible(text) IS
  'True when the current role may see rows of this tenant: it is bound to it or to *; a role bound to no tenant sees nothing. The row-level security policies ask the same with the role''s tenants looked up once per query.';

-- The tenants a role is bound to. Evaluated for an explicit role because
-- SECURITY DEFINER code (set_password, the workers) asks on a caller's
-- behalf. A superuser counts as bound to '*' (row-level security never
-- applies to it anyway); pg_has_role would otherwise make it a member of
-- every bound role. PL/pgSQL, as is current_tenants(): PostgreSQL 15 plans
-- the body of an SQL function that reads a table afresh wherever a query
-- starts it, so every policy check and every row a tenant's role queued
-- planned both (0.3 ms each, six times per INSERT into the outbox);
-- PL/pgSQL keeps its plans for the session.
CREATE OR REPLACE FUNCTION email_accounts.tenants_of(member oid) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT role.rolsuper FROM pg_roles AS role WHERE role.oid = member) THEN
        RETURN ARRAY['*'];
    END IF;
    RETURN (SELECT coalesce(array_agg(DISTINCT binding.tenant ORDER BY binding.tenant), '{}')
              FROM email_accounts.tenant_member AS binding
             WHERE coalesce(pg_has_role(member, to_regrole(quote_ident(binding.role_name)), 'MEMBER'), false));
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.current_tenants() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN email_accounts.tenants_of((SELECT role.oid FROM pg_roles AS role WHERE role.rolname = current_user));
END;
$$;

-- Choosing an outbox row's account by name or by the sender's address, and
-- the few accounts not visible to their whole tenant (hidden_mailboxes(),
-- on every send): probes rather than reads of every account.
CREATE INDEX account_name ON email_accounts.account (name);
CREATE INDEX account_address ON email_accounts.account (lower(address));
CREATE INDEX account_private_or_shared ON email_accounts.account (account_id) WHERE visibility <> 'tenant';
-- The automatic replies an account sent (auto_reply() looks for one to the
-- same sender within auto_reply_interval, for every message it answers).
CREATE INDEX outbox_auto_replies ON email_accounts.outbox (account_id, created_at)
    WHERE (headers ->> 'Auto-Submitted') = 'auto-replied';

-- Issue 18: room for HOT updates of recipients' statuses (sql/outbox.sql).
-- Room on each page for the status a delivery writes: the update stays on the
-- page without a new index entry (HOT). Measured in a drain of 60,000: 272 →
-- 197 bytes of WAL and 13.5 → 12.4 µs per recipient for recording the answers.
-- Half the page, not 70 %: a round records every recipient of a page in one
-- transaction, whose old versions cannot be pruned before it commits, so the
-- page needs room for a second version of each row. With 70 % a third of
-- the recordings went to another page, each with a row lock and an index
-- entry (pg_waldump of a drain of 20,000: 0.64 → 0.97 of them HOT, WAL
-- records of the drain −7 %, bytes −10 %).
ALTER TABLE email_accounts.outbox_recipient SET (fillfactor = 50);

-- Issue 18: room for the recording's new version of an outbox row (sql/outbox.sql).
-- Room on each page for the recording's new version of every row there: it
-- is not HOT (status is indexed), but on the row's own page PostgreSQL
-- neither locks the row once more while it looks for room elsewhere nor
-- dirties a second page, and logs only the changed middle of the row. A
-- round records a page's rows in one transaction, whose old versions cannot
-- be pruned before it commits: half the page (as outbox_recipient). Drains
-- of 20,000, four alternated pairs: row locks 1.8 → 1.0 a message, WAL
-- 1,289 → 1,022 bytes, 21,346 → 23,195 msg/s (medians); 70 left 0.3 of
-- the page moves. Bodies and headers past ~2 KB live in the TOAST table,
-- which this does not touch: 5,000 rows of 2 KB bodies take 11.2 → 12.8 MB
-- in all (heap 1.45 → 3.01 MB).
ALTER TABLE email_accounts.outbox SET (fillfactor = 50);

-- Issue 18: claims by the time their lease lapses (sql/outbox.sql).
-- The rows out for delivery and when their claim's lease lapses: the
-- sender's sleep looks for the first, the lapsed-claim pass for those past
-- it (both had probed every account: 9 ms a look with 5,000 accounts).
-- Only a claim's row version has an entry; the recording's does not.
CREATE INDEX outbox_sending ON email_accounts.outbox (account_id, lease_until) WHERE status = 'sending';

-- Issue 18: an account's rows by status and what it sent, in one index
-- (sql/outbox.sql).
-- An account's rows (its deletion sets their account_id NULL), by status,
-- and what it sent in the last day (rate limits count it in sent_at order).
-- One index for both: recording a delivery writes the row anew in every
-- index its version belongs to (status is indexed: never HOT), and a
-- second index with sent rows cost the sender ~4-9 µs a message (drains
-- of 20,000 alternated in one cluster: 12,145 → 13,293 msg/s).
DROP INDEX email_accounts.outbox_account_status;
DROP INDEX email_accounts.outbox_account_sent_at;
CREATE INDEX outbox_account_status_sent_at ON email_accounts.outbox (account_id, status, sent_at);

-- Issue 18: a row claimed on insert and not yet taken by its sender can be
-- cancelled (sql/outbox_queue.sql, sql/outbox_admin.sql), and a sent row
-- keeps its account (the rate limits count it there). The checks run after
-- the update: the outbox has no BEFORE UPDATE row trigger left.
DROP TRIGGER check_account ON email_accounts.outbox;
DROP FUNCTION email_accounts.outbox_before_update();
CREATE FUNCTION email_accounts.outbox_check_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.account_id IS DISTINCT FROM OLD.account_id OR NEW.tenant IS DISTINCT FROM OLD.tenant
       OR (NEW.status IN ('queued', 'retry') AND NEW.status IS DISTINCT FROM OLD.status) THEN
        PERFORM email_accounts.check_outbox_account(NEW.tenant, NEW.account_id);
    END IF;
    -- (Mail that went out stays with the account it went through: the rate
    -- limits count it there. Re-pointed at the global default, a tenant's
    -- sent rows would use up that account's limits for every tenant. An
    -- account's deletion clears it as the table's owner, past this check.)
    IF NEW.account_id IS DISTINCT FROM OLD.account_id AND OLD.status IN ('sent', 'bounced') THEN
        PERFORM email_accounts.raise_outbox_error('account_id',
            format('a row that was %s keeps the account it went through', OLD.status),
            'insufficient_privilege');
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT (NEW.status = 'cancelled' AND OLD.status IN ('queued', 'retry', 'error'))
       -- (Claimed on insert, not yet taken by its sender: see cancel().)
       AND NOT (NEW.status = 'cancelled' AND OLD.status = 'sending' AND OLD.claim_token IS NULL AND NEW.claim_token IS NULL
                AND email_accounts.claim_never_taken(OLD.sender_process_id, OLD.sender_started_at, OLD.outbox_id) IS TRUE)
       AND NOT (NEW.status IN ('queued', 'error') AND OLD.status IN ('retry', 'failed', 'expired', 'cancelled', 'error')) THEN
        PERFORM email_accounts.raise_outbox_error('status',
            format('a row that is %s cannot be made %s: only cancel() and retry() moves are allowed (queued, retry or error to cancelled, and sending to cancelled before its sender took it; retry, failed, expired, cancelled or error to queued)',
                   OLD.status, NEW.status),
            'insufficient_privilege');
    END IF;
    -- (Claimed by the sender: its status is the sender's until recorded.)
    IF NEW.status IS DISTINCT FROM OLD.status AND email_accounts.being_sent(OLD.outbox_id) THEN
        PERFORM email_accounts.raise_outbox_error('status',
            format('a row that is being sent cannot be made %s: its sender records what the server answered', NEW.status),
            'insufficient_privilege');
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_check_update() IS
  'Trigger (for roles other than superusers, the sender among them): an outbox row''s account stays one of its tenant (or the global default) when the row is changed, a sent or bounced row keeps the account it went through, and its status moves only as cancel() and retry() move it (42501).';

-- The outbox has no BEFORE UPDATE row trigger: with one, PostgreSQL locks
-- every row an UPDATE writes once more before looking at the trigger's WHEN
-- (GetTupleForTrigger), the sender's recording of every delivery included.
-- Its checks run AFTER the update instead (the statement is undone all the
-- same), and what rewrote the row for an application's update is a second,
-- rare UPDATE of that row. Drains of 20,000, four alternated pairs in one
-- cluster: row locks 2.8 → 1.7 a message, WAL 14.1 → 13.0 records and
-- 1,342 → 1,244 bytes, 22,156 → 23,973 msg/s (medians).
-- Not for superusers (the sender worker among them): the current user, not
-- the is_superuser setting, which is the session's, also while a tenant's
-- routing code runs as its owner role inside the worker. Only for rows
-- whose account, tenant or status changed (all it checks): an AFTER
-- trigger's event is kept in memory until the statement ends.
CREATE TRIGGER check_account AFTER UPDATE ON email_accounts.outbox
    FOR EACH ROW WHEN (NOT email_accounts.current_user_is_superuser()
                       AND (OLD.account_id IS DISTINCT FROM NEW.account_id OR OLD.tenant IS DISTINCT FROM NEW.tenant
                            OR OLD.status IS DISTINCT FROM NEW.status))
    EXECUTE FUNCTION email_accounts.outbox_check_update();

-- Claims on insert keep no token once taken (src/store/outbox.rs TAKE_NEW_MAIL).
COMMENT ON COLUMN email_accounts.outbox.claim_token IS 'Always NULL since 0.4.0 (a claim''s token is in outbox_claim). A row claimed on insert (email_accounts.claim_on_insert) has none: its sender takes it without writing to it, and records it only while the row is still claimed for that very process.';

-- (Locked first, then judged: see sql/outbox_admin.sql.)
CREATE OR REPLACE FUNCTION email_accounts.cancel(id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row email_accounts.outbox;
BEGIN
    SELECT * INTO row FROM email_accounts.outbox WHERE outbox_id = id FOR UPDATE;
    IF NOT FOUND OR email_accounts.being_sent(row.outbox_id)
       OR NOT (row.status IN ('queued', 'retry', 'error')
               OR (row.status = 'sending' AND row.claim_token IS NULL
                   AND email_accounts.claim_never_taken(row.sender_process_id, row.sender_started_at, row.outbox_id) IS TRUE)) THEN
        RETURN false;
    END IF;
    -- (The claim of a row claimed on insert goes in trigger release_untaken_claim.)
    UPDATE email_accounts.outbox SET status = 'cancelled' WHERE outbox_id = id;
    RETURN FOUND;
END;
$$;

COMMENT ON FUNCTION email_accounts.cancel(bigint) IS
  'Cancels a row that is queued, waiting to retry, in error, or claimed on insert and not yet taken by its sender; false if it is already being sent or done.';

-- A row claimed on insert (email_accounts.claim_on_insert) and cancelled
-- before its sender took it, by cancel(): the claim goes with it, its
-- attempt uncounted. For every role (admins may not write a worker's
-- claim, so cancel() cannot: this runs as the table's owner); the sender
-- never cancels a row. (The cancelling UPDATE's RETURNING shows the row
-- before this.)
CREATE FUNCTION email_accounts.outbox_cancel_untaken_claim() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE email_accounts.outbox AS row
       SET attempts = OLD.attempts - 1, lease_until = NULL, sender_process_id = NULL, sender_started_at = NULL
     WHERE row.outbox_id = NEW.outbox_id;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_cancel_untaken_claim() IS
  'Trigger: a row claimed on insert and cancelled before its sender took it loses the claim, its attempt uncounted.';

-- (AFTER triggers fire in name order: this one after check_account, which
-- asks claim_never_taken() about the sender this clears.)
CREATE TRIGGER release_untaken_claim AFTER UPDATE OF status ON email_accounts.outbox
    FOR EACH ROW WHEN (OLD.status = 'sending' AND NEW.status = 'cancelled' AND OLD.claim_token IS NULL)
    EXECUTE FUNCTION email_accounts.outbox_cancel_untaken_claim();

-- The system's account sending as itself: on insert before the row is
-- written, on update after it, as the table's owner (sql/outbox_queue.sql).
CREATE OR REPLACE FUNCTION email_accounts.system_sends_as_itself() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL
       AND NEW.account_id = (email_accounts.global_default_outgoing()).account_id THEN
        IF TG_OP = 'INSERT' THEN
            IF cardinality(NEW.reply_to) = 0 THEN
                NEW.reply_to := ARRAY[NEW.sender];
            END IF;
            NEW.sender := NULL;
        ELSE
            UPDATE email_accounts.outbox AS row
               SET sender = NULL,
                   reply_to = CASE WHEN cardinality(row.reply_to) = 0 THEN ARRAY[row.sender] ELSE row.reply_to END
             WHERE row.outbox_id = NEW.outbox_id;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.system_sends_as_itself() IS
  'Trigger: a tenant''s row sent through the global default outgoing account goes out from that account''s own address; the sender it asked for becomes its Reply-To.';

DROP TRIGGER system_sends_as_itself ON email_accounts.outbox;
CREATE TRIGGER system_sends_as_itself BEFORE INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL AND NOT email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.system_sends_as_itself();
CREATE TRIGGER system_sends_as_itself_after_update AFTER UPDATE OF account_id, tenant, sender ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL AND NOT email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.system_sends_as_itself();

-- Trigger functions that run as the extension's owner cannot be attached
-- to a role's own tables (sql/security.sql).
REVOKE EXECUTE ON FUNCTION email_accounts.account_keeps_its_tenant(),
                           email_accounts.account_keeps_private_mail_private(),
                           email_accounts.account_servers_changed(),
                           email_accounts.forget_deleted_replies(),
                           email_accounts.outbox_after_insert(),
                           email_accounts.outbox_cancel_untaken_claim(),
                           email_accounts.system_sends_as_itself() FROM PUBLIC;

-- Issue 18: claims made by the inserting transaction (sql/outbox_claims.sql).
-- Rows claimed by their inserting transaction for a sender that has not
-- taken them yet (email_accounts.claim_on_insert), in the order it takes
-- them: it looks for its own when a commit tells it. Only such a claim
-- names a sender without a token. An entry lives from the INSERT until the
-- row's result is recorded (the sender takes the row without writing to
-- it, so at most a round's rows of each sender are here once taken).
CREATE INDEX outbox_claimed_on_insert ON email_accounts.outbox (sender_process_id, priority DESC, outbox_id)
    WHERE claim_token IS NULL AND sender_process_id IS NOT NULL;

-- Issue 18: the receiver's schedule is inlined into its statements (sql/inbox.sql).
DROP FUNCTION email_accounts.next_sync_at(bigint, text[]);
CREATE FUNCTION email_accounts.next_sync_at(synced_account_id bigint, account_folders text[])
RETURNS TABLE (next_sync_at timestamptz)
LANGUAGE sql STABLE
BEGIN ATOMIC
    -- (Folders counted once each: a name listed twice has one state, and
    -- must not leave the account due for ever.)
    SELECT CASE WHEN count(*) < cardinality(ARRAY(SELECT DISTINCT folder FROM unnest(account_folders) AS folder))
                THEN now() ELSE min(state.next_attempt_at) END
      FROM email_accounts.sync_state AS state
     WHERE state.account_id = synced_account_id AND state.folder = ANY (account_folders);
END;

COMMENT ON FUNCTION email_accounts.next_sync_at(bigint, text[]) IS
  'One row: when the receiver next syncs an account with these folders; now when a folder was never synced, else the soonest next_attempt_at of its folders. Use it in FROM (LATERAL), where it is inlined.';

-- Issue 18: functions the workers call per message or per account are PL/pgSQL,
-- whose plans are kept for the session (as SQL functions with a subquery they
-- were planned afresh on every call: message_fields() 322 µs, 34 µs now).

CREATE OR REPLACE FUNCTION email_accounts.owner_role_problem(owner oid, account_tenant text) RETURNS text
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

CREATE OR REPLACE FUNCTION email_accounts.message_fields(wanted_message_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'message_id', message.message_id,
            'account', account.name,
            'folder', message.folder,
            'internet_message_id', message.internet_message_id,
            'subject', message.subject,
            'sender', message.from_address,
            'sender_address', email_accounts.mailbox_address(message.from_address),
            'sender_name', nullif(btrim(split_part(message.from_address, '<', 1), ' "'), ''),
            'to_addresses', message.to_addresses,
            'cc_addresses', message.cc_addresses,
            'reply_to', message.reply_to,
            'body', coalesce(message.body_text, message.body_html),
            'body_text', message.body_text,
            'body_html', message.body_html,
            'sent_at', message.sent_at,
            'received_at', message.received_at,
            'thread_id', message.thread_id,
            'attachment_count', (SELECT count(*) FROM email_accounts.message_attachment AS part WHERE part.message_id = message.message_id))
          FROM email_accounts.message
          JOIN email_accounts.account USING (account_id)
         WHERE message.message_id = wanted_message_id);
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.primary_key_column(target regclass) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT attribute.attname
          FROM pg_index AS index
          JOIN pg_attribute AS attribute ON attribute.attrelid = index.indrelid AND attribute.attnum = index.indkey[0]
         WHERE index.indrelid = target AND index.indisprimary AND index.indnatts = 1);
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.append_to_statement(wanted_account_id bigint) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT format('INSERT INTO %s (%s) SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) RETURNING %I::text',
                      account.append_to_table, columns.list, columns.list, account.append_to_table,
                      email_accounts.primary_key_column(account.append_to_table))
          FROM email_accounts.account
         CROSS JOIN LATERAL (
            SELECT string_agg(quote_ident(mapping.key), ', ' ORDER BY mapping.key) AS list
              FROM jsonb_each_text(account.append_to_columns) AS mapping
         ) AS columns
         WHERE account.account_id = wanted_account_id AND account.append_to_table IS NOT NULL);
END;
$$;

CREATE OR REPLACE FUNCTION email_accounts.append_to_values(wanted_message_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT jsonb_object_agg(mapping.key, fields.value -> mapping.value)
          FROM email_accounts.message
          JOIN email_accounts.account USING (account_id)
         CROSS JOIN LATERAL jsonb_each_text(account.append_to_columns) AS mapping
         CROSS JOIN LATERAL (SELECT email_accounts.message_fields(message.message_id) AS value) AS fields
         WHERE message.message_id = wanted_message_id);
END;
$$;

-- Issue 18: mail content compressed with lz4 (sql/outbox.sql, sql/inbox.sql).
-- Only the method for new values: nothing stored is rewritten, and rows
-- stored before keep pglz.
ALTER TABLE email_accounts.outbox
    ALTER COLUMN body_text SET COMPRESSION lz4,
    ALTER COLUMN body_html SET COMPRESSION lz4,
    ALTER COLUMN headers SET COMPRESSION lz4;
ALTER TABLE email_accounts.outbox_attachment ALTER COLUMN content SET COMPRESSION lz4;
ALTER TABLE email_accounts.message_attachment ALTER COLUMN content SET COMPRESSION lz4;

-- Issue 18: the GIN index of References without its pending list
-- (sql/inbox.sql); what is in the list now goes into the index here.
ALTER INDEX email_accounts.message_references SET (fastupdate = off);
SELECT pg_catalog.gin_clean_pending_list('email_accounts.message_references'::regclass);

-- Issue 18: the sender's claims in a narrow table of their own
-- (sql/outbox.sql), not in the wide outbox row.
-- The sender's claims: one narrow row per outbox row out for delivery. The
-- claim had written the wide outbox row (status, token, lease, sender):
-- 22 µs and ~840 bytes of WAL a row, in four indexes, against ~4 µs for a
-- row here (issue 18). A claimed outbox row keeps its status (queued or
-- retry) and its attempts until the result is recorded; outbox_status shows
-- it as sending. Rows claimed by their inserting transaction
-- (email_accounts.claim_on_insert) are not here: they read sending in the
-- outbox itself (sql/outbox_claims.sql). No foreign key: its check would
-- lock and probe the outbox row again for every claim, which the claim has
-- already locked; a claim whose outbox row was deleted goes when it is
-- recorded or its lease lapses.
CREATE TABLE email_accounts.outbox_claim (
    outbox_id         bigint PRIMARY KEY,
    account_id        bigint NOT NULL,
    claim_token       uuid NOT NULL,
    lease_until       timestamptz NOT NULL,
    sender_process_id integer NOT NULL,
    sender_started_at timestamptz NOT NULL,
    attempt           integer NOT NULL
);
-- Rate limits count an account's claims; the lapsed-claim pass and the
-- sender's sleep look for leases by time.
CREATE INDEX outbox_claim_account ON email_accounts.outbox_claim (account_id, lease_until);
CREATE INDEX outbox_claim_lease ON email_accounts.outbox_claim (lease_until);

COMMENT ON TABLE email_accounts.outbox_claim IS
  'Outbox rows a sender worker claimed and has not recorded yet: the row is out for delivery under a lease. Written by the workers only.';
COMMENT ON COLUMN email_accounts.outbox_claim.outbox_id IS 'The outbox row claimed.';
COMMENT ON COLUMN email_accounts.outbox_claim.account_id IS 'The account it is sent through (rate limits count its claims).';
COMMENT ON COLUMN email_accounts.outbox_claim.claim_token IS 'The token of the claim: a result is recorded only under the claim that is still current, so a sender whose lease lapsed cannot overwrite another''s.';
COMMENT ON COLUMN email_accounts.outbox_claim.lease_until IS 'When the claim lapses and the row is taken back (at least once: it may have gone out).';
COMMENT ON COLUMN email_accounts.outbox_claim.sender_process_id IS 'The process id of the sender worker that claimed the row.';
COMMENT ON COLUMN email_accounts.outbox_claim.sender_started_at IS 'When that sender process started; with sender_process_id it names one incarnation, so a reused process id is not mistaken for it.';
COMMENT ON COLUMN email_accounts.outbox_claim.attempt IS 'The delivery attempt this claim is: the outbox row''s attempts once it is recorded or taken back.';
SELECT pg_catalog.pg_extension_config_dump('email_accounts.outbox_claim', '');
CREATE TRIGGER hold_workers_during_restore BEFORE INSERT ON email_accounts.outbox_claim
    FOR EACH STATEMENT WHEN (email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.hold_workers_during_restore();

COMMENT ON COLUMN email_accounts.outbox.status IS 'queued, sending (claimed on insert for a sender worker, email_accounts.claim_on_insert; a row the sender claimed keeps queued or retry, with a row in outbox_claim, and outbox_status shows it as sending), retry (after a temporary failure), sent, failed (permanently), expired, cancelled, or error (no account could be chosen).';
COMMENT ON COLUMN email_accounts.outbox.attempts IS 'Delivery attempts so far (an attempt out for delivery counts once recorded; outbox_claim.attempt meanwhile).';
COMMENT ON COLUMN email_accounts.outbox.lease_until IS 'While claimed on insert: when the claim lapses and another worker may take the row again.';
COMMENT ON COLUMN email_accounts.outbox.sender_process_id IS 'While claimed on insert: the process id of the sender worker that claimed the row.';
COMMENT ON COLUMN email_accounts.outbox.sender_started_at IS 'While claimed on insert: when that sender process started; with sender_process_id it names one incarnation, so a reused process id is not mistaken for it.';

CREATE FUNCTION email_accounts.being_sent(id bigint) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT FROM email_accounts.outbox_claim AS claim WHERE claim.outbox_id = id)
$$;

COMMENT ON FUNCTION email_accounts.being_sent(bigint) IS
  'True when the outbox row (one the caller can see) is claimed by a sender worker, out for delivery: cancel(), retry() and the update check refuse such a row.';

CREATE OR REPLACE VIEW email_accounts.outbox_status WITH (security_invoker = true) AS
SELECT
    coalesce(account.name, outbox.account) AS account,
    outbox.tenant,
    -- (A row the sender claimed keeps queued or retry in the outbox.)
    CASE WHEN claim.outbox_id IS NOT NULL THEN 'sending' ELSE outbox.status END AS status,
    count(*) AS messages,
    min(outbox.created_at) AS oldest_created_at,
    now() - min(outbox.created_at) AS oldest_age,
    min(outbox.next_attempt_at) FILTER (WHERE outbox.status IN ('queued', 'retry') AND claim.outbox_id IS NULL) AS next_due_at,
    (array_agg(outbox.last_error ORDER BY outbox.outbox_id DESC) FILTER (WHERE outbox.last_error IS NOT NULL))[1] AS latest_error
FROM email_accounts.outbox
LEFT JOIN email_accounts.account USING (account_id)
LEFT JOIN email_accounts.outbox_claim AS claim ON claim.outbox_id = outbox.outbox_id
GROUP BY 1, 2, 3;

CREATE OR REPLACE FUNCTION email_accounts.retry(id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row email_accounts.outbox;
    chosen bigint;
BEGIN
    SELECT * INTO row FROM email_accounts.outbox WHERE outbox_id = id AND status IN ('retry', 'failed', 'expired', 'cancelled', 'error')
       FOR UPDATE;
    IF NOT FOUND OR email_accounts.being_sent(row.outbox_id) THEN
        RETURN false;
    END IF;
    chosen := coalesce(row.account_id, email_accounts.choose_outgoing_account(row.account, row.sender, row.tenant));
    UPDATE email_accounts.outbox
       SET account_id = chosen,
           account = coalesce((SELECT name FROM email_accounts.account WHERE account_id = chosen), account),
           status = CASE WHEN chosen IS NULL THEN 'error' ELSE 'queued' END,
           next_attempt_at = now(),
           expires_at = CASE WHEN expires_at <= now() THEN NULL ELSE expires_at END,
           last_error = CASE WHEN chosen IS NULL THEN last_error END
     WHERE outbox_id = id;
    UPDATE email_accounts.outbox_recipient SET status = 'pending', updated_at = now()
     WHERE outbox_id = id AND status IN ('deferred', 'failed');
    PERFORM email_accounts.wake_sender_at_commit();
    RETURN chosen IS NOT NULL;
END;
$$;

GRANT SELECT (outbox_id, lease_until, attempt) ON email_accounts.outbox_claim TO email_accounts_sender, email_accounts_admin;
ALTER TABLE email_accounts.outbox_claim ENABLE ROW LEVEL SECURITY;
CREATE POLICY claims_of_visible_mail ON email_accounts.outbox_claim
    USING (EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = outbox_claim.outbox_id));

-- Claims out at the upgrade move into outbox_claim: the outbox row goes back
-- to queued or retry with the attempts before the claim, the claim keeps
-- the attempt it is. (A sender of the old library still sending records
-- nothing after this: its rows' claims lapse and are sent again, at least
-- once. A claim without a recorded process, from before 0.3.0, names none,
-- so the next sender takes it back as abandoned.) A row whose account was
-- deleted while it was out cannot be claimed again: it is left to retry(),
-- its attempt counted.
INSERT INTO email_accounts.outbox_claim
       (outbox_id, account_id, claim_token, lease_until, sender_process_id, sender_started_at, attempt)
SELECT outbox.outbox_id, outbox.account_id, outbox.claim_token, coalesce(outbox.lease_until, now()),
       coalesce(outbox.sender_process_id, 0), coalesce(outbox.sender_started_at, '-infinity'), outbox.attempts
  FROM email_accounts.outbox
 WHERE outbox.status = 'sending' AND outbox.claim_token IS NOT NULL AND outbox.account_id IS NOT NULL;
UPDATE email_accounts.outbox
   SET status = CASE WHEN account_id IS NULL OR attempts > 1 THEN 'retry' ELSE 'queued' END,
       -- (Not due before the lease lapses: nothing that still claims the old
       -- way takes it again meanwhile. A take-back makes it due at once.)
       next_attempt_at = greatest(next_attempt_at, lease_until),
       attempts = CASE WHEN account_id IS NULL THEN attempts ELSE attempts - 1 END,
       last_error = CASE WHEN account_id IS NULL THEN 'its account was deleted while it was being sent' ELSE last_error END,
       lease_until = NULL, claim_token = NULL, sender_process_id = NULL, sender_started_at = NULL
 WHERE status = 'sending' AND claim_token IS NOT NULL;
