//! The receiver's statements: which accounts are due, where their folders
//! stand, storing a batch of messages together with the folder's cursor,
//! and recording how a sync ended.

use super::account_settings::ServerSettings;
use super::jsonb::HeaderList;
use super::kept_plans;
use super::routing::{self, RoutingSettings};
use super::transaction::try_in_subtransaction;
use email_accounts_mail::parse::{ParsedAttachment, ParsedMessage};
use email_accounts_mail::receive::imap_sync::FolderState;
use email_accounts_mail::receive::pop3_sync::{Pop3State, Retrieval};
use email_accounts_mail::receive::{Batch, FetchedMessage, FolderOutcome, StoreReceipt};
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiError;
use std::collections::HashMap;
use std::panic::AssertUnwindSafe;

/// An account the receiver syncs now.
#[derive(Debug, Clone)]
pub struct ReceivingAccount {
    pub account_id: i64,
    pub name: String,
    pub login_id: String,
    pub allow_plaintext_authentication: bool,
    pub extra_ca_certificate: Option<String>,
    pub incoming: ServerSettings,
    pub folders: Vec<String>,
    pub unseen_only: bool,
    pub initial_sync_count: u32,
    pub attachment_size_limit: u64,
    pub retrieval: Retrieval,
    pub routing: RoutingSettings,
    /// Its next sync is due now (or was asked for).
    pub due: bool,
    /// Changes whenever the incoming server, login, password or access token changes (IDLE watchers restart then).
    pub fingerprint: String,
    /// It signs in with an OAuth2 access token rather than a password.
    pub oauth2: bool,
}

impl ReceivingAccount {
    pub fn is_pop3(&self) -> bool {
        self.incoming.protocol.as_deref() == Some("pop3")
    }
}

const RECEIVING_ACCOUNTS: &str = "
SELECT settings.account_id, settings.name, settings.login_id, settings.allow_plaintext_authentication,
       settings.extra_ca_certificate, settings.incoming_protocol, settings.incoming_host, settings.incoming_port,
       settings.incoming_security, settings.folders, settings.sync_option = 'unseen', settings.initial_sync_count,
       settings.attachment_size_limit, settings.pop3_retrieval, settings.pop3_delete_after_days,
       settings.address, settings.enable_auto_reply, pg_catalog.to_regrole(pg_catalog.quote_ident(account.owner_role))::oid,
       account.append_to_table::oid,
       (SELECT pg_catalog.format('SELECT %I.%I($1)', namespace.nspname, function.proname)
          FROM pg_catalog.pg_proc AS function
          JOIN pg_catalog.pg_namespace AS namespace ON namespace.oid = function.pronamespace
         WHERE function.oid = account.on_receive_function),
       settings.account_id = ANY ($1) OR schedule.next_sync_at <= now(),
       pg_catalog.concat_ws('|', settings.incoming_host, settings.incoming_port, settings.incoming_security, settings.login_id,
                 settings.folders[1], account.password_set_at, pg_catalog.md5(settings.extra_ca_certificate),
                 settings.auth_method, oauth.refreshed_at),
       CASE WHEN account.append_to_table IS NOT NULL OR account.on_receive_function IS NOT NULL OR account.on_bounce_function IS NOT NULL
            THEN email_accounts.owner_role_problem(pg_catalog.to_regrole(pg_catalog.quote_ident(account.owner_role))::oid, account.tenant) END,
       settings.auth_method = 'oauth2',
       (SELECT pg_catalog.format('SELECT %I.%I($1, $2)', namespace.nspname, function.proname)
          FROM pg_catalog.pg_proc AS function
          JOIN pg_catalog.pg_namespace AS namespace ON namespace.oid = function.pronamespace
         WHERE function.oid = account.on_bounce_function)
  FROM email_accounts.account_settings AS settings
  JOIN email_accounts.account USING (account_id)
  LEFT JOIN email_accounts.account_oauth AS oauth USING (account_id)
 CROSS JOIN LATERAL email_accounts.next_sync_at(settings.account_id, settings.folders) AS schedule
 WHERE settings.ready_to_receive
   AND settings.incoming_protocol IS NOT NULL AND settings.incoming_host IS NOT NULL
   AND pg_catalog.to_regrole(pg_catalog.quote_ident(account.owner_role)) IS NOT NULL
 ORDER BY settings.account_id";

