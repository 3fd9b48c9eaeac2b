-- A row out for delivery under a sender's claim (0.4.0: outbox_claim), of a
-- sender that is gone when the dump is restored. (fill.sql's 'queued 5' is
-- claimed the way 0.3.0 claimed, which the upgrade test moves.)
INSERT INTO email_accounts.outbox_claim
       (outbox_id, account_id, claim_token, lease_until, sender_process_id, sender_started_at, attempt)
SELECT outbox_id, account_id, gen_random_uuid(), now() + interval '5 minutes', 0, '-infinity', 1
  FROM email_accounts.outbox WHERE subject = 'queued 7';
