//! What a round makes of one outbox row: its new status and the recipient
//! statuses to store, decided from what the claim read (attempts, recipients
//! still open, any accepted earlier) and what the servers answered. Recording
//! then writes the outcome without counting the recipients again in SQL.

use crate::delivery::{RecipientStatus, RowSummary};
use std::collections::HashMap;

/// What the claim knew of a row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClaimedState {
    /// Delivery attempts so far, this round's included.
    pub attempts: i32,
    /// Recipients not yet accepted (pending or deferred), suppressed ones left out.
    pub open_recipients: Vec<String>,
    /// A recipient was accepted in an earlier attempt.
    pub accepted_before: bool,
}

/// Where a row stands after a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowStatus {
    /// Every open recipient accepted, or those left failed and one was accepted.
    Sent,
    /// Recipients are still open and attempts are left.
    Retry,
    /// Nothing was accepted, or attempts ran out with recipients still open.
    Failed,
}

impl RowStatus {
    pub fn label(self) -> &'static str {
        match self {
            RowStatus::Sent => "sent",
            RowStatus::Retry => "retry",
            RowStatus::Failed => "failed",
        }
    }
}

/// A recipient's status to store; `reply: None` keeps the reply stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientUpdate {
    pub address: String,
    pub status: RecipientStatus,
    pub reply: Option<String>,
    /// The server answered for it this round. Otherwise (given up, or the
    /// message cannot be sent) it is stored only over a recipient still
    /// pending or deferred: not over a status someone set meanwhile.
    pub answered: bool,
}

/// A row's outcome after a round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowVerdict {
    pub status: RowStatus,
    pub recipients: Vec<RecipientUpdate>,
}