/// Every account ready to receive, each marked due when its next sync is due or it was requested.
pub fn receiving_accounts(requested: &[i64]) -> Result<Vec<ReceivingAccount>, SpiError> {
    Spi::connect(|client| {
        let table = kept_plans::select(client, RECEIVING_ACCOUNTS, &[requested.to_vec().into()])?;
        let mut accounts = Vec::new();
        for row in table {
            let retrieval = match (row.get::<String>(14)?.as_deref(), row.get::<i32>(15)?) {
                (Some("delete_after_store"), _) => Retrieval::DeleteAfterStore,
                (Some("delete_after_days"), Some(days)) => Retrieval::DeleteAfterDays(days.max(1) as u32),
                _ => Retrieval::Keep,
            };
            let address: String = row.get(16)?.unwrap_or_default();
            accounts.push(ReceivingAccount {
                account_id: row.get(1)?.unwrap_or_default(),
                name: row.get(2)?.unwrap_or_default(),
                login_id: row.get(3)?.unwrap_or_default(),
                allow_plaintext_authentication: row.get(4)?.unwrap_or_default(),
                extra_ca_certificate: row.get(5)?,
                incoming: ServerSettings {
                    protocol: row.get(6)?,
                    host: row.get(7)?,
                    port: row.get(8)?,
                    security: row.get(9)?,
                },
                folders: once_each(row.get::<Vec<String>>(10)?.unwrap_or_default()),
                unseen_only: row.get(11)?.unwrap_or_default(),
                initial_sync_count: row.get::<i32>(12)?.unwrap_or(1).max(1) as u32,
                attachment_size_limit: row.get::<i64>(13)?.unwrap_or(0).max(0) as u64,
                retrieval,
                routing: RoutingSettings {
                    account_id: row.get(1)?.unwrap_or_default(),
                    account_address: address,
                    enable_auto_reply: row.get(17)?.unwrap_or_default(),
                    owner: row.get::<pg_sys::Oid>(18)?.unwrap_or(pg_sys::InvalidOid),
                    append_to_table: row.get::<pg_sys::Oid>(19)?.filter(|oid| *oid != pg_sys::InvalidOid),
                    on_receive_statement: row.get(20)?,
                    on_bounce_statement: row.get(25)?,
                    owner_problem: row.get(23)?,
                },
                due: row.get(21)?.unwrap_or(false),
                fingerprint: row.get(22)?.unwrap_or_default(),
                oauth2: row.get(24)?.unwrap_or(false),
            });
        }
        Ok(accounts)
    })
}

/// The folders in their order, a name listed twice kept once (it is one
/// folder: synced twice a round it would be fetched twice).
fn once_each(mut folders: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    folders.retain(|folder| seen.insert(folder.clone()));
    folders
}

const SECONDS_UNTIL_NEXT_SYNC: &str = "
SELECT extract(epoch FROM min(schedule.next_sync_at) - now())::float8
  FROM email_accounts.account_settings AS settings
 CROSS JOIN LATERAL email_accounts.next_sync_at(settings.account_id, settings.folders) AS schedule
 WHERE settings.ready_to_receive";

/// Seconds until the next account is due (0 when one is due now); `None` when no account receives.
pub fn seconds_until_next_sync() -> Result<Option<f64>, SpiError> {
    kept_plans::get_one::<f64>(SECONDS_UNTIL_NEXT_SYNC, &[])
}

/// Where each IMAP folder of the account stands.
pub fn folder_states(account_id: i64, folders: &[String]) -> Result<Vec<FolderState>, SpiError> {
    Spi::connect(|client| {
        let table = kept_plans::select(
            client,
            "SELECT folder, uidvalidity, last_uid FROM email_accounts.sync_state WHERE account_id = $1 AND folder = ANY ($2)",
            &[account_id.into(), folders.to_vec().into()],
        )?;
        let mut stored: HashMap<String, (Option<u32>, u32)> = HashMap::new();
        for row in table {
            let folder: String = row.get(1)?.unwrap_or_default();
            let uidvalidity = row.get::<i64>(2)?.map(|value| value as u32);
            stored.insert(folder, (uidvalidity, row.get::<i64>(3)?.unwrap_or(0) as u32));
        }
        Ok(folders
            .iter()
            .map(|folder| {
                let (uidvalidity, last_uid) = stored.get(folder).copied().unwrap_or((None, 0));
                FolderState { folder: folder.clone(), uidvalidity, last_uid }
            })
            .collect())
    })
}

