-- OAuth2 sign-in (auth_method oauth2): each account's token state, its
-- tokens, and the OAuth2 clients' secrets. Tokens and secrets are encrypted
-- like passwords (AES-256-GCM, key file email_accounts.keys) in tables no
-- role is granted anything on; only the state is readable.

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
