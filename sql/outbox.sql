-- The transactional outbox: mail queued in the caller's transaction (by
-- INSERT, a trigger, or send()) and delivered by the sender worker after
-- commit. A rollback queues nothing.

CREATE TYPE email_accounts.attachment AS (
    filename     text,
    content_type text,
    content      bytea,
    content_id   text
);

COMMENT ON TYPE email_accounts.attachment IS
  'A file for send(): filename, MIME content type (default application/octet-stream), bytes, and a content id for inline images referenced as cid: in the HTML body.';

CREATE TABLE email_accounts.outbox (
    outbox_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          text,
    account         text,
    account_id      bigint REFERENCES email_accounts.account (account_id) ON DELETE SET NULL,
    sender          text CONSTRAINT "sender must be a valid mailbox" CHECK (email_accounts.is_valid_mailbox(sender)),
    to_addresses    text[] NOT NULL DEFAULT '{}',
    cc_addresses    text[] NOT NULL DEFAULT '{}',
    bcc_addresses   text[] NOT NULL DEFAULT '{}',
    reply_to        text[] NOT NULL DEFAULT '{}',
    subject         text NOT NULL DEFAULT ''
                    CONSTRAINT "subject must not contain line breaks" CHECK (subject !~ '[\r\n]'),
    body_text       text,
    body_html       text,
    headers         jsonb NOT NULL DEFAULT '{}'
                    CONSTRAINT "headers must be a JSON object" CHECK (jsonb_typeof(headers) = 'object'),
    message_id      text NOT NULL UNIQUE,
    in_reply_to     text CONSTRAINT "in_reply_to must be one <message id>" CHECK (in_reply_to ~ '^<[^<>\s]+>$'),
    "references"    text[] NOT NULL DEFAULT '{}',
    priority        smallint NOT NULL DEFAULT 0,
    send_after      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    reference_table regclass,
    reference_id    text,
    status          text NOT NULL DEFAULT 'queued'
                    CONSTRAINT "status must be queued, sending, retry, sent, failed, expired, cancelled or error"
                    CHECK (status IN ('queued', 'sending', 'retry', 'sent', 'failed', 'expired', 'cancelled', 'error')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    claim_token     uuid,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    CONSTRAINT "expires_at must be after send_after" CHECK (expires_at IS NULL OR expires_at > send_after),
    CONSTRAINT "reference_id needs reference_table" CHECK (reference_id IS NULL OR reference_table IS NOT NULL)
);

-- What the sender claims next: per account, already in claim order, so a
-- claim reads only the rows it takes (not every waiting row, then a sort).
CREATE INDEX outbox_claim_order ON email_accounts.outbox (account_id, priority DESC, next_attempt_at, outbox_id)
    WHERE status IN ('queued', 'retry');
-- Rows that may expire before they are sent (most have no expiry at all).
CREATE INDEX outbox_expiring ON email_accounts.outbox (expires_at)
    WHERE expires_at IS NOT NULL AND status IN ('queued', 'retry', 'sending');
-- An account's rows (its deletion sets their account_id NULL), by status,
-- and what it sent in the last day (rate limits count it in sent_at order).
-- One index for both: recording a delivery writes the row anew in every
-- index its version belongs to (status is indexed: never HOT), and a
-- second index with sent rows cost the sender ~4-9 µs a message (drains
-- of 20,000 alternated in one cluster: 12,145 → 13,293 msg/s).
CREATE INDEX outbox_account_status_sent_at ON email_accounts.outbox (account_id, status, sent_at);
-- The rows claimed on insert and when their claim's lease lapses (the
-- sender's own claims are in outbox_claim): the sender's sleep looks for
-- the first, the lapsed-claim pass for those past it (both had probed every
-- account: 9 ms a look with 5,000 accounts). Only a claim's row version has
-- an entry; the recording's does not.
CREATE INDEX outbox_sending ON email_accounts.outbox (account_id, lease_until) WHERE status = 'sending';
CREATE INDEX outbox_reference ON email_accounts.outbox (reference_table, reference_id) WHERE reference_table IS NOT NULL;
-- The automatic replies an account sent (auto_reply() looks for one to the
-- same sender within auto_reply_interval, for every message it answers).
CREATE INDEX outbox_auto_replies ON email_accounts.outbox (account_id, created_at)
    WHERE (headers ->> 'Auto-Submitted') = 'auto-replied';

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

-- lz4 instead of pglz for the large values, as the inbox does: storing a
-- 4 KB English body took 233 µs a row with pglz and 179 with lz4 (12 KB:
-- 409 and 215), and the sender reads it back 15-20 % faster; lz4 stores
-- about a fifth more. (Values stored before keep their method.)
ALTER TABLE email_accounts.outbox
    ALTER COLUMN body_text SET COMPRESSION lz4,
    ALTER COLUMN body_html SET COMPRESSION lz4,
    ALTER COLUMN headers SET COMPRESSION lz4;

COMMENT ON TABLE email_accounts.outbox IS
  'Mail to send. Insert rows (or call send()) in your own transaction: the sender worker is woken at commit and delivers them; a rollback sends nothing. Logged, never UNLOGGED: a queued message survives a crash.';
COMMENT ON COLUMN email_accounts.outbox.outbox_id IS 'Surrogate key, returned by send().';
COMMENT ON COLUMN email_accounts.outbox.tenant IS 'Tenant the mail belongs to; defaults to the resolved account''s tenant (or the queuing role''s only tenant). Row-level security keys on it.';
COMMENT ON COLUMN email_accounts.outbox.account IS 'Name of the account to send through, as requested; NULL lets the database choose (see account_id).';
COMMENT ON COLUMN email_accounts.outbox.account_id IS 'The account chosen at insert: the one named, else the one whose address is the sender, else the tenant''s default outgoing, else the global default outgoing. NULL with status error when none fits.';
COMMENT ON COLUMN email_accounts.outbox.sender IS 'Requested From mailbox (Name <address>); the account''s own address is used when the account always sends as itself.';
COMMENT ON COLUMN email_accounts.outbox.to_addresses IS 'To recipients, mailboxes (Name <address> or address).';
COMMENT ON COLUMN email_accounts.outbox.cc_addresses IS 'Cc recipients.';
COMMENT ON COLUMN email_accounts.outbox.bcc_addresses IS 'Bcc recipients: in the envelope only, never in a header.';
COMMENT ON COLUMN email_accounts.outbox.reply_to IS 'Reply-To mailboxes; when empty and the account does not always send as itself, the tenant''s default incoming account.';
COMMENT ON COLUMN email_accounts.outbox.subject IS 'Subject line; no line breaks.';
COMMENT ON COLUMN email_accounts.outbox.body_text IS 'Plain-text body; with body_html the message is multipart/alternative.';
COMMENT ON COLUMN email_accounts.outbox.body_html IS 'HTML body; inline images refer to attachments as cid:content_id.';
COMMENT ON COLUMN email_accounts.outbox.headers IS 'Extra headers as a JSON object of name → text value; names and values are checked (no line breaks, no headers the composer owns).';
COMMENT ON COLUMN email_accounts.outbox.message_id IS 'Message-ID, fixed at insert (<random@account domain>) so a resend after a crash carries the same id and replies can be linked back.';
COMMENT ON COLUMN email_accounts.outbox.in_reply_to IS 'Message-ID this mail answers; sets In-Reply-To (and References when none are given).';
COMMENT ON COLUMN email_accounts.outbox."references" IS 'Message-IDs of the thread, oldest first, for the References header.';
COMMENT ON COLUMN email_accounts.outbox.priority IS 'Higher is sent first among due rows.';
COMMENT ON COLUMN email_accounts.outbox.send_after IS 'Not sent before this time.';
COMMENT ON COLUMN email_accounts.outbox.expires_at IS 'Not sent after this time: the row becomes expired.';
COMMENT ON COLUMN email_accounts.outbox.reference_table IS 'The application table this mail is about (e.g. invoices); replies inherit it.';
COMMENT ON COLUMN email_accounts.outbox.reference_id IS 'The key of the application row this mail is about.';
COMMENT ON COLUMN email_accounts.outbox.status IS 'queued, sending (claimed on insert for a sender worker, email_accounts.claim_on_insert; a row the sender claimed keeps queued or retry, with a row in outbox_claim, and outbox_status shows it as sending), retry (after a temporary failure), sent, failed (permanently), expired, cancelled, or error (no account could be chosen).';
COMMENT ON COLUMN email_accounts.outbox.attempts IS 'Delivery attempts so far (an attempt out for delivery counts once recorded; outbox_claim.attempt meanwhile).';
COMMENT ON COLUMN email_accounts.outbox.next_attempt_at IS 'When the row is next due.';
COMMENT ON COLUMN email_accounts.outbox.lease_until IS 'While claimed on insert: when the claim lapses and another worker may take the row again.';
COMMENT ON COLUMN email_accounts.outbox.claim_token IS 'Always NULL since 0.4.0 (a claim''s token is in outbox_claim). A row claimed on insert (email_accounts.claim_on_insert) has none: its sender takes it without writing to it, and records it only while the row is still claimed for that very process.';
COMMENT ON COLUMN email_accounts.outbox.last_error IS 'The last failure, in the server''s own words where it gave any.';
COMMENT ON COLUMN email_accounts.outbox.created_at IS 'When the row was queued.';
COMMENT ON COLUMN email_accounts.outbox.sent_at IS 'When the server accepted the message for the last recipient.';

CREATE TABLE email_accounts.outbox_recipient (
    outbox_id  bigint NOT NULL REFERENCES email_accounts.outbox (outbox_id) ON DELETE CASCADE,
    address    text NOT NULL,
    kind       text NOT NULL CONSTRAINT "kind must be to, cc or bcc" CHECK (kind IN ('to', 'cc', 'bcc')),
    status     text NOT NULL DEFAULT 'pending'
               CONSTRAINT "recipient status must be pending, sent, deferred, failed or suppressed"
               CHECK (status IN ('pending', 'sent', 'deferred', 'failed', 'suppressed')),
    reply      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (outbox_id, address)
);
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

COMMENT ON TABLE email_accounts.outbox_recipient IS
  'One row per distinct recipient address of an outbox row, so a retry never re-sends to recipients the server already accepted.';
COMMENT ON COLUMN email_accounts.outbox_recipient.outbox_id IS 'The outbox row.';
COMMENT ON COLUMN email_accounts.outbox_recipient.address IS 'Bare address, lower-cased domain as given.';
COMMENT ON COLUMN email_accounts.outbox_recipient.kind IS 'to, cc or bcc (the first kind an address appeared under).';
COMMENT ON COLUMN email_accounts.outbox_recipient.status IS 'pending, sent (accepted by the server), deferred (4xx, retried), failed (5xx), suppressed (unsubscribed).';
COMMENT ON COLUMN email_accounts.outbox_recipient.reply IS 'The server''s reply for this recipient.';
COMMENT ON COLUMN email_accounts.outbox_recipient.updated_at IS 'When the status last changed.';

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

CREATE TABLE email_accounts.outbox_attachment (
    outbox_id    bigint NOT NULL REFERENCES email_accounts.outbox (outbox_id) ON DELETE CASCADE,
    position     integer NOT NULL,
    filename     text NOT NULL CONSTRAINT "attachment filename must not be empty" CHECK (btrim(filename) <> '' AND filename !~ '[\r\n]'),
    content_type text NOT NULL DEFAULT 'application/octet-stream',
    content      bytea NOT NULL,
    content_id   text CONSTRAINT "content_id must not contain <, > or line breaks" CHECK (content_id !~ '[<>\r\n]'),
    PRIMARY KEY (outbox_id, position)
);

-- (lz4, as the bodies above.)
ALTER TABLE email_accounts.outbox_attachment ALTER COLUMN content SET COMPRESSION lz4;

COMMENT ON TABLE email_accounts.outbox_attachment IS 'Files attached to outbox rows, in order.';
COMMENT ON COLUMN email_accounts.outbox_attachment.outbox_id IS 'The outbox row.';
COMMENT ON COLUMN email_accounts.outbox_attachment.position IS 'Order of the attachment in the message, from 1.';
COMMENT ON COLUMN email_accounts.outbox_attachment.filename IS 'File name shown to the recipient.';
COMMENT ON COLUMN email_accounts.outbox_attachment.content_type IS 'MIME type, e.g. application/pdf.';
COMMENT ON COLUMN email_accounts.outbox_attachment.content IS 'The file''s bytes.';
COMMENT ON COLUMN email_accounts.outbox_attachment.content_id IS 'Content id for an inline part (referenced as cid:content_id in body_html); NULL for an ordinary attachment.';

-- pg_dump keeps the queue: extension tables are otherwise dumped empty.
SELECT pg_catalog.pg_extension_config_dump('email_accounts.outbox', '');
-- Identity sequences are dumped only when named: a restored database hands out fresh ids.
SELECT pg_catalog.pg_extension_config_dump('email_accounts.outbox_outbox_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.outbox_recipient', '');
SELECT pg_catalog.pg_extension_config_dump('email_accounts.outbox_attachment', '');
-- (A restored claim names a sender that no longer runs: taken back, counted,
-- when the restored database's sender starts or the claim's lease lapses.)
SELECT pg_catalog.pg_extension_config_dump('email_accounts.outbox_claim', '');
