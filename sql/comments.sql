-- Comments a DBA sees with \df+ and \d+: what each SQL object of the
-- extension is for. Loaded last, after every object exists.

COMMENT ON SCHEMA email_accounts IS
  'Email accounts, a transactional outbox delivered over SMTP, and inboxes synced over IMAP/POP3.';

COMMENT ON FUNCTION email_accounts.is_valid_address(text) IS
  'True when the text is a bare email address (ann@example.com, no display name) that the SMTP side can deliver to; parsed exactly as the sender parses it.';

COMMENT ON FUNCTION email_accounts.worker_status() IS
  'One row per background worker: the launcher (database NULL), then the receiver and senders of this database (listed before they start), then (for superusers and pg_monitor members) those of every other database the launcher serves; each with its process id, what it is doing, when it started, configuration reloads, the fallback poll interval in use, wake-up requests (one per committing transaction that queued mail, flush(), sync_now()), wake-ups by its latch (those requests and PostgreSQL''s own signals) and by timeout. Read from shared memory.';

COMMENT ON FUNCTION email_accounts.is_valid_mailbox(text) IS
  'True when the text is an email address with an optional display name (Ann Smith <ann@example.com>) that the SMTP side can deliver to.';

COMMENT ON FUNCTION email_accounts.tagged_address(text, text, text) IS
  'The address with a sub-address naming row id of table (local+<table>=<id>@domain, percent-encoded); see document_address().';

COMMENT ON FUNCTION email_accounts.is_valid_certificate(text) IS
  'True when the text is one or more PEM certificates (BEGIN CERTIFICATE blocks) that TLS can trust.';

COMMENT ON FUNCTION email_accounts.set_password(text, text, text, text) IS
  'Stores the password of an account (by name; in tenant, when names are ambiguous) for side both (the default), incoming (IMAP/POP3 and the Sent folder copy) or smtp, encrypted with AES-256-GCM under the current key of the key file email_accounts.keys and bound to the account''s current servers; ends awaiting_password. The other side''s password is left as it is. Callable by superusers, members of the account''s owner_role, and email_accounts_admin members bound to the account''s tenant, judged for the current role (also inside security-restricted code). Pass the password as a bind parameter so it never appears in query text.';

COMMENT ON FUNCTION email_accounts.rotate_encryption_key() IS
  'Superusers only: adds a new current encryption key to email_accounts.keys, re-encrypts every stored password, OAuth2 token and OAuth2 client secret with it, keeps the older keys (other databases of the cluster and restored dumps may still need them), and returns the new key id.';

COMMENT ON FUNCTION email_accounts.sync_now(text, text) IS
  'Asks the receiver worker to sync the account (by name; in tenant, when names are ambiguous) now and waits: one row per folder with the new messages and the outcome. Only for accounts the caller can see.';

COMMENT ON FUNCTION email_accounts.reparse(bigint) IS
  'Parses a stored message again from its raw bytes and links it again; for messages the caller can see (email_accounts_admin). True when it parsed.';

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

COMMENT ON FUNCTION email_accounts.test_all() IS
  'test_account() for every account with incoming or outgoing enabled that the caller can see.';

COMMENT ON FUNCTION email_accounts.header_problem(text, text) IS
  'Why a custom header (name, value) cannot be sent — invalid name, a line break, or a header the composer owns — or NULL when it can.';

COMMENT ON FUNCTION email_accounts.mailbox_address(text) IS
  'The bare address of a mailbox (Ann <ann@example.com> gives ann@example.com), or NULL when it is not a valid mailbox.';

COMMENT ON FUNCTION email_accounts.wake_sender_at_commit() IS
  'Asks for the sender worker to be woken when the current transaction commits (once per transaction; nothing on rollback). Called by the outbox''s insert trigger.';

COMMENT ON FUNCTION email_accounts.sender_for_new_mail(bigint) IS
  'One row or none: the idle sender worker a new outbox row of the given account is claimed for (its process id and start), and the claim''s lease. None unless email_accounts.claim_on_insert is on and a sender of this database has nothing to do; at most 10 rows of one transaction. Called by the outbox''s insert trigger; the sender is woken with the rows'' accounts ahead of the commit''s flush (it reads their settings meanwhile) and told at commit.';

COMMENT ON FUNCTION email_accounts.claim_never_taken(integer, timestamp with time zone, bigint) IS
  'Whether the outbox row with this id, claimed on insert for the sender process with this process id and start and without a claim token, was never taken by it (so its mail has not gone out): true when that sender started in this database since the last server start or crash restart and does not list the row as taken. A take writes nothing to the row; it lists it on the worker board while it holds the row''s lock, so an answer given under the row''s lock stays true. From the worker board; a role that is not a superuser gets true only for a row it can see claimed that way.';

COMMENT ON FUNCTION email_accounts.flush() IS
  'Wakes the sender worker now; false when it is not running.';

COMMENT ON FUNCTION email_accounts.settings_change_at_commit() IS
  'Counts the current transaction as a change of sending settings from its commit until it ends: a sender does not use settings it read during another commit''s flush across it. Called by the statement triggers of the tables those settings come from.';

COMMENT ON FUNCTION email_accounts.wake_workers_at_commit() IS
  'Asks for every email_accounts worker to be woken when the current transaction commits; CREATE EXTENSION calls it so the workers start at once.';

COMMENT ON FUNCTION email_accounts.unsubscribe(text) IS
  'For the page behind an unsubscribe link (and RFC 8058 one-click POSTs): checks the token''s signature and adds its recipient to the suppression list of the message''s tenant. True when the address was newly suppressed; an invalid token raises 22023.';

COMMENT ON FUNCTION email_accounts.mark_opened(text) IS
  'For the URL of the tracking image: checks the token''s signature and counts an open of its message (outbox.opened_at, open_count). An invalid token raises 22023.';

COMMENT ON FUNCTION email_accounts.random_bytes(integer) IS 'That many random bytes from the operating system (at most 1024).';

COMMENT ON FUNCTION email_accounts.restoring() IS
  'True while a superuser session writes after SET row_security = off, as pg_restore and plain dump scripts do (not when row_security comes from ALTER DATABASE/ROLE, and not for code running as another user): the triggers then take rows as they were dumped (see README "Backups").';
COMMENT ON FUNCTION email_accounts.current_user_is_superuser() IS
  'Whether the current user (not the session''s role, which is_superuser shows) is a superuser: the outbox update checks run for everyone else.';
COMMENT ON FUNCTION email_accounts.template_problem(text, text, text) IS
  'Why a template''s subject, body_text and body_html do not compile (the part, line and error), or NULL; used when a template is saved.';
COMMENT ON FUNCTION email_accounts.included_template_names(text, text, text) IS
  'The templates a template''s parts name in {% include %}, {% import %}, {% from %} or {% extends %} with a literal name.';
COMMENT ON FUNCTION email_accounts.render_chosen_template(bigint, jsonb, text, text, text) IS
  'Renders the template row template_id over context in language, its includes chosen for tenant; raises 22023 naming template_name, the language, the part, line and missing variable. Compiled templates are kept per session until the row or an included one changes. Used by apply_template() and render_template().';
