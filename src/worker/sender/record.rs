//! Recording what the servers answered (one transaction per call): a row's
//! result is stored only under the claim it was sent with (its token, or
//! for a row taken on insert without one, this very sender process), its
//! status decided from what the claim read (`row_status::verdict`).

use crate::settings;
use crate::store::oauth;
use crate::store::outbox::{self, ClaimedRow, RowResult};
use crate::store::transaction::{in_transaction, try_in_subtransaction, try_in_transaction, StoreError};
use crate::worker::board;
use email_accounts_mail::delivery::{summarize, JobOutcome, RowSummary};
use email_accounts_mail::oauth::TokenReport;
use email_accounts_mail::row_status::{verdict, ClaimedState, RowVerdict};
use pgrx::prelude::*;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

/// A claimed row as recording needs it: the claim's token and what the
/// claim read of the row.
#[derive(Debug, Clone, Default)]
pub struct RowClaim {
    pub token: String,
    pub state: ClaimedState,
}

impl RowClaim {
    pub fn of(row: &ClaimedRow) -> RowClaim {
        RowClaim {
            token: row.claim_token.clone(),
            state: ClaimedState {
                attempts: row.attempts,
                open_recipients: row.recipients.clone(),
                accepted_before: row.accepted_before,
            },
        }
    }
}

/// Rows' outcomes, to be recorded under their claims.
#[derive(Default)]
pub struct Delivered {
    pub claims: HashMap<i64, RowClaim>,
    pub results: Vec<(i64, JobOutcome)>,
    /// What happened to accounts' OAuth2 tokens: (account, report, the
    /// renewal lease the round held).
    pub token_reports: Vec<(i64, TokenReport, Option<String>)>,
}

impl Delivered {
    pub fn is_empty(&self) -> bool {
        self.results.is_empty() && self.token_reports.is_empty()
    }

    pub fn extend(&mut self, other: Delivered) {
        self.claims.extend(other.claims);
        self.results.extend(other.results);
        self.token_reports.extend(other.token_reports);
    }
}

/// Records the outcomes; false (and logged) when the transaction failed,
/// in which case the rows keep their lease and are retried when it lapses.
pub fn recorded(role_name: &str, delivered: Delivered) -> bool {
    if delivered.is_empty() {
        return true;
    }
    let Err(error) = record(role_name, delivered) else { return true };
    log!("{role_name}: recording a sending round failed; its rows are retried after their lease: {error}");
    false
}

/// Stores renewed access tokens and token failures (one transaction, each
/// account in its own subtransaction: one that fails, logged, loses only
/// its own; its renewal lease lapses by itself).
fn record_token_reports(role_name: &str, reports: &[(i64, TokenReport, Option<String>)]) {
    if reports.is_empty() {
        return;
    }
    let recorded = in_transaction(AssertUnwindSafe(|| {
        for (account_id, report, lease) in reports {
            let stored =
                try_in_subtransaction(AssertUnwindSafe(|| oauth::record_report(*account_id, report, lease.as_deref())));
            if let Err(error) = stored {
                log!("{role_name}: cannot store the OAuth2 tokens of account {account_id}: {error}");
            }
        }
    }));
    if let Err(error) = recorded {
        log!("{role_name}: cannot store the OAuth2 tokens of a round: {error}");
    }
}

/// Gives back OAuth2 renewal leases of rounds that never went out (one
/// transaction); if that fails they lapse by themselves.
pub fn release_renewal_leases(role_name: &str, leases: &[(i64, String)]) {
    if leases.is_empty() {
        return;
    }
    let released = try_in_transaction(|| -> Result<(), oauth::OAuthStoreError> {
        for (account_id, lease) in leases {
            oauth::record_report(*account_id, &TokenReport::default(), Some(lease))?;
        }
        Ok(())
    });
    if let Err(error) = released {
        log!("{role_name}: cannot give back {} OAuth2 renewal lease(s): {error}", leases.len());
    }
}

