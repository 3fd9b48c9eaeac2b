-- Provider presets: server settings of popular mail services. An account or
-- a domain that names a provider inherits these unless it sets its own.

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
    built_in          boolean NOT NULL DEFAULT false
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
COMMENT ON COLUMN email_accounts.provider.built_in IS 'True for the presets shipped with the extension (CREATE EXTENSION makes them; a restored dump replaces them with the rows as they were dumped).';

INSERT INTO email_accounts.provider
    (name, description, imap_host, imap_port, imap_security, pop3_host, pop3_port, pop3_security, smtp_host, smtp_port, smtp_security, built_in)
VALUES
    ('gmail',     'Gmail and Google Workspace (use an app password or OAuth)', 'imap.gmail.com',           993, 'ssl', 'pop.gmail.com',            995, 'ssl', 'smtp.gmail.com',          587, 'starttls', true),
    ('outlook',   'Outlook.com, Hotmail and Live personal accounts',          'outlook.office365.com',    993, 'ssl', 'outlook.office365.com',    995, 'ssl', 'smtp-mail.outlook.com',   587, 'starttls', true),
    ('office365', 'Microsoft 365 / Office 365 / Exchange Online',              'outlook.office365.com',    993, 'ssl', 'outlook.office365.com',    995, 'ssl', 'smtp.office365.com',      587, 'starttls', true),
    ('yahoo',     'Yahoo Mail',                                                'imap.mail.yahoo.com',      993, 'ssl', 'pop.mail.yahoo.com',       995, 'ssl', 'smtp.mail.yahoo.com',     465, 'ssl',      true),
    ('zoho',      'Zoho Mail',                                                 'imap.zoho.com',            993, 'ssl', 'pop.zoho.com',             995, 'ssl', 'smtp.zoho.com',           465, 'ssl',      true),
    ('icloud',    'iCloud Mail (IMAP only; use an app-specific password)',    'imap.mail.me.com',         993, 'ssl', NULL,                       NULL, NULL, 'smtp.mail.me.com',       587, 'starttls', true),
    ('fastmail',  'Fastmail (use an app password)',                            'imap.fastmail.com',        993, 'ssl', 'pop.fastmail.com',         995, 'ssl', 'smtp.fastmail.com',       465, 'ssl',      true),
    ('yandex',    'Yandex Mail',                                               'imap.yandex.com',          993, 'ssl', 'pop.yandex.com',           995, 'ssl', 'smtp.yandex.com',         465, 'ssl',      true),
    ('aol',       'AOL Mail',                                                  'imap.aol.com',             993, 'ssl', 'pop.aol.com',              995, 'ssl', 'smtp.aol.com',            465, 'ssl',      true),
    ('gmx',       'GMX Mail',                                                  'imap.gmx.com',             993, 'ssl', 'pop.gmx.com',              995, 'ssl', 'mail.gmx.com',            587, 'starttls', true);

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
