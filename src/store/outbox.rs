//! The sender's statements: expire and claim due rows under a lease, load
//! what composing them needs, and record what the servers answered.

use super::account_settings::ServerSettings;
use super::kept_plans;
use email_accounts_mail::compose::Attachment;
use email_accounts_mail::row_status::{RecipientUpdate, RowStatus};
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

/// An outbox row claimed for sending.
#[derive(Debug, Clone)]
pub struct ClaimedRow {
    pub outbox_id: i64,
    pub claim_token: String,
    pub account_id: i64,
    pub sender: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Vec<String>,
    pub subject: String,
    pub body_text: Option<String>,
    pub body_html: Option<String>,
    pub headers: Vec<(String, String)>,
    pub message_id: String,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub created_at_millis: i64,
    /// The application row (schema-qualified table, key) whose document
    /// address is to be the Reply-To (automatic linking).
    pub document: Option<(String, String)>,
    /// The key of the application row the mail names, if it names one: its
    /// `document`, when there is to be one, is read with the recipients.
    pub document_key: Option<String>,
    /// Recipients not yet accepted (pending or deferred), suppressed ones left out.
    pub recipients: Vec<String>,
    pub attachments: Vec<Attachment>,
    /// Delivery attempts, this claim's included.
    pub attempts: i32,
    /// A recipient was accepted in an earlier attempt.
    pub accepted_before: bool,
    /// The row's tenant (whose suppression list applies).
    pub tenant: Option<String>,
}

/// What sending through an account needs.
#[derive(Debug, Clone, Default)]
pub struct SendingSettings {
    pub account_id: i64,
    pub name: String,
    pub address: String,
    /// The SMTP side's login (smtp_login_id, else login_id, else the address).
    pub login_id: String,
    pub smtp: ServerSettings,
    pub extra_ca_certificate: Option<String>,
    pub allow_plaintext_authentication: bool,
    pub no_smtp_authentication: bool,
    pub signature: Option<String>,
    pub always_use_account_address_as_sender: bool,
    pub always_use_account_name_as_sender_name: bool,
    pub default_incoming_address: Option<String>,
    pub send_unsubscribe_message: bool,
    pub track_email_status: bool,
    /// The folder to copy sent mail to, when the account asks for it.
    pub sent_folder: Option<String>,
    /// The account's incoming server when it is IMAP.
    pub imap: Option<ServerSettings>,
    /// The SMTP side signs in with an OAuth2 access token rather than a password.
    pub oauth2: bool,
    /// The incoming side's login and sign-in, for the Sent folder copy.
    pub incoming_login_id: String,
    pub incoming_oauth2: bool,
    /// MAIL FROM is a signed sub-address naming the row (bounces verified by it).
    pub signed_envelope_sender: bool,
    /// The account may send (account_settings.ready_to_send).
    pub ready_to_send: bool,
    /// The account has a sending rate limit.
    pub rate_limited: bool,
}

/// The CTE `released`: the claims of outbox_claim named by the outbox ids
/// ($1) and claim tokens as text ($2) of a statement's arguments, deleted
/// where the token is still theirs ('' never is: a claim on insert has
/// none), with their outbox ids. (Each claim's token is looked up in the
/// list, not joined to it: with no join there is no plan to get wrong when
/// the statistics say outbox_claim is empty, as they often do between
/// bursts. See `not_claimed!`.)
macro_rules! release_claims {
    () => {
        "released AS (
             DELETE FROM email_accounts.outbox_claim AS claim
              WHERE claim.outbox_id = ANY ($1::bigint[])
                AND claim.claim_token = NULLIF(($2::text[])[pg_catalog.array_position($1::bigint[], claim.outbox_id)], '')::uuid
          RETURNING claim.outbox_id
         )"
    };
}

/// The condition that the outbox row `$row` has no claim of the sender's
/// in outbox_claim: a primary-key probe per row. (OFFSET 0 keeps it a probe:
/// as an anti-join, a plan kept from statistics that said the outbox or
/// outbox_claim was empty, as after a drain, walked the outbox's whole
/// primary key per account, or every claim per row, on each claim: 146 ms a
/// claim at 20,000 rows over 12 accounts, 1,223 msg/s in `make bench`.)
macro_rules! not_claimed {
    ($row:literal) => {
        concat!(
            "NOT EXISTS (SELECT FROM email_accounts.outbox_claim AS claim WHERE claim.outbox_id = ",
            $row,
            ".outbox_id OFFSET 0)"
        )
    };
}

/// Whether the sender process named by a claim (`$claim.sender_process_id`,
/// `$claim.sender_started_at`: an outbox row claimed on insert, or a row of
/// outbox_claim) no longer runs in this database.
macro_rules! sender_gone {
    ($claim:literal) => {
        concat!(
            "NOT EXISTS (
           SELECT FROM pg_catalog.pg_stat_get_activity(",
            $claim,
            ".sender_process_id) AS activity
            WHERE activity.backend_start = ",
            $claim,
            ".sender_started_at
              AND activity.datid = (SELECT database.oid FROM pg_catalog.pg_database AS database
                                     WHERE database.datname = pg_catalog.current_database()))"
        )
    };
}

