-- The inbox: messages the receiver worker pulls from IMAP folders and POP3
-- mailboxes, their attachments, and where each folder's sync stands. A
-- batch of messages and its folder's cursor commit together, so a crash
-- never loses or duplicates a message.

CREATE TABLE email_accounts.message (
    message_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id          bigint NOT NULL REFERENCES email_accounts.account (account_id) ON DELETE CASCADE,
    tenant              text,
    folder              text NOT NULL,
    uidvalidity         bigint,
    uid                 bigint,
    unique_id           text,
    internet_message_id text,
    in_reply_to         text,
    "references"        text[] NOT NULL DEFAULT '{}',
    thread_id           text GENERATED ALWAYS AS (coalesce("references"[1], in_reply_to, internet_message_id)) STORED,
    from_address        text,
    to_addresses        text[] NOT NULL DEFAULT '{}',
    cc_addresses        text[] NOT NULL DEFAULT '{}',
    reply_to            text[] NOT NULL DEFAULT '{}',
    subject             text,
    sent_at             timestamptz,
    body_text           text,
    body_html           text,
    headers             jsonb NOT NULL DEFAULT '[]',
    size                bigint NOT NULL,
    seen                boolean NOT NULL DEFAULT false,
    received_at         timestamptz NOT NULL DEFAULT now(),
    raw                 bytea NOT NULL,
    raw_sha256          bytea NOT NULL,
    headers_only        boolean NOT NULL DEFAULT false,
    parse_error         text,
    reply_to_outbox_id  bigint REFERENCES email_accounts.outbox (outbox_id) ON DELETE SET NULL,
    -- No foreign key: one to the table itself makes pg_dump warn of a cycle
    -- (every table of the extension is dumped as data); forget_deleted_replies does its ON DELETE SET NULL.
    reply_to_message_id bigint,
    reference_table     regclass,
    reference_id        text,
    auto_reply_outbox_id bigint REFERENCES email_accounts.outbox (outbox_id) ON DELETE SET NULL,
    no_auto_reply_reason text,
    routing_error       text,
    CONSTRAINT "an IMAP message has uidvalidity and uid, a POP3 message a unique_id"
        CHECK ((uid IS NOT NULL AND uidvalidity IS NOT NULL AND unique_id IS NULL)
            OR (uid IS NULL AND uidvalidity IS NULL AND unique_id IS NOT NULL))
);