/// What the database knows of a POP3 mailbox before a sync: whether it was
/// ever synced, and the UIDLs the initial sync count skipped. (Which UIDLs
/// are stored is asked for the server's listing: `stored_unique_ids`.)
pub fn pop3_state(account_id: i64, folder: &str) -> Result<Pop3State, SpiError> {
    Spi::connect(|client| {
        let mut state = Pop3State { folder: folder.to_owned(), ..Pop3State::default() };
        let table = kept_plans::select(
            client,
            // (Whether anything is stored matters only before the first
            // sync: not asked after it, when it could read every message.)
            "SELECT state.skipped_unique_ids, state.last_success_at IS NOT NULL,
                    CASE WHEN state.last_success_at IS NULL
                         THEN EXISTS (SELECT FROM email_accounts.message
                                       WHERE message.account_id = $1 AND message.unique_id IS NOT NULL) END
               FROM (SELECT) AS one
               LEFT JOIN email_accounts.sync_state AS state ON state.account_id = $1 AND state.folder = $2",
            &[account_id.into(), folder.into()],
        )?;
        let (mut synced_before, mut any_stored) = (false, false);
        for row in table {
            state.skipped = row.get::<Vec<String>>(1)?.unwrap_or_default().into_iter().collect();
            synced_before = row.get(2)?.unwrap_or(false);
            any_stored = row.get(3)?.unwrap_or(false);
        }
        state.first_sync = !synced_before && !any_stored && state.skipped.is_empty();
        Ok(state)
    })
}

/// Which of the `listed` UIDLs of a POP3 account are stored, each with the
/// age of the stored copy in days: probes of the account's UIDL index for
/// what the server lists (the whole stored history was read on every sync).
pub fn stored_unique_ids(account_id: i64, listed: &[String]) -> Result<HashMap<String, f64>, SpiError> {
    Spi::connect(|client| {
        kept_plans::select(
            client,
            "SELECT message.unique_id, extract(epoch FROM now() - message.received_at)::float8 / 86400
               FROM email_accounts.message
              WHERE message.account_id = $1 AND message.unique_id = ANY ($2)",
            &[account_id.into(), listed.to_vec().into()],
        )?
        .into_iter()
        .map(|row| Ok((row.get::<String>(1)?.unwrap_or_default(), row.get::<f64>(2)?.unwrap_or(0.0))))
        .collect()
    })
}

/// Messages in one statement, a whole batch or one of it. The parameters
/// are unnested in the select list, not in FROM: a function scan would first
/// copy every raw message into a tuplestore. The rows come out, and take
/// their ids, in the arrays' order. Each message's address and reference
/// lists come as array literals (SQL arrays of arrays must be rectangular).
/// Without ON CONFLICT: a batch never holds stored messages unless a cursor
/// was lost, and speculative insertion costs every row a unique-index probe
/// and a second WAL record; `store_batch` retries a refused batch with it.
macro_rules! insert_messages {
    () => {
        "
INSERT INTO email_accounts.message
       (account_id, tenant, folder, uidvalidity, uid, unique_id, internet_message_id, in_reply_to, \"references\",
        from_address, to_addresses, cc_addresses, reply_to, subject, sent_at, body_text, body_html, headers, size,
        seen, raw, raw_sha256, headers_only, parse_error)
SELECT $1, (SELECT tenant FROM email_accounts.account WHERE account_id = $1), $2, $3, m.uid, m.unique_id,
       m.internet_message_id, m.in_reply_to, m.refs::text[], m.from_address, m.to_addresses::text[],
       m.cc_addresses::text[], m.reply_to::text[], m.subject, to_timestamp(m.sent_at), m.body_text, m.body_html,
       m.headers, m.size, m.seen, m.raw, sha256(m.raw), m.headers_only, m.parse_error
  FROM (SELECT unnest($4::bigint[]) AS uid, unnest($5::text[]) AS unique_id, unnest($6::text[]) AS internet_message_id,
               unnest($7::text[]) AS in_reply_to, unnest($8::text[]) AS refs, unnest($9::text[]) AS from_address,
               unnest($10::text[]) AS to_addresses, unnest($11::text[]) AS cc_addresses,
               unnest($12::text[]) AS reply_to, unnest($13::text[]) AS subject, unnest($14::float8[]) AS sent_at,
               unnest($15::text[]) AS body_text, unnest($16::text[]) AS body_html, unnest($17::jsonb[]) AS headers,
               unnest($18::bigint[]) AS size, unnest($19::boolean[]) AS seen, unnest($20::bytea[]) AS raw,
               unnest($21::boolean[]) AS headers_only, unnest($22::text[]) AS parse_error) AS m
 WHERE EXISTS (SELECT FROM email_accounts.account WHERE account_id = $1)"
    };
}
const INSERT_MESSAGES: &str = concat!(insert_messages!(), "\nRETURNING message_id, uid, unique_id");
/// The same, skipping messages already stored (one by one, or a batch refused without it).
const INSERT_NEW_MESSAGES: &str =
    concat!(insert_messages!(), "\nON CONFLICT DO NOTHING\nRETURNING message_id, uid, unique_id");