// Rows past expires_at, marked expired. A row another transaction has
// locked (an attachment being added, a cancel()) is skipped, never waited
// for: a wait past lock_timeout would end the whole claim, for every
// account, as long as the lock is held. It is marked by a later pass.
const EXPIRE: &str = concat!("
UPDATE email_accounts.outbox AS row
   SET status = 'expired', lease_until = NULL, claim_token = NULL, sender_process_id = NULL, sender_started_at = NULL,
       last_error = pg_catalog.format('expired at %s before it could be delivered', row.expires_at)
 WHERE row.outbox_id = ANY (ARRAY(
       SELECT outbox.outbox_id FROM email_accounts.outbox
        WHERE outbox.expires_at IS NOT NULL AND outbox.expires_at <= now()
          AND outbox.status IN ('queued', 'retry', 'sending')
          -- (Not this sender's own rows of accounts on the wire: their round records them.)
          AND (outbox.status <> 'sending'
               OR (outbox.lease_until < now()
                   AND NOT (outbox.sender_process_id = pg_catalog.pg_backend_pid() AND outbox.account_id = ANY ($1::bigint[]))))
          -- (Nor rows out under a claim: a lapsed one is taken back first.)
          AND ", not_claimed!("outbox"), "
          FOR NO KEY UPDATE OF outbox SKIP LOCKED))");

/// The start of a statement: `WITH RECURSIVE waiting (account_id)`, the
/// accounts with rows queued or to retry, by a loose scan of the claim
/// order (one index probe each), not a look at every account.
macro_rules! with_waiting_accounts {
    () => {
        "WITH RECURSIVE waiting (account_id) AS (
    (SELECT outbox.account_id FROM email_accounts.outbox
      WHERE outbox.status IN ('queued', 'retry') AND outbox.account_id IS NOT NULL
      ORDER BY outbox.account_id LIMIT 1)
    UNION ALL
    SELECT (SELECT outbox.account_id FROM email_accounts.outbox
             WHERE outbox.status IN ('queued', 'retry') AND outbox.account_id > waiting.account_id
             ORDER BY outbox.account_id LIMIT 1)
      FROM waiting
     WHERE waiting.account_id IS NOT NULL
)"
    };
}

/// What CLAIM and TAKE_NEW_MAIL return of each row they give the sender
/// (`claimed_row` reads it), with the claim's token as text ('' for none)
/// and the attempts counting this claim's.
macro_rules! claimed_columns {
    ($token:literal, $attempts:literal) => {
        concat!(
            "outbox.outbox_id, ",
            $token,
            ", outbox.account_id, outbox.sender, outbox.to_addresses,
          outbox.cc_addresses, outbox.bcc_addresses, outbox.reply_to, outbox.subject, outbox.body_text,
          outbox.body_html, outbox.headers, outbox.message_id, outbox.in_reply_to, outbox.\"references\",
          (extract(epoch FROM outbox.created_at) * 1000)::bigint,
          -- The row names an application row (whether its document address
          -- is to be the Reply-To is read with the recipients, DOCUMENTS).
          outbox.reference_table IS NOT NULL AND outbox.reference_id IS NOT NULL,
          outbox.reference_id, outbox.tenant, ",
            $attempts
        )
    };
}

/// The SET clause (of an UPDATE of the outbox as `row`) that puts a claimed
/// row back in the queue as if it had not been claimed: its attempt
/// uncounted, no lease, token or sender.
macro_rules! back_in_the_queue {
    () => {
        "status = CASE WHEN row.attempts > 1 THEN 'retry' ELSE 'queued' END, attempts = row.attempts - 1,
       lease_until = NULL, claim_token = NULL, sender_process_id = NULL, sender_started_at = NULL"
    };
}

/// The condition (on an UPDATE of the outbox as `row`) that a row claimed
/// on insert and taken without a token (`$mine.claim_token` is '') is
/// still claimed for this very process, started at `$started`: `sending`,
/// no token. One taken back meanwhile is `retry` or has another sender.
/// (The claim's own claims are rows of outbox_claim, checked by token.)
macro_rules! still_ours_on_insert {
    ($mine:literal, $started:literal) => {
        concat!(
            "(",
            $mine,
            ".claim_token = '' AND row.claim_token IS NULL AND row.status = 'sending'
                 AND row.sender_process_id = pg_catalog.pg_backend_pid() AND row.sender_started_at = ",
            $started,
            ")"
        )
    };
}

// At most $4 accounts, those whose mail has waited longest (a claim over
// every account would let one sender hold them all while the others idle).
// Each may send what its rate limits leave: its limit minus the rows it
// sent (or has in flight) in the last minute, hour and day. Only accounts
// with rows waiting are looked at (one index probe each, found by a loose
// scan of the claim order): the claim had looked at every ready account,
// 11 ms a claim with 5,000 of them. Rows whose claim lapsed are put back
// in the queue by TAKE_BACK_LAPSED_CLAIMS, not claimed here.
const CLAIM: &str = concat!(
    with_waiting_accounts!(),
    ", chosen AS (
    SELECT settings.account_id, settings.send_limit_per_minute, settings.send_limit_per_hour, settings.send_limit_per_day
      FROM waiting
     CROSS JOIN LATERAL (
         -- (OFFSET 0: a probe of each, never a hash of every account's settings.)
         SELECT ready.account_id, ready.send_limit_per_minute, ready.send_limit_per_hour, ready.send_limit_per_day
           FROM email_accounts.account_settings AS ready
          WHERE ready.account_id = waiting.account_id AND ready.ready_to_send
         OFFSET 0
     ) AS settings
     CROSS JOIN LATERAL (
         -- (Not rows past expires_at: they may wait up to a second to be marked
         -- expired, and must not take an account's place in the claim meanwhile.)
         SELECT outbox.priority, outbox.next_attempt_at
           FROM email_accounts.outbox
          WHERE outbox.account_id = settings.account_id
            AND outbox.status IN ('queued', 'retry') AND outbox.next_attempt_at <= now()
            AND (outbox.expires_at IS NULL OR outbox.expires_at > now())
            AND ", not_claimed!("outbox"), "
          ORDER BY outbox.priority DESC, outbox.next_attempt_at, outbox.outbox_id
          LIMIT 1
     ) AS first_due
     WHERE waiting.account_id <> ALL ($3::bigint[])
     ORDER BY first_due.priority DESC, first_due.next_attempt_at
     LIMIT $4
), allowance AS (
    SELECT settings.account_id,
           greatest(0, least($1::bigint,
                             coalesce(settings.send_limit_per_minute - recent.last_minute, $1::bigint),
                             coalesce(settings.send_limit_per_hour - recent.last_hour, $1::bigint),
                             coalesce(settings.send_limit_per_day - recent.last_day, $1::bigint))) AS rows
      FROM chosen AS settings
     CROSS JOIN LATERAL (
         -- The rows in flight (claims, from outbox_claim_account, and rows
         -- claimed on insert, from outbox_sending) and those sent in the
         -- last day (sent or bounced since, from outbox_account_status_sent_at),
         -- each through its own index: an OR of them would need a bitmap
         -- scan, which the sender does not plan (settings.rs,
         -- prefer_indexes), and read every row the account ever sent instead.
         SELECT count(*) FILTER (WHERE recent.in_flight OR recent.sent_at > now() - interval '1 minute') AS last_minute,
                count(*) FILTER (WHERE recent.in_flight OR recent.sent_at > now() - interval '1 hour') AS last_hour,
                count(*) AS last_day
           FROM (SELECT true AS in_flight, NULL::timestamptz AS sent_at
                   FROM email_accounts.outbox_claim AS claim
                  WHERE claim.account_id = settings.account_id
                    AND coalesce(settings.send_limit_per_minute, settings.send_limit_per_hour, settings.send_limit_per_day) IS NOT NULL
                 UNION ALL
                 SELECT true AS in_flight, NULL::timestamptz AS sent_at
                   FROM email_accounts.outbox AS sent
                  WHERE sent.account_id = settings.account_id AND sent.status = 'sending'
                    AND coalesce(settings.send_limit_per_minute, settings.send_limit_per_hour, settings.send_limit_per_day) IS NOT NULL
                 UNION ALL
                 -- (Each status in the index's order: with statistics that said
                 -- the outbox was empty, an index without sent_at tied with it
                 -- and read every row the account ever sent; it would need a
                 -- sort for this order. Only a recording of 'sent' sets sent_at;
                 -- a delivery report may turn it 'bounced', and outbox_check_update
                 -- lets no role but a superuser move either on.)
                 SELECT false, day.sent_at
                   FROM (VALUES ('sent'), ('bounced')) AS went (status)
                  CROSS JOIN LATERAL (
                        SELECT sent.sent_at FROM email_accounts.outbox AS sent
                         WHERE sent.account_id = settings.account_id AND sent.status = went.status
                           AND sent.sent_at > now() - interval '1 day'
                           AND coalesce(settings.send_limit_per_minute, settings.send_limit_per_hour, settings.send_limit_per_day) IS NOT NULL
                         ORDER BY sent.sent_at OFFSET 0) AS day
                ) AS recent
     ) AS recent
), candidate AS (
    -- Per account, its due rows in claim order that are not out already (an
    -- index walk that stops at the allowance; rows claimed stay in the
    -- claim order, a primary-key probe of outbox_claim each).
    SELECT picked.*
      FROM allowance
     CROSS JOIN LATERAL (
         SELECT outbox.outbox_id, outbox.priority, outbox.next_attempt_at
           FROM email_accounts.outbox
          WHERE outbox.account_id = allowance.account_id
            AND outbox.status IN ('queued', 'retry') AND outbox.next_attempt_at <= now()
            AND (outbox.expires_at IS NULL OR outbox.expires_at > now())
            AND ", not_claimed!("outbox"), "
          ORDER BY outbox.priority DESC, outbox.next_attempt_at, outbox.outbox_id
          LIMIT allowance.rows
     ) AS picked
     ORDER BY picked.priority DESC, picked.next_attempt_at, picked.outbox_id
     LIMIT $1
), due AS (
    -- Only the rows taken are locked; one another sender holds is skipped,
    -- one it claimed meanwhile no longer matches (rechecked under the lock).
    -- (= ANY (ARRAY(…)): through the primary key. A join let the generic
    -- plan hash the whole outbox on every claim: 30 ms at 20,000 queued. The
    -- recheck is a CASE, not an OR, so that no plan ORs partial indexes
    -- together instead: 40 ms at 20,000 queued.) The lock is what cancel(),
    -- retry() and the expiry wait for or skip: the row is not written.
    SELECT outbox.outbox_id, outbox.account_id, outbox.attempts, outbox AS locked
      FROM email_accounts.outbox
     WHERE outbox.outbox_id = ANY (ARRAY(SELECT candidate.outbox_id FROM candidate))
       AND CASE outbox.status
               WHEN 'queued' THEN outbox.next_attempt_at <= now()
               WHEN 'retry' THEN outbox.next_attempt_at <= now()
               ELSE false END
       FOR UPDATE OF outbox SKIP LOCKED
), claimed AS (
    -- A row another sender claimed after this statement's snapshot was
    -- taken (its claim committed, and the row's lock went with it) is left
    -- to that sender.
    INSERT INTO email_accounts.outbox_claim AS claim
           (outbox_id, account_id, claim_token, lease_until, sender_process_id, sender_started_at, attempt)
    SELECT due.outbox_id, due.account_id, $6, now() + make_interval(secs => $2),
           pg_catalog.pg_backend_pid(), $5, due.attempts + 1
      FROM due
        ON CONFLICT (outbox_id) DO NOTHING
    RETURNING claim.outbox_id
)
-- (The row as locked: its newest version, which this statement's snapshot
-- may not show when a change committed in between. Those claimed found in
-- a list, not by a join: the planner takes both sides for one row and
-- joined them by a nested loop, 200 × 200 rows on every claim.)
SELECT ",
    claimed_columns!("$6::text", "due.attempts + 1"),
    "
  FROM due CROSS JOIN LATERAL (SELECT (due.locked).*) AS outbox
 WHERE due.outbox_id = ANY (ARRAY(SELECT claimed.outbox_id FROM claimed))"
);

// Rows inserting transactions claimed for this sender (claim_on_insert,
// worker/new_mail.rs): `sending`, this process, no token, not among the
// rows it has already taken ($5). Those due and not expired, not in $1
// (accounts with a round waiting here, or held by another sender), with at
// least $2 seconds of lease left are taken, the first $6 of them (the room
// left on the worker board's list of rows taken): read under their row
// locks, and written nothing (the sender lists them on the board before
// this transaction commits; their claim, the attempt counted, is the
// inserting transaction's). The others go back to the queue, uncounted,
// for the claim (its order and rate limits decide for them). Whether their
// accounts can send now without rate limits is read with the accounts'
// settings, in the same transaction (claim.rs): rows of accounts that
// cannot go back from there. (Read here, the view's plan was a quarter of
// this statement's 0.4 ms, most of it set up again on every call.) Found
// through outbox_claimed_on_insert: only a claim on insert leaves a sender
// without a token (so `status` is not in the selection, or the planner
// could walk outbox_sending, every row out, instead). A row another
// transaction has locked (an attachment being added, a cancel()) is
// skipped, never waited for; `left` counts such rows, for the next take.
// Each row taken comes with the transaction that last wrote it
// (`written_by`): its commit may still have to be flushed.
const TAKE_NEW_MAIL: &str = concat!(
    "WITH arrived AS (
    SELECT outbox.outbox_id, outbox.xmin AS written_by, outbox.priority, outbox AS locked, outbox.status = 'sending' AS sending,
           outbox.status = 'sending'
           AND outbox.account_id IS NOT NULL AND outbox.account_id <> ALL ($1::bigint[])
           AND outbox.lease_until > now() + pg_catalog.make_interval(secs => $2)
           AND outbox.next_attempt_at <= now() AND (outbox.expires_at IS NULL OR outbox.expires_at > now()) AS takes
      FROM email_accounts.outbox
     WHERE outbox.claim_token IS NULL
       AND outbox.sender_process_id = pg_catalog.pg_backend_pid() AND outbox.sender_started_at = $3
       AND outbox.outbox_id <> ALL ($5::bigint[])
     ORDER BY outbox.sender_process_id, outbox.priority DESC, outbox.outbox_id
     LIMIT $4
       FOR NO KEY UPDATE OF outbox SKIP LOCKED
), chosen AS (
    -- (A window function cannot go with the row locks above.)
    SELECT arrived.outbox_id, arrived.written_by, arrived.locked, arrived.sending,
           arrived.takes AND pg_catalog.row_number() OVER (ORDER BY NOT arrived.takes, arrived.priority DESC, arrived.outbox_id) <= $6 AS taken
      FROM arrived
), given_back AS (
    UPDATE email_accounts.outbox AS row
       SET ",
    back_in_the_queue!(),
    "
     WHERE row.outbox_id = ANY (ARRAY(SELECT chosen.outbox_id FROM chosen WHERE chosen.sending AND NOT chosen.taken))
), taken AS (
    -- (The row as locked: its newest version, which this statement's
    -- snapshot may not show when a change committed in between.)
    SELECT ",
    claimed_columns!("coalesce(outbox.claim_token::text, '')", "outbox.attempts"),
    ", chosen.written_by::text
      FROM chosen CROSS JOIN LATERAL (SELECT (chosen.locked).*) AS outbox
     WHERE chosen.taken
), mine AS (
    -- Every row claimed on insert for this sender, taken or not.
    SELECT outbox.outbox_id, outbox.status FROM email_accounts.outbox
     WHERE outbox.claim_token IS NULL
       AND outbox.sender_process_id = pg_catalog.pg_backend_pid() AND outbox.sender_started_at = $3
)
SELECT taken.*,
       (SELECT count(*) FROM mine WHERE mine.outbox_id <> ALL ($5::bigint[])) - (SELECT count(*) FROM arrived) AS left,
       (SELECT count(*) FROM chosen WHERE chosen.sending AND NOT chosen.taken) AS given_back,
       -- Rows of $5 no longer out for this sender (taken back after a
       -- recording that failed, deleted): the board's list lets them go.
       ARRAY(SELECT listed.outbox_id FROM unnest($5::bigint[]) AS listed (outbox_id)
              WHERE listed.outbox_id NOT IN (SELECT mine.outbox_id FROM mine WHERE mine.status = 'sending')) AS gone
  FROM (SELECT) AS one LEFT JOIN taken ON true"
);

/// The CTE `given_up`, after a CTE `taken` of outbox ids whose column
/// `$attempts` is their attempts: the open recipients of the rows taken
/// back at `max_attempts` ($1) fail with them.
macro_rules! given_up_recipients {
    ($attempts:literal) => {
        concat!(
            "given_up AS (
    UPDATE email_accounts.outbox_recipient AS recipient SET status = 'failed', updated_at = now()
     WHERE recipient.outbox_id = ANY (ARRAY(SELECT taken.outbox_id FROM taken WHERE taken.",
            $attempts,
            " >= $1))
       AND recipient.status IN ('pending', 'deferred')
)"
        )
    };
}

/// A statement that takes back the claimed rows `$selection` picks (a
/// SELECT of outbox rows, locked here) and returns their ids: due at once,
/// the attempt counted (they may have gone out: delivery is at least once),
/// failed once `max_attempts` ($1) is reached, so that a message whose
/// claim never comes back cannot loop; `$reason` formats `last_error` from
/// the claim's sender process id.
macro_rules! take_back_rows {
    ($selection:expr, $reason:literal) => {
        concat!(
            "WITH taken AS (",
            $selection,
            "
       FOR UPDATE OF outbox SKIP LOCKED
), ",
            given_up_recipients!("attempts"),
            "
UPDATE email_accounts.outbox AS row
   SET status = CASE WHEN row.attempts >= $1 THEN 'failed' ELSE 'retry' END,
       next_attempt_at = now(), lease_until = NULL, claim_token = NULL,
       last_error = pg_catalog.format(",
            $reason,
            ", row.sender_process_id),
       sender_process_id = NULL, sender_started_at = NULL
 WHERE row.outbox_id = ANY (ARRAY(SELECT taken.outbox_id FROM taken))
RETURNING row.outbox_id"
        )
    };
}

/// A statement that takes back the claims of outbox_claim that `$condition`
/// picks (a condition on `claim`) and returns the outbox ids: the claim
/// goes, and the outbox row is due at once with the claim's attempt counted
/// (it may have gone out: delivery is at least once), or failed once
/// `max_attempts` ($1) is reached; `$reason` formats `last_error` from the
/// claim's process id. Claims and outbox rows locked elsewhere (a claim
/// being recorded, a row an open transaction holds) are skipped, never
/// waited for: a wait past lock_timeout would end the whole claim, for
/// every account, for as long as the lock is held. A claim whose outbox
/// row was deleted just goes. (The claims first, then their outbox rows
/// through the primary key: a join let the sender's generic plan walk the
/// whole outbox, 78 ms a pass at 20,000 rows.)
macro_rules! take_back_claims {
    ($condition:expr, $reason:literal) => {
        concat!(
            "WITH picked AS (
    SELECT claim.outbox_id FROM email_accounts.outbox_claim AS claim
     WHERE ",
            $condition,
            "
       FOR UPDATE OF claim SKIP LOCKED
), free AS (
    SELECT outbox.outbox_id FROM email_accounts.outbox
     WHERE outbox.outbox_id = ANY (ARRAY(SELECT picked.outbox_id FROM picked))
       FOR UPDATE OF outbox SKIP LOCKED
), taken AS (
    DELETE FROM email_accounts.outbox_claim AS claim
     WHERE claim.outbox_id = ANY (ARRAY(
           SELECT free.outbox_id FROM free
            UNION ALL
           SELECT picked.outbox_id FROM picked
            -- (OFFSET 0: a primary-key probe each, never a hash of the outbox.)
            WHERE NOT EXISTS (SELECT FROM email_accounts.outbox WHERE outbox.outbox_id = picked.outbox_id OFFSET 0)))
    RETURNING claim.outbox_id, claim.attempt, claim.sender_process_id
), ",
            given_up_recipients!("attempt"),
            "
UPDATE email_accounts.outbox AS row
   SET status = CASE WHEN taken.attempt >= $1 THEN 'failed' ELSE 'retry' END,
       attempts = taken.attempt, next_attempt_at = now(),
       last_error = pg_catalog.format(",
            $reason,
            ", taken.sender_process_id)
  FROM taken
 WHERE row.outbox_id = taken.outbox_id AND row.outbox_id = ANY (ARRAY(SELECT taken.outbox_id FROM taken))
   -- (Claimed rows keep these; a superuser may have set another meanwhile.
   -- A CASE, so that no plan walks the claim order's partial index instead
   -- of the primary key: 98 ms a pass at 20,000 rows.)
   AND CASE row.status WHEN 'queued' THEN true WHEN 'retry' THEN true ELSE false END
RETURNING row.outbox_id"
        )
    };
}

// Claims whose lease lapsed (their sender is alive but stuck, or its lease
// ran out on a slow server); not this sender's own claims of accounts it has
// on the wire ($2), nor claims of the accounts it skips ($3: another
// sender's, whose round may still be on the wire there). From
// outbox_claim_lease. Run before the expiry, at most once a second.
const TAKE_BACK_LAPSED_CLAIMS: &str = take_back_claims!(
    "claim.lease_until < now()
              AND NOT (claim.sender_process_id = pg_catalog.pg_backend_pid() AND claim.account_id = ANY ($2::bigint[]))
              AND claim.account_id <> ALL ($3::bigint[])",
    "'the claim of sender process %s lapsed before it recorded what the server answered; sent again, so the recipients may get it twice'"
);

// Claims of sender processes that no longer run in this database.
const TAKE_BACK_ABANDONED_CLAIMS: &str = take_back_claims!(
    sender_gone!("claim"),
    "'the sender process %s stopped before it recorded what the server answered; sent again, so the recipients may get it twice'"
);

// Rows claimed on insert whose claim lapsed (their sender is alive but stuck, or its lease
// ran out on a slow server); not this sender's own rows of accounts it has
// on the wire ($2: they are being sent), nor rows of the accounts it skips
// ($3: those another sender holds, whose round may still be on the wire
// there and is recorded by it). Run with the expiry, at most once a second:
// it reads outbox_sending, the claims out for delivery. (A row whose account
// was deleted while it was out is left alone, as before.)
const TAKE_BACK_LAPSED: &str = take_back_rows!(
    "
    SELECT outbox.outbox_id, outbox.attempts
      FROM email_accounts.outbox
     WHERE outbox.status = 'sending' AND outbox.lease_until < now() AND outbox.account_id IS NOT NULL
       AND NOT (outbox.sender_process_id = pg_catalog.pg_backend_pid() AND outbox.account_id = ANY ($2::bigint[]))
       AND outbox.account_id <> ALL ($3::bigint[])
       -- (Claimed on insert and never taken: GIVE_BACK_UNTAKEN.)
       AND (outbox.claim_token IS NOT NULL OR email_accounts.claim_never_taken(outbox.sender_process_id, outbox.sender_started_at, outbox.outbox_id) IS NOT TRUE)",
    "'the claim of sender process %s lapsed before it recorded what the server answered; sent again, so the recipients may get it twice'"
);

/// A statement that puts back in the queue, uncounted, the rows claimed on
/// insert that `$selection` picks (a SELECT of outbox ids, locked here,
/// skipping locked ones): never taken, so never sent.
macro_rules! give_back_untaken_rows {
    ($selection:expr) => {
        concat!(
            "
UPDATE email_accounts.outbox AS row
   SET ",
            back_in_the_queue!(),
            "
 WHERE row.outbox_id = ANY (ARRAY(",
            $selection,
            "
          FOR NO KEY UPDATE OF outbox SKIP LOCKED))
   -- Judged again now that the row is locked: a take lists a row while it
   -- holds the row's lock, and writes nothing that would make the lock
   -- above look again.
   AND row.status = 'sending' AND row.claim_token IS NULL
   AND email_accounts.claim_never_taken(row.sender_process_id, row.sender_started_at, row.outbox_id) IS TRUE"
        )
    };
}

// Rows claimed on insert that their sender never took, whose lease lapsed
// (a transaction that stayed open past the lease, a prepared transaction
// committed elsewhere, a sender held off) or whose sender stopped: never
// sent, so back in the queue uncounted. Never taken: no token, and the
// worker board saw the sender start since the last server start or crash
// restart and does not list the row as taken (a crash loses the board, and
// then they are taken back counted, as any claim: give_back_untaken_rows!
// asks the board once the row is locked). Run by the expiry pass and when a
// sender starts.
const GIVE_BACK_UNTAKEN: &str = give_back_untaken_rows!(concat!(
    "
       SELECT outbox.outbox_id FROM email_accounts.outbox
        WHERE outbox.claim_token IS NULL AND outbox.sender_process_id IS NOT NULL AND outbox.status = 'sending'
          AND (outbox.lease_until < now() OR ",
    sender_gone!("outbox"),
    ")"
));

// This sender's rows claimed on insert that it has not taken (the board
// lists those it has: give_back_untaken_rows!), when it stops: back in the
// queue uncounted, for the next sender's claim (after a restart they would
// look like rows of an earlier server, and count).
const GIVE_BACK_MINE: &str = give_back_untaken_rows!(
    "
       SELECT outbox.outbox_id FROM email_accounts.outbox
        WHERE outbox.claim_token IS NULL AND outbox.sender_process_id = pg_catalog.pg_backend_pid()
          AND outbox.sender_started_at = $1 AND outbox.status = 'sending'"
);

// Rows claimed by sender processes that no longer run in this database.
const TAKE_BACK_ABANDONED: &str = take_back_rows!(
    concat!(
        "
    SELECT outbox.outbox_id, outbox.attempts
      FROM email_accounts.outbox
     WHERE outbox.status = 'sending' AND outbox.sender_process_id IS NOT NULL AND ",
    sender_gone!("outbox"),
    "
       -- (Claimed on insert and never taken: GIVE_BACK_UNTAKEN.)
       AND (outbox.claim_token IS NOT NULL OR email_accounts.claim_never_taken(outbox.sender_process_id, outbox.sender_started_at, outbox.outbox_id) IS NOT TRUE)"
    ),
    "'the sender process %s stopped before it recorded what the server answered; sent again, so the recipients may get it twice'"
);

/// When this process started, as `pg_stat_get_activity()` reports it
/// (`take_back_abandoned` compares the two). Passed in rather than read
/// there: that function reads every backend's entry, 0.1 ms of every claim.
pub(crate) fn process_started_at() -> pgrx::datum::TimestampWithTimeZone {
    // SAFETY: set once when the process started, never changed. (Never NULL:
    // a claim without it would look abandoned to every other sender.)
    pgrx::datum::TimestampWithTimeZone::try_from(unsafe { pg_sys::MyStartTimestamp })
        .expect("a process starts at a finite time")
}

/// A claim's token: a random UUID (version 4, variant 1), one for all the
/// rows of a claim or take. Made here rather than by gen_random_uuid() per
/// row, whose OpenSSL source was 2 % of the sender's main thread in a drain
/// and 6 % of a single message's take. (A token tells claims of the same row
/// apart; rows claimed together may share it.)
fn new_claim_token() -> pgrx::datum::Uuid {
    let mut bytes = [0u8; 16];
    getrandom::getrandom(&mut bytes).expect("the operating system gives random bytes");
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    pgrx::datum::Uuid::from_bytes(bytes)
}

/// The expiry pass a claim may run first (at most once a second).
#[derive(Clone, Copy)]
pub struct ExpiryPass {
    /// Rows whose claim lapsed at this many attempts fail instead.
    pub max_attempts: i32,
}

/// Claims up to `limit` due rows for `lease_seconds`, leaving out the
/// accounts in `skip_accounts`. First, with `expire`, marks overdue rows
/// expired (the claim never takes one either way) and takes back the rows
/// whose claim lapsed (`take_back_rows!`), never this sender's own rows of
/// the accounts in `on_wire` (their round is out) nor rows of
/// `skip_accounts` (another sender's round may be out). The rows come
/// without their recipients and attachments: `with_recipients_and_attachments`
/// reads them for the rows that stay claimed.
pub fn claim(
    limit: i64,
    lease_seconds: i32,
    skip_accounts: &[i64],
    on_wire: &[i64],
    max_accounts: i64,
    expire: Option<ExpiryPass>,
) -> Result<Vec<ClaimedRow>, SpiError> {
    // Nothing is expired or claimed while a dump is being restored (its rows
    // may lack their recipients yet); otherwise no restore starts until this
    // transaction ends.
    if super::restore::in_progress(super::restore::Worker::Sender)?.is_some() {
        return Ok(Vec::new());
    }
    // The claim stays synchronous although its loss in a crash would only
    // make the rows due again: its `attempts` count is what stops a message
    // that crashes the worker from being retried forever.
    if let Some(ExpiryPass { max_attempts }) = expire {
        kept_plans::run(
            TAKE_BACK_LAPSED_CLAIMS,
            &[max_attempts.into(), on_wire.to_vec().into(), skip_accounts.to_vec().into()],
        )?;
        kept_plans::run(EXPIRE, &[on_wire.to_vec().into()])?;
        kept_plans::run(
            TAKE_BACK_LAPSED,
            &[max_attempts.into(), on_wire.to_vec().into(), skip_accounts.to_vec().into()],
        )?;
        kept_plans::run(GIVE_BACK_UNTAKEN, &[])?;
    }
    Spi::connect_mut(|client| {
        let table = kept_plans::update(
            client,
            CLAIM,
            &[
                limit.into(),
                (lease_seconds as f64).into(),
                skip_accounts.to_vec().into(),
                max_accounts.into(),
                process_started_at().into(),
                new_claim_token().into(),
            ],
        )?;
        table.into_iter().map(claimed_row).collect::<Result<_, SpiError>>()
    })
}

/// A row as CLAIM and TAKE_NEW_MAIL return it (its recipients and
/// attachments are read by `with_recipients_and_attachments`).
fn claimed_row(row: pgrx::spi::SpiHeapTupleData<'_>) -> Result<ClaimedRow, SpiError> {
    let headers: Option<pgrx::JsonB> = row.get(12)?;
    let claimed = ClaimedRow {
        outbox_id: row.get(1)?.unwrap_or_default(),
        claim_token: row.get(2)?.unwrap_or_default(),
        account_id: row.get(3)?.unwrap_or_default(),
        sender: row.get(4)?,
        to: row.get(5)?.unwrap_or_default(),
        cc: row.get(6)?.unwrap_or_default(),
        bcc: row.get(7)?.unwrap_or_default(),
        reply_to: row.get(8)?.unwrap_or_default(),
        subject: row.get(9)?.unwrap_or_default(),
        body_text: row.get(10)?,
        body_html: row.get(11)?,
        headers: headers
            .and_then(|headers| headers.0.as_object().cloned())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| (name, value.as_str().unwrap_or_default().to_owned()))
            .collect(),
        message_id: row.get(13)?.unwrap_or_default(),
        in_reply_to: row.get(14)?,
        references: row.get(15)?.unwrap_or_default(),
        created_at_millis: row.get(16)?.unwrap_or_default(),
        document: None,
        document_key: row.get::<bool>(17)?.unwrap_or_default().then(|| row.get::<String>(18)).transpose()?.flatten(),
        recipients: Vec::new(),
        attachments: Vec::new(),
        attempts: row.get(20)?.unwrap_or_default(),
        accepted_before: false,
        tenant: row.get(19)?,
    };
    Ok(claimed)
}

/// What a row of RECIPIENTS_AND_ATTACHMENTS is (its second column; 0: a recipient).
const ATTACHMENT: i16 = 1;
const DOCUMENT: i16 = 2;

// One statement for recipients and attachments (a statement's fixed cost
// was most of either read for a single message). Rows come in each part's
// order: the parts run one after the other (kept plans are never parallel),
// and no sort copies the attachments' content.
//
// Recipients: per claimed row through the primary key (OFFSET 0 keeps the
// planner from turning it into a scan of the whole table, which it does
// when the statistics are stale after a burst of inserts): its open
// recipients, and whether one was accepted before (recording decides the
// row's status from both). The suppression list is probed for open
// recipients through its unique index on (tenant, lower(address)), NULL
// tenants by a probe of their own: a join on `tenant IS NOT DISTINCT FROM`
// cannot use the index and walked all of it per recipient (93 ms a round
// of 200 with 20,000 suppressions). Attachments: per claimed row, in their order.
macro_rules! recipients_and_attachments {
    () => {
        "SELECT claimed.outbox_id, 0::smallint AS part, recipient.address, recipient.status = 'sent',
                    suppressed.reason, NULL::text, NULL::bytea, NULL::text
               FROM unnest($1::bigint[], $2::text[]) AS claimed (outbox_id, tenant)
              CROSS JOIN LATERAL (
                  SELECT address, status FROM email_accounts.outbox_recipient
                   WHERE outbox_recipient.outbox_id = claimed.outbox_id AND status IN ('pending', 'deferred', 'sent')
                   ORDER BY address OFFSET 0) AS recipient
               LEFT JOIN LATERAL (
                  (SELECT suppression.reason FROM email_accounts.suppression
                    WHERE recipient.status <> 'sent' AND suppression.tenant = claimed.tenant
                      AND lower(suppression.address) = lower(recipient.address))
                  UNION ALL
                  (SELECT suppression.reason FROM email_accounts.suppression
                    WHERE recipient.status <> 'sent' AND claimed.tenant IS NULL AND suppression.tenant IS NULL
                      AND lower(suppression.address) = lower(recipient.address))
                  LIMIT 1) AS suppressed ON true
             UNION ALL
             SELECT claimed.outbox_id, 1::smallint, attachment.filename, NULL, NULL, attachment.content_type,
                    attachment.content, attachment.content_id
               FROM unnest($1::bigint[]) AS claimed (outbox_id)
              CROSS JOIN LATERAL (
                  SELECT filename, content_type, content, content_id FROM email_accounts.outbox_attachment
                   WHERE outbox_attachment.outbox_id = claimed.outbox_id
                   ORDER BY position OFFSET 0) AS attachment"
    };
}
const RECIPIENTS_AND_ATTACHMENTS: &str = recipients_and_attachments!();

// The same, and for claimed rows that name an application row, the row's
// table, schema-qualified, when Reply-To is to be its document address: an
// account of the mail's own tenant with automatic linking, asked for on the
// mail or by the account's default when the mail names no Reply-To of its
// own. (Only when a claimed row names one: this part's plan was an eighth of
// a single message's take, set up on every call.)
const RECIPIENTS_ATTACHMENTS_AND_DOCUMENTS: &str = concat!(
    recipients_and_attachments!(),
    "
             UNION ALL
             SELECT claimed.outbox_id, 2::smallint, document.table_name, NULL, NULL, NULL, NULL, NULL
               FROM unnest($1::bigint[]) AS claimed (outbox_id)
              CROSS JOIN LATERAL (
                  SELECT pg_catalog.format('%I.%I', namespace.nspname, class.relname) AS table_name
                    FROM email_accounts.outbox, email_accounts.account, pg_catalog.pg_class AS class
                    JOIN pg_catalog.pg_namespace AS namespace ON namespace.oid = class.relnamespace
                   WHERE outbox.outbox_id = claimed.outbox_id AND outbox.reference_id IS NOT NULL
                     AND account.account_id = outbox.account_id AND class.oid = outbox.reference_table
                     AND account.enable_automatic_linking AND account.tenant IS NOT DISTINCT FROM outbox.tenant
                     AND coalesce(outbox.reply_to_document,
                                  account.reply_to_document_address AND pg_catalog.cardinality(outbox.reply_to) = 0)
                  OFFSET 0) AS document"
);

/// Claimed rows with their open recipients (unsubscribed ones marked
/// suppressed), what was accepted before, their attachments, and the
/// application row whose document address is to be their Reply-To.
pub fn with_recipients_and_attachments(mut rows: Vec<ClaimedRow>) -> Result<Vec<ClaimedRow>, SpiError> {
    if rows.is_empty() {
        return Ok(rows);
    }
    let ids: Vec<i64> = rows.iter().map(|row| row.outbox_id).collect();
    let tenants: Vec<Option<String>> = rows.iter().map(|row| row.tenant.clone()).collect();
    let mut recipients: HashMap<i64, Vec<String>> = HashMap::new();
    let mut accepted_before: HashSet<i64> = HashSet::new();
    let mut attachments: HashMap<i64, Vec<Attachment>> = HashMap::new();
    let mut document_tables: HashMap<i64, String> = HashMap::new();
    // Unsubscribed addresses are never sent to: they are marked suppressed.
    let (mut suppressed_ids, mut suppressed_addresses, mut reasons) = (Vec::new(), Vec::new(), Vec::new());
    Spi::connect(|client| -> Result<(), SpiError> {
        let names_documents = rows.iter().any(|row| row.document_key.is_some());
        let table = kept_plans::select(
            client,
            if names_documents { RECIPIENTS_ATTACHMENTS_AND_DOCUMENTS } else { RECIPIENTS_AND_ATTACHMENTS },
            &[ids.into(), tenants.into()],
        )?;
        for row in table {
            let outbox_id: i64 = row.get(1)?.unwrap_or_default();
            let part: i16 = row.get(2)?.unwrap_or_default();
            if part == DOCUMENT {
                if let Some(table) = row.get::<String>(3)? {
                    document_tables.insert(outbox_id, table);
                }
                continue;
            }
            if part == ATTACHMENT {
                attachments.entry(outbox_id).or_default().push(Attachment {
                    filename: row.get(3)?.unwrap_or_default(),
                    content_type: row.get(6)?.unwrap_or_default(),
                    content: row.get(7)?.unwrap_or_default(),
                    content_id: row.get(8)?,
                });
                continue;
            }
            let address: String = row.get(3)?.unwrap_or_default();
            if row.get::<bool>(4)?.unwrap_or_default() {
                accepted_before.insert(outbox_id);
                continue;
            }
            match row.get::<String>(5)? {
                Some(reason) => {
                    suppressed_ids.push(outbox_id);
                    suppressed_addresses.push(address);
                    reasons.push(reason);
                }
                None => recipients.entry(outbox_id).or_default().push(address),
            }
        }
        Ok(())
    })?;
    if !suppressed_ids.is_empty() {
        mark_suppressed(suppressed_ids, suppressed_addresses, reasons)?;
    }
    for row in &mut rows {
        row.recipients = recipients.remove(&row.outbox_id).unwrap_or_default();
        row.attachments = attachments.remove(&row.outbox_id).unwrap_or_default();
        row.accepted_before = accepted_before.contains(&row.outbox_id);
        row.document = document_tables.remove(&row.outbox_id).zip(row.document_key.clone());
    }
    Ok(rows)
}

/// What a take of rows claimed on insert came to.
pub struct NewMail {
    pub rows: Vec<ClaimedRow>,
    /// Rows claimed for this sender that were left (locked by another
    /// transaction, or past the take's limit): the next take looks again.
    pub left: bool,
    /// Rows went back to the queue, for the claim.
    pub given_back: bool,
    /// Rows of `already_taken` that are no longer out for this sender.
    pub gone: Vec<i64>,
}

/// Takes up to `limit` rows inserting transactions claimed for this sender
/// (TAKE_NEW_MAIL), at most `room` of them, never one of `already_taken`,
/// leaving out the accounts in `skip_accounts` and rows with less than
/// `lease_left_seconds` of their lease left (those go back to the queue, as
/// do the rows past `room`). The caller lists the rows taken on the worker
/// board before this transaction commits (they keep no token).
///
/// Their claim, the attempt counted, is the inserting transaction's: on
/// disk once its commit is, and lost in a crash only together with the row.
/// So this transaction, which writes nothing to the rows it takes but their
/// locks, commits without waiting for its flush when their commits are on
/// disk and no synchronous standby waits: no flush on the way of the
/// message. (After a crash the board is made anew, so the rows of every
/// earlier sender count as taken: taken back, counted, as any claim of a
/// stopped sender.)
pub fn take_new_mail(
    skip_accounts: &[i64],
    lease_left_seconds: f64,
    limit: i64,
    already_taken: &[i64],
    room: usize,
) -> Result<NewMail, SpiError> {
    if super::restore::in_progress(super::restore::Worker::Sender)?.is_some() {
        return Ok(NewMail { rows: Vec::new(), left: true, given_back: false, gone: Vec::new() });
    }
    let (mut left, mut given_back, mut gone) = (false, false, Vec::new());
    let mut flush_to: pg_sys::XLogRecPtr = 0;
    let rows: Vec<ClaimedRow> = Spi::connect_mut(|client| {
        let table = kept_plans::update(
            client,
            TAKE_NEW_MAIL,
            &[
                skip_accounts.to_vec().into(),
                lease_left_seconds.into(),
                process_started_at().into(),
                limit.into(),
                already_taken.to_vec().into(),
                (room as i64).into(),
            ],
        )?;
        let mut taken = Vec::new();
        for row in table {
            left |= row.get::<i64>(22)?.unwrap_or(0) > 0;
            given_back |= row.get::<i64>(23)?.unwrap_or(0) > 0;
            gone = row.get::<Vec<i64>>(24)?.unwrap_or_default();
            if row.get::<i64>(1)?.is_none() {
                continue;
            }
            if let Some(xid) = row.get::<String>(21)?.and_then(|xid| xid.parse::<u32>().ok()) {
                // SAFETY: a commit log look-up of a transaction this snapshot sees as committed.
                let lsn = unsafe { pg_sys::TransactionIdGetCommitLSN(pg_sys::TransactionId::from_inner(xid)) };
                flush_to = flush_to.max(lsn);
            }
            taken.push(claimed_row(row)?);
        }
        Ok::<_, SpiError>(taken)
    })?;
    // The take commits without waiting for its flush only when the rows'
    // claims are already where a claim must be before the wire: on disk
    // (their transactions' commits flushed) and, with synchronous standbys,
    // there too (this process cannot tell for a commit made with
    // synchronous_commit local or off). Otherwise it commits as a claim
    // does, which flushes and waits for the standbys up to its own commit,
    // after theirs.
    // SAFETY: a WAL position from the commit log; reads shared WAL state.
    let on_disk = flush_to == 0 || !unsafe { pg_sys::XLogNeedsFlush(flush_to) };
    if on_disk && !crate::settings::synchronous_standbys() {
        super::transaction::set_setting(c"synchronous_commit", c"off", pg_sys::GucAction::GUC_ACTION_LOCAL);
    }
    Ok(NewMail { rows, left, given_back, gone })
}

/// The sending settings of the given accounts.
pub fn sending_settings(account_ids: &[i64]) -> Result<Vec<SendingSettings>, SpiError> {
    Spi::connect(|client| {
        let table = kept_plans::select(
            client,
            "SELECT settings.account_id, settings.name, settings.address, settings.smtp_login_id, settings.smtp_host,
                    settings.smtp_port, settings.smtp_security, settings.extra_ca_certificate,
                    settings.allow_plaintext_authentication, settings.no_smtp_authentication,
                    CASE WHEN settings.add_signature THEN settings.signature END,
                    settings.always_use_account_address_as_sender, settings.always_use_account_name_as_sender_name,
                    -- (Two probes of the unique index of defaults: IS NOT DISTINCT FROM cannot use it.)
                    coalesce((SELECT incoming.address FROM email_accounts.account AS incoming
                               WHERE incoming.default_incoming AND incoming.tenant = settings.tenant),
                             (SELECT incoming.address FROM email_accounts.account AS incoming
                               WHERE incoming.default_incoming AND incoming.tenant IS NULL AND settings.tenant IS NULL)),
                    settings.send_unsubscribe_message, settings.track_email_status,
                    CASE WHEN settings.append_to_sent_folder THEN settings.sent_folder END,
                    CASE WHEN settings.incoming_protocol = 'imap' THEN settings.incoming_host END,
                    settings.incoming_port, settings.incoming_security, settings.smtp_auth_method = 'oauth2',
                    settings.signed_envelope_sender, settings.login_id, settings.auth_method = 'oauth2',
                    settings.ready_to_send,
                    settings.send_limit_per_minute IS NOT NULL OR settings.send_limit_per_hour IS NOT NULL
                    OR settings.send_limit_per_day IS NOT NULL
               FROM email_accounts.account_settings AS settings
              WHERE settings.account_id = ANY ($1)",
            &[account_ids.to_vec().into()],
        )?;
        table
            .into_iter()
            .map(|row| {
                Ok(SendingSettings {
                    account_id: row.get(1)?.unwrap_or_default(),
                    name: row.get(2)?.unwrap_or_default(),
                    address: row.get(3)?.unwrap_or_default(),
                    login_id: row.get(4)?.unwrap_or_default(),
                    smtp: ServerSettings {
                        protocol: Some("smtp".to_owned()),
                        host: row.get(5)?,
                        port: row.get(6)?,
                        security: row.get(7)?,
                    },
                    extra_ca_certificate: row.get(8)?,
                    allow_plaintext_authentication: row.get(9)?.unwrap_or_default(),
                    no_smtp_authentication: row.get(10)?.unwrap_or_default(),
                    signature: row.get(11)?,
                    always_use_account_address_as_sender: row.get(12)?.unwrap_or_default(),
                    always_use_account_name_as_sender_name: row.get(13)?.unwrap_or_default(),
                    default_incoming_address: row.get(14)?,
                    send_unsubscribe_message: row.get(15)?.unwrap_or_default(),
                    track_email_status: row.get(16)?.unwrap_or_default(),
                    sent_folder: row.get(17)?,
                    imap: match row.get::<String>(18)? {
                        Some(host) => Some(ServerSettings {
                            protocol: Some("imap".to_owned()),
                            host: Some(host),
                            port: row.get(19)?,
                            security: row.get(20)?,
                        }),
                        None => None,
                    },
                    oauth2: row.get(21)?.unwrap_or_default(),
                    signed_envelope_sender: row.get(22)?.unwrap_or_default(),
                    incoming_login_id: row.get(23)?.unwrap_or_default(),
                    incoming_oauth2: row.get(24)?.unwrap_or_default(),
                    ready_to_send: row.get(25)?.unwrap_or_default(),
                    rate_limited: row.get(26)?.unwrap_or_default(),
                })
            })
            .collect()
    })
}

/// One claimed row's outcome, for [`record_all`] (decided by
/// `email_accounts_mail::row_status::verdict` from what the claim read).
pub struct RowResult<'a> {
    pub outbox_id: i64,
    pub claim_token: &'a str,
    /// Delivery attempts, this claim's included (as the claim read them).
    pub attempts: i32,
    pub status: RowStatus,
    pub last_error: Option<&'a str>,
    pub recipients: &'a [RecipientUpdate],
    /// When the server accepted the message (the courier's clock), for `sent_at`.
    pub accepted_at: Option<SystemTime>,
}

/// Records what a round came to for the claimed rows whose claim is still
/// ours (a lapsed lease lets another sender take a row: then its claim
/// records), in one statement whatever the number of rows: each row's
/// status, and its recipients' only where the row's was recorded. A retry
/// waits with exponential backoff and jitter. The caller falls back to one
/// row per call if a whole round cannot be recorded.
pub fn record_all(rows: &[RowResult<'_>], retry_base_delay_seconds: i32) -> Result<(), SpiError> {
    let ids: Vec<i64> = rows.iter().map(|row| row.outbox_id).collect();
    let tokens: Vec<&str> = rows.iter().map(|row| row.claim_token).collect();
    let attempts: Vec<i32> = rows.iter().map(|row| row.attempts).collect();
    let statuses: Vec<&str> = rows.iter().map(|row| row.status.label()).collect();
    let errors: Vec<Option<&str>> = rows.iter().map(|row| row.last_error).collect();
    let accepted_at: Vec<Option<TimestampWithTimeZone>> =
        rows.iter().map(|row| row.accepted_at.and_then(postgres_timestamp)).collect();
    let (mut answer_ids, mut addresses, mut answers, mut replies) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut answered = Vec::new();
    for row in rows {
        for update in row.recipients {
            answer_ids.push(row.outbox_id);
            addresses.push(update.address.as_str());
            answers.push(update.status.label());
            replies.push(update.reply.as_deref());
            answered.push(update.answered);
        }
    }
    // A claim is ours while its row of outbox_claim has our token: deleting
    // it is the check, under the claim row's lock (a claim taken back
    // meanwhile is gone, or has another token, and the outbox row is left
    // alone). A row claimed on insert is checked by the UPDATE itself,
    // under its row lock. (= ANY as well as the join: through the primary
    // key whatever the statistics say; a plan made while the outbox looked
    // empty otherwise walked its whole primary key per round.) The columns
    // naming a claim on insert's sender are cleared with it.
    kept_plans::run(
        concat!(
            "WITH ",
            release_claims!(),
            ", recorded AS (
             UPDATE email_accounts.outbox AS row
                SET status = result.status,
                    -- (The claim's attempt, as it read it: a claim of outbox_claim
                    -- counts it only now; a claim on insert counted it already.)
                    attempts = result.attempts,
                    next_attempt_at = CASE WHEN result.status = 'retry'
                        THEN now() + make_interval(secs => least(3600, $5 * 2 ^ (result.attempts - 1)) * (0.8 + random() * 0.4))
                        ELSE row.next_attempt_at END,
                    -- When the server said 250, not when this transaction began (a
                    -- round's rows are recorded together, after it); for a row
                    -- accepted in an earlier attempt only, this recording's time.
                    sent_at = CASE WHEN result.status = 'sent' THEN coalesce(result.accepted_at, now()) END,
                    last_error = result.last_error,
                    lease_until = NULL,
                    claim_token = NULL,
                    sender_process_id = NULL,
                    sender_started_at = NULL
               FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $11::timestamptz[], $13::integer[])
                    AS result (outbox_id, claim_token, status, last_error, accepted_at, attempts)
              WHERE row.outbox_id = result.outbox_id AND row.outbox_id = ANY ($1)
                -- (A list, not a join: the planner cannot know how many rows
                -- the DELETE returns, and a nested loop over them cost 50 µs a
                -- row. A CASE on the result, not an OR: an OR went down to the
                -- outbox's scan, whose estimate of one row then made a nested
                -- loop over the unnest.)
                AND CASE WHEN result.claim_token = '' THEN ",
            still_ours_on_insert!("result", "$12"),
            "
                         ELSE row.outbox_id = ANY (ARRAY(SELECT released.outbox_id FROM released)) END
          RETURNING row.outbox_id
         )
         UPDATE email_accounts.outbox_recipient AS recipient
            SET status = answer.status, reply = coalesce(answer.reply, recipient.reply), updated_at = now()
           FROM unnest($6::bigint[], $7::text[], $8::text[], $9::text[], $10::boolean[])
                AS answer (outbox_id, address, status, reply, answered)
          -- (Each through the primary key, see `claim`.)
          CROSS JOIN LATERAL (
              SELECT ctid AS row_ctid FROM email_accounts.outbox_recipient AS one
               WHERE one.outbox_id = answer.outbox_id AND one.address = answer.address OFFSET 0) AS found
          WHERE recipient.ctid = found.row_ctid
            AND answer.outbox_id = ANY (ARRAY(SELECT recorded.outbox_id FROM recorded))
            -- (A recipient given up on, not answered, only if still open: not
            -- over a status someone set while the row was being sent.)
            AND (answer.answered OR recipient.status IN ('pending', 'deferred'))"
        ),
        &[
            ids.into(),
            tokens.into(),
            statuses.into(),
            errors.into(),
            (retry_base_delay_seconds as f64).into(),
            answer_ids.into(),
            addresses.into(),
            answers.into(),
            replies.into(),
            answered.into(),
            accepted_at.into(),
            process_started_at().into(),
            attempts.into(),
        ],
    )
}

/// A point in time as PostgreSQL stores it (microseconds since 2000-01-01).
fn postgres_timestamp(at: SystemTime) -> Option<TimestampWithTimeZone> {
    const POSTGRES_EPOCH_IN_UNIX_MICROSECONDS: i64 = 946_684_800_000_000;
    let unix_microseconds = i64::try_from(at.duration_since(UNIX_EPOCH).ok()?.as_micros()).ok()?;
    TimestampWithTimeZone::try_from(unix_microseconds - POSTGRES_EPOCH_IN_UNIX_MICROSECONDS).ok()
}

/// Marks recipients on the suppression list suppressed, each named by
/// (outbox_id, address), with the list's reason as their reply.
fn mark_suppressed(outbox_ids: Vec<i64>, addresses: Vec<String>, reasons: Vec<String>) -> Result<(), SpiError> {
    kept_plans::run(
        // Each finds its row through the primary key (see `claim`).
        "UPDATE email_accounts.outbox_recipient AS recipient
            SET status = 'suppressed', reply = 'on the suppression list: ' || listed.reason, updated_at = now()
           FROM unnest($1::bigint[], $2::text[], $3::text[]) AS listed (outbox_id, address, reason)
          CROSS JOIN LATERAL (
              SELECT ctid AS row_ctid FROM email_accounts.outbox_recipient AS one
               WHERE one.outbox_id = listed.outbox_id AND one.address = listed.address OFFSET 0) AS found
          WHERE recipient.ctid = found.row_ctid",
        &[outbox_ids.into(), addresses.into(), reasons.into()],
    )
}

/// Puts claimed rows that were never put on the wire back in the queue, as
/// if they had not been claimed (the attempt is not counted), where the
/// claim is still ours: a claim's row of outbox_claim goes (the outbox row
/// was not written by the claim), a row claimed on insert is written back.
/// Returns how many.
pub fn hand_back(outbox_ids: &[i64], claim_tokens: &[&str]) -> Result<i64, SpiError> {
    hand_back_after(outbox_ids, claim_tokens, 0.0)
}

/// The same, not due again for `delay_seconds` (their account cannot sign
/// in for a moment: claiming them again at once would only spin).
pub fn hand_back_after(outbox_ids: &[i64], claim_tokens: &[&str], delay_seconds: f64) -> Result<i64, SpiError> {
    Spi::connect_mut(|client| {
        let rows = kept_plans::update(
            client,
            concat!(
                "WITH ",
                release_claims!(),
                ", delayed AS (
             -- (Only rows that are to wait are written.)
             UPDATE email_accounts.outbox AS row
                SET next_attempt_at = greatest(row.next_attempt_at, now() + pg_catalog.make_interval(secs => $3))
              WHERE $3 > 0 AND row.outbox_id = ANY (ARRAY(SELECT released.outbox_id FROM released))
         ), given_back AS (
             UPDATE email_accounts.outbox AS row
                SET ",
                back_in_the_queue!(),
                ",
                    next_attempt_at = CASE WHEN $3 > 0 THEN greatest(row.next_attempt_at, now() + pg_catalog.make_interval(secs => $3))
                                           ELSE row.next_attempt_at END
               FROM unnest($1::bigint[], $2::text[]) AS mine (outbox_id, claim_token)
              WHERE row.outbox_id = mine.outbox_id AND row.outbox_id = ANY ($1)
                AND ",
                still_ours_on_insert!("mine", "$4"),
                "
          RETURNING row.outbox_id
         )
         SELECT released.outbox_id FROM released
          UNION ALL
         SELECT given_back.outbox_id FROM given_back"
            ),
            &[
                outbox_ids.to_vec().into(),
                claim_tokens.to_vec().into(),
                delay_seconds.into(),
                process_started_at().into(),
            ],
        )?;
        Ok(rows.len() as i64)
    })
}

/// Whether the current role sees the outbox row `outbox_id` claimed for the
/// sender process `sender_process_id` that started at `sender_started_at`
/// (row-level security decides, as for any of its reads).
pub fn sees_claim(
    outbox_id: i64,
    sender_process_id: i32,
    sender_started_at: pgrx::datum::TimestampWithTimeZone,
) -> Result<bool, SpiError> {
    Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM email_accounts.outbox
                         WHERE outbox.outbox_id = $1 AND outbox.sender_process_id = $2
                           AND outbox.sender_started_at = $3)",
        &[outbox_id.into(), sender_process_id.into(), sender_started_at.into()],
    )
    .map(|seen| seen.unwrap_or(false))
}

