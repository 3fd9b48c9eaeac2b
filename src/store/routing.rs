//! What happens to a new incoming message in the transaction that stores
//! it: reply linking, the account's append_to table and on_receive function
//! (run as the account's owner role, as a security-restricted operation so
//! that code cannot switch back to the worker's superuser), and the RFC 3834
//! automatic reply. Each step runs in its own subtransaction: an error is
//! recorded on the message and never loses it.

use super::kept_plans;
use super::transaction::{set_setting, try_in_subtransaction, StoreError, PINNED_SEARCH_PATH};
use email_accounts_mail::receive::auto_reply::{auto_reply_recipient, auto_reply_subject};
use email_accounts_mail::receive::FetchedMessage;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use pgrx::JsonB;
use std::panic::AssertUnwindSafe;

/// The account settings routing needs.
#[derive(Debug, Clone)]
pub struct RoutingSettings {
    pub account_id: i64,
    pub account_address: String,
    pub enable_auto_reply: bool,
    /// The account's owner role: append_to, on_receive and on_bounce run as it.
    pub owner: pg_sys::Oid,
    /// Why the owner role may not run them now (a superuser, a group role,
    /// not bound to the account's tenant): then they are not run.
    pub owner_problem: Option<String>,
    pub append_to_table: Option<pg_sys::Oid>,
    /// `SELECT schema.function($1)`.
    pub on_receive_statement: Option<String>,
    /// `SELECT schema.function($1, $2)`: outbox_id and address of a recipient a report recorded.
    pub on_bounce_statement: Option<String>,
}

/// Runs `body` as `role`, in a security-restricted operation (no SET ROLE,
/// no RESET ROLE back to the worker's user), in a GUC nesting level of its
/// own with the pinned search_path: whatever the code sets with `SET` or
/// `set_config(…, false)` is undone when it returns, so it can never steer
/// the worker's next statements. Call inside a subtransaction: on error its
/// rollback restores the user and the settings.
fn as_role<R>(role: pg_sys::Oid, body: impl FnOnce() -> R) -> R {
    super::privileged::as_user(role, pg_sys::SECURITY_RESTRICTED_OPERATION, || {
        let nest_level = unsafe { pg_sys::NewGUCNestLevel() };
        set_setting(c"search_path", PINNED_SEARCH_PATH, pg_sys::GucAction::GUC_ACTION_SAVE);
        let result = body();
        unsafe { pg_sys::AtEOXact_GUC(false, nest_level) };
        result
    })
}

fn record_routing_error(message_id: i64, step: &str, error: &str) {
    let problem = format!("{step}: {error}");
    let recorded = Spi::run_with_args(
        "UPDATE email_accounts.message
            SET routing_error = pg_catalog.concat_ws(E'\\n', routing_error, $2) WHERE message_id = $1",
        &[message_id.into(), problem.as_str().into()],
    );
    if let Err(error) = recorded {
        warning!("email_accounts receiver: cannot record a routing error of message {message_id}: {error}");
    }
}

// PostgreSQL's timeout machinery (utils/timeout.h), which pgrx does not bind.
// STATEMENT_TIMEOUT's handler cancels the running statement with an ERROR,
// as statement_timeout does in a client session (not armed in workers).
const STATEMENT_TIMEOUT: u32 = 3;
const USER_TIMEOUT: u32 = 12;
unsafe extern "C-unwind" {
    fn RegisterTimeout(id: u32, handler: extern "C" fn()) -> u32;
    fn enable_timeout_after(id: u32, delay_ms: i32);
    fn disable_timeout(id: u32, keep_indicator: bool);
    fn get_timeout_indicator(id: u32, reset_indicator: bool) -> bool;
}

/// How long after its cancel routing code that swallowed it (an EXCEPTION
/// WHEN query_canceled block can) may go on before the receiver stops itself.
const GRACE_AFTER_CANCEL_MS: i32 = 5_000;
/// How long the account's routing code is then left out.
const SUSPENSION_SECONDS: i64 = 3_600;