/// After a UIDVALIDITY change: the same content already stored from this
/// folder takes the new UID. (The copies found first, then the earliest:
/// ordered in one query, a plan made while the inbox looked empty could walk
/// its whole primary key per message instead.)
const REBIND_MESSAGE: &str = "
UPDATE email_accounts.message SET uidvalidity = $3, uid = $4
 WHERE message_id = (SELECT same.message_id
                       FROM (SELECT message_id FROM email_accounts.message
                              WHERE account_id = $1 AND folder = $2 AND raw_sha256 = sha256($5) AND uidvalidity <> $3
                             OFFSET 0) AS same
                      ORDER BY same.message_id LIMIT 1)
RETURNING message_id";

/// Attachments of one or more messages; `position` counts from 1 per message.
const INSERT_ATTACHMENTS: &str = "
INSERT INTO email_accounts.message_attachment (message_id, position, filename, content_type, size, content_id, inline, content)
SELECT part.message_id, part.position, part.filename, part.content_type, part.size, part.content_id, part.inline,
       part.content
  FROM unnest($1::bigint[], $2::integer[], $3::text[], $4::text[], $5::bigint[], $6::text[], $7::boolean[], $8::bytea[])
       AS part (message_id, position, filename, content_type, size, content_id, inline, content)";

const ADVANCE_CURSOR: &str = "
INSERT INTO email_accounts.sync_state AS state (account_id, folder, uidvalidity, last_uid, skipped_unique_ids, messages_stored)
VALUES ($1, $2, $3, coalesce($4, 0), $5, $6)
ON CONFLICT (account_id, folder) DO UPDATE
   SET uidvalidity = excluded.uidvalidity,
       last_uid = CASE WHEN $4 IS NULL THEN state.last_uid ELSE excluded.last_uid END,
       skipped_unique_ids = state.skipped_unique_ids || excluded.skipped_unique_ids,
       messages_stored = state.messages_stored + excluded.messages_stored";

/// The parsed fields, in the order replace_parsed() takes them ($2–$13).
fn parsed_arguments(parsed: &ParsedMessage) -> [DatumWithOid<'static>; 12] {
    [
        parsed.message_id.clone().into(),
        parsed.in_reply_to.clone().into(),
        parsed.references.clone().into(),
        parsed.from.clone().into(),
        parsed.to.clone().into(),
        parsed.cc.clone().into(),
        parsed.reply_to.clone().into(),
        parsed.subject.clone().into(),
        parsed.date.map(|seconds| seconds as f64).into(),
        parsed.text_body.clone().into(),
        parsed.html_body.clone().into(),
        HeaderList(&parsed.headers).into(),
    ]
}

/// Which message a receipt line is about: its UID or UIDL.
fn label(message: &FetchedMessage) -> String {
    match (&message.uid, &message.unique_id) {
        (Some(uid), _) => format!("UID {uid}"),
        (None, Some(id)) => format!("UIDL {id}"),
        (None, None) => "without id".to_owned(),
    }
}

