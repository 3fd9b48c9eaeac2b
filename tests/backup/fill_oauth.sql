-- OAuth2 rows (0.4.0 on): a provider with its own client and secret, an
-- account connected by a refresh token (workers are not running: nothing
-- asks the token endpoint).
UPDATE email_accounts.provider
   SET oauth_token_endpoint = 'https://login.in-house.test/{tenant}/token', oauth_scopes = ARRAY['mail', 'offline_access'],
       oauth_client_id = 'in-house-app', oauth_tenant = 'main'
 WHERE name = 'in_house';
SELECT email_accounts.set_oauth_client_secret('client secret of in_house', provider => 'in_house');
INSERT INTO email_accounts.account (name, tenant, address, provider, auth_method, enable_outgoing, enable_incoming)
VALUES ('Tokens', 'acme', 'tokens@in-house.test', 'in_house', 'oauth2', true, true);
SELECT email_accounts.set_oauth_refresh_token('Tokens', 'refresh-token-of-Tokens', 'acme');