/// Applies a round's answers to what the claim read. A message that can never
/// be sent fails every recipient still open; a row out of attempts
/// (`max_attempts`) fails those left open, keeping their last reply.
pub fn verdict(claimed: &ClaimedState, summary: &RowSummary, max_attempts: i32) -> RowVerdict {
    let mut recipients: Vec<RecipientUpdate> = summary
        .recipients
        .iter()
        .map(|(address, status, reply)| RecipientUpdate {
            address: address.clone(),
            status: *status,
            reply: Some(reply.clone()),
            answered: true,
        })
        .collect();
    let answered: HashMap<&str, usize> =
        summary.recipients.iter().enumerate().map(|(index, (address, _, _))| (address.as_str(), index)).collect();
    // (Only answers for the row's own open recipients count.)
    let accepted = claimed.accepted_before
        || claimed.open_recipients.iter().any(|address| {
            answered.get(address.as_str()).is_some_and(|index| recipients[*index].status == RecipientStatus::Sent)
        });
    // Open recipients the round left open: not answered, or deferred.
    let still_open: Vec<(&str, Option<usize>)> = claimed
        .open_recipients
        .iter()
        .map(|address| (address.as_str(), answered.get(address.as_str()).copied()))
        .filter(|(_, answer)| answer.is_none_or(|index| recipients[index].status == RecipientStatus::Deferred))
        .collect();
    let out_of_attempts = claimed.attempts >= max_attempts;
    let fail_open = summary.unsendable.is_some() || out_of_attempts;
    if fail_open {
        let reply = summary.unsendable.clone();
        let mut added = Vec::new();
        for (address, answer) in &still_open {
            match answer {
                Some(index) => {
                    recipients[*index].status = RecipientStatus::Failed;
                    if reply.is_some() {
                        recipients[*index].reply = reply.clone();
                    }
                }
                None => added.push(RecipientUpdate {
                    address: (*address).to_owned(),
                    status: RecipientStatus::Failed,
                    reply: reply.clone(),
                    answered: false,
                }),
            }
        }
        recipients.extend(added);
    }
    // Nothing left open (an unsendable message leaves nothing): sent if
    // anything was accepted. Recipients left: retried while attempts last,
    // then failed, whatever went out.
    let status = if still_open.is_empty() || summary.unsendable.is_some() {
        if accepted {
            RowStatus::Sent
        } else {
            RowStatus::Failed
        }
    } else if out_of_attempts {
        RowStatus::Failed
    } else {
        RowStatus::Retry
    };
    RowVerdict { status, recipients }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(attempts: i32, open: &[&str], accepted_before: bool) -> ClaimedState {
        ClaimedState {
            attempts,
            open_recipients: open.iter().map(|address| (*address).to_owned()).collect(),
            accepted_before,
        }
    }

    fn answers(list: &[(&str, RecipientStatus)]) -> RowSummary {
        RowSummary {
            recipients: list
                .iter()
                .map(|(address, status)| ((*address).to_owned(), *status, format!("{} {address}", status.label())))
                .collect(),
            ..RowSummary::default()
        }
    }

    fn statuses(verdict: &RowVerdict) -> Vec<(&str, RecipientStatus, Option<&str>)> {
        verdict
            .recipients
            .iter()
            .map(|update| (update.address.as_str(), update.status, update.reply.as_deref()))
            .collect()
    }

    #[test]
    fn every_recipient_accepted_is_sent() {
        let verdict = verdict(
            &claimed(1, &["a@x", "b@x"], false),
            &answers(&[("a@x", RecipientStatus::Sent), ("b@x", RecipientStatus::Sent)]),
            5,
        );
        assert_eq!(verdict.status, RowStatus::Sent);
        assert_eq!(verdict.recipients.len(), 2);
    }

    #[test]
    fn a_deferred_recipient_retries_while_attempts_are_left_and_fails_after() {
        let round = answers(&[("a@x", RecipientStatus::Sent), ("b@x", RecipientStatus::Deferred)]);
        assert_eq!(verdict(&claimed(4, &["a@x", "b@x"], false), &round, 5).status, RowStatus::Retry);
        let last = verdict(&claimed(5, &["a@x", "b@x"], false), &round, 5);
        assert_eq!(last.status, RowStatus::Failed);
        assert_eq!(
            statuses(&last),
            vec![
                ("a@x", RecipientStatus::Sent, Some("sent a@x")),
                ("b@x", RecipientStatus::Failed, Some("deferred b@x"))
            ]
        );
    }

    #[test]
    fn recipients_not_answered_stay_open_and_give_up_without_a_new_reply() {
        // (A job that never started leaves its recipients as they were.)
        let round = answers(&[("a@x", RecipientStatus::Sent)]);
        let open = verdict(&claimed(1, &["a@x", "b@x"], false), &round, 3);
        assert_eq!(open.status, RowStatus::Retry);
        assert_eq!(open.recipients.len(), 1);
        let given_up = verdict(&claimed(3, &["a@x", "b@x"], false), &round, 3);
        assert_eq!(given_up.status, RowStatus::Failed);
        assert_eq!(statuses(&given_up)[1], ("b@x", RecipientStatus::Failed, None));
    }

    #[test]
    fn rejected_recipients_with_one_accepted_earlier_make_the_row_sent() {
        let round = answers(&[("b@x", RecipientStatus::Failed)]);
        assert_eq!(verdict(&claimed(2, &["b@x"], true), &round, 5).status, RowStatus::Sent);
        assert_eq!(verdict(&claimed(2, &["b@x"], false), &round, 5).status, RowStatus::Failed);
    }

    #[test]
    fn an_unsendable_message_fails_every_open_recipient_with_the_problem() {
        let summary = RowSummary {
            recipients: vec![("a@x".to_owned(), RecipientStatus::Deferred, "451 later".to_owned())],
            unsendable: Some("the attachment is too large".to_owned()),
            last_error: Some("the attachment is too large".to_owned()),
            accepted_at: None,
        };
        let verdict = verdict(&claimed(1, &["a@x", "b@x"], false), &summary, 5);
        assert_eq!(verdict.status, RowStatus::Failed);
        assert_eq!(
            statuses(&verdict),
            vec![
                ("a@x", RecipientStatus::Failed, Some("the attachment is too large")),
                ("b@x", RecipientStatus::Failed, Some("the attachment is too large")),
            ]
        );
        // What was accepted before still counts.
        assert_eq!(super::verdict(&claimed(1, &["b@x"], true), &summary, 5).status, RowStatus::Sent);
    }

    #[test]
    fn an_answer_for_an_address_the_row_does_not_have_makes_nothing_sent() {
        let round = answers(&[("stranger@x", RecipientStatus::Sent), ("a@x", RecipientStatus::Failed)]);
        assert_eq!(verdict(&claimed(1, &["a@x"], false), &round, 5).status, RowStatus::Failed);
    }

    #[test]
    fn only_server_answers_are_marked_answered() {
        let round = answers(&[("a@x", RecipientStatus::Deferred)]);
        let given_up = verdict(&claimed(5, &["a@x", "b@x"], false), &round, 5);
        let answered: Vec<(&str, bool)> =
            given_up.recipients.iter().map(|update| (update.address.as_str(), update.answered)).collect();
        assert_eq!(answered, vec![("a@x", true), ("b@x", false)]);
    }

    #[test]
    fn a_row_without_open_recipients_is_sent_only_if_one_was_accepted() {
        // (Every open recipient was suppressed at the claim.)
        assert_eq!(verdict(&claimed(1, &[], true), &RowSummary::default(), 5).status, RowStatus::Sent);
        assert_eq!(verdict(&claimed(1, &[], false), &RowSummary::default(), 5).status, RowStatus::Failed);
    }

    #[test]
    fn an_account_that_could_not_sign_in_retries_with_every_recipient_open() {
        let summary = RowSummary { last_error: Some("no password".to_owned()), ..RowSummary::default() };
        let verdict = verdict(&claimed(1, &["a@x"], false), &summary, 5);
        assert_eq!(verdict.status, RowStatus::Retry);
        assert!(verdict.recipients.is_empty());
    }
}
