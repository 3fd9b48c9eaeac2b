//! Parsing an incoming message with mail-parser into the fields the
//! database keeps: ids for threading, addresses, subject, date, bodies, all
//! headers, and attachments (without their bytes above the account's limit).
//! A message mail-parser cannot make sense of is still kept raw by the
//! caller, with the error from here.

use mail_parser::{Address, HeaderValue, MessageParser, MimeHeaders, PartType};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedAttachment {
    pub filename: Option<String>,
    pub content_type: String,
    pub size: usize,
    pub content_id: Option<String>,
    /// Shown in the body (Content-Disposition: inline, or referenced by cid:).
    pub inline: bool,
    /// `None` when the attachment is larger than the account's limit.
    pub content: Option<Vec<u8>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedMessage {
    /// With angle brackets, as in the outbox: `<id@host>`.
    pub message_id: Option<String>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub from: Option<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub reply_to: Vec<String>,
    pub subject: Option<String>,
    /// Seconds since the Unix epoch, from the Date header.
    pub date: Option<i64>,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    /// Every header in order: name and unfolded raw value.
    pub headers: Vec<(String, String)>,
    pub size: usize,
    pub attachments: Vec<ParsedAttachment>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the message is empty")]
    Empty,
    #[error("the message has no header section mail-parser can read")]
    Unreadable,
}

fn bracketed(id: &str) -> String {
    let id = id.trim().trim_start_matches('<').trim_end_matches('>');
    format!("<{id}>")
}

fn ids(value: &HeaderValue<'_>) -> Vec<String> {
    match value {
        HeaderValue::Text(id) => vec![bracketed(id)],
        HeaderValue::TextList(list) => list.iter().map(|id| bracketed(id)).collect(),
        _ => Vec::new(),
    }
}

fn mailboxes(address: Option<&Address<'_>>) -> Vec<String> {
    address
        .map(|address| {
            address
                .iter()
                .filter_map(|mailbox| {
                    let email = mailbox.address()?;
                    Some(match mailbox.name() {
                        Some(name) if !name.is_empty() => format!("{name} <{email}>"),
                        _ => email.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

fn unfold(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut unfolded = String::with_capacity(text.len());
    for (index, line) in text.split("\n").enumerate() {
        let line = line.trim_end_matches('\r');
        if index > 0 && !line.is_empty() {
            unfolded.push(' ');
        }
        unfolded.push_str(line.trim());
    }
    unfolded.trim().to_owned()
}

/// Parses `raw`; attachments larger than `attachment_size_limit` bytes keep
/// their metadata but not their content.
pub fn parse(raw: &[u8], attachment_size_limit: u64) -> Result<ParsedMessage, ParseError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ParseError::Empty);
    }
    let message = MessageParser::default().parse(raw).ok_or(ParseError::Unreadable)?;
    if message.headers().is_empty() {
        return Err(ParseError::Unreadable);
    }
    let raw_message = message.raw_message();
    let headers = message
        .headers()
        .iter()
        .map(|header| {
            let value = raw_message.get(header.offset_start as usize..header.offset_end as usize).unwrap_or_default();
            (header.name().to_owned(), unfold(value))
        })
        .collect();
    let in_reply_to = ids(message.in_reply_to()).into_iter().next();
    let attachments = message
        .attachments()
        .map(|part| {
            let content = part.contents();
            let content_type = part
                .content_type()
                .map(|kind| match kind.subtype() {
                    Some(subtype) => format!("{}/{}", kind.ctype(), subtype),
                    None => kind.ctype().to_owned(),
                })
                .unwrap_or_else(|| "application/octet-stream".to_owned());
            let inline = part.content_disposition().map(|disposition| disposition.is_inline()).unwrap_or(false)
                || part.content_id().is_some();
            ParsedAttachment {
                filename: part.attachment_name().map(str::to_owned),
                content_type,
                size: content.len(),
                content_id: part.content_id().map(|id| id.trim_matches(['<', '>']).to_owned()),
                inline,
                content: (content.len() as u64 <= attachment_size_limit).then(|| content.to_vec()),
            }
        })
        .collect();
    let parsed = ParsedMessage {
        message_id: message.message_id().map(bracketed),
        in_reply_to,
        references: ids(message.references()),
        from: mailboxes(message.from()).into_iter().next(),
        to: mailboxes(message.to()),
        cc: mailboxes(message.cc()),
        reply_to: mailboxes(message.reply_to()),
        subject: message.subject().map(str::to_owned),
        date: message.date().map(|date| date.to_timestamp()),
        text_body: message.body_text(0).map(|body| body.into_owned()),
        // Only a real HTML part: mail-parser would otherwise build HTML from
        // the text, doubling what is stored for every plain-text message.
        html_body: match message.html_part(0).map(|part| &part.body) {
            Some(PartType::Html(html)) => Some(html.to_string()),
            _ => None,
        },
        headers,
        size: raw.len(),
        attachments,
    };
    Ok(without_nul_characters(parsed))
}

/// PostgreSQL text and jsonb cannot hold U+0000; a message may. Such
/// characters become U+FFFD in the parsed fields (the raw bytes keep them).
fn without_nul_characters(mut parsed: ParsedMessage) -> ParsedMessage {
    fn clean(text: &mut String) {
        if text.contains('\0') {
            *text = text.replace('\0', "\u{FFFD}");
        }
    }
    let ParsedMessage {
        message_id,
        in_reply_to,
        references,
        from,
        to,
        cc,
        reply_to,
        subject,
        text_body,
        html_body,
        headers,
        attachments,
        ..
    } = &mut parsed;
    let single = [message_id, in_reply_to, from, subject, text_body, html_body];
    single.into_iter().flatten().for_each(clean);
    [references, to, cc, reply_to].into_iter().flatten().for_each(clean);
    for (name, value) in headers.iter_mut() {
        clean(name);
        clean(value);
    }
    for attachment in attachments.iter_mut() {
        clean(&mut attachment.content_type);
        attachment.filename.iter_mut().for_each(clean);
        attachment.content_id.iter_mut().for_each(clean);
    }
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_gets_no_made_up_html_body() {
        let parsed = parse(b"Subject: plain\r\n\r\njust text\r\n", 1024).unwrap();
        assert_eq!(parsed.text_body.as_deref().map(str::trim_end), Some("just text"));
        assert_eq!(parsed.html_body, None);
        let html = parse(b"Subject: html\r\nContent-Type: text/html\r\n\r\n<p>hi</p>\r\n", 1024).unwrap();
        assert!(html.html_body.unwrap().contains("<p>hi</p>"));
        assert!(html.text_body.unwrap().contains("hi"), "text converted from the HTML");
    }

    #[test]
    fn nul_characters_never_reach_text_fields() {
        let raw = b"From: a\0b <ab@example.com>\r\nSubject: x\0y\r\nX-Odd: 1\x002\r\n\r\nbody\0end\r\n";
        let parsed = parse(raw, 1024).unwrap();
        assert_eq!(parsed.subject.as_deref(), Some("x\u{FFFD}y"));
        assert!(!parsed.text_body.unwrap().contains('\0'));
        assert!(parsed.headers.iter().all(|(name, value)| !name.contains('\0') && !value.contains('\0')));
    }

    #[test]
    fn a_reply_with_threading_headers_and_encoded_words() {
        let raw = b"Message-ID: <reply-1@example.com>\r\n\
In-Reply-To: <abc123@example.test>\r\n\
References: <root@example.test>\r\n <abc123@example.test>\r\n\
From: =?ISO-8859-1?Q?Ren=E9_M=FCller?= <rene@example.com>\r\n\
To: Support <support@example.test>, bob@example.test\r\n\
Subject: Re: =?UTF-8?B?SW52b2ljZSDigJQgNDI=?=\r\n\
Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\
X-Long: first part\r\n second part\r\n\
\r\n\
Thanks!\r\n";
        let parsed = parse(raw, 1024).unwrap();
        assert_eq!(parsed.message_id.as_deref(), Some("<reply-1@example.com>"));
        assert_eq!(parsed.in_reply_to.as_deref(), Some("<abc123@example.test>"));
        assert_eq!(parsed.references, ["<root@example.test>", "<abc123@example.test>"]);
        assert_eq!(parsed.from.as_deref(), Some("René Müller <rene@example.com>"));
        assert_eq!(parsed.to, ["Support <support@example.test>", "bob@example.test"]);
        assert_eq!(parsed.subject.as_deref(), Some("Re: Invoice — 42"));
        assert_eq!(parsed.date, Some(1_795_428_000));
        assert_eq!(parsed.text_body.as_deref().map(str::trim_end), Some("Thanks!"));
        assert!(parsed.headers.contains(&("X-Long".to_owned(), "first part second part".to_owned())));
        assert_eq!(parsed.size, raw.len());
    }

    #[test]
    fn charsets_html_alternatives_and_attachments_over_the_limit() {
        let raw = b"From: a@example.com\r\n\
Subject: =?windows-1252?Q?caf=E9?=\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"outer\"\r\n\
\r\n\
--outer\r\n\
Content-Type: multipart/alternative; boundary=\"inner\"\r\n\
\r\n\
--inner\r\n\
Content-Type: text/plain; charset=windows-1252\r\n\
Content-Transfer-Encoding: quoted-printable\r\n\
\r\n\
caf=E9 cr=E8me\r\n\
--inner\r\n\
Content-Type: text/html; charset=utf-8\r\n\
\r\n\
<p>caf\xc3\xa9</p>\r\n\
--inner--\r\n\
--outer\r\n\
Content-Type: application/pdf; name=\"big.pdf\"\r\n\
Content-Disposition: attachment; filename=\"big.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQgdGhpcyBpcyBhIHRlc3Q=\r\n\
--outer\r\n\
Content-Type: image/png\r\n\
Content-ID: <logo@x>\r\n\
Content-Disposition: inline; filename=\"logo.png\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
iVBORw==\r\n\
--outer--\r\n";
        let parsed = parse(raw, 10).unwrap();
        assert_eq!(parsed.subject.as_deref(), Some("café"));
        assert_eq!(parsed.text_body.as_deref().map(str::trim_end), Some("café crème"));
        assert!(parsed.html_body.unwrap().contains("<p>café</p>"));
        assert_eq!(parsed.message_id, None, "no Message-ID is not an error");
        let attachments: Vec<(Option<&str>, &str, usize, bool, bool)> = parsed
            .attachments
            .iter()
            .map(|part| {
                (part.filename.as_deref(), part.content_type.as_str(), part.size, part.inline, part.content.is_some())
            })
            .collect();
        assert_eq!(
            attachments,
            [(Some("big.pdf"), "application/pdf", 23, false, false), (Some("logo.png"), "image/png", 4, true, true)]
        );
        assert_eq!(parsed.attachments[1].content_id.as_deref(), Some("logo@x"));
    }

    #[test]
    fn broken_and_odd_input() {
        assert_eq!(parse(b"", 10), Err(ParseError::Empty));
        assert_eq!(parse(b"\r\n\r\n", 10), Err(ParseError::Empty));
        // Garbage still yields something to store; it never panics.
        for raw in [
            &b"no colon here\r\n\r\nbody"[..],
            b"Subject: \xff\xfe broken bytes\r\nFrom: <<<>>>\r\n\r\nbody\x00with NUL",
            b"Content-Type: multipart/mixed; boundary=missing\r\n\r\n--missing\r\nno end",
        ] {
            let _ = parse(raw, 10);
        }
        let nested = b"Subject: outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\nFrom: x@example.com\r\n\r\ninner body\r\n";
        let parsed = parse(nested, 1024).unwrap();
        assert_eq!(parsed.subject.as_deref(), Some("outer"));
    }
}
