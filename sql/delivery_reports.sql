-- Mail that comes back (issue 16, part 2): delivery status notifications
-- (RFC 3464), non-standard bounces and complaints (RFC 5965 ARF) that the
-- receiver recognises among incoming mail (mail/src/receive/delivery_report.rs)
-- are matched to the outbox row and recipient they are about, by the
-- Message-ID of the returned original, within the report's tenant.

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

-- Records a recognised report (stored as stored_message_id) on the outbox
-- mail it is about. recognised: {kind, original_message_id, recipients:
-- [{address, action, status, diagnostic, remote_mta, hard}]}. Returns how many
-- recipients it recorded; why none is said in the report's routing_error.
CREATE FUNCTION email_accounts.record_delivery_report(stored_message_id bigint, recognised jsonb) RETURNS integer
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stored email_accounts.message;
    sent_mail email_accounts.outbox;
    named jsonb;
    recorded integer := 0;
    outcome text;
    complaint boolean := recognised->>'kind' = 'complaint';
BEGIN
    SELECT * INTO stored FROM email_accounts.message WHERE message_id = stored_message_id;
    UPDATE email_accounts.message SET kind = CASE WHEN complaint THEN 'complaint' ELSE 'delivery_report' END
     WHERE message_id = stored_message_id;
    -- Only this tenant's mail: a report cannot touch another tenant's outbox.
    SELECT * INTO sent_mail FROM email_accounts.outbox
     WHERE outbox.message_id = recognised->>'original_message_id' AND outbox.tenant IS NOT DISTINCT FROM stored.tenant
     ORDER BY outbox.outbox_id DESC LIMIT 1;
    IF NOT FOUND THEN
        UPDATE email_accounts.message
           SET routing_error = format('delivery report: no mail of this tenant has the Message-ID %s',
                                      coalesce(left(recognised->>'original_message_id', 255), '(none returned)'))
         WHERE message_id = stored_message_id;
        RETURN 0;
    END IF;
    FOR named IN SELECT * FROM jsonb_array_elements(coalesce(recognised->'recipients', '[]'))
                 UNION ALL
                 -- A complaint whose recipient is redacted, about mail to one recipient: that one.
                 SELECT jsonb_build_object('address', only_one.address)
                   FROM email_accounts.outbox_recipient AS only_one
                  WHERE complaint AND jsonb_array_length(coalesce(recognised->'recipients', '[]')) = 0
                    AND only_one.outbox_id = sent_mail.outbox_id
                    AND (SELECT count(*) FROM email_accounts.outbox_recipient AS every WHERE every.outbox_id = sent_mail.outbox_id) = 1
    LOOP
        outcome := CASE WHEN complaint THEN 'complained'
                        WHEN named->>'action' = 'delayed' THEN 'delayed'
                        WHEN named->>'action' = 'failed' AND (named->>'hard')::boolean THEN 'bounced'
                        WHEN named->>'action' = 'failed' THEN 'soft_bounce' END;
        CONTINUE WHEN outcome IS NULL;
        UPDATE email_accounts.outbox_recipient AS recipient
           SET report = outcome, report_status = left(named->>'status', 16), report_diagnostic = left(named->>'diagnostic', 1000),
               report_remote_mta = left(named->>'remote_mta', 255), reported_at = now(),
               report_message_id = stored_message_id,
               status = CASE outcome WHEN 'bounced' THEN 'bounced' WHEN 'complained' THEN 'complained' ELSE recipient.status END,
               updated_at = now()
         WHERE recipient.outbox_id = sent_mail.outbox_id
           -- Only what the server took: a report never decides for pending or deferred recipients.
           AND recipient.status IN ('sent', 'bounced', 'complained')
           AND lower(recipient.address) IN (lower(named->>'address'), lower(named->>'final'));
        IF FOUND THEN
            recorded := recorded + 1;
            -- Not mailed again (for this tenant): complaints, and bounces that
            -- say the mailbox is gone (5.1.x, 5.2.1) — not policy, content or
            -- size refusals (5.7.x DMARC, 5.3.4, 5.2.2 full), which say nothing
            -- about the address.
            IF outcome = 'complained' OR (outcome = 'bounced' AND named->>'status' ~ '^5\.(1\.[0-9]{1,3}|2\.1)$') THEN
                INSERT INTO email_accounts.suppression (tenant, address, reason, outbox_id)
                VALUES (sent_mail.tenant, lower(named->>'address'), CASE outcome WHEN 'bounced' THEN 'bounce' ELSE 'complaint' END,
                        sent_mail.outbox_id)
                ON CONFLICT DO NOTHING;
            END IF;
        END IF;
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
    RETURN recorded;
END;
$$;

COMMENT ON FUNCTION email_accounts.record_delivery_report(bigint, jsonb) IS
  'Used by the receiver: records a recognised delivery report or complaint (the stored message stored_message_id) on the outbox mail of the same tenant whose Message-ID it returns: per recipient bounced / soft_bounce / delayed / complained with status code, diagnostic and remote MTA; bounces saying the mailbox is gone (5.1.x, 5.2.1) and complaints are added to suppression; the mail is bounced when every recipient is. Returns how many recipients it recorded.';

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
