-- Mail that comes back (issue 16, part 2): delivery status notifications
-- (RFC 3464), non-standard bounces and complaints (RFC 5965 ARF) that the
-- receiver recognises among incoming mail (mail/src/receive/delivery_report.rs)
-- are matched to the outbox row and recipient they are about, by a signed
-- envelope sender (account.signed_envelope_sender) or the Message-ID of the
-- returned original, within the report's tenant.

ALTER TABLE email_accounts.message
    ADD COLUMN kind text NOT NULL DEFAULT 'mail'
        CONSTRAINT "message kind must be mail, delivery_report or complaint"
        CHECK (kind IN ('mail', 'delivery_report', 'complaint'));

COMMENT ON COLUMN email_accounts.message.kind IS
  'mail; delivery_report (a bounce or delay notice for mail we sent) or complaint (a feedback report): those are recorded on the outbox and never routed (no reply link, append_to, on_receive or auto reply).';

ALTER TABLE email_accounts.outbox_recipient
    DROP CONSTRAINT "recipient status must be pending, sent, deferred, failed or suppressed",
    ADD CONSTRAINT "recipient status must be pending, sent, deferred, failed, suppressed, bounced or complained"
        CHECK (status IN ('pending', 'sent', 'deferred', 'failed', 'suppressed', 'bounced', 'complained')),
    ADD COLUMN report text CONSTRAINT "report must be bounced, delayed, soft_bounce or complained"
        CHECK (report IN ('bounced', 'delayed', 'soft_bounce', 'complained')),
    ADD COLUMN report_status text,
    ADD COLUMN report_diagnostic text,
    ADD COLUMN report_remote_mta text,
    ADD COLUMN reported_at timestamptz,
    ADD COLUMN report_message_id bigint;

COMMENT ON COLUMN email_accounts.outbox_recipient.report IS
  'What came back after the server took the mail: bounced (a permanent failure, 5.x.x: status bounced), soft_bounce (a failure with a 4.x.x code), delayed (a warning; the status is unchanged) or complained (the recipient called it spam: status complained).';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_status IS 'The enhanced status code of the report (RFC 3463), e.g. 5.1.1.';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_diagnostic IS 'The remote server''s words (Diagnostic-Code).';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_remote_mta IS 'The server that refused it (Remote-MTA).';
COMMENT ON COLUMN email_accounts.outbox_recipient.reported_at IS 'When the report was stored.';
COMMENT ON COLUMN email_accounts.outbox_recipient.report_message_id IS 'The stored report (message.message_id).';

ALTER TABLE email_accounts.outbox
    DROP CONSTRAINT "status must be queued, sending, retry, sent, failed, expired, cancelled or error",
    ADD CONSTRAINT "status must be queued, sending, retry, sent, failed, expired, cancelled, error or bounced"
        CHECK (status IN ('queued', 'sending', 'retry', 'sent', 'failed', 'expired', 'cancelled', 'error', 'bounced'));

-- Where soft bounces of an address are counted (soft_bounce_limit): only
-- recipients something came back for, a small part of the table.
CREATE INDEX "reported recipients by address"
    ON email_accounts.outbox_recipient (lower(address), reported_at) WHERE report IS NOT NULL;

-- Records a recognised report (stored as stored_message_id) on the outbox
-- mail it is about. recognised: {kind, original_message_id, signed_outbox_id,
-- signed_recipient, signature_problem, recipients: [{address, final, action,
-- status, diagnostic, remote_mta, hard}]}; signed_outbox_id and
-- signed_recipient are what a signed envelope sender named, verified by the
-- receiver. Returns the recipients it recorded; why none is said in the
-- report's routing_error.
CREATE FUNCTION email_accounts.record_delivery_report(stored_message_id bigint, recognised jsonb)
RETURNS TABLE (reported_outbox_id bigint, reported_address text)
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stored email_accounts.message;
    sent_mail email_accounts.outbox;
    sending email_accounts.account;
    reported jsonb := coalesce(recognised->'recipients', '[]');
    signed_recipient text := lower(recognised->>'signed_recipient');
    named jsonb;
    outcome text;
    matched_address text;
    soft_failures bigint;
    recorded integer := 0;
    complaint boolean := recognised->>'kind' = 'complaint';
