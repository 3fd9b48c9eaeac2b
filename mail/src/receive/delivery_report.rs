//! Recognising mail that comes back (issue 16, part 2 groundwork): delivery
//! status notifications (RFC 3464 `multipart/report;
//! report-type=delivery-status`, as Postfix, Exim, Sendmail, Exchange /
//! Microsoft 365 and Gmail send them, delayed-delivery warnings included),
//! feedback reports (RFC 5965 ARF, spam complaints), and the older
//! non-standard bounces (qmail's "failure notice", Exim's "Mail delivery
//! failed") that only quote the address and the returned original. What it
//! says per recipient, and the Message-ID of the returned original, which
//! matches it to the outbox. No I/O here.

use mail_parser::{MessageParser, MimeHeaders, PartType};

/// What a report says happened to one recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
}

impl Action {
    const ALL: [Action; 5] = [Action::Failed, Action::Delayed, Action::Delivered, Action::Relayed, Action::Expanded];

    /// The RFC 3464 word for it.
    pub fn label(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
            Action::Expanded => "expanded",
        }
    }
}

/// One recipient's part of a delivery report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientReport {
    /// The address as the sender wrote it (Original-Recipient), else Final-Recipient.
    pub address: String,
    /// Final-Recipient, when it differs (an alias expanded on the way).
    pub final_recipient: Option<String>,
    pub action: Action,
    /// The enhanced status code, e.g. `5.1.1` (RFC 3463).
    pub status: Option<String>,
    /// The remote server's words (Diagnostic-Code), without the `smtp;` type.
    pub diagnostic: Option<String>,
    pub remote_mta: Option<String>,
}