/// When the sender stops: its rows claimed on insert and not taken go back
/// to the queue uncounted (GIVE_BACK_MINE). Returns how many.
pub fn give_back_untaken_on_stop() -> Result<i64, SpiError> {
    Spi::connect_mut(|client| {
        client.update(GIVE_BACK_MINE, None, &[process_started_at().into()]).map(|table| table.len() as i64)
    })
}

/// Takes back the rows claimed by sender processes that no longer run in
/// this database (a restart, crash, failover or restore ended them), as
/// `take_back_rows!` says: a message that kills the sender every time fails
/// at `max_attempts`. Rows of a sender still running wait for their lease,
/// and rows claimed before 0.3.0 (no process recorded) too. Returns how
/// many rows were taken back.
pub fn take_back_abandoned(max_attempts: i32) -> Result<i64, SpiError> {
    Spi::connect_mut(|client| {
        // Rows claimed on insert that the stopped sender never took go back uncounted.
        client.update(GIVE_BACK_UNTAKEN, None, &[])?;
        let claims = client.update(TAKE_BACK_ABANDONED_CLAIMS, None, &[max_attempts.into()])?.len() as i64;
        let claimed_on_insert = client.update(TAKE_BACK_ABANDONED, None, &[max_attempts.into()])?.len() as i64;
        Ok(claims + claimed_on_insert)
    })
}