/// Stores one message; `Some(id)` when it is new, `None` when it was already there.
fn insert_message(account_id: i64, batch: &Batch, message: &FetchedMessage) -> Result<Option<i64>, SpiError> {
    let uidvalidity = batch.uidvalidity.map(i64::from);
    let uid = message.uid.map(i64::from);
    if batch.resync {
        let rebound = Spi::connect_mut(|client| {
            let table = kept_plans::update(
                client,
                REBIND_MESSAGE,
                &[
                    account_id.into(),
                    batch.folder.as_str().into(),
                    uidvalidity.into(),
                    uid.into(),
                    message.raw.as_slice().into(),
                ],
            )?;
            Ok::<_, SpiError>(!table.is_empty())
        })?;
        if rebound {
            return Ok(None);
        }
    }
    let stored = insert_messages(account_id, batch, std::slice::from_ref(message), true)?;
    Ok(stored.first().map(|(message_id, _)| *message_id))
}

/// All attachments of the given messages in one statement.
fn insert_attachments(messages: &[(i64, &ParsedMessage)]) -> Result<(), SpiError> {
    let parts: Vec<(i64, i32, &ParsedAttachment)> = messages
        .iter()
        .flat_map(|(message_id, parsed)| {
            parsed.attachments.iter().zip(1..).map(move |(part, position)| (*message_id, position, part))
        })
        .collect();
    if parts.is_empty() {
        return Ok(());
    }
    kept_plans::run(
        INSERT_ATTACHMENTS,
        &[
            parts.iter().map(|(message_id, _, _)| *message_id).collect::<Vec<_>>().into(),
            parts.iter().map(|(_, position, _)| *position).collect::<Vec<_>>().into(),
            parts.iter().map(|(_, _, part)| part.filename.clone()).collect::<Vec<_>>().into(),
            parts.iter().map(|(_, _, part)| part.content_type.clone()).collect::<Vec<_>>().into(),
            parts.iter().map(|(_, _, part)| part.size as i64).collect::<Vec<_>>().into(),
            parts.iter().map(|(_, _, part)| part.content_id.clone()).collect::<Vec<_>>().into(),
            parts.iter().map(|(_, _, part)| part.inline).collect::<Vec<_>>().into(),
            parts.iter().map(|(_, _, part)| part.content.clone()).collect::<Vec<_>>().into(),
        ],
    )
}

/// An SQL array literal of `values` (every element quoted, so any text is
/// kept as it is).
fn array_literal(values: &[String]) -> String {
    let mut literal = String::with_capacity(2 + values.iter().map(|value| value.len() + 3).sum::<usize>());
    literal.push('{');
    for (index, value) in values.iter().enumerate() {
        if index > 0 {
            literal.push(',');
        }
        literal.push('"');
        for character in value.chars() {
            if character == '"' || character == '\\' {
                literal.push('\\');
            }
            literal.push(character);
        }
        literal.push('"');
    }
    literal.push('}');
    literal
}

/// `messages` (of `batch`) and their attachments in two statements. Returns
/// the new messages' ids with their place in `messages`; with
/// `skip_stored`, those already stored are skipped and not in it (without,
/// one of them fails the statement).
fn insert_messages(
    account_id: i64,
    batch: &Batch,
    messages: &[FetchedMessage],
    skip_stored: bool,
) -> Result<Vec<(i64, usize)>, SpiError> {
    let empty = ParsedMessage::default();
    let parsed: Vec<(&ParsedMessage, Option<String>)> = messages
        .iter()
        .map(|message| match &message.parsed {
            Ok(parsed) => (parsed, None),
            Err(error) => (&empty, Some(error.to_string())),
        })
        .collect();
    let arguments: Vec<DatumWithOid<'_>> = vec![
        account_id.into(),
        batch.folder.as_str().into(),
        batch.uidvalidity.map(i64::from).into(),
        messages.iter().map(|message| message.uid.map(i64::from)).collect::<Vec<_>>().into(),
        messages.iter().map(|message| message.unique_id.as_deref()).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| parsed.message_id.as_deref()).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| parsed.in_reply_to.as_deref()).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| array_literal(&parsed.references)).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| parsed.from.as_deref()).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| array_literal(&parsed.to)).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| array_literal(&parsed.cc)).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| array_literal(&parsed.reply_to)).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| parsed.subject.as_deref()).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| parsed.date.map(|seconds| seconds as f64)).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| parsed.text_body.as_deref()).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| parsed.html_body.as_deref()).collect::<Vec<_>>().into(),
        parsed.iter().map(|(parsed, _)| HeaderList(&parsed.headers)).collect::<Vec<_>>().into(),
        messages
            .iter()
            .map(|message| message.server_size.max(message.raw.len() as u64) as i64)
            .collect::<Vec<_>>()
            .into(),
        messages.iter().map(|message| message.seen).collect::<Vec<_>>().into(),
        messages.iter().map(|message| message.raw.as_slice()).collect::<Vec<_>>().into(),
        messages.iter().map(|message| message.headers_only).collect::<Vec<_>>().into(),
        parsed.iter().map(|(_, error)| error.as_deref()).collect::<Vec<_>>().into(),
    ];
    let inserted: Vec<(i64, Option<i64>, Option<String>)> = Spi::connect_mut(|client| {
        let statement = if skip_stored { INSERT_NEW_MESSAGES } else { INSERT_MESSAGES };
        kept_plans::update(client, statement, &arguments)?
            .into_iter()
            .map(|row| Ok((row.get::<i64>(1)?.unwrap_or_default(), row.get(2)?, row.get(3)?)))
            .collect::<Result<_, SpiError>>()
    })?;
    // A server may list a UID or UIDL twice; the first is the one stored.
    let mut place: HashMap<(Option<i64>, Option<&str>), usize> = HashMap::new();
    for (index, message) in messages.iter().enumerate() {
        place.entry((message.uid.map(i64::from), message.unique_id.as_deref())).or_insert(index);
    }
    let new: Vec<(i64, usize)> = inserted
        .iter()
        .filter_map(|(message_id, uid, unique_id)| {
            place.get(&(*uid, unique_id.as_deref())).map(|index| (*message_id, *index))
        })
        .collect();
    let with_parts: Vec<(i64, &ParsedMessage)> =
        new.iter().map(|(message_id, index)| (*message_id, parsed[*index].0)).collect();
    insert_attachments(&with_parts)?;
    Ok(new)
}