/// Puts claimed rows that never went on the wire back in the queue (one
/// transaction); logged if that fails (they are then taken back when the
/// next sender starts, or after their lease).
pub fn hand_back(role_name: &str, claims: HashMap<i64, RowClaim>) {
    if claims.is_empty() {
        return;
    }
    let (ids, tokens): (Vec<i64>, Vec<&str>) = claims.iter().map(|(id, claim)| (*id, claim.token.as_str())).unzip();
    match try_in_transaction(|| outbox::hand_back(&ids, &tokens)) {
        Ok(_) => board::unmark_taken(&ids),
        Err(error) => log!("{role_name}: cannot hand back {} claimed row(s) that were not sent: {error}", ids.len()),
    }
}

fn record(role_name: &str, delivered: Delivered) -> Result<(), StoreError> {
    let Delivered { mut claims, results, token_reports } = delivered;
    record_token_reports(role_name, &token_reports);
    let max_attempts = settings::max_attempts();
    let retry_base_delay = settings::retry_base_delay_seconds();
    let mut by_row: HashMap<i64, Vec<&JobOutcome>> = HashMap::new();
    for (outbox_id, outcome) in &results {
        by_row.entry(*outbox_id).or_default().push(outcome);
    }
    // Rows none of whose messages was started go back to the queue uncounted.
    let not_started: HashMap<i64, RowClaim> = by_row
        .iter()
        .filter(|(_, outcomes)| outcomes.iter().all(|outcome| matches!(outcome, JobOutcome::NotStarted)))
        .filter_map(|(outbox_id, _)| claims.remove_entry(outbox_id))
        .collect();
    by_row.retain(|outbox_id, _| !not_started.contains_key(outbox_id));
    // (If that fails, they are taken back after their lease or when the next
    // sender starts; what did go out is recorded all the same.)
    hand_back(role_name, not_started);
    // (Rows without a claim here are not this sender's to record.)
    let outcomes: Vec<(i64, &RowClaim, RowSummary, RowVerdict)> = by_row
        .into_iter()
        .filter_map(|(outbox_id, outcomes)| {
            let claim = claims.get(&outbox_id)?;
            let summary = summarize(outcomes);
            let verdict = verdict(&claim.state, &summary, max_attempts);
            Some((outbox_id, claim, summary, verdict))
        })
        .collect();
    let not_recorded = in_transaction(AssertUnwindSafe(|| -> Vec<i64> {
        let rows: Vec<RowResult<'_>> = outcomes
            .iter()
            .map(|(outbox_id, claim, summary, verdict)| RowResult {
                outbox_id: *outbox_id,
                claim_token: &claim.token,
                attempts: claim.state.attempts,
                status: verdict.status,
                last_error: summary.last_error.as_deref(),
                recipients: &verdict.recipients,
                accepted_at: summary.accepted_at,
            })
            .collect();
        // The whole round in a few statements; if that fails, row by row, so
        // one row that cannot be recorded keeps its lease (and is retried when
        // it lapses) while the others are recorded all the same.
        let together = try_in_subtransaction(AssertUnwindSafe(|| outbox::record_all(&rows, retry_base_delay)));
        if together.is_ok() {
            return Vec::new();
        }
        let mut not_recorded = Vec::new();
        for row in rows.chunks(1) {
            let recorded = try_in_subtransaction(AssertUnwindSafe(|| outbox::record_all(row, retry_base_delay)));
            if let Err(error) = recorded {
                warning!("email_accounts sender: cannot record outbox row {}: {error}", row[0].outbox_id);
                not_recorded.push(row[0].outbox_id);
            }
        }
        not_recorded
    }))?;
    // Rows taken without a token leave the board's list once their result
    // has committed; one that could not be recorded stays on it (it may have
    // gone out: whoever takes it back after its lease counts the attempt)
    // until a take finds it no longer out for this sender.
    let resolved: Vec<i64> =
        outcomes.iter().map(|(outbox_id, ..)| *outbox_id).filter(|id| !not_recorded.contains(id)).collect();
    board::unmark_taken(&resolved);
    Ok(())
}
