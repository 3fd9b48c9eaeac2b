-- Email domains with their server settings (ERPNext "Email Domain"): an
-- account whose address is in a domain inherits them unless it overrides them.

CREATE TABLE email_accounts.domain (
    domain_name          text PRIMARY KEY
                         CONSTRAINT "domain_name must be a lower-case DNS name" CHECK (domain_name ~ '^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$'),
    provider             text REFERENCES email_accounts.provider (name) ON UPDATE CASCADE,
    incoming_protocol    text CONSTRAINT "domain incoming_protocol must be imap or pop3" CHECK (incoming_protocol IN ('imap', 'pop3')),
    incoming_host        text,
    incoming_port        integer CONSTRAINT "domain incoming_port must be between 1 and 65535" CHECK (incoming_port BETWEEN 1 AND 65535),
    incoming_security    text CONSTRAINT "domain incoming_security must be ssl, starttls or none" CHECK (incoming_security IN ('ssl', 'starttls', 'none')),
    smtp_host            text,
    smtp_port            integer CONSTRAINT "domain smtp_port must be between 1 and 65535" CHECK (smtp_port BETWEEN 1 AND 65535),
    smtp_security        text CONSTRAINT "domain smtp_security must be ssl, starttls or none" CHECK (smtp_security IN ('ssl', 'starttls', 'none')),
    extra_ca_certificate text CONSTRAINT "domain extra_ca_certificate length must be at most 262144 bytes" CHECK (octet_length(extra_ca_certificate) <= 262144)
                         CONSTRAINT "domain extra_ca_certificate must be PEM certificates" CHECK (email_accounts.is_valid_certificate(extra_ca_certificate)),
    created_at           timestamptz NOT NULL DEFAULT now(),
    auth_method          text CONSTRAINT "domain auth_method must be password or oauth2" CHECK (auth_method IN ('password', 'oauth2')),
    oauth_client_id      text CONSTRAINT "domain oauth_client_id must not be empty or contain blanks" CHECK (oauth_client_id ~ '^[^\s]+$'),
    oauth_tenant         text CONSTRAINT "domain oauth_tenant must be letters, digits, dots or dashes" CHECK (oauth_tenant ~ '^[A-Za-z0-9.-]+$')
);

COMMENT ON TABLE email_accounts.domain IS
  'An email domain and its mail servers. Accounts whose address is in the domain inherit these settings unless they set their own; the domain may itself name a provider preset.';
COMMENT ON COLUMN email_accounts.domain.domain_name IS 'The part after @, lower case, e.g. example.com.';
COMMENT ON COLUMN email_accounts.domain.provider IS 'A provider preset that fills in whatever this domain leaves NULL (e.g. a domain hosted by Google Workspace: gmail).';
COMMENT ON COLUMN email_accounts.domain.incoming_protocol IS 'imap or pop3.';
COMMENT ON COLUMN email_accounts.domain.incoming_host IS 'IMAP or POP3 server host name.';
COMMENT ON COLUMN email_accounts.domain.incoming_port IS 'IMAP or POP3 server port.';
COMMENT ON COLUMN email_accounts.domain.incoming_security IS 'ssl (TLS from the first byte), starttls, or none.';
COMMENT ON COLUMN email_accounts.domain.smtp_host IS 'SMTP server host name.';
COMMENT ON COLUMN email_accounts.domain.smtp_port IS 'SMTP server port.';
COMMENT ON COLUMN email_accounts.domain.smtp_security IS 'ssl (TLS from the first byte), starttls, or none.';
COMMENT ON COLUMN email_accounts.domain.extra_ca_certificate IS 'Extra trusted CA certificate(s), PEM, at most 256 KiB, for mail servers with a private CA; accounts inherit it.';
COMMENT ON COLUMN email_accounts.domain.created_at IS 'When the row was added.';
COMMENT ON COLUMN email_accounts.domain.auth_method IS 'password or oauth2 for the domain''s accounts that do not choose; NULL inherits the provider''s.';
COMMENT ON COLUMN email_accounts.domain.oauth_client_id IS 'The organisation''s own OAuth2 client (application) at the provider; when set, the domain''s accounts use it (with its secret from set_oauth_client_secret() and oauth_tenant) instead of the provider''s.';
COMMENT ON COLUMN email_accounts.domain.oauth_tenant IS 'Tenant (Microsoft directory id or domain) of the domain''s OAuth2 client, put into the provider''s endpoints; NULL uses the provider''s oauth_tenant.';

SELECT pg_catalog.pg_extension_config_dump('email_accounts.domain', '');