/// Stores a batch and advances the folder's cursor, inside the caller's
/// transaction. Each message is stored in its own subtransaction: one the
/// database refuses is reported and the cursor stops before it.
pub fn store_batch(account: &ReceivingAccount, batch: &Batch) -> Result<StoreReceipt, SpiError> {
    let mut receipt = StoreReceipt::default();
    let mut new_messages: Vec<(i64, &FetchedMessage)> = Vec::new();
    let mut first_failed_uid: Option<u32> = None;
    // The whole batch in two statements, again skipping stored messages if
    // it met one (a duplicate key: a lost cursor); message by message (each
    // in its own subtransaction) only after a UIDVALIDITY change, which
    // matches contents one by one, or when the database refuses the batch
    // otherwise, to find the messages it refuses.
    let together = |skip_stored| {
        try_in_subtransaction(AssertUnwindSafe(|| {
            insert_messages(account.account_id, batch, &batch.messages, skip_stored)
        }))
    };
    let together = if batch.resync {
        None
    } else {
        match together(false) {
            Ok(stored) => Some(stored),
            Err(error) if error.is_unique_violation() => together(true).ok(),
            Err(_) => None,
        }
    };
    if let Some(stored) = &together {
        new_messages = stored.iter().map(|(message_id, index)| (*message_id, &batch.messages[*index])).collect();
        receipt.already_stored = batch.messages.len() - new_messages.len();
        receipt.committed_unique_ids = batch.messages.iter().filter_map(|message| message.unique_id.clone()).collect();
    }
    for message in batch.messages.iter().filter(|_| together.is_none()) {
        let stored = try_in_subtransaction(AssertUnwindSafe(|| insert_message(account.account_id, batch, message)));
        let error = match stored {
            Ok(Some(message_id)) => {
                new_messages.push((message_id, message));
                None
            }
            Ok(None) => {
                receipt.already_stored += 1;
                None
            }
            Err(error) => Some(error.to_string()),
        };
        match error {
            None => receipt.committed_unique_ids.extend(message.unique_id.clone()),
            Some(error) => {
                if let Some(uid) = message.uid {
                    first_failed_uid = Some(first_failed_uid.map_or(uid, |first| first.min(uid)));
                }
                receipt.failed.push((label(message), error));
            }
        }
    }
    receipt.new_messages = new_messages.len();
    for (message_id, message) in &new_messages {
        routing::route(*message_id, message, &account.routing);
    }
    let last_uid = match (batch.last_uid, first_failed_uid) {
        (Some(last), Some(failed)) => Some(last.min(failed.saturating_sub(1))),
        (last, _) => last,
    };
    kept_plans::run(
        ADVANCE_CURSOR,
        &[
            account.account_id.into(),
            batch.folder.as_str().into(),
            batch.uidvalidity.map(i64::from).into(),
            last_uid.map(i64::from).into(),
            batch.skipped_unique_ids.clone().into(),
            (receipt.new_messages as i64).into(),
        ],
    )?;
    Ok(receipt)
}