/// In a signal handler: ends the receiver as pg_terminate_backend would. Its
/// transaction is rolled back; the new receiver suspends the account's code
/// (the board says whose code was running) and stores the messages without it.
extern "C" fn stop_the_receiver() {
    unsafe {
        pg_sys::ProcDiePending = 1;
        pg_sys::InterruptPending = 1;
        pg_sys::SetLatch(pg_sys::MyLatch);
    }
}

/// The watchdog's timeout id, registered once per receiver process.
fn watchdog() -> u32 {
    static WATCHDOG: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *WATCHDOG.get_or_init(|| unsafe { RegisterTimeout(USER_TIMEOUT, stop_the_receiver) })
}

/// At receiver start: if the previous receiver was stopped inside an
/// account's routing code, that code is suspended for a while.
pub fn suspend_interrupted_routing() {
    let until = unsafe { pg_sys::GetCurrentTimestamp() } + SUSPENSION_SECONDS * 1_000_000;
    if let Some(account_id) = crate::worker::board::suspend_interrupted_routing(until) {
        warning!(
            "email_accounts receiver: the append_to_table / on_receive_function code of account {account_id} ran past \
             email_accounts.routing_timeout and could not be cancelled; it is not run for {SUSPENSION_SECONDS} s"
        );
    }
}

/// Runs a step of the account's own code (append_to, on_receive) bounded by
/// `email_accounts.routing_timeout`: code that sleeps or loops is cancelled
/// and the receiver carries on with the next message; code that swallows the
/// cancel ends the receiver (restarted at once) and is suspended. Session
/// advisory locks it took (they outlive its subtransaction) are released, so
/// it cannot leave locks held by the worker.
fn user_code_step(account_id: i64, message_id: i64, name: &str, body: impl FnOnce() -> Result<(), SpiError>) {
    let timeout = crate::settings::routing_timeout_milliseconds();
    let watchdog = watchdog();
    crate::worker::board::set_routing_account(Some(account_id));
    let outcome = try_in_subtransaction(AssertUnwindSafe(|| {
        unsafe {
            enable_timeout_after(STATEMENT_TIMEOUT, timeout);
            enable_timeout_after(watchdog, timeout.saturating_add(GRACE_AFTER_CANCEL_MS));
        }
        let result = body();
        unsafe {
            disable_timeout(watchdog, false);
            disable_timeout(STATEMENT_TIMEOUT, true);
        }
        result
    }));
    unsafe {
        // Also when the code ended in an error, before anything else runs.
        disable_timeout(watchdog, false);
        disable_timeout(STATEMENT_TIMEOUT, true);
        // A cancel that fired after the code returned must not cancel the worker's next statement.
        if get_timeout_indicator(STATEMENT_TIMEOUT, true) {
            pg_sys::QueryCancelPending = 0;
        }
        pg_sys::LockReleaseSession(pg_sys::USER_LOCKMETHOD as pg_sys::LOCKMETHODID);
    }
    crate::worker::board::set_routing_account(None);
    record_failure(message_id, name, outcome);
}

/// Runs one step in a subtransaction; an error is recorded on the message.
fn step(message_id: i64, name: &str, body: impl FnOnce() -> Result<(), SpiError>) {
    record_failure(message_id, name, try_in_subtransaction(AssertUnwindSafe(body)));
}

/// Records how a step's subtransaction failed, if it did.
fn record_failure(message_id: i64, name: &str, outcome: Result<(), StoreError>) {
    if let Err(error) = outcome {
        record_routing_error(message_id, name, &error.to_string());
    }
}

