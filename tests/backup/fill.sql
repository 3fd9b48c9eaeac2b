-- Puts rows into every table of the extension, each written the way an
-- application or a worker writes it (the backup test asserts none is empty).
INSERT INTO email_accounts.provider (name, description, incoming_protocol, imap_host, imap_port, imap_security,
                                     smtp_host, smtp_port, smtp_security)
VALUES ('in_house', 'Our own mail servers', 'imap', 'imap.in-house.test', 993, 'ssl', 'smtp.in-house.test', 465, 'ssl');
-- A built-in preset changed by the DBA is restored as changed.
UPDATE email_accounts.provider SET smtp_port = 2525, description = 'Gmail, through our port' WHERE name = 'gmail';
INSERT INTO email_accounts.domain (domain_name, smtp_host, smtp_port, smtp_security, incoming_protocol, incoming_host,
                                   incoming_port, incoming_security)
VALUES ('example.test', 'mail.example.test', 587, 'starttls', 'imap', 'mail.example.test', 993, 'ssl');
DO $$ BEGIN CREATE ROLE backup_app; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
INSERT INTO email_accounts.tenant_member (role_name, tenant) VALUES ('backup_app', 'acme');
-- Settings from the domain, from a provider, and an account's own.
INSERT INTO email_accounts.account (name, tenant, address, enable_outgoing, enable_incoming, default_outgoing)
VALUES ('Alice', 'acme', 'alice@example.test', true, true, true),
       ('Shared', NULL, 'shared@example.test', true, false, true);
INSERT INTO email_accounts.account (name, tenant, address, provider, enable_outgoing, enable_incoming)
VALUES ('House', 'acme', 'house@in-house.test', 'in_house', true, true);
INSERT INTO email_accounts.account (name, tenant, address, smtp_host, smtp_port, smtp_security, enable_outgoing)
VALUES ('Own', 'other', 'own@own.test', 'smtp.own.test', 465, 'ssl', true);
SELECT email_accounts.set_password(name, 'secret of ' || name, tenant) FROM email_accounts.account;
-- Mail in every state, with recipients and an attachment.
SELECT email_accounts.send("to" => ARRAY['ann@example.test', 'bob@example.test'], subject => 'queued ' || n,
                           body_text => 'Hello', account => 'Alice', tenant => 'acme')
  FROM generate_series(1, 20) AS n;
SELECT email_accounts.send("to" => ARRAY['carol@example.test'], subject => 'with a file', account => 'Shared',
                           attachments => ARRAY[ROW('report.pdf', 'application/pdf', '\x255044462d'::bytea, NULL)::email_accounts.attachment]);
UPDATE email_accounts.outbox SET status = 'sent', sent_at = now(), attempts = 1, open_count = 2, opened_at = now()
 WHERE subject IN ('queued 1', 'queued 2');
UPDATE email_accounts.outbox_recipient SET status = 'sent'
 WHERE outbox_id IN (SELECT outbox_id FROM email_accounts.outbox WHERE subject IN ('queued 1', 'queued 2'));
UPDATE email_accounts.outbox SET status = 'retry', attempts = 3, last_error = '451 try later',
                                 next_attempt_at = now() + interval '1 minute'
 WHERE subject = 'queued 3';
UPDATE email_accounts.outbox SET status = 'failed', attempts = 10, last_error = '550 no such user' WHERE subject = 'queued 4';
UPDATE email_accounts.outbox SET status = 'sending', attempts = 1, claim_token = gen_random_uuid(),
                                 lease_until = now() + interval '5 minutes'
 WHERE subject = 'queued 5';
SELECT email_accounts.cancel(outbox_id) FROM email_accounts.outbox WHERE subject = 'queued 6';
INSERT INTO email_accounts.suppression (tenant, address, reason, outbox_id)
SELECT 'acme', 'bob@example.test', 'unsubscribed', outbox_id FROM email_accounts.outbox WHERE subject = 'queued 1';
-- Inbound: a message that answers the first mail, a reply to that one, an attachment, the folder's cursor.
INSERT INTO email_accounts.message (account_id, tenant, folder, uidvalidity, uid, internet_message_id, in_reply_to,
                                    from_address, to_addresses, subject, body_text, size, raw, raw_sha256,
                                    reply_to_outbox_id)
SELECT account.account_id, 'acme', 'INBOX', 7, 1, '<answer-1@example.test>', outbox.message_id, 'ann@example.test',
       ARRAY['alice@example.test'], 'Re: queued 1', 'Thanks', 4, 'raw1', sha256('raw1'), outbox.outbox_id
  FROM email_accounts.account, email_accounts.outbox
 WHERE account.name = 'Alice' AND outbox.subject = 'queued 1';
INSERT INTO email_accounts.message (account_id, tenant, folder, uidvalidity, uid, internet_message_id, in_reply_to,
                                    from_address, subject, size, raw, raw_sha256, reply_to_message_id)
SELECT account_id, tenant, 'INBOX', 7, 2, '<answer-2@example.test>', '<answer-1@example.test>', 'ann@example.test',
       'Re: Re: queued 1', 4, 'raw2', sha256('raw2'), message_id
  FROM email_accounts.message WHERE uid = 1;
INSERT INTO email_accounts.message_attachment (message_id, position, filename, content_type, size, content)
SELECT message_id, 1, 'photo.jpg', 'image/jpeg', 3, '\xffd8ff' FROM email_accounts.message WHERE uid = 1;
INSERT INTO email_accounts.sync_state (account_id, folder, uidvalidity, last_uid, messages_stored, last_sync_at)
SELECT account_id, 'INBOX', 7, 2, 2, now() FROM email_accounts.account WHERE name = 'Alice';
-- The link signing key is made when the first link token is.
SELECT email_accounts.rotate_link_signing_key();