impl RecipientReport {
    /// A permanent failure (5.x.x, or a failure without a status).
    pub fn is_hard_bounce(&self) -> bool {
        self.action == Action::Failed && !self.status.as_deref().is_some_and(|status| status.starts_with('4'))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReportKind {
    /// An RFC 3464 delivery status notification.
    DeliveryStatus,
    /// A bounce without the RFC 3464 structure, read from its text.
    NonStandardBounce,
    /// An RFC 5965 feedback report: the recipient called the mail spam (or similar).
    Complaint { feedback_type: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    pub kind: ReportKind,
    pub reporting_mta: Option<String>,
    pub recipients: Vec<RecipientReport>,
    /// The Message-ID of the returned original (angle brackets kept).
    pub original_message_id: Option<String>,
    /// The Return-Path of the returned original, when it shows one (a
    /// complaint returns the mail as delivered): its envelope sender.
    pub original_return_path: Option<String>,
}

/// The delivery report `raw` is, or `None` for ordinary mail.
pub fn recognise(raw: &[u8]) -> Option<DeliveryReport> {
    let message = MessageParser::default().parse(raw)?;
    let report_type = message
        .content_type()
        .filter(|content_type| {
            content_type.ctype().eq_ignore_ascii_case("multipart")
                && content_type.subtype().is_some_and(|subtype| subtype.eq_ignore_ascii_case("report"))
        })
        .and_then(|content_type| content_type.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    let original_message_id = returned_header(&message, "message-id");
    let original_return_path = returned_header(&message, "return-path");
    match report_type.as_deref() {
        Some("delivery-status") => {
            let status = message
                .parts
                .iter()
                .find(|part| is_type(part, "message", &["delivery-status", "global-delivery-status"]))?;
            let groups = field_groups(&String::from_utf8_lossy(status.contents()));
            let reporting_mta = groups.first().and_then(|fields| typed_value(fields, "reporting-mta"));
            let recipients = groups.iter().skip(1).filter_map(|fields| recipient(fields)).collect::<Vec<_>>();
            (!recipients.is_empty()).then_some(DeliveryReport {
                kind: ReportKind::DeliveryStatus,
                reporting_mta,
                recipients,
                original_message_id,
                original_return_path,
            })
        }
        Some("feedback-report") => {
            let feedback = message.parts.iter().find(|part| is_type(part, "message", &["feedback-report"]))?;
            let groups = field_groups(&String::from_utf8_lossy(feedback.contents()));
            let fields: Vec<(String, String)> = groups.into_iter().flatten().collect();
            let feedback_type =
                value(&fields, "feedback-type").unwrap_or_else(|| "abuse".to_owned()).to_ascii_lowercase();
            // A recipient's complaint: abuse, fraud, virus (RFC 5965 §7.3).
            // auth-failure (RFC 6591, DMARC forensics) and not-spam say
            // nothing against mailing the recipient again.
            if !matches!(feedback_type.as_str(), "abuse" | "fraud" | "virus" | "other") {
                return None;
            }
            let address = value(&fields, "original-rcpt-to").or_else(|| value(&fields, "removal-recipient"));
            let recipients = address
                .map(|address| RecipientReport {
                    address: strip_brackets(&address),
                    final_recipient: None,
                    action: Action::Delivered,
                    status: None,
                    diagnostic: None,
                    remote_mta: None,
                })
                .into_iter()
                .collect();
            Some(DeliveryReport {
                kind: ReportKind::Complaint { feedback_type },
                reporting_mta: value(&fields, "reporting-mta"),
                recipients,
                original_message_id,
                original_return_path,
            })
        }
        _ => non_standard(&message, original_message_id, original_return_path),
    }
}

fn is_type(part: &mail_parser::MessagePart<'_>, ctype: &str, subtypes: &[&str]) -> bool {
    part.content_type().is_some_and(|content_type| {
        content_type.ctype().eq_ignore_ascii_case(ctype)
            && content_type
                .subtype()
                .is_some_and(|subtype| subtypes.iter().any(|wanted| subtype.eq_ignore_ascii_case(wanted)))
    })
}

/// A header of the original a report returns, in angle brackets
/// (Message-ID, Return-Path): from a `message/rfc822` part,
/// `text/rfc822-headers`, or (non-standard bounces) headers quoted in the text.
fn returned_header(message: &mail_parser::Message<'_>, name: &str) -> Option<String> {
    for part in message.parts.iter().skip(1) {
        if let PartType::Message(original) = &part.body {
            let value = original.header_raw(name).and_then(|value| bracketed(value.trim()));
            if value.is_some() {
                return value;
            }
        }
        if is_type(part, "text", &["rfc822-headers"]) || is_type(part, "message", &["rfc822-headers", "global-headers"])
        {
            if let Some(value) = quoted_header(&String::from_utf8_lossy(part.contents()), name) {
                return Some(value);
            }
        }
    }
    None
}

/// The first `name:` header in quoted text (folded too), in angle brackets.
fn quoted_header(text: &str, name: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    lines.iter().enumerate().find_map(|(index, line)| {
        let (field, value) = line.trim_start_matches(['>', ' ']).split_once(':')?;
        if !field.trim().eq_ignore_ascii_case(name) || field.contains(' ') {
            return None;
        }
        match value.trim() {
            "" => bracketed(lines.get(index + 1)?.trim()),
            value => bracketed(value),
        }
    })
}

/// `<…>` at the start of a value (folding whitespace inside dropped).
fn bracketed(value: &str) -> Option<String> {
    let start = value.find('<')?;
    let end = value[start..].find('>')? + start;
    Some(value[start..=end].split_whitespace().collect())
}

/// Header-like fields in blank-line separated groups (RFC 3464 §2.1),
/// continuation lines unfolded; names lower case.
fn field_groups(text: &str) -> Vec<Vec<(String, String)>> {
    let mut groups: Vec<Vec<(String, String)>> = Vec::new();
    let mut current: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        if line.trim().is_empty() {
            if !current.is_empty() {
                groups.push(std::mem::take(&mut current));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = current.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            current.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    if !current.is_empty() {
        groups.push(current);
    }
    groups
}

fn value(fields: &[(String, String)], name: &str) -> Option<String> {
    fields.iter().find(|(field, _)| field == name).map(|(_, value)| value.clone()).filter(|value| !value.is_empty())
}

/// A typed field (`rfc822; ann@example.com`, `dns; mx.example.com`) without its type.
fn typed_value(fields: &[(String, String)], name: &str) -> Option<String> {
    value(fields, name).map(|value| match value.split_once(';') {
        Some((_, rest)) => rest.trim().to_owned(),
        None => value,
    })
}

fn strip_brackets(address: &str) -> String {
    address.trim().trim_start_matches('<').trim_end_matches('>').trim().to_owned()
}

fn recipient(fields: &[(String, String)]) -> Option<RecipientReport> {
    let final_recipient = typed_value(fields, "final-recipient").map(|address| strip_brackets(&address));
    let address =
        typed_value(fields, "original-recipient").map(|address| strip_brackets(&address)).or(final_recipient.clone())?;
    let final_recipient = final_recipient.filter(|final_recipient| *final_recipient != address);
    let word = value(fields, "action")?.to_ascii_lowercase();
    let action = Action::ALL.into_iter().find(|action| Some(action.label()) == word.split_whitespace().next())?;
    let status = value(fields, "status").and_then(|status| status.split_whitespace().next().map(str::to_owned));
    Some(RecipientReport {
        address,
        final_recipient,
        action,
        status,
        diagnostic: typed_value(fields, "diagnostic-code"),
        remote_mta: typed_value(fields, "remote-mta"),
    })
}

/// Bounces from MAILER-DAEMON or postmaster without the report structure:
/// the failed addresses as qmail (`<ann@example.com>:`) and Exim
/// (an indented address after "failed:") write them, the first enhanced or
/// basic status code of the text, and the returned original's Message-ID.
fn non_standard(
    message: &mail_parser::Message<'_>,
    original: Option<String>,
    original_return_path: Option<String>,
) -> Option<DeliveryReport> {
    let from = message
        .from()
        .and_then(|from| from.first())
        .and_then(|from| from.address())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let subject = message.subject().unwrap_or_default().to_ascii_lowercase();
    let from_daemon = from.starts_with("mailer-daemon@") || from.starts_with("postmaster@") || from.is_empty();
    let bounce_subject = [
        "failure notice",
        "undeliver",
        "delivery status notification",
        "mail delivery failed",
        "returned mail",
        "delivery failure",
    ]
    .iter()
    .any(|marker| subject.contains(marker));
    if !(from_daemon && bounce_subject) {
        return None;
    }
    let text = message.body_text(0).map(|text| text.into_owned()).unwrap_or_default();
    // The part before the returned original: what the daemon says.
    let said =
        ["--- Below this line", "------ This is a copy", "--- The header of the original", "------ Original message"]
            .iter()
            .filter_map(|marker| text.find(marker))
            .min()
            .map_or(text.as_str(), |end| &text[..end]);
    let original_message_id = original.or_else(|| quoted_header(&text, "message-id"));
    let original_return_path = original_return_path.or_else(|| quoted_header(&text, "return-path"));
    let status = status_code(said);
    let mut recipients = Vec::new();
    let mut after_failed = false;
    for line in said.lines() {
        let trimmed = line.trim();
        if let Some(address) = trimmed.strip_prefix('<').and_then(|rest| rest.strip_suffix(">:")) {
            recipients.push(address.to_owned());
        } else if after_failed && line.starts_with([' ', '\t']) && trimmed.contains('@') && !trimmed.contains(' ') {
            recipients.push(strip_brackets(trimmed));
        }
        after_failed |= trimmed.to_ascii_lowercase().ends_with("failed:");
    }
    recipients.dedup();
    let recipients: Vec<RecipientReport> = recipients
        .into_iter()
        .map(|address| RecipientReport {
            address,
            final_recipient: None,
            action: Action::Failed,
            status: status.clone(),
            diagnostic: said
                .lines()
                .map(str::trim)
                .find(|line| line.starts_with(['4', '5']) && line.len() > 3)
                .map(str::to_owned),
            remote_mta: None,
        })
        .collect();
    (!recipients.is_empty()).then_some(DeliveryReport {
        kind: ReportKind::NonStandardBounce,
        reporting_mta: None,
        recipients,
        original_message_id,
        original_return_path,
    })
}

/// The first enhanced status code (`5.1.1`) in the text, else `5.0.0` / `4.0.0` from a basic reply code.
fn status_code(text: &str) -> Option<String> {
    let words = text.split(|character: char| character.is_whitespace() || "();,[]".contains(character));
    let mut basic = None;
    for word in words {
        let parts: Vec<&str> = word.split('.').collect();
        if parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && parts[1..]
                .iter()
                .all(|part| !part.is_empty() && part.len() <= 3 && part.bytes().all(|byte| byte.is_ascii_digit()))
        {
            return Some(word.to_owned());
        }
        if basic.is_none()
            && word.len() == 3
            && (word.starts_with('4') || word.starts_with('5'))
            && word.bytes().all(|byte| byte.is_ascii_digit())
        {
            basic = Some(format!("{}.0.0", &word[..1]));
        }
    }
    basic
}