pub fn route(message_id: i64, message: &FetchedMessage, settings: &RoutingSettings) {
    // Mail that comes back about mail we sent is recorded on the outbox, and
    // nothing else happens to it (no reply link, append_to, on_receive, auto reply).
    if let Some(report) = delivery_report(message, &settings.account_address) {
        let mut recorded: Vec<(i64, String)> = Vec::new();
        step(message_id, "delivery report", || {
            recorded = Spi::connect_mut(|client| {
                client
                    .update(
                        "SELECT reported_outbox_id, reported_address FROM email_accounts.record_delivery_report($1, $2)",
                        None,
                        &[message_id.into(), JsonB(report).into()],
                    )?
                    .map(|row| Ok((row.get::<i64>(1)?.unwrap_or_default(), row.get::<String>(2)?.unwrap_or_default())))
                    .collect::<Result<Vec<_>, SpiError>>()
            })?;
            Ok(())
        });
        on_bounce(message_id, settings, &recorded);
        return;
    }
    let mut is_reply = false;
    // Only a message naming earlier mail can answer it (skips a subtransaction per new message).
    let names_earlier_mail =
        message.parsed.as_ref().is_ok_and(|parsed| parsed.in_reply_to.is_some() || !parsed.references.is_empty());
    if names_earlier_mail {
        step(message_id, "linking the reply", || {
            is_reply =
                super::kept_plans::get_one::<bool>("SELECT email_accounts.link_reply($1)", &[message_id.into()])?
                    .unwrap_or(false);
            Ok(())
        });
    }
    // Not a reply: perhaps mail to a row's document address (automatic linking).
    if !is_reply {
        if let Ok(parsed) = &message.parsed {
            let recipients = sub_addressed_recipients(parsed);
            if !recipients.is_empty() && routing_suspension(settings).is_none() {
                // The row is looked up as an owner role (its policies and casts
                // are the tenant's code): bounded like append_to and on_receive.
                user_code_step(settings.account_id, message_id, "automatic linking", || {
                    is_reply = link_document(message_id, settings.account_id, &recipients)?;
                    Ok(())
                });
            }
        }
    }
    let runs_user_code = (settings.append_to_table.is_some() && !is_reply) || settings.on_receive_statement.is_some();
    if let (Some(why_not), true) = (user_code_blocked(settings), runs_user_code) {
        record_routing_error(message_id, "append_to_table and on_receive_function", &why_not);
    } else {
        if let (Some(table), false) = (settings.append_to_table, is_reply) {
            user_code_step(settings.account_id, message_id, "append_to_table", || {
                append_to(message_id, table, settings.owner)
            });
        }
        if let Some(statement) = &settings.on_receive_statement {
            user_code_step(settings.account_id, message_id, "on_receive_function", || {
                as_role(settings.owner, || Spi::run_with_args(statement, &[message_id.into()]))
            });
        }
    }
    if settings.enable_auto_reply {
        // Its template (auto_reply_template) is the tenant's code too: bounded like it.
        if let Some(suspension) = routing_suspension(settings) {
            record_routing_error(message_id, "auto reply", &suspension);
        } else {
            user_code_step(settings.account_id, message_id, "auto reply", || auto_reply(message_id, message, settings));
        }
    }
}

/// Why the account's own code (append_to, on_receive, on_bounce) is not run
/// now: its owner role may not run it, or its routing is suspended.
fn user_code_blocked(settings: &RoutingSettings) -> Option<String> {
    match &settings.owner_problem {
        Some(problem) => Some(format!("not run: the account's owner_role may not run them: {problem}")),
        None => routing_suspension(settings),
    }
}

/// Why nothing of the account's code runs for a while (after code that
/// could not be stopped at email_accounts.routing_timeout), or `None`.
fn routing_suspension(settings: &RoutingSettings) -> Option<String> {
    let until = crate::worker::board::routing_suspended_until(settings.account_id)?;
    let until = pgrx::datum::TimestampWithTimeZone::try_from(until).map(|until| until.to_string()).unwrap_or_default();
    Some(format!(
        "not run: suspended until {until}, after this account's code could not be stopped at email_accounts.routing_timeout"
    ))
}

/// The account's on_bounce_function, once per recipient a report recorded,
/// as the owner role: all calls of one report in one step, bounded together
/// by routing_timeout like on_receive (a report naming many recipients
/// cannot hold the receiver longer than one message may).
fn on_bounce(message_id: i64, settings: &RoutingSettings, recorded: &[(i64, String)]) {
    let Some(statement) = &settings.on_bounce_statement else {
        return;
    };
    if recorded.is_empty() {
        return;
    }
    if let Some(why_not) = user_code_blocked(settings) {
        record_routing_error(message_id, "on_bounce_function", &why_not);
        return;
    }
    user_code_step(settings.account_id, message_id, "on_bounce_function", || {
        as_role(settings.owner, || {
            recorded.iter().try_for_each(|(outbox_id, address)| {
                Spi::run_with_args(statement, &[(*outbox_id).into(), address.as_str().into()])
            })
        })
    });
}

