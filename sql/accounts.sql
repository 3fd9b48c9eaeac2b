-- Email accounts: every option of ERPNext's Email Account form. Server
-- settings left NULL are inherited from the account's domain, then from its
-- provider; the view account_settings shows the effective values.

CREATE FUNCTION email_accounts.folder_names_are_valid(folders text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
RETURN cardinality(folders) >= 1
   AND NOT EXISTS (SELECT FROM unnest(folders) AS folder WHERE folder IS NULL OR btrim(folder) = '' OR folder ~ '[\r\n]');

COMMENT ON FUNCTION email_accounts.folder_names_are_valid(text[]) IS
  'True when the array names at least one folder and no name is empty or contains a line break.';

CREATE TABLE email_accounts.account (
    account_id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL
                    CONSTRAINT "name must not be empty or contain control characters" CHECK (name ~ '^[^[:cntrl:]]+$' AND btrim(name) <> ''),
    tenant          text CONSTRAINT "tenant must not be empty or *" CHECK (tenant NOT IN ('', '*')),
    address         text NOT NULL
                    CONSTRAINT "address must be a valid email address" CHECK (email_accounts.is_valid_address(address)),
    provider        text REFERENCES email_accounts.provider (name) ON UPDATE CASCADE,
    owner_role      name NOT NULL DEFAULT current_user,

    -- Authentication
    login_id              text CONSTRAINT "login_id must not be empty or contain control characters" CHECK (login_id ~ '^[^[:cntrl:]]+$'),
    awaiting_password     boolean NOT NULL DEFAULT false,
    ascii_encode_password boolean NOT NULL DEFAULT false,
    password_set_at       timestamptz,
    allow_plaintext_authentication boolean NOT NULL DEFAULT false,
    -- (The length is checked first, as constraints are in name order: a
    -- worker parses every certificate on each connection it opens.)
    extra_ca_certificate  text CONSTRAINT "extra_ca_certificate length must be at most 262144 bytes" CHECK (octet_length(extra_ca_certificate) <= 262144)
                          CONSTRAINT "extra_ca_certificate must be PEM certificates" CHECK (email_accounts.is_valid_certificate(extra_ca_certificate)),

    -- Incoming
    enable_incoming    boolean NOT NULL DEFAULT false,
    incoming_protocol  text CONSTRAINT "incoming_protocol must be imap or pop3" CHECK (incoming_protocol IN ('imap', 'pop3')),
    incoming_host      text CONSTRAINT "incoming_host must not be empty" CHECK (btrim(incoming_host) <> ''),
    incoming_port      integer CONSTRAINT "incoming_port must be between 1 and 65535" CHECK (incoming_port BETWEEN 1 AND 65535),
    incoming_security  text CONSTRAINT "incoming_security must be ssl, starttls or none" CHECK (incoming_security IN ('ssl', 'starttls', 'none')),
    folders            text[] NOT NULL DEFAULT '{INBOX}'
                       CONSTRAINT "folders must name at least one folder, without empty names or line breaks"
                       CHECK (email_accounts.folder_names_are_valid(folders)),
    sync_option        text NOT NULL DEFAULT 'unseen' CONSTRAINT "sync_option must be all or unseen" CHECK (sync_option IN ('all', 'unseen')),
    initial_sync_count integer NOT NULL DEFAULT 250 CONSTRAINT "initial_sync_count must be positive" CHECK (initial_sync_count > 0),
    attachment_size_limit bigint NOT NULL DEFAULT 26214400 CONSTRAINT "attachment_size_limit must be positive" CHECK (attachment_size_limit > 0),
    default_incoming   boolean NOT NULL DEFAULT false,
    pop3_retrieval     text NOT NULL DEFAULT 'keep'
                       CONSTRAINT "pop3_retrieval must be keep, delete_after_store or delete_after_days"
                       CHECK (pop3_retrieval IN ('keep', 'delete_after_store', 'delete_after_days')),
    pop3_delete_after_days integer CONSTRAINT "pop3_delete_after_days must be positive" CHECK (pop3_delete_after_days > 0),
    poll_interval      interval NOT NULL DEFAULT '5 minutes'
                       CONSTRAINT "poll_interval must be at least 10 seconds" CHECK (poll_interval >= interval '10 seconds'),
    enable_auto_reply  boolean NOT NULL DEFAULT false,
    auto_reply_message text,
    auto_reply_interval interval NOT NULL DEFAULT '7 days'
                       CONSTRAINT "auto_reply_interval must be at least 1 hour" CHECK (auto_reply_interval >= interval '1 hour'),
    append_to_table    regclass,
    append_to_columns  jsonb NOT NULL DEFAULT '{}'
                       CONSTRAINT "append_to_columns must be a JSON object of column → message field" CHECK (jsonb_typeof(append_to_columns) = 'object'),
    on_receive_function regprocedure,

    -- Outgoing
    enable_outgoing   boolean NOT NULL DEFAULT false,
    smtp_host         text CONSTRAINT "smtp_host must not be empty" CHECK (btrim(smtp_host) <> ''),
    smtp_port         integer CONSTRAINT "smtp_port must be between 1 and 65535" CHECK (smtp_port BETWEEN 1 AND 65535),
    smtp_security     text CONSTRAINT "smtp_security must be ssl, starttls or none" CHECK (smtp_security IN ('ssl', 'starttls', 'none')),
    no_smtp_authentication boolean NOT NULL DEFAULT false,
    add_signature     boolean NOT NULL DEFAULT false,
    signature         text,
    default_outgoing  boolean NOT NULL DEFAULT false,
    always_use_account_address_as_sender   boolean NOT NULL DEFAULT false,
    always_use_account_name_as_sender_name boolean NOT NULL DEFAULT false,
    send_unsubscribe_message boolean NOT NULL DEFAULT false,
    track_email_status       boolean NOT NULL DEFAULT false,
    append_to_sent_folder    boolean NOT NULL DEFAULT false,
    sent_folder              text NOT NULL DEFAULT 'Sent' CONSTRAINT "sent_folder must not be empty" CHECK (btrim(sent_folder) <> ''),
    send_limit_per_minute    integer CONSTRAINT "send_limit_per_minute must be positive" CHECK (send_limit_per_minute > 0),
    send_limit_per_hour      integer CONSTRAINT "send_limit_per_hour must be positive" CHECK (send_limit_per_hour > 0),
    send_limit_per_day       integer CONSTRAINT "send_limit_per_day must be positive" CHECK (send_limit_per_day > 0),

    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    auth_method text CONSTRAINT "auth_method must be password or oauth2" CHECK (auth_method IN ('password', 'oauth2')),
    enable_automatic_linking boolean NOT NULL DEFAULT false,
    reply_to_document_address boolean NOT NULL DEFAULT false,
    signed_envelope_sender boolean NOT NULL DEFAULT false,
    soft_bounce_limit integer CONSTRAINT "soft_bounce_limit must be positive" CHECK (soft_bounce_limit > 0),
    soft_bounce_days integer NOT NULL DEFAULT 7
                     CONSTRAINT "soft_bounce_days must be between 1 and 365" CHECK (soft_bounce_days BETWEEN 1 AND 365),
    on_bounce_function regprocedure,
    auto_reply_template text,
    visibility  text NOT NULL DEFAULT 'tenant'
                CONSTRAINT "visibility must be tenant, private or shared" CHECK (visibility IN ('tenant', 'private', 'shared')),
    shared_with name[] NOT NULL DEFAULT '{}'
                CONSTRAINT "shared_with must not contain empty or NULL role names"
                CHECK (array_position(shared_with, NULL) IS NULL AND array_position(shared_with, '') IS NULL),
    smtp_login_id        text CONSTRAINT "smtp_login_id must not be empty or contain control characters" CHECK (smtp_login_id ~ '^[^[:cntrl:]]+$'),
    smtp_auth_method     text CONSTRAINT "smtp_auth_method must be password or oauth2" CHECK (smtp_auth_method IN ('password', 'oauth2')),
    smtp_password_set_at timestamptz,

    CONSTRAINT "visibility shared needs at least one role in shared_with"
        CHECK (visibility <> 'shared' OR cardinality(shared_with) >= 1),
    CONSTRAINT "pop3_delete_after_days is required when pop3_retrieval is delete_after_days"
        CHECK (pop3_retrieval <> 'delete_after_days' OR pop3_delete_after_days IS NOT NULL),
    CONSTRAINT "auto_reply_message or auto_reply_template is required when enable_auto_reply is on"
        CHECK (NOT enable_auto_reply OR btrim(coalesce(auto_reply_message, '')) <> '' OR auto_reply_template IS NOT NULL),
    CONSTRAINT "signature is required when add_signature is on"
        CHECK (NOT add_signature OR btrim(coalesce(signature, '')) <> ''),
    CONSTRAINT "default_incoming needs enable_incoming" CHECK (NOT default_incoming OR enable_incoming),
    CONSTRAINT "default_outgoing needs enable_outgoing" CHECK (NOT default_outgoing OR enable_outgoing),
    CONSTRAINT "append_to_columns is required when append_to_table is set"
        CHECK (append_to_table IS NULL OR append_to_columns <> '{}'),
    -- local+b<key>-<outbox id>-<signature> must fit RFC 5321's 64 octets.
    CONSTRAINT "signed_envelope_sender needs an address whose local part has at most 24 characters"
        CHECK (NOT signed_envelope_sender OR octet_length(split_part(address, '@', 1)) <= 24)
);

-- Names and addresses are unique within a tenant (and among accounts without
-- one), so a tenant can neither probe nor reserve another tenant's.
CREATE UNIQUE INDEX "account name is unique per tenant"
    ON email_accounts.account (tenant, name) NULLS NOT DISTINCT;
CREATE UNIQUE INDEX "account address is unique per tenant"
    ON email_accounts.account (tenant, address) NULLS NOT DISTINCT;
-- At most one default per tenant, and one among accounts without a tenant.
CREATE UNIQUE INDEX "one default_incoming account per tenant"
    ON email_accounts.account (tenant) NULLS NOT DISTINCT WHERE default_incoming;
CREATE UNIQUE INDEX "one default_outgoing account per tenant"
    ON email_accounts.account (tenant) NULLS NOT DISTINCT WHERE default_outgoing;
CREATE INDEX account_tenant ON email_accounts.account (tenant);
CREATE INDEX account_address_domain ON email_accounts.account (lower(split_part(address, '@', 2)));
-- Choosing an outbox row's account by name or by the sender's address, and
-- the few accounts not visible to their whole tenant (hidden_mailboxes(),
-- on every send): probes rather than reads of every account.
CREATE INDEX account_name ON email_accounts.account (name);
CREATE INDEX account_address ON email_accounts.account (lower(address));
CREATE INDEX account_private_or_shared ON email_accounts.account (account_id) WHERE visibility <> 'tenant';

COMMENT ON TABLE email_accounts.account IS
  'Email accounts (ERPNext "Email Account"). Server settings left NULL are inherited from the domain of the address, then from the provider (the account''s, else the domain''s); see account_settings for the effective values. Passwords are not here: they are written with set_password() and stored encrypted where no role can read them.';
COMMENT ON COLUMN email_accounts.account.account_id IS 'Surrogate key.';
COMMENT ON COLUMN email_accounts.account.name IS 'Account name, unique within its tenant; used to refer to the account in functions and, with always_use_account_name_as_sender_name, as the sender name.';
COMMENT ON COLUMN email_accounts.account.tenant IS 'Customer or contract the account belongs to; NULL for an account shared by the whole database. Roles bound to tenants (tenant_member) see only their tenants'' accounts.';
COMMENT ON COLUMN email_accounts.account.address IS 'The account''s email address, bare (no display name); unique within its tenant.';
COMMENT ON COLUMN email_accounts.account.provider IS 'Provider preset whose server settings fill whatever the account and its domain leave NULL.';
COMMENT ON COLUMN email_accounts.account.owner_role IS 'Role that owns the account: its members may call set_password() and test_account() for it, and append_to_table, on_receive_function and on_bounce_function run as it. Never one of the email_accounts group roles; with routing set, neither a superuser nor a role bound to no tenant of the account. Only its members may name it.';
COMMENT ON COLUMN email_accounts.account.login_id IS 'Login name when it differs from the address (for both sides, unless smtp_login_id is set); NULL logs in with the address.';
COMMENT ON COLUMN email_accounts.account.awaiting_password IS 'The password will be given later: workers skip the account until set_password() is called, which clears this (once no stored password of either side is bound to other servers).';
COMMENT ON COLUMN email_accounts.account.ascii_encode_password IS 'Send the password as plain ASCII bytes (as ERPNext does); set_password() then refuses passwords with non-ASCII characters.';
COMMENT ON COLUMN email_accounts.account.password_set_at IS 'When set_password() last stored the incoming side''s password (side both or incoming); NULL when none is stored. Not a secret.';
COMMENT ON COLUMN email_accounts.account.allow_plaintext_authentication IS 'Allow sending the password over a connection without TLS (security none). Off by default, and the clients refuse such logins unless it is on.';
COMMENT ON COLUMN email_accounts.account.extra_ca_certificate IS 'Extra trusted CA certificate(s), PEM, at most 256 KiB, for mail servers with a private CA; NULL inherits the domain''s. Certificates are always verified.';
COMMENT ON COLUMN email_accounts.account.enable_incoming IS 'Fetch incoming mail from this account.';
COMMENT ON COLUMN email_accounts.account.incoming_protocol IS 'imap or pop3; NULL inherits.';
COMMENT ON COLUMN email_accounts.account.incoming_host IS 'IMAP or POP3 server host name; NULL inherits.';
COMMENT ON COLUMN email_accounts.account.incoming_port IS 'IMAP or POP3 server port; NULL inherits.';
COMMENT ON COLUMN email_accounts.account.incoming_security IS 'ssl (TLS from the first byte), starttls, or none; NULL inherits.';
COMMENT ON COLUMN email_accounts.account.folders IS 'IMAP folders to sync, e.g. {INBOX,Support}; POP3 has only one mailbox.';
COMMENT ON COLUMN email_accounts.account.sync_option IS 'all: every message; unseen: only messages not yet seen on the server.';
COMMENT ON COLUMN email_accounts.account.initial_sync_count IS 'On the first sync of a folder, fetch only the newest this many messages.';
COMMENT ON COLUMN email_accounts.account.attachment_size_limit IS 'Attachments larger than this many bytes: incoming ones are recorded without their content, outgoing ones are refused when queued (SQLSTATE 54000).';
COMMENT ON COLUMN email_accounts.account.default_incoming IS 'The tenant''s default incoming account: replies to mail sent from accounts that do not always send as themselves are directed here. At most one per tenant.';
COMMENT ON COLUMN email_accounts.account.pop3_retrieval IS 'POP3 only: keep messages on the server, delete each once it is stored in the database (delete_after_store), or delete it pop3_delete_after_days after it was stored.';
COMMENT ON COLUMN email_accounts.account.pop3_delete_after_days IS 'Days after which a stored message is deleted from the POP3 server, with pop3_retrieval = delete_after_days.';
COMMENT ON COLUMN email_accounts.account.poll_interval IS 'How often the inbox is checked.';
COMMENT ON COLUMN email_accounts.account.enable_auto_reply IS 'Answer incoming mail with auto_reply_message (RFC 3834 rules apply).';
COMMENT ON COLUMN email_accounts.account.auto_reply_message IS 'Text of the automatic reply.';
COMMENT ON COLUMN email_accounts.account.auto_reply_interval IS 'A sender who got an automatic reply gets no other one from this account within this interval (RFC 3834); at least 1 hour.';
COMMENT ON COLUMN email_accounts.account.append_to_table IS 'Application table that gets a new row for each incoming message that is not a reply (ERPNext "append to": support@ creates an issue). Inserted as owner_role, which needs INSERT on it; the table needs a single-column primary key, which becomes the message''s reference_id.';
COMMENT ON COLUMN email_accounts.account.append_to_columns IS 'Which message field fills which column of append_to_table, e.g. {"title": "subject", "raised_by": "sender_address", "description": "body"}. Fields: see email_accounts.message_fields().';
COMMENT ON COLUMN email_accounts.account.on_receive_function IS 'Function (message_id bigint) called for each new incoming message in the transaction that stores it, as owner_role (which needs EXECUTE); an error there is recorded on the message and does not stop the sync.';
COMMENT ON COLUMN email_accounts.account.enable_outgoing IS 'Send mail through this account.';
COMMENT ON COLUMN email_accounts.account.smtp_host IS 'SMTP server host name; NULL inherits.';
COMMENT ON COLUMN email_accounts.account.smtp_port IS 'SMTP server port; NULL inherits.';
COMMENT ON COLUMN email_accounts.account.smtp_security IS 'ssl (TLS from the first byte, usually port 465), starttls (usually 587), or none; NULL inherits.';
COMMENT ON COLUMN email_accounts.account.no_smtp_authentication IS 'Send without SMTP AUTH (e.g. a relay that trusts the database host).';
COMMENT ON COLUMN email_accounts.account.add_signature IS 'Append signature to outgoing mail.';
COMMENT ON COLUMN email_accounts.account.signature IS 'Signature appended to outgoing mail when add_signature is on.';
COMMENT ON COLUMN email_accounts.account.default_outgoing IS 'The tenant''s default outgoing account, used when mail names no account and no account matches the sender. At most one per tenant.';
COMMENT ON COLUMN email_accounts.account.always_use_account_address_as_sender IS 'From is always the account address, whatever sender the mail names.';
COMMENT ON COLUMN email_accounts.account.always_use_account_name_as_sender_name IS 'The From display name is always the account name.';
COMMENT ON COLUMN email_accounts.account.send_unsubscribe_message IS 'Add an unsubscribe link and List-Unsubscribe headers to outgoing mail.';
COMMENT ON COLUMN email_accounts.account.track_email_status IS 'Track opens of outgoing mail with a tracking pixel.';
COMMENT ON COLUMN email_accounts.account.append_to_sent_folder IS 'After sending, append a copy to sent_folder over IMAP.';
COMMENT ON COLUMN email_accounts.account.sent_folder IS 'IMAP folder that receives copies of sent mail.';
COMMENT ON COLUMN email_accounts.account.send_limit_per_minute IS 'At most this many messages a minute through this account; NULL for no limit.';
COMMENT ON COLUMN email_accounts.account.send_limit_per_hour IS 'At most this many messages an hour; NULL for no limit.';
COMMENT ON COLUMN email_accounts.account.send_limit_per_day IS 'At most this many messages a day; NULL for no limit.';
COMMENT ON COLUMN email_accounts.account.created_at IS 'When the row was added.';
COMMENT ON COLUMN email_accounts.account.updated_at IS 'When the row last changed.';
COMMENT ON COLUMN email_accounts.account.enable_automatic_linking IS 'Incoming mail to a document address of this account (local+<table>=<id>@domain, see document_address()) is linked to that application row, even when it answers nothing (ERPNext "Enable Automatic Linking"); the row must exist and be readable by owner_role.';
COMMENT ON COLUMN email_accounts.account.reply_to_document_address IS 'Outgoing mail about an application row (reference_table/reference_id) gets that row''s document address as Reply-To, so answers come back linked; send(reply_to_document => ...) or outbox.reply_to_document decide per message.';
COMMENT ON COLUMN email_accounts.account.signed_envelope_sender IS 'Mail goes out with the envelope sender local+b<key>-<outbox id>-<signature>@domain (VERP-style, signed with the link signing key), and a delivery report about this account''s mail counts only when it comes back to such an address with a valid signature (or, for a complaint, returns the mail with one as Return-Path): a forged report naming a Message-ID changes nothing. Needs a server that takes and delivers sub-addresses (recipient delimiter +).';
COMMENT ON COLUMN email_accounts.account.soft_bounce_limit IS 'Suppress an address (reason soft_bounce) once this many messages to it in soft_bounce_days came back delayed, with a 4.x.x failure or a full mailbox (5.2.2); NULL never does.';
COMMENT ON COLUMN email_accounts.account.soft_bounce_days IS 'The window of soft_bounce_limit, in days.';
COMMENT ON COLUMN email_accounts.account.on_bounce_function IS 'Function (outbox_id bigint, address text) called as owner_role for each recipient a delivery report or complaint recorded (outbox_recipient.report says what came back), in the transaction that stores the report; an error there is recorded on the report and stops nothing else.';
COMMENT ON COLUMN email_accounts.account.auto_reply_template IS 'A template (see the template table) the automatic reply is made from instead of auto_reply_message, over the incoming message''s fields: from (Name <address>), subject, reply_subject (Re: …), received_at, account, account_address.';
COMMENT ON COLUMN email_accounts.account.visibility IS 'Who sees the account''s mail (message, inbox, sync_status, its outbox rows and their recipients and attachments) and may send through it or sync it: tenant (every role of the tenant), private (members of owner_role), shared (members of owner_role or of a role in shared_with). email_accounts_admin members of the tenant and superusers always do. The account row itself stays visible to the tenant, and set_password() and test_account() stay with owner_role members and admins. Only admins change it.';
COMMENT ON COLUMN email_accounts.account.shared_with IS 'With visibility shared: the roles (and their members) that see the account''s mail and may send through it, besides owner_role. Existing roles, not the email_accounts group roles.';
COMMENT ON COLUMN email_accounts.account.smtp_login_id IS 'Login name of the SMTP side when it differs from the incoming side''s (a relay with credentials of its own); NULL uses login_id, else the address.';
COMMENT ON COLUMN email_accounts.account.smtp_auth_method IS 'password or oauth2 for the SMTP side when it differs from the incoming side''s; NULL uses the effective auth_method.';
COMMENT ON COLUMN email_accounts.account.smtp_password_set_at IS 'When set_password() last stored the SMTP side''s password (side both or smtp); NULL when none is stored. Not a secret.';
COMMENT ON COLUMN email_accounts.account.auth_method IS 'password (set_password()) or oauth2 (an access token by SASL XOAUTH2/OAUTHBEARER: oauth_device_login(), set_oauth_refresh_token() or connect_oauth_client_credentials()); NULL inherits the domain''s, then the provider''s, else password.';

SELECT pg_catalog.pg_extension_config_dump('email_accounts.account', '');
-- Identity sequences are dumped only when named: a restored database hands out fresh ids.
SELECT pg_catalog.pg_extension_config_dump('email_accounts.account_account_id_seq', '');
