//! RFC 3834 rules for automatic replies: whom never to answer. The "already
//! answered this sender in the last N days" rule needs the outbox and lives
//! in SQL; everything that can be decided from the message itself is here.

use crate::address::parse_mailbox;

/// Why no automatic reply is sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoAutoReply {
    #[error("Auto-Submitted: {0}")]
    AutoSubmitted(String),
    #[error("Precedence: {0}")]
    Precedence(String),
    #[error("a mailing list message ({0})")]
    MailingList(String),
    #[error("marked as an automatic message ({0})")]
    AutomaticMessage(String),
    #[error("the sender is a system address ({0})")]
    SystemSender(String),
    #[error("the sender is our own address")]
    OwnAddress,
    #[error("no address to reply to")]
    NoSender,
    #[error("a bounce (empty Return-Path)")]
    Bounce,
    #[error("Return-Path {return_path} and From {from} are of unrelated domains (the sender may be forged)")]
    SenderMismatch { return_path: String, from: String },
    #[error("the receiving server failed its authentication ({0})")]
    FailedAuthentication(String),
    #[error("marked as spam ({0})")]
    Spam(String),
}

/// The domain of a bare address, lower case.
fn domain_of(address: &str) -> String {
    address.rsplit_once('@').map(|(_, domain)| domain.trim_end_matches('.').to_ascii_lowercase()).unwrap_or_default()
}

/// Whether two domains belong together: equal, or one a subdomain of the
/// other (bounces.example.com sends for example.com).
fn related_domains(first: &str, second: &str) -> bool {
    first == second || first.ends_with(&format!(".{second}")) || second.ends_with(&format!(".{first}"))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.trim())
}

/// The bare address to answer (Return-Path, else From), or why not to answer at all.
pub fn auto_reply_recipient(
    headers: &[(String, String)],
    from: Option<&str>,
    own_addresses: &[&str],
) -> Result<String, NoAutoReply> {
    if let Some(value) = header(headers, "Auto-Submitted") {
        let keyword = value.split(';').next().unwrap_or_default().trim();
        if !keyword.eq_ignore_ascii_case("no") {
            return Err(NoAutoReply::AutoSubmitted(value.to_owned()));
        }
    }
    if let Some(value) = header(headers, "Precedence") {
        if ["bulk", "list", "junk"].iter().any(|kind| value.eq_ignore_ascii_case(kind)) {
            return Err(NoAutoReply::Precedence(value.to_owned()));
        }
    }
    for list_header in ["List-Id", "List-Unsubscribe", "List-Post", "List-Help", "Mailing-List"] {
        if header(headers, list_header).is_some() {
            return Err(NoAutoReply::MailingList(list_header.to_owned()));
        }
    }
    // Microsoft's and older responders' markers.
    if let Some(value) = header(headers, "X-Auto-Response-Suppress") {
        let suppressed = value.split(',').any(|item| {
            let item = item.trim();
            item.eq_ignore_ascii_case("all")
                || item.eq_ignore_ascii_case("autoreply")
                || item.eq_ignore_ascii_case("oof")
        });
        if suppressed {
            return Err(NoAutoReply::AutomaticMessage(format!("X-Auto-Response-Suppress: {value}")));
        }
    }
    for marker in ["X-Autoreply", "X-Autorespond", "X-Autoresponder"] {
        if header(headers, marker).is_some() {
            return Err(NoAutoReply::AutomaticMessage(marker.to_owned()));
        }
    }
    // Anyone can put any address in From and Return-Path: answer only mail
    // that the receiving server did not judge forged or spam, and whose two
    // senders agree, so an auto reply cannot be aimed at a third party.
    // Every occurrence counts: a sender's own "X-Spam-Flag: NO" on top must
    // not hide the verdict a filter added below it.
    let mut spam =
        headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case("X-Spam-Flag")).map(|(_, value)| value.trim());
    if let Some(value) = spam.find(|value| value.eq_ignore_ascii_case("yes")) {
        return Err(NoAutoReply::Spam(format!("X-Spam-Flag: {value}")));
    }
    for value in headers.iter().filter(|(key, _)| key.eq_ignore_ascii_case("Authentication-Results")).map(|(_, v)| v) {
        let lower = value.to_ascii_lowercase();
        if let Some(verdict) = ["dmarc=fail", "spf=fail", "dkim=fail"].iter().find(|verdict| lower.contains(**verdict))
        {
            return Err(NoAutoReply::FailedAuthentication((*verdict).to_owned()));
        }
    }
    let return_path = header(headers, "Return-Path");
    if let Some(path) = return_path {
        if path.trim_matches(['<', '>', ' ']).is_empty() {
            return Err(NoAutoReply::Bounce);
        }
    }
    if let (Some(path), Some(from_mailbox)) = (return_path, from.and_then(|text| parse_mailbox(text).ok())) {
        let path = path.trim_matches(['<', '>', ' ']);
        let from_address = from_mailbox.email.to_string();
        if !related_domains(&domain_of(path), &domain_of(&from_address)) {
            return Err(NoAutoReply::SenderMismatch { return_path: path.to_owned(), from: from_address });
        }
    }
    let candidate =
        return_path.map(|path| path.trim_matches(['<', '>', ' ']).to_owned()).or_else(|| from.map(str::to_owned));
    let address = candidate
        .and_then(|text| parse_mailbox(&text).ok())
        .map(|mailbox| mailbox.email.to_string())
        .ok_or(NoAutoReply::NoSender)?;
    let local = address.split('@').next().unwrap_or_default().to_ascii_lowercase();
    let system = local == "mailer-daemon"
        || local == "postmaster"
        || local.starts_with("owner-")
        || local.ends_with("-request")
        || local.starts_with("noreply")
        || local.starts_with("no-reply")
        || local.starts_with("do-not-reply")
        || local.starts_with("donotreply");
    if system {
        return Err(NoAutoReply::SystemSender(address));
    }
    if own_addresses.iter().any(|own| own.eq_ignore_ascii_case(&address)) {
        return Err(NoAutoReply::OwnAddress);
    }
    Ok(address)
}