/// More recipients than any outbox row has are not looked at.
const MOST_REPORTED_RECIPIENTS: usize = 1000;

/// The delivery report (bounce, delay warning, complaint) the message is, as
/// record_delivery_report() takes it, with the outbox row a signed envelope
/// sender of the account `address` names (verified here: the link keys stay
/// in the worker). Only a message whose header says it may be one (a
/// `multipart/report`, or from a mailer daemon or postmaster) is parsed for
/// it: ordinary mail costs nothing more.
fn delivery_report(message: &FetchedMessage, address: &str) -> Option<serde_json::Value> {
    use email_accounts_mail::receive::delivery_report::{recognise, ReportKind};
    let parsed = message.parsed.as_ref().ok()?;
    let may_be = parsed.headers.iter().any(|(name, value)| {
        name.eq_ignore_ascii_case("Content-Type") && value.to_ascii_lowercase().contains("multipart/report")
    }) || parsed.from.as_deref().is_some_and(|from| {
        let from = from.to_ascii_lowercase();
        from.contains("mailer-daemon@") || from.contains("postmaster@")
    });
    if !may_be {
        return None;
    }
    // A parser panic must not abort the batch's transaction.
    let mut report = std::panic::catch_unwind(|| recognise(&message.raw)).ok().flatten()?;
    // A delivery report comes with the null sender (RFC 5321 §4.5.5): mail
    // with a Return-Path of its own claiming to be one is ordinary mail.
    let return_path = parsed.headers.iter().find(|(name, _)| name.eq_ignore_ascii_case("Return-Path"));
    let null_sender = return_path.is_none_or(|(_, value)| value.trim() == "<>");
    if !matches!(report.kind, ReportKind::Complaint { .. }) && !null_sender {
        return None;
    }
    report.recipients.truncate(MOST_REPORTED_RECIPIENTS);
    let recipients: Vec<serde_json::Value> = report
        .recipients
        .iter()
        .map(|recipient| {
            serde_json::json!({
                "address": recipient.address,
                "final": recipient.final_recipient,
                "action": recipient.action.label(),
                "status": recipient.status,
                "diagnostic": recipient.diagnostic.as_deref().map(email_accounts_mail::oauth::clean),
                "remote_mta": recipient.remote_mta,
                "hard": recipient.is_hard_bounce(),
            })
        })
        .collect();
    // Where it came back to (a DSN goes to the envelope sender; a complaint
    // returns the mail with it as Return-Path).
    let returned_to: Vec<String> =
        sub_addressed_recipients(parsed).into_iter().chain(report.original_return_path.clone()).collect();
    let (signed, signature_problem) = signed_envelope_sender(&returned_to, address);
    let (signed_outbox_id, signed_recipient) = signed.unzip();
    Some(serde_json::json!({
        "signed_outbox_id": signed_outbox_id,
        "signed_recipient": signed_recipient,
        "signature_problem": signature_problem,
        "kind": match report.kind {
            ReportKind::Complaint { .. } => "complaint",
            ReportKind::DeliveryStatus | ReportKind::NonStandardBounce => "delivery_report",
        },
        "original_message_id": report.original_message_id,
        "reporting_mta": report.reporting_mta,
        "recipients": recipients,
    }))
}

/// The outbox row and recipient a signed envelope sender among
/// `returned_to` names, or why the one that looks like it does not verify.
fn signed_envelope_sender(returned_to: &[String], address: &str) -> (Option<(i64, String)>, Option<String>) {
    use email_accounts_mail::return_path::verify;
    if !returned_to.iter().any(|candidate| candidate.contains('+')) {
        return (None, None);
    }
    let keys = super::links::link_keys().unwrap_or_else(|error| {
        warning!("email_accounts receiver: cannot read the link signing keys: {error}");
        Vec::new()
    });
    let recipients_of = |outbox_id: i64| super::outbox::recipient_addresses(outbox_id).unwrap_or_default();
    let mut problem = None;
    for candidate in returned_to {
        match verify(candidate, address, &keys, &recipients_of) {
            Some(Ok(signed)) => return (Some(signed), None),
            Some(Err(error)) => problem = problem.or(Some(error.to_string())),
            None => {}
        }
    }
    (None, problem)
}