BEGIN
    SELECT * INTO stored FROM email_accounts.message WHERE message_id = stored_message_id;
    UPDATE email_accounts.message SET kind = CASE WHEN complaint THEN 'complaint' ELSE 'delivery_report' END
     WHERE message_id = stored_message_id;
    IF recognised->>'signature_problem' IS NOT NULL THEN
        UPDATE email_accounts.message
           SET routing_error = format('delivery report: %s', left(recognised->>'signature_problem', 255))
         WHERE message_id = stored_message_id;
        RETURN;
    END IF;
    -- Only mail sent through an account of the report's tenant: a report
    -- cannot touch another tenant's outbox. (Through the global default
    -- outgoing account, that is the mail of every tenant it sent for: its
    -- reports come back to its own mailbox, of no tenant.)
    IF signed_recipient IS NOT NULL THEN
        SELECT outbox.* INTO sent_mail
          FROM email_accounts.outbox JOIN email_accounts.account AS through ON through.account_id = outbox.account_id
         WHERE outbox.outbox_id = (recognised->>'signed_outbox_id')::bigint
           AND through.tenant IS NOT DISTINCT FROM stored.tenant;
    ELSE
        SELECT outbox.* INTO sent_mail
          FROM email_accounts.outbox JOIN email_accounts.account AS through ON through.account_id = outbox.account_id
         WHERE outbox.message_id = recognised->>'original_message_id'
           AND through.tenant IS NOT DISTINCT FROM stored.tenant;
    END IF;
    IF NOT FOUND THEN
        UPDATE email_accounts.message
           SET routing_error = CASE WHEN signed_recipient IS NOT NULL
                   THEN format('delivery report: outbox row %s of its signed envelope sender is gone', recognised->>'signed_outbox_id')
                   ELSE format('delivery report: no mail of this tenant has the Message-ID %s',
                               coalesce(left(recognised->>'original_message_id', 255), '(none returned)')) END
         WHERE message_id = stored_message_id;
        RETURN;
    END IF;
    SELECT * INTO sending FROM email_accounts.account WHERE account_id = sent_mail.account_id;
    -- Unsigned reports count only for an account that does not sign, and
    -- never across tenants (a tenant's mail through the global account).
    IF signed_recipient IS NULL AND (sending.signed_envelope_sender OR sent_mail.tenant IS DISTINCT FROM stored.tenant) THEN
        UPDATE email_accounts.message
           SET routing_error = CASE WHEN sending.signed_envelope_sender
                   THEN format('delivery report: account %s signs its envelope sender (signed_envelope_sender), and this report came back to no signed address',
                               quote_literal(sending.name))
                   ELSE format('delivery report: mail of tenant %s through account %s is matched only by a signed envelope sender (turn signed_envelope_sender on)',
                               quote_literal(sent_mail.tenant), quote_literal(sending.name)) END
         WHERE message_id = stored_message_id;
        RETURN;
    END IF;
    IF signed_recipient IS NOT NULL THEN
        -- Only the recipient the signature was made for: the report's entry
        -- for it, else its only entry (an alias the mail went on to), else
        -- (a complaint with the recipient redacted) the recipient itself.
        reported := coalesce(
            (SELECT jsonb_agg(entry) FROM jsonb_array_elements(reported) AS entry
              WHERE lower(entry->>'address') = signed_recipient OR lower(entry->>'final') = signed_recipient),
            CASE WHEN jsonb_array_length(reported) = 1 THEN jsonb_build_array(reported->0 || jsonb_build_object('address', signed_recipient))
                 WHEN complaint AND jsonb_array_length(reported) = 0 THEN jsonb_build_array(jsonb_build_object('address', signed_recipient))
                 ELSE '[]' END);
    ELSIF complaint AND jsonb_array_length(reported) = 0 THEN
        -- A complaint whose recipient is redacted, about mail to one recipient: that one.
        reported := coalesce((SELECT jsonb_agg(jsonb_build_object('address', only_one.address))
                                FROM email_accounts.outbox_recipient AS only_one
                               WHERE only_one.outbox_id = sent_mail.outbox_id
                              HAVING count(*) = 1), '[]');
    END IF;
    FOR named IN SELECT * FROM jsonb_array_elements(reported) LOOP
        outcome := CASE WHEN complaint THEN 'complained'
                        WHEN named->>'action' = 'delayed' THEN 'delayed'
                        WHEN named->>'action' = 'failed' AND (named->>'hard')::boolean THEN 'bounced'
                        WHEN named->>'action' = 'failed' THEN 'soft_bounce' END;
        CONTINUE WHEN outcome IS NULL;
        -- (Two recipients of one row may differ only in case, or be an alias and its target.)
        FOR matched_address IN
            UPDATE email_accounts.outbox_recipient AS recipient
               SET report = outcome, report_status = left(named->>'status', 16), report_diagnostic = left(named->>'diagnostic', 1000),
                   report_remote_mta = left(named->>'remote_mta', 255), reported_at = now(),
                   report_message_id = stored_message_id,
                   status = CASE outcome WHEN 'bounced' THEN 'bounced' WHEN 'complained' THEN 'complained' ELSE recipient.status END,
                   updated_at = now()
             WHERE recipient.outbox_id = sent_mail.outbox_id
               -- Only what the server took: a report never decides for pending or deferred recipients.
               AND recipient.status IN ('sent', 'bounced', 'complained')
               AND lower(recipient.address) IN (lower(named->>'address'), lower(named->>'final'))
               -- A late delay warning never hides a bounce or complaint recorded before.
               AND NOT (outcome IN ('delayed', 'soft_bounce') AND coalesce(recipient.report, '') IN ('bounced', 'complained'))
            RETURNING recipient.address
        LOOP
            recorded := recorded + 1;
            reported_outbox_id := sent_mail.outbox_id;
            reported_address := matched_address;
            RETURN NEXT;
            -- Not mailed again (for this tenant): complaints, and bounces that
            -- say the mailbox is gone (5.1.x, 5.2.1) — not policy, content or
            -- size refusals (5.7.x DMARC, 5.3.4, 5.2.2 full), which say nothing
            -- about the address.
            IF outcome = 'complained' OR (outcome = 'bounced' AND named->>'status' ~ '^5\.(1\.[0-9]{1,3}|2\.1)$') THEN
                INSERT INTO email_accounts.suppression (tenant, address, reason, outbox_id)
                VALUES (sent_mail.tenant, lower(matched_address), CASE outcome WHEN 'bounced' THEN 'bounce' ELSE 'complaint' END,
                        sent_mail.outbox_id)
                ON CONFLICT DO NOTHING;
            -- Soft failures (delays, 4.x.x, a full mailbox) suppress once the
            -- sending account's soft_bounce_limit of messages in soft_bounce_days had one.
            ELSIF sending.soft_bounce_limit IS NOT NULL
                  AND (outcome IN ('delayed', 'soft_bounce') OR named->>'status' = '5.2.2') THEN
                SELECT count(DISTINCT recipient.outbox_id) INTO soft_failures
                  FROM email_accounts.outbox_recipient AS recipient
                  JOIN email_accounts.outbox AS earlier ON earlier.outbox_id = recipient.outbox_id
                 WHERE lower(recipient.address) = lower(matched_address) AND recipient.report IS NOT NULL
                   AND recipient.reported_at > now() - make_interval(days => sending.soft_bounce_days)
                   AND (recipient.report IN ('delayed', 'soft_bounce') OR recipient.report_status = '5.2.2')
                   AND earlier.tenant IS NOT DISTINCT FROM sent_mail.tenant;
                IF soft_failures >= sending.soft_bounce_limit THEN
                    INSERT INTO email_accounts.suppression (tenant, address, reason, outbox_id)
                    VALUES (sent_mail.tenant, lower(matched_address), 'soft_bounce', sent_mail.outbox_id)
                    ON CONFLICT DO NOTHING;
                END IF;
            END IF;
        END LOOP;
    END LOOP;
    -- The mail bounced when every recipient did.
    UPDATE email_accounts.outbox SET status = 'bounced'
     WHERE outbox.outbox_id = sent_mail.outbox_id AND outbox.status = 'sent'
       AND NOT EXISTS (SELECT FROM email_accounts.outbox_recipient AS recipient
                        WHERE recipient.outbox_id = sent_mail.outbox_id AND recipient.status <> 'bounced');
    IF recorded = 0 THEN
        UPDATE email_accounts.message
           SET routing_error = format('delivery report: it names no recipient of outbox row %s', sent_mail.outbox_id)
         WHERE message_id = stored_message_id;
    END IF;
END;
$$;

COMMENT ON COLUMN email_accounts.suppression.reason IS
  'Why: unsubscribed (by a link or List-Unsubscribe), bounce (the mailbox is gone: 5.1.x, 5.2.1), complaint (a feedback report), soft_bounce (soft_bounce_limit reached), or whatever a person entered.';
COMMENT ON COLUMN email_accounts.suppression.outbox_id IS 'The message whose unsubscribe link was used, or that bounced or was complained about, if any.';

COMMENT ON FUNCTION email_accounts.record_delivery_report(bigint, jsonb) IS
  'Used by the receiver: records a recognised delivery report or complaint (the stored message stored_message_id) on the outbox mail it is about — the row and recipient its verified signed envelope sender names, else the row whose Message-ID it returns — sent through an account of the report''s tenant: per recipient bounced / soft_bounce / delayed / complained with status code, diagnostic and remote MTA (a delay never replaces a bounce or complaint); bounces saying the mailbox is gone (5.1.x, 5.2.1) and complaints are added to suppression, soft failures once soft_bounce_limit is reached; the mail is bounced when every recipient is. Only signed reports count for an account with signed_envelope_sender, and for a tenant''s mail through the global default account. Returns the recipients it recorded.';

REVOKE EXECUTE ON FUNCTION email_accounts.record_delivery_report(bigint, jsonb) FROM PUBLIC;

-- Per account and day: what was sent, and what came back.
CREATE VIEW email_accounts.bounces WITH (security_invoker = true) AS
SELECT
    coalesce(account.name, outbox.account) AS account,
    outbox.tenant,
    outbox.sent_at::date AS day,
    count(*) AS sent,
    count(*) FILTER (WHERE recipient.report = 'bounced') AS hard_bounces,
    count(*) FILTER (WHERE recipient.report = 'soft_bounce') AS soft_bounces,
    count(*) FILTER (WHERE recipient.report = 'delayed') AS delayed,
    count(*) FILTER (WHERE recipient.report = 'complained') AS complaints,
    round(count(*) FILTER (WHERE recipient.report = 'bounced')::numeric / count(*), 4) AS bounce_rate
FROM email_accounts.outbox
JOIN email_accounts.outbox_recipient AS recipient USING (outbox_id)
LEFT JOIN email_accounts.account USING (account_id)
WHERE outbox.sent_at IS NOT NULL AND recipient.status IN ('sent', 'bounced', 'complained')
GROUP BY 1, 2, 3;

COMMENT ON VIEW email_accounts.bounces IS 'Recipients the server took, per sending account, tenant and day, and what came back for them (row-level security applies).';
COMMENT ON COLUMN email_accounts.bounces.day IS 'The day the mail was sent (the session''s time zone).';
COMMENT ON COLUMN email_accounts.bounces.sent IS 'Recipients the server accepted.';
COMMENT ON COLUMN email_accounts.bounces.hard_bounces IS 'Of them, bounced permanently (5.x.x).';
COMMENT ON COLUMN email_accounts.bounces.soft_bounces IS 'Failures reported with a 4.x.x code.';
COMMENT ON COLUMN email_accounts.bounces.delayed IS 'Delay warnings.';
COMMENT ON COLUMN email_accounts.bounces.complaints IS 'Spam complaints (feedback reports).';
COMMENT ON COLUMN email_accounts.bounces.bounce_rate IS 'hard_bounces / sent.';

GRANT SELECT ON email_accounts.bounces TO email_accounts_admin, email_accounts_sender;

-- Lets an address be mailed again (a DBA who knows the mailbox works now).
CREATE FUNCTION email_accounts.unsuppress(address text, tenant text DEFAULT NULL) RETURNS integer
LANGUAGE sql SET search_path = pg_catalog, pg_temp
BEGIN ATOMIC
    WITH removed AS (
        DELETE FROM email_accounts.suppression AS suppressed
         WHERE lower(suppressed.address) = lower(unsuppress.address)
           AND (unsuppress.tenant IS NULL OR suppressed.tenant IS NOT DISTINCT FROM unsuppress.tenant)
        RETURNING 1)
    SELECT count(*)::integer FROM removed;
END;

COMMENT ON FUNCTION email_accounts.unsuppress(text, text) IS
  'Removes an address from suppression (all tenants the caller may change, or the one named) so it is mailed again; returns how many entries it removed. Runs as the caller (email_accounts_admin: row-level security applies).';

REVOKE EXECUTE ON FUNCTION email_accounts.unsuppress(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION email_accounts.unsuppress(text, text) TO email_accounts_admin;
