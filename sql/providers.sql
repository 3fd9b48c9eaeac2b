-- Provider presets: server settings of popular mail services. An account or
-- a domain that names a provider inherits these unless it sets its own.

CREATE FUNCTION email_accounts.oauth_scopes_are_valid(scopes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN NOT EXISTS (SELECT FROM unnest(scopes) AS scope WHERE scope IS NULL OR scope !~ '^[^\s]+$');

COMMENT ON FUNCTION email_accounts.oauth_scopes_are_valid(text[]) IS
  'True when no scope in the array is NULL, empty or contains white space (scopes are sent space-separated).';

CREATE TABLE email_accounts.provider (
    name              text PRIMARY KEY
                      CONSTRAINT "provider name must be lower-case letters, digits, - or _" CHECK (name ~ '^[a-z0-9_-]+$'),
    description       text NOT NULL,
    incoming_protocol text NOT NULL DEFAULT 'imap'
                      CONSTRAINT "provider incoming_protocol must be imap or pop3" CHECK (incoming_protocol IN ('imap', 'pop3')),
    imap_host         text,
    imap_port         integer CONSTRAINT "provider imap_port must be between 1 and 65535" CHECK (imap_port BETWEEN 1 AND 65535),
    imap_security     text CONSTRAINT "provider imap_security must be ssl, starttls or none" CHECK (imap_security IN ('ssl', 'starttls', 'none')),
    pop3_host         text,
    pop3_port         integer CONSTRAINT "provider pop3_port must be between 1 and 65535" CHECK (pop3_port BETWEEN 1 AND 65535),
    pop3_security     text CONSTRAINT "provider pop3_security must be ssl, starttls or none" CHECK (pop3_security IN ('ssl', 'starttls', 'none')),
    smtp_host         text,
    smtp_port         integer CONSTRAINT "provider smtp_port must be between 1 and 65535" CHECK (smtp_port BETWEEN 1 AND 65535),
    smtp_security     text CONSTRAINT "provider smtp_security must be ssl, starttls or none" CHECK (smtp_security IN ('ssl', 'starttls', 'none')),
    built_in          boolean NOT NULL DEFAULT false,
    auth_method       text CONSTRAINT "provider auth_method must be password or oauth2" CHECK (auth_method IN ('password', 'oauth2')),
    oauth_token_endpoint text
                      CONSTRAINT "provider oauth_token_endpoint must be an https:// URL" CHECK (oauth_token_endpoint ~ '^https://[^\s]+$'),
    oauth_device_authorization_endpoint text
                      CONSTRAINT "provider oauth_device_authorization_endpoint must be an https:// URL"
                      CHECK (oauth_device_authorization_endpoint ~ '^https://[^\s]+$'),
    oauth_scopes      text[] CONSTRAINT "provider oauth_scopes must not contain empty scopes or scopes with blanks"
                      CHECK (email_accounts.oauth_scopes_are_valid(oauth_scopes)),
    oauth_client_credentials_scopes text[]
                      CONSTRAINT "provider oauth_client_credentials_scopes must not contain empty scopes or scopes with blanks"
                      CHECK (email_accounts.oauth_scopes_are_valid(oauth_client_credentials_scopes)),
    oauth_client_id   text CONSTRAINT "provider oauth_client_id must not be empty or contain blanks" CHECK (oauth_client_id ~ '^[^\s]+$'),
    oauth_tenant      text CONSTRAINT "provider oauth_tenant must be letters, digits, dots or dashes" CHECK (oauth_tenant ~ '^[A-Za-z0-9.-]+$')
);

COMMENT ON TABLE email_accounts.provider IS
  'Presets for popular mail services. An account (or its domain) that names a provider inherits its server settings unless it sets its own; see the view account_settings.';
COMMENT ON COLUMN email_accounts.provider.name IS 'Short key used by account.provider and domain.provider, e.g. gmail.';
COMMENT ON COLUMN email_accounts.provider.description IS 'What the service is, for people choosing one.';
COMMENT ON COLUMN email_accounts.provider.incoming_protocol IS 'Protocol used for incoming mail when the account does not choose one: imap or pop3.';
COMMENT ON COLUMN email_accounts.provider.imap_host IS 'IMAP server host name.';
COMMENT ON COLUMN email_accounts.provider.imap_port IS 'IMAP server port.';
COMMENT ON COLUMN email_accounts.provider.imap_security IS 'ssl (TLS from the first byte), starttls, or none.';
COMMENT ON COLUMN email_accounts.provider.pop3_host IS 'POP3 server host name; NULL when the service offers no POP3.';
COMMENT ON COLUMN email_accounts.provider.pop3_port IS 'POP3 server port.';
COMMENT ON COLUMN email_accounts.provider.pop3_security IS 'ssl (TLS from the first byte), starttls, or none.';
COMMENT ON COLUMN email_accounts.provider.smtp_host IS 'SMTP submission server host name.';
COMMENT ON COLUMN email_accounts.provider.smtp_port IS 'SMTP submission port (465 for ssl, 587 for starttls).';
COMMENT ON COLUMN email_accounts.provider.smtp_security IS 'ssl (TLS from the first byte), starttls, or none.';
COMMENT ON COLUMN email_accounts.provider.auth_method IS 'How accounts of this provider sign in unless their domain or the account says otherwise: password or oauth2; NULL means password.';
COMMENT ON COLUMN email_accounts.provider.oauth_token_endpoint IS 'OAuth2 token endpoint (https); {tenant} is replaced by the effective oauth_tenant (Microsoft identity platform).';
COMMENT ON COLUMN email_accounts.provider.oauth_device_authorization_endpoint IS 'OAuth2 device authorization endpoint (RFC 8628) used by oauth_device_login(); {tenant} is replaced as in oauth_token_endpoint. NULL when the provider allows no device login for mail.';
COMMENT ON COLUMN email_accounts.provider.oauth_scopes IS 'Scopes asked for on behalf of a mailbox user (device login, refresh), e.g. IMAP, POP and SMTP access and offline_access.';
COMMENT ON COLUMN email_accounts.provider.oauth_client_credentials_scopes IS 'Scopes asked for with client credentials (app-only access to mailboxes); NULL when the provider offers no app-only mail access.';
COMMENT ON COLUMN email_accounts.provider.oauth_client_id IS 'The OAuth2 client (application) registered at the provider, used by accounts whose domain names none. Its secret is set with set_oauth_client_secret() and stored encrypted.';
COMMENT ON COLUMN email_accounts.provider.oauth_tenant IS 'Default tenant put into the endpoints'' {tenant} (Microsoft: organizations, consumers, common, or a directory id).';
COMMENT ON COLUMN email_accounts.provider.built_in IS 'True for the presets shipped with the extension (CREATE EXTENSION makes them; a restored dump replaces them with the rows as they were dumped).';

INSERT INTO email_accounts.provider
    (name, description, imap_host, imap_port, imap_security, pop3_host, pop3_port, pop3_security, smtp_host, smtp_port, smtp_security, built_in)
VALUES
    ('gmail',     'Gmail and Google Workspace (an app password, or OAuth2 with a refresh token from your own app)', 'imap.gmail.com', 993, 'ssl', 'pop.gmail.com', 995, 'ssl', 'smtp.gmail.com', 587, 'starttls', true),
    ('outlook',   'Outlook.com, Hotmail and Live personal accounts (OAuth2 only)', 'outlook.office365.com', 993, 'ssl', 'outlook.office365.com', 995, 'ssl', 'smtp-mail.outlook.com', 587, 'starttls', true),
    ('office365', 'Microsoft 365 / Office 365 / Exchange Online (OAuth2)',    'outlook.office365.com',    993, 'ssl', 'outlook.office365.com',    995, 'ssl', 'smtp.office365.com',      587, 'starttls', true),
    ('yahoo',     'Yahoo Mail',                                                'imap.mail.yahoo.com',      993, 'ssl', 'pop.mail.yahoo.com',       995, 'ssl', 'smtp.mail.yahoo.com',     465, 'ssl',      true),
    ('zoho',      'Zoho Mail',                                                 'imap.zoho.com',            993, 'ssl', 'pop.zoho.com',             995, 'ssl', 'smtp.zoho.com',           465, 'ssl',      true),
    ('icloud',    'iCloud Mail (IMAP only; use an app-specific password)',    'imap.mail.me.com',         993, 'ssl', NULL,                       NULL, NULL, 'smtp.mail.me.com',       587, 'starttls', true),
    ('fastmail',  'Fastmail (use an app password)',                            'imap.fastmail.com',        993, 'ssl', 'pop.fastmail.com',         995, 'ssl', 'smtp.fastmail.com',       465, 'ssl',      true),
    ('yandex',    'Yandex Mail',                                               'imap.yandex.com',          993, 'ssl', 'pop.yandex.com',           995, 'ssl', 'smtp.yandex.com',         465, 'ssl',      true),
    ('aol',       'AOL Mail',                                                  'imap.aol.com',             993, 'ssl', 'pop.aol.com',              995, 'ssl', 'smtp.aol.com',            465, 'ssl',      true),
    ('gmx',       'GMX Mail',                                                  'imap.gmx.com',             993, 'ssl', 'pop.gmx.com',              995, 'ssl', 'mail.gmx.com',            587, 'starttls', true);

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
 WHERE name IN ('office365', 'outlook');
-- Google allows no device login for mail scopes: an application gets the
-- refresh token (authorization code flow) and hands it to set_oauth_refresh_token().
UPDATE email_accounts.provider
   SET oauth_token_endpoint = 'https://oauth2.googleapis.com/token',
       oauth_scopes = ARRAY['https://mail.google.com/']
 WHERE name = 'gmail';

-- Every preset is dumped, the built-in ones too (a DBA may have changed
-- one). CREATE EXTENSION has made them again when a dump is restored: a
-- restored preset of the same name replaces the one just made.
CREATE FUNCTION email_accounts.restore_over_built_in_preset() RETURNS trigger
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

COMMENT ON FUNCTION email_accounts.restore_over_built_in_preset() IS
  'Trigger, while a dump is restored (see restoring()): a restored preset replaces the built-in one of the same name that CREATE EXTENSION made.';

CREATE TRIGGER restore_over_built_in_preset BEFORE INSERT ON email_accounts.provider
    FOR EACH ROW WHEN (email_accounts.restoring()) EXECUTE FUNCTION email_accounts.restore_over_built_in_preset();

SELECT pg_catalog.pg_extension_config_dump('email_accounts.provider', '');
