-- Which sender holds a claim. A sender process is one incarnation: its
-- process id and start time, as pg_stat_activity shows them. A sender that
-- starts takes back at once the rows of incarnations that no longer run in
-- this database (after a restart, a crash, a failover or a restore), instead
-- of waiting for their lease; the lease only covers a sender that is alive
-- but stuck. (Added after open tracking's columns, as 0.3.0's upgrade adds them.)

ALTER TABLE email_accounts.outbox
    ADD COLUMN sender_process_id integer,
    ADD COLUMN sender_started_at timestamptz;

COMMENT ON COLUMN email_accounts.outbox.sender_process_id IS 'While claimed on insert: the process id of the sender worker that claimed the row.';
COMMENT ON COLUMN email_accounts.outbox.sender_started_at IS 'While claimed on insert: when that sender process started; with sender_process_id it names one incarnation, so a reused process id is not mistaken for it.';

-- Rows claimed by their inserting transaction for a sender that has not
-- taken them yet (email_accounts.claim_on_insert), in the order it takes
-- them: it looks for its own when a commit tells it. Only such a claim
-- names a sender without a token. An entry lives from the INSERT until the
-- row's result is recorded (the sender takes the row without writing to
-- it, so at most a round's rows of each sender are here once taken).
CREATE INDEX outbox_claimed_on_insert ON email_accounts.outbox (sender_process_id, priority DESC, outbox_id)
    WHERE claim_token IS NULL AND sender_process_id IS NOT NULL;