/// The recipients with a sub-address (a `+` in the local part) in To, Cc,
/// Delivered-To and X-Original-To: where document addresses and signed
/// envelope senders are looked for. Usually none, and then no statement is run.
fn sub_addressed_recipients(parsed: &email_accounts_mail::parse::ParsedMessage) -> Vec<String> {
    let delivered_to = parsed
        .headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("Delivered-To") || name.eq_ignore_ascii_case("X-Original-To"))
        .map(|(_, value)| value.trim().to_owned());
    parsed
        .to
        .iter()
        .chain(&parsed.cc)
        .cloned()
        .chain(delivered_to)
        .filter(|recipient| recipient.rsplit_once('@').is_some_and(|(local, _)| local.contains('+')))
        .collect()
}

/// Links the message to the row a document address among `recipients`
/// names, for an account of the same tenant with automatic linking on; the
/// row must exist and be readable by that account's owner role (looked up
/// as it), in a table whose owner has that role's rights. True when
/// linked; why not is recorded on the message.
fn link_document(message_id: i64, account_id: i64, recipients: &[String]) -> Result<bool, SpiError> {
    type Candidate = (String, pg_sys::Oid, Option<String>);
    let candidates: Vec<Candidate> = Spi::connect(|client| {
        super::kept_plans::select(
            client,
            "SELECT account.address, coalesce(pg_catalog.to_regrole(pg_catalog.quote_ident(account.owner_role))::oid, 0),
                    email_accounts.owner_role_problem(pg_catalog.to_regrole(pg_catalog.quote_ident(account.owner_role))::oid,
                                                      account.tenant)
               FROM email_accounts.account
              WHERE account.enable_automatic_linking
                AND account.tenant IS NOT DISTINCT FROM (SELECT receiving.tenant FROM email_accounts.account AS receiving
                                                          WHERE receiving.account_id = $1)",
            &[account_id.into()],
        )?
        .iter()
        .map(|row| {
            Ok((row.get::<String>(1)?.unwrap_or_default(), row.get::<pg_sys::Oid>(2)?.unwrap_or(pg_sys::InvalidOid), row.get(3)?))
        })
        .collect::<Result<Vec<Candidate>, SpiError>>()
    })?;
    let found = recipients.iter().find_map(|recipient| {
        candidates.iter().find_map(|(address, owner, problem)| {
            email_accounts_mail::document_address::decode(recipient, address)
                .map(|(table, id)| (table, id, *owner, problem))
        })
    });
    let Some((table, id, owner, problem)) = found else { return Ok(false) };
    let not_linked = |why: String| {
        record_routing_error(message_id, "automatic linking", &format!("not linked to {table} {id:?}: {why}"));
        Ok(false)
    };
    if let Some(problem) = problem {
        return not_linked(format!("the account's owner_role may not look the row up: {problem}"));
    }
    // The statement that finds the row by its primary key, with the key's
    // type (no typmod: a varchar(n) cast would cut the key short). Only
    // application tables: never the catalogs or the extension's own. And
    // only a table whose owner has the owner role's rights: the table is
    // named by whoever sent the mail, and the look-up runs its code (its
    // row-level security policies, its key domain's checks) as the owner
    // role — a table of a role with less would run that role's code with more.
    let lookup = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT relation.oid,
                        pg_catalog.format('SELECT %I::text FROM %s WHERE %I = $1::%s', key.attname, relation.oid::regclass,
                                          key.attname, pg_catalog.format_type(key.atttypid, NULL)),
                        namespace.nspname IN ('pg_catalog', 'information_schema', 'email_accounts') OR namespace.nspname LIKE 'pg_toast%',
                        CASE WHEN NOT pg_catalog.pg_has_role(class.relowner, $2, 'USAGE') THEN class.relowner::regrole::text END
                   FROM (SELECT pg_catalog.to_regclass($1) AS oid) AS relation
                   LEFT JOIN pg_catalog.pg_class AS class ON class.oid = relation.oid
                   LEFT JOIN pg_catalog.pg_namespace AS namespace ON namespace.oid = class.relnamespace
                   LEFT JOIN pg_catalog.pg_attribute AS key
                          ON key.attrelid = relation.oid AND key.attname = email_accounts.primary_key_column(relation.oid)",
                Some(1),
                &[table.as_str().into(), owner.into()],
            )?
            .first();
        Ok::<_, SpiError>((
            row.get::<pg_sys::Oid>(1)?,
            row.get::<String>(2)?,
            row.get::<bool>(3)?,
            row.get::<String>(4)?,
        ))
    });
    let (relation, statement) = match lookup {
        Ok((Some(_), _, Some(true), _)) => return not_linked("it is not an application table".to_owned()),
        Ok((Some(_), _, _, Some(table_owner))) => {
            return not_linked(format!(
                "its owner {table_owner} lacks the rights of the account's owner_role, as whom the look-up would run the table's code"
            ))
        }
        Ok((Some(relation), Some(statement), _, None)) => (relation, statement),
        Ok((Some(_), None, _, None)) => return not_linked("the table has no single-column primary key".to_owned()),
        _ => return not_linked("there is no such table".to_owned()),
    };
    // The key as the table spells it (007 is 7 for an integer key).
    let key = as_role(owner, || {
        Spi::connect(|client| {
            let found = client.select(&statement, Some(1), &[id.as_str().into()])?;
            if found.is_empty() {
                return Ok::<_, SpiError>(None);
            }
            found.first().get::<String>(1)
        })
    })?;
    let Some(key) = key else {
        return not_linked("there is no such row".to_owned());
    };
    kept_plans::run(LINK_TO_ROW, &[message_id.into(), relation.into(), key.into()])?;
    Ok(true)
}

