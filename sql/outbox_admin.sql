-- Watching and steering the outbox from psql.

CREATE VIEW email_accounts.outbox_status WITH (security_invoker = true) AS
SELECT
    coalesce(account.name, outbox.account) AS account,
    outbox.tenant,
    -- (A row the sender claimed keeps queued or retry in the outbox.)
    CASE WHEN claim.outbox_id IS NOT NULL THEN 'sending' ELSE outbox.status END AS status,
    count(*) AS messages,
    min(outbox.created_at) AS oldest_created_at,
    now() - min(outbox.created_at) AS oldest_age,
    min(outbox.next_attempt_at) FILTER (WHERE outbox.status IN ('queued', 'retry') AND claim.outbox_id IS NULL) AS next_due_at,
    (array_agg(outbox.last_error ORDER BY outbox.outbox_id DESC) FILTER (WHERE outbox.last_error IS NOT NULL))[1] AS latest_error
FROM email_accounts.outbox
LEFT JOIN email_accounts.account USING (account_id)
LEFT JOIN email_accounts.outbox_claim AS claim ON claim.outbox_id = outbox.outbox_id
GROUP BY 1, 2, 3;

COMMENT ON VIEW email_accounts.outbox_status IS 'Outbox rows by account, tenant and status: how many, the oldest, when the next is due, and the latest error.';
COMMENT ON COLUMN email_accounts.outbox_status.account IS 'The sending account (or the account name requested, when none was found).';
COMMENT ON COLUMN email_accounts.outbox_status.messages IS 'Rows in this status.';
COMMENT ON COLUMN email_accounts.outbox_status.oldest_created_at IS 'When the oldest of them was queued.';
COMMENT ON COLUMN email_accounts.outbox_status.oldest_age IS 'How long ago that was.';
COMMENT ON COLUMN email_accounts.outbox_status.next_due_at IS 'For queued and retry rows: the earliest next attempt.';
COMMENT ON COLUMN email_accounts.outbox_status.latest_error IS 'The last_error of the newest row that has one.';

-- A row claimed on insert (email_accounts.claim_on_insert) that its sender
-- has not taken is cancelled too, its attempt uncounted: it has not gone
-- out (in its own inserting transaction, or in the moment before the
-- sender takes it). A take writes nothing to the row: the sender lists it
-- on the worker board while it holds the row's lock. So the row is locked
-- here first and judged after: either the take skips it (locked) or the
-- board lists it. After a crash the board is made anew: claim_never_taken()
-- is false for the senders that ran before it (and for rows of a restored
-- dump), and such a row is not cancelled here (the next sender takes it
-- back, then it can be).
CREATE FUNCTION email_accounts.cancel(id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row email_accounts.outbox;
BEGIN
    SELECT * INTO row FROM email_accounts.outbox WHERE outbox_id = id FOR UPDATE;
    IF NOT FOUND OR email_accounts.being_sent(row.outbox_id)
       OR NOT (row.status IN ('queued', 'retry', 'error')
               OR (row.status = 'sending' AND row.claim_token IS NULL
                   AND email_accounts.claim_never_taken(row.sender_process_id, row.sender_started_at, row.outbox_id) IS TRUE)) THEN
        RETURN false;
    END IF;
    -- (The claim of a row claimed on insert goes in trigger release_untaken_claim.)
    UPDATE email_accounts.outbox SET status = 'cancelled' WHERE outbox_id = id;
    RETURN FOUND;
END;
$$;

COMMENT ON FUNCTION email_accounts.cancel(bigint) IS
  'Cancels a row that is queued, waiting to retry, in error, or claimed on insert and not yet taken by its sender; false if it is already being sent or done.';

CREATE FUNCTION email_accounts.retry(id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    row email_accounts.outbox;
    chosen bigint;
BEGIN
    SELECT * INTO row FROM email_accounts.outbox WHERE outbox_id = id AND status IN ('retry', 'failed', 'expired', 'cancelled', 'error')
       FOR UPDATE;
    IF NOT FOUND OR email_accounts.being_sent(row.outbox_id) THEN
        RETURN false;
    END IF;
    chosen := coalesce(row.account_id, email_accounts.choose_outgoing_account(row.account, row.sender, row.tenant));
    UPDATE email_accounts.outbox
       SET account_id = chosen,
           account = coalesce((SELECT name FROM email_accounts.account WHERE account_id = chosen), account),
           status = CASE WHEN chosen IS NULL THEN 'error' ELSE 'queued' END,
           next_attempt_at = now(),
           expires_at = CASE WHEN expires_at <= now() THEN NULL ELSE expires_at END,
           last_error = CASE WHEN chosen IS NULL THEN last_error END
     WHERE outbox_id = id;
    UPDATE email_accounts.outbox_recipient SET status = 'pending', updated_at = now()
     WHERE outbox_id = id AND status IN ('deferred', 'failed');
    PERFORM email_accounts.wake_sender_at_commit();
    RETURN chosen IS NOT NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.retry(bigint) IS
  'Queues a row that is waiting to retry, failed, expired, cancelled or in error again, now: its failed recipients become pending (those already accepted are not sent again), an expired row loses its expiry, a row without account gets one if one fits now. True when it is queued.';