/// Records how a folder's sync ended and schedules the next one.
pub fn record_outcome(account_id: i64, outcome: &FolderOutcome, max_backoff_seconds: i32) -> Result<(), SpiError> {
    let error = outcome.error.as_ref().map(|error| error.to_string());
    let kind = outcome.error.as_ref().map(|error| error.kind());
    kept_plans::run(
        "SELECT email_accounts.record_sync($1, $2, $3, $4, $5, $6)",
        &[
            account_id.into(),
            outcome.folder.as_str().into(),
            (outcome.new_messages as i32).into(),
            error.into(),
            kind.into(),
            max_backoff_seconds.into(),
        ],
    )
}

/// An account as `sync_now()`'s caller sees it (row-level security applies).
#[derive(Debug, Clone)]
pub struct VisibleAccount {
    pub account_id: i64,
    pub enable_incoming: bool,
    pub ready_to_receive: bool,
    /// Its visibility keeps its mail from the caller (hidden_mailboxes()).
    pub hidden: bool,
}

pub fn visible_accounts(name: &str, tenant: Option<&str>) -> Result<Vec<VisibleAccount>, SpiError> {
    Spi::connect(|client| {
        client
            .select(
                "SELECT account_id, enable_incoming, ready_to_receive, account_id = ANY (email_accounts.hidden_mailboxes())
                   FROM email_accounts.account_settings
                  WHERE name = $1 AND ($2::text IS NULL OR tenant = $2)",
                Some(2),
                &[name.into(), tenant.into()],
            )?
            .map(|row| {
                Ok(VisibleAccount {
                    account_id: row.get(1)?.unwrap_or_default(),
                    enable_incoming: row.get(2)?.unwrap_or_default(),
                    ready_to_receive: row.get(3)?.unwrap_or_default(),
                    hidden: row.get(4)?.unwrap_or(true),
                })
            })
            .collect()
    })
}

/// Raises the 42501 of an account whose mail the caller may not see
/// (email_accounts.raise_mailbox_hidden(), which send() raises too).
pub fn raise_mailbox_hidden(name: &str) -> Result<(), SpiError> {
    Spi::run_with_args("SELECT email_accounts.raise_mailbox_hidden($1)", &[name.into()])
}

/// Whether the current role sees the message (row-level security applies).
pub fn message_is_visible(message_id: i64) -> Result<bool, SpiError> {
    Ok(Spi::get_one_with_args::<bool>(
        "SELECT EXISTS (SELECT FROM email_accounts.message WHERE message_id = $1)",
        &[message_id.into()],
    )?
    .unwrap_or(false))
}

/// One folder's result as `sync_now()` returns it.
pub type FolderResult = (String, i32, String, Option<String>, Option<String>);

/// Read with a new snapshot (a read-write SPI call takes one; a read-only
/// one would reuse the statement's), so the worker's commits are seen.
pub fn folder_results(account_id: i64) -> Result<Vec<FolderResult>, SpiError> {
    Spi::connect_mut(|client| {
        let table = client.update(
            "SELECT status.folder, coalesce(status.last_new_messages, 0), status.state, status.last_error_kind, status.last_error
               FROM email_accounts.sync_status AS status
              WHERE status.account_id = $1
              ORDER BY status.folder",
            None,
            &[account_id.into()],
        )?;
        let mut results = Vec::new();
        for row in table {
            results.push((
                row.get(1)?.unwrap_or_default(),
                row.get(2)?.unwrap_or(0),
                row.get(3)?.unwrap_or_default(),
                row.get(4)?,
                row.get(5)?,
            ));
        }
        Ok(results)
    })
}

/// A stored message's bytes and its account's attachment limit.
pub fn raw_message(message_id: i64) -> Result<Option<(Vec<u8>, u64)>, SpiError> {
    Spi::connect(|client| {
        let table = client.select(
            "SELECT message.raw, account.attachment_size_limit
               FROM email_accounts.message JOIN email_accounts.account USING (account_id)
              WHERE message.message_id = $1",
            Some(1),
            &[message_id.into()],
        )?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok(Some((row.get::<Vec<u8>>(1)?.unwrap_or_default(), row.get::<i64>(2)?.unwrap_or(0).max(0) as u64)))
    })
}