/// Creates the append_to row as the owner role and links the message to it.
fn append_to(message_id: i64, table: pg_sys::Oid, owner: pg_sys::Oid) -> Result<(), SpiError> {
    // (Kept plans: these run for every message routed.)
    let statement = kept_plans::get_one::<String>(
        "SELECT email_accounts.append_to_statement(account_id) FROM email_accounts.message WHERE message_id = $1",
        &[message_id.into()],
    )?
    .unwrap_or_default();
    let values = kept_plans::get_one::<JsonB>("SELECT email_accounts.append_to_values($1)", &[message_id.into()])?;
    let key = as_role(owner, || {
        Spi::connect_mut(|client| {
            let inserted = client.update(&statement, Some(1), &[values.into()])?;
            if inserted.is_empty() {
                return Ok::<_, SpiError>(None);
            }
            inserted.first().get::<String>(1)
        })
    })?;
    kept_plans::run(LINK_TO_ROW, &[message_id.into(), table.into(), key.into()])
}

/// Links a message to the application row it was appended to or is about.
const LINK_TO_ROW: &str =
    "UPDATE email_accounts.message SET reference_table = $2, reference_id = $3 WHERE message_id = $1";

fn auto_reply(message_id: i64, message: &FetchedMessage, settings: &RoutingSettings) -> Result<(), SpiError> {
    let (recipient, refusal, subject) = match &message.parsed {
        Ok(parsed) => {
            let decision = auto_reply_recipient(&parsed.headers, parsed.from.as_deref(), &[&settings.account_address]);
            let subject = auto_reply_subject(parsed.subject.as_deref());
            match decision {
                Ok(recipient) => (Some(recipient), None, subject),
                Err(refusal) => (None, Some(refusal.to_string()), subject),
            }
        }
        Err(error) => (None, Some(format!("the message could not be parsed: {error}")), auto_reply_subject(None)),
    };
    kept_plans::run(
        "SELECT email_accounts.auto_reply($1, $2, $3, $4)",
        &[message_id.into(), recipient.into(), subject.into(), refusal.into()],
    )
}