-- lz4 instead of pglz for the large values: pglz was the single biggest
-- cost of storing incoming mail (9 % of the receiver's CPU in the ingest bench).
ALTER TABLE email_accounts.message
    ALTER COLUMN raw SET COMPRESSION lz4,
    ALTER COLUMN body_text SET COMPRESSION lz4,
    ALTER COLUMN body_html SET COMPRESSION lz4,
    ALTER COLUMN headers SET COMPRESSION lz4;

-- Exactly once: an IMAP message by its UID in the folder's UIDVALIDITY, a POP3 one by its UIDL.
CREATE UNIQUE INDEX message_imap_uid ON email_accounts.message (account_id, folder, uidvalidity, uid) WHERE uid IS NOT NULL;
CREATE UNIQUE INDEX message_pop3_unique_id ON email_accounts.message (account_id, unique_id) WHERE unique_id IS NOT NULL;
-- Threads and reply look-ups.
CREATE INDEX message_internet_message_id ON email_accounts.message (internet_message_id);
-- (Without GIN's pending list: each message's entries go into the index as
-- it is stored. With the list, every message, one without References too
-- (an empty array has an entry), rewrote the index's meta page, and the
-- list was merged later, 4 MB at a time, by VACUUM or inside whichever
-- insert found it full. Ingest of 20,000, alternated in one cluster: +8 to
-- +13 % msg/s in three pairs.)
CREATE INDEX message_references ON email_accounts.message USING gin ("references") WITH (fastupdate = off);
CREATE INDEX message_thread ON email_accounts.message (thread_id);
CREATE INDEX message_reference ON email_accounts.message (reference_table, reference_id) WHERE reference_table IS NOT NULL;
-- The inbox view, newest first; a resync's content match.
CREATE INDEX message_account_received ON email_accounts.message (account_id, received_at DESC);
CREATE INDEX message_account_folder_sha256 ON email_accounts.message (account_id, folder, raw_sha256);
CREATE INDEX message_reply_to_outbox ON email_accounts.message (reply_to_outbox_id) WHERE reply_to_outbox_id IS NOT NULL;
CREATE INDEX message_reply_to_message ON email_accounts.message (reply_to_message_id) WHERE reply_to_message_id IS NOT NULL;
-- Deleting outbox rows sets these to NULL: without it, each deleted row read every message.
CREATE INDEX message_auto_reply_outbox ON email_accounts.message (auto_reply_outbox_id) WHERE auto_reply_outbox_id IS NOT NULL;

COMMENT ON TABLE email_accounts.message IS
  'Incoming mail, one row per message per folder, stored by the receiver worker exactly once. The raw bytes are always kept; the parsed fields can be rebuilt with reparse().';
COMMENT ON COLUMN email_accounts.message.message_id IS 'Surrogate key (what reparse() and on_receive functions take).';
COMMENT ON COLUMN email_accounts.message.account_id IS 'The account the message was fetched from.';
COMMENT ON COLUMN email_accounts.message.tenant IS 'The account''s tenant when stored; row-level security keys on it.';
COMMENT ON COLUMN email_accounts.message.folder IS 'IMAP folder (or the POP3 mailbox''s folder name, INBOX by default).';
COMMENT ON COLUMN email_accounts.message.uidvalidity IS 'IMAP: the folder''s UIDVALIDITY the uid belongs to. NULL for POP3.';
COMMENT ON COLUMN email_accounts.message.uid IS 'IMAP: the message''s UID in the folder. NULL for POP3.';
COMMENT ON COLUMN email_accounts.message.unique_id IS 'POP3: the server''s UIDL for the message. NULL for IMAP.';
COMMENT ON COLUMN email_accounts.message.internet_message_id IS 'The Message-ID header, with angle brackets; NULL when the message has none.';
COMMENT ON COLUMN email_accounts.message.in_reply_to IS 'The first Message-ID of the In-Reply-To header.';
COMMENT ON COLUMN email_accounts.message."references" IS 'The Message-IDs of the References header, oldest first.';
COMMENT ON COLUMN email_accounts.message.thread_id IS 'The Message-ID that starts the thread: the first reference, else In-Reply-To, else the message''s own.';
COMMENT ON COLUMN email_accounts.message.from_address IS 'The From mailbox (Name <address>).';
COMMENT ON COLUMN email_accounts.message.to_addresses IS 'To mailboxes.';
COMMENT ON COLUMN email_accounts.message.cc_addresses IS 'Cc mailboxes.';
COMMENT ON COLUMN email_accounts.message.reply_to IS 'Reply-To mailboxes.';
COMMENT ON COLUMN email_accounts.message.subject IS 'Subject, decoded.';
COMMENT ON COLUMN email_accounts.message.sent_at IS 'The Date header.';
COMMENT ON COLUMN email_accounts.message.body_text IS 'The plain-text body (converted from HTML when the message has only HTML).';
COMMENT ON COLUMN email_accounts.message.body_html IS 'The HTML body; NULL when the message has only text.';
COMMENT ON COLUMN email_accounts.message.headers IS 'Every header in order as a JSON array of {"name": ..., "value": ...} (unfolded, undecoded).';
COMMENT ON COLUMN email_accounts.message.size IS 'Size in bytes as the server reported it.';
COMMENT ON COLUMN email_accounts.message.seen IS 'IMAP: whether the message had \Seen on the server when fetched (the worker never sets it).';
COMMENT ON COLUMN email_accounts.message.received_at IS 'When the worker stored the message.';
COMMENT ON COLUMN email_accounts.message.raw IS 'The message as fetched (RFC 5322 bytes); only its header section when headers_only.';
COMMENT ON COLUMN email_accounts.message.raw_sha256 IS 'SHA-256 of raw: how a resync after a UIDVALIDITY change recognises messages already stored.';
COMMENT ON COLUMN email_accounts.message.headers_only IS 'The message was larger than email_accounts.max_message_size: only its headers were fetched.';
COMMENT ON COLUMN email_accounts.message.parse_error IS 'Why the message could not be parsed (it is kept raw); NULL when it was.';
COMMENT ON COLUMN email_accounts.message.reply_to_outbox_id IS 'The outbox mail this message answers (by In-Reply-To, else References).';
COMMENT ON COLUMN email_accounts.message.reply_to_message_id IS 'The earlier incoming message this one answers, when it answers no outbox mail.';
COMMENT ON COLUMN email_accounts.message.reference_table IS 'The application table the message is about: inherited from the mail it answers, or append_to_table for a row it created.';
COMMENT ON COLUMN email_accounts.message.reference_id IS 'The application row (its key as text) the message is about.';
COMMENT ON COLUMN email_accounts.message.auto_reply_outbox_id IS 'The automatic reply queued for this message, if any.';
COMMENT ON COLUMN email_accounts.message.no_auto_reply_reason IS 'With auto reply on: why this message got none (RFC 3834: auto-submitted, list mail, already answered recently, ...).';
COMMENT ON COLUMN email_accounts.message.routing_error IS 'An error from append_to_table or on_receive_function for this message; the message itself is stored.';

CREATE TABLE email_accounts.message_attachment (
    attachment_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id    bigint NOT NULL REFERENCES email_accounts.message (message_id) ON DELETE CASCADE,
    position      integer NOT NULL,
    filename      text,
    content_type  text NOT NULL,
    size          bigint NOT NULL,
    content_id    text,
    inline        boolean NOT NULL DEFAULT false,
    content       bytea,
    UNIQUE (message_id, position)
);

-- (lz4, as the message's own large values above.)
ALTER TABLE email_accounts.message_attachment ALTER COLUMN content SET COMPRESSION lz4;

COMMENT ON TABLE email_accounts.message_attachment IS 'Attachments and inline parts of incoming messages.';
COMMENT ON COLUMN email_accounts.message_attachment.attachment_id IS 'Surrogate key.';
COMMENT ON COLUMN email_accounts.message_attachment.message_id IS 'The message the part belongs to.';
COMMENT ON COLUMN email_accounts.message_attachment.position IS 'Order of the part in the message, from 1.';
COMMENT ON COLUMN email_accounts.message_attachment.filename IS 'File name, decoded; NULL when the part names none.';
COMMENT ON COLUMN email_accounts.message_attachment.content_type IS 'MIME type, e.g. application/pdf.';
COMMENT ON COLUMN email_accounts.message_attachment.size IS 'Size in bytes after transfer decoding.';
COMMENT ON COLUMN email_accounts.message_attachment.content_id IS 'Content-ID without angle brackets, for cid: references from the HTML body.';
COMMENT ON COLUMN email_accounts.message_attachment.inline IS 'Shown in the body (inline disposition or a Content-ID) rather than attached.';
COMMENT ON COLUMN email_accounts.message_attachment.content IS 'The bytes; NULL when size is over the account''s attachment_size_limit (only the metadata is kept).';

CREATE TABLE email_accounts.sync_state (
    account_id           bigint NOT NULL REFERENCES email_accounts.account (account_id) ON DELETE CASCADE,
    folder               text NOT NULL,
    uidvalidity          bigint,
    last_uid             bigint NOT NULL DEFAULT 0,
    skipped_unique_ids   text[] NOT NULL DEFAULT '{}',
    last_sync_at         timestamptz,
    last_success_at      timestamptz,
    last_new_messages    integer NOT NULL DEFAULT 0,
    messages_stored      bigint NOT NULL DEFAULT 0,
    last_error           text,
    last_error_kind      text,
    consecutive_failures integer NOT NULL DEFAULT 0,
    next_attempt_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, folder)
);

COMMENT ON TABLE email_accounts.sync_state IS
  'Where each account''s folder stands: the IMAP cursor (advanced in the transaction that stores the messages), the last result, and when the worker tries next. A failing account backs off but is never disabled.';
COMMENT ON COLUMN email_accounts.sync_state.account_id IS 'The account.';
COMMENT ON COLUMN email_accounts.sync_state.folder IS 'IMAP folder, or the POP3 mailbox''s folder name.';
COMMENT ON COLUMN email_accounts.sync_state.uidvalidity IS 'IMAP: the folder''s UIDVALIDITY at the last sync; when the server''s differs the folder is synced afresh.';
COMMENT ON COLUMN email_accounts.sync_state.last_uid IS 'IMAP: every wanted message up to this UID is stored; the next sync fetches only higher UIDs.';
COMMENT ON COLUMN email_accounts.sync_state.skipped_unique_ids IS 'POP3: UIDLs the initial sync count left on the server; never fetched.';
COMMENT ON COLUMN email_accounts.sync_state.last_sync_at IS 'When the last sync ended, successful or not.';
COMMENT ON COLUMN email_accounts.sync_state.last_success_at IS 'When a sync last ended without error.';
COMMENT ON COLUMN email_accounts.sync_state.last_new_messages IS 'Messages stored by the last sync.';
COMMENT ON COLUMN email_accounts.sync_state.messages_stored IS 'Messages stored from this folder in total.';
COMMENT ON COLUMN email_accounts.sync_state.last_error IS 'Why the last sync failed (NULL when it succeeded), in the server''s words where it gave any.';
COMMENT ON COLUMN email_accounts.sync_state.last_error_kind IS 'dns, connect, timeout, tls, auth, oauth (getting an OAuth2 token, or a server refusing it), protocol, or store (the database refused a message).';
COMMENT ON COLUMN email_accounts.sync_state.consecutive_failures IS 'Failed syncs in a row; the retry delay doubles with each (capped by email_accounts.receive_max_backoff).';
COMMENT ON COLUMN email_accounts.sync_state.next_attempt_at IS 'When the worker syncs this account next (poll_interval after a success, backing off after failures).';

-- When an account is next synced: now if one of its folders has no state
-- yet, else its soonest folder. The receiver's due check and its sleep both
-- use it, for every account. A one-row table function called in FROM, which
-- the planner inlines into their statements: as a scalar function (with a
-- subquery) it ran as a plan of its own per account, 35 ms per look at 5,000
-- accounts, 12 ms inlined. (Its body is bound when it is created, so the
-- caller's search_path does not matter.)
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

-- How a folder's sync ended; schedules the next one. After a failure the
-- delay is poll_interval, doubling with each further failure, capped.
CREATE FUNCTION email_accounts.record_sync(synced_account_id bigint, synced_folder text, new_messages integer,
                                           error text, error_kind text, max_backoff_seconds integer)
RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    INSERT INTO email_accounts.sync_state AS state (account_id, folder, last_sync_at, last_success_at, last_new_messages,
                                                    last_error, last_error_kind, consecutive_failures, next_attempt_at)
    SELECT account.account_id, synced_folder, now(), CASE WHEN error IS NULL THEN now() END, new_messages,
           error, error_kind, CASE WHEN error IS NULL THEN 0 ELSE 1 END,
           now() + account.poll_interval
      FROM email_accounts.account WHERE account.account_id = synced_account_id
    ON CONFLICT (account_id, folder) DO UPDATE
       SET last_sync_at = now(),
           last_success_at = CASE WHEN excluded.last_error IS NULL THEN now() ELSE state.last_success_at END,
           last_new_messages = excluded.last_new_messages,
           last_error = excluded.last_error,
           last_error_kind = excluded.last_error_kind,
           consecutive_failures = CASE WHEN excluded.last_error IS NULL THEN 0 ELSE state.consecutive_failures + 1 END,
           next_attempt_at = now() + CASE
               WHEN excluded.last_error IS NULL THEN excluded.next_attempt_at - now()
               ELSE least((excluded.next_attempt_at - now()) * power(2, least(state.consecutive_failures, 20)),
                          greatest(make_interval(secs => max_backoff_seconds), excluded.next_attempt_at - now()))
           END;
END;

COMMENT ON FUNCTION email_accounts.record_sync(bigint, text, integer, text, text, integer) IS
  'Used by the receiver: records how a folder''s sync ended (error NULL for success) and when to try next: poll_interval after a success; after the n-th failure in a row poll_interval × 2^(n-1), at most max_backoff_seconds (but never less than poll_interval).';

-- A deleted message is no longer what its replies answer.
CREATE FUNCTION email_accounts.forget_deleted_replies() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE email_accounts.message AS reply SET reply_to_message_id = NULL
      FROM deleted WHERE reply.reply_to_message_id = deleted.message_id;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.forget_deleted_replies() IS
  'Trigger: the replies to deleted messages get reply_to_message_id NULL (what ON DELETE SET NULL would do; see the column).';

CREATE TRIGGER forget_deleted_replies AFTER DELETE ON email_accounts.message
    REFERENCING OLD TABLE AS deleted FOR EACH STATEMENT EXECUTE FUNCTION email_accounts.forget_deleted_replies();

SELECT pg_catalog.pg_extension_config_dump('email_accounts.message', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.message_attachment', '');
-- Identity sequences are dumped only when named: a restored database hands out fresh ids.
SELECT pg_catalog.pg_extension_config_dump('email_accounts.message_message_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.message_attachment_attachment_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.sync_state', '');