/// Replaces a message's parsed fields and attachments, and links it again.
pub fn replace_parsed(message_id: i64, parsed: Result<&ParsedMessage, String>) -> Result<(), SpiError> {
    let empty = ParsedMessage::default();
    let (fields, parse_error) = match parsed {
        Ok(fields) => (fields, None),
        Err(error) => (&empty, Some(error)),
    };
    Spi::run_with_args(
        "UPDATE email_accounts.message
            SET internet_message_id = $2, in_reply_to = $3, \"references\" = $4, from_address = $5, to_addresses = $6,
                cc_addresses = $7, reply_to = $8, subject = $9, sent_at = to_timestamp($10), body_text = $11,
                body_html = $12, headers = $13, parse_error = $14
          WHERE message_id = $1",
        &[message_id.into()]
            .into_iter()
            .chain(parsed_arguments(fields))
            .chain([parse_error.into()])
            .collect::<Vec<_>>(),
    )?;
    Spi::run_with_args("DELETE FROM email_accounts.message_attachment WHERE message_id = $1", &[message_id.into()])?;
    insert_attachments(&[(message_id, fields)])?;
    Spi::run_with_args("SELECT email_accounts.link_reply($1)", &[message_id.into()])
}

#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use super::{RECEIVING_ACCOUNTS, SECONDS_UNTIL_NEXT_SYNC};
    use pgrx::prelude::*;

    /// The receiver's looks at every account read each account's schedule
    /// inside their own plan: next_sync_at() is inlined, not a function run
    /// (and planned) once per account (35 ms instead of 12 at 5,000 accounts).
    #[pg_test]
    fn the_receivers_schedule_is_inlined_into_its_statements() {
        for (statement, arguments) in
            [(RECEIVING_ACCOUNTS, vec![Vec::<i64>::new().into()]), (SECONDS_UNTIL_NEXT_SYNC, Vec::new())]
        {
            // (EXPLAIN through `update`: SPI refuses it in read-only mode.)
            let plan: Vec<String> = Spi::connect_mut(|client| {
                client
                    .update(&format!("EXPLAIN (VERBOSE, COSTS OFF) {statement}"), None, &arguments)
                    .unwrap()
                    .map(|row| row.get::<String>(1).unwrap().unwrap_or_default())
                    .collect()
            });
            let plan = plan.join("\n");
            assert!(plan.contains("sync_state"), "the schedule reads sync_state in the plan itself: {plan}");
            assert!(!plan.contains("next_sync_at("), "next_sync_at() is called, not inlined: {plan}");
        }
    }

    /// An account whose folders name one folder twice is due when that
    /// folder is, not at every look (it was: two names, one stored state).
    #[pg_test]
    fn a_folder_named_twice_is_due_when_the_folder_is() {
        let due = |folders: &str| {
            Spi::get_one::<bool>(&format!(
                "SELECT schedule.next_sync_at > now()
                   FROM email_accounts.account
                  CROSS JOIN LATERAL email_accounts.next_sync_at(account.account_id, '{folders}') AS schedule
                  WHERE account.name = 'twice'"
            ))
            .unwrap()
            .map(|later| !later)
        };
        Spi::run(
            "INSERT INTO email_accounts.account (name, address, folders) VALUES ('twice', 'twice@example.com', '{INBOX,INBOX}');
             INSERT INTO email_accounts.sync_state (account_id, folder, next_attempt_at)
             SELECT account_id, 'INBOX', now() + interval '1 hour' FROM email_accounts.account WHERE name = 'twice'",
        )
        .unwrap();
        assert_eq!(due("{INBOX,INBOX}"), Some(false));
        assert_eq!(due("{INBOX}"), Some(false));
        // A folder never synced is due at once, listed twice or not.
        assert_eq!(due("{INBOX,Support,Support}"), Some(true));
    }

    #[test]
    fn each_folder_is_synced_once_in_its_order() {
        let folders = |names: &[&str]| names.iter().map(|name| (*name).to_owned()).collect::<Vec<_>>();
        assert_eq!(super::once_each(folders(&["INBOX", "Support", "INBOX"])), folders(&["INBOX", "Support"]));
    }
}