/// Seconds until the next row of a ready account becomes due (or a claim
/// of any account lapses, or a waiting row of any account expires): the
/// sender sleeps until then instead of its fallback poll, and claims only
/// when it is 0 or less (its claim takes no row this does not count, but
/// for rows claimed on insert for a sender that stopped, which the claim's
/// expiry pass gives back and this counts by their lease only). Rows
/// of accounts that are not ready wait for the account change that wakes
/// it. A few index probes per account with rows waiting, however many rows
/// wait or were ever sent (it had read the whole outbox: 43 ms at 20,000
/// rows, on every idle step of the sender), one for the leases
/// (outbox_sending; it had probed every account: 9 ms with 5,000) and one
/// for expiry (outbox_expiring).
pub fn seconds_until_next_due() -> Result<Option<f64>, SpiError> {
    kept_plans::get_one::<f64>(
        concat!(
            with_waiting_accounts!(),
            ", ready AS (
            -- (OFFSET 0: a probe of each, never a hash of every account's settings.)
            SELECT settings.account_id FROM waiting
             CROSS JOIN LATERAL (
                 SELECT settings.account_id FROM email_accounts.account_settings AS settings
                  WHERE settings.account_id = waiting.account_id AND settings.ready_to_send
                 OFFSET 0) AS settings
        ), levels AS (
            -- Per ready account, per priority of its waiting rows (highest
            -- first), the earliest due: one index probe each (a loose scan,
            -- the index is in this order), however many rows wait.
            SELECT ready.account_id, first.priority, first.next_attempt_at
              FROM ready CROSS JOIN LATERAL (
                  SELECT outbox.priority, outbox.next_attempt_at FROM email_accounts.outbox
                   WHERE outbox.account_id = ready.account_id AND outbox.status IN ('queued', 'retry')
                     AND ",
            not_claimed!("outbox"),
            "
                   ORDER BY outbox.priority DESC, outbox.next_attempt_at LIMIT 1) AS first
            UNION ALL
            SELECT levels.account_id, lower.priority, lower.next_attempt_at
              FROM levels CROSS JOIN LATERAL (
                  SELECT outbox.priority, outbox.next_attempt_at FROM email_accounts.outbox
                   WHERE outbox.account_id = levels.account_id AND outbox.status IN ('queued', 'retry')
                     AND outbox.priority < levels.priority AND ",
            not_claimed!("outbox"),
            "
                   ORDER BY outbox.priority DESC, outbox.next_attempt_at LIMIT 1) AS lower
        )
        SELECT extract(epoch FROM min(due.at) - now())::float8
          FROM (SELECT levels.next_attempt_at FROM levels
                UNION ALL
                -- (Claims of every account: a lapsed one is put back in the
                -- queue. The first lease to lapse, from outbox_claim_lease.)
                SELECT min(claim.lease_until) FROM email_accounts.outbox_claim AS claim
                UNION ALL
                -- (The same for rows claimed on insert, from outbox_sending. A
                -- row whose account was deleted while it was out is left alone.)
                SELECT min(outbox.lease_until) FROM email_accounts.outbox
                 WHERE outbox.status = 'sending' AND outbox.account_id IS NOT NULL
                UNION ALL
                -- (The first waiting row to expire, whatever its account: the
                -- claim's expiry pass marks it. From outbox_expiring. A row out
                -- under a claim waits for its recording or its lease. The
                -- first in outbox_expiring's order, not a min(), which the
                -- claim order's partial index could serve as well: with
                -- statistics that say the outbox is empty the two tie, and
                -- that walk reads every waiting row.)
                (SELECT outbox.expires_at FROM email_accounts.outbox
                  WHERE outbox.expires_at IS NOT NULL AND outbox.status IN ('queued', 'retry')
                    AND ",
            not_claimed!("outbox"),
            "
                  ORDER BY outbox.expires_at LIMIT 1)) AS due (at)"
        ),
        &[],
    )
}

/// The recipient addresses of an outbox row (none when there is no such row).
pub fn recipient_addresses(outbox_id: i64) -> Result<Vec<String>, SpiError> {
    Spi::connect(|client| {
        kept_plans::select(
            client,
            "SELECT address FROM email_accounts.outbox_recipient WHERE outbox_id = $1",
            &[outbox_id.into()],
        )?
        .into_iter()
        .map(|row| Ok(row.get::<String>(1)?.unwrap_or_default()))
        .collect()
    })
}