/// "Auto: " and the original subject (RFC 3834 section 3.1.5).
pub fn auto_reply_subject(original: Option<&str>) -> String {
    match original.map(str::trim).filter(|subject| !subject.is_empty()) {
        Some(subject) => format!("Auto: {subject}").replace(['\r', '\n'], " "),
        None => "Auto: your message".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(name, value)| (name.to_string(), value.to_string())).collect()
    }

    const OWN: &[&str] = &["support@example.test"];

    #[test]
    fn a_person_gets_an_answer() {
        let plain = headers(&[("From", "Ann <ann@example.com>"), ("Auto-Submitted", "no")]);
        assert_eq!(auto_reply_recipient(&plain, Some("Ann <ann@example.com>"), OWN).unwrap(), "ann@example.com");
        let with_path = headers(&[("Return-Path", "<bounces@example.com>")]);
        assert_eq!(auto_reply_recipient(&with_path, Some("ann@example.com"), OWN).unwrap(), "bounces@example.com");
    }

    #[test]
    fn machines_lists_and_ourselves_do_not() {
        let from = Some("ann@example.com");
        let cases = [
            (headers(&[("Auto-Submitted", "auto-replied")]), "Auto-Submitted"),
            (headers(&[("auto-submitted", "auto-generated; type=x")]), "Auto-Submitted"),
            (headers(&[("Precedence", "bulk")]), "Precedence"),
            (headers(&[("Precedence", "JUNK")]), "Precedence"),
            (headers(&[("List-Id", "<list.example.com>")]), "mailing list"),
            (headers(&[("List-Unsubscribe", "<mailto:x@example.com>")]), "mailing list"),
            (headers(&[("X-Auto-Response-Suppress", "DR, AutoReply")]), "automatic"),
            (headers(&[("Return-Path", "<>")]), "bounce"),
        ];
        for (message, expected) in cases {
            let refusal = auto_reply_recipient(&message, from, OWN).unwrap_err().to_string();
            assert!(refusal.contains(expected), "{refusal} for {message:?}");
        }
        assert_eq!(
            auto_reply_recipient(&[], Some("Support <SUPPORT@example.test>"), OWN),
            Err(NoAutoReply::OwnAddress)
        );
        assert!(matches!(
            auto_reply_recipient(&[], Some("MAILER-DAEMON@example.com"), OWN),
            Err(NoAutoReply::SystemSender(_))
        ));
        assert!(matches!(
            auto_reply_recipient(&[], Some("list-request@example.com"), OWN),
            Err(NoAutoReply::SystemSender(_))
        ));
        assert_eq!(auto_reply_recipient(&[], None, OWN), Err(NoAutoReply::NoSender));
        assert_eq!(auto_reply_recipient(&[], Some("not an address"), OWN), Err(NoAutoReply::NoSender));
    }

    #[test]
    fn forged_or_unauthenticated_senders_do_not() {
        let from = Some("Ann <ann@example.com>");
        let mismatch = headers(&[("Return-Path", "<victim@elsewhere.org>")]);
        assert!(matches!(auto_reply_recipient(&mismatch, from, OWN), Err(NoAutoReply::SenderMismatch { .. })));
        let bounce_domain = headers(&[("Return-Path", "<b-123@bounces.example.com>")]);
        assert_eq!(auto_reply_recipient(&bounce_domain, from, OWN).unwrap(), "b-123@bounces.example.com");
        let failed =
            headers(&[("Authentication-Results", "mx.example.test; spf=pass; DMARC=FAIL header.from=example.com")]);
        assert_eq!(
            auto_reply_recipient(&failed, from, OWN),
            Err(NoAutoReply::FailedAuthentication("dmarc=fail".into()))
        );
        let spam = headers(&[("X-Spam-Flag", "NO"), ("X-Spam-Flag", "YES")]);
        assert!(matches!(auto_reply_recipient(&spam, from, OWN), Err(NoAutoReply::Spam(_))));
        let passed = headers(&[("Authentication-Results", "mx.example.test; spf=pass; dmarc=pass")]);
        assert_eq!(auto_reply_recipient(&passed, from, OWN).unwrap(), "ann@example.com");
    }

    #[test]
    fn subjects() {
        assert_eq!(auto_reply_subject(Some("Invoice 42")), "Auto: Invoice 42");
        assert_eq!(auto_reply_subject(Some("  ")), "Auto: your message");
        assert_eq!(auto_reply_subject(None), "Auto: your message");
    }
}
