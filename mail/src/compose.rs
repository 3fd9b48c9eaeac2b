//! Composing an outgoing message with lettre's builder: text, HTML or both,
//! attachments and inline images, Cc and Bcc (Bcc only in the envelope),
//! custom headers, reply headers, signature, unsubscribe link and headers,
//! and an open-tracking pixel.

use crate::address::{parse_mailbox, AddressError};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as LettreAttachment, Mailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use std::time::SystemTime;

/// A file to attach; with a content id it is an inline part (for `cid:` in HTML).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub filename: String,
    pub content_type: String,
    pub content: Vec<u8>,
    pub content_id: Option<String>,
}

/// Everything needed to compose one message; addresses are text as stored.
#[derive(Debug, Clone, Default)]
pub struct OutgoingMessage {
    /// With angle brackets: `<id@domain>`.
    pub message_id: String,
    pub from: String,
    pub reply_to: Vec<String>,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    pub text_body: Option<String>,
    pub html_body: Option<String>,
    pub attachments: Vec<Attachment>,
    /// Extra headers, name and value, in order.
    pub headers: Vec<(String, String)>,
    pub in_reply_to: Option<String>,
    pub references: Vec<String>,
    pub date: Option<SystemTime>,
    pub signature: Option<String>,
    /// Adds an unsubscribe link to the body and RFC 8058 one-click headers.
    pub unsubscribe_url: Option<String>,
    /// Adds an invisible image with this URL to the HTML body.
    pub tracking_pixel_url: Option<String>,
}

/// The bytes to send and to whom.
#[derive(Debug, Clone)]
pub struct ComposedMessage {
    pub envelope_from: Address,
    /// To, Cc and Bcc, without duplicates.
    pub recipients: Vec<Address>,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComposeError {
    #[error("{field}: {source}")]
    Address { field: &'static str, source: AddressError },
    #[error("the message has no recipients")]
    NoRecipients,
    #[error("header {0:?} is not a valid header name")]
    HeaderName(String),
    #[error("header {0:?} contains a line break")]
    HeaderValue(String),
    #[error("header {0:?} is set by email_accounts and cannot be given")]
    ReservedHeader(String),
    #[error("attachment {0:?}: {1}")]
    Attachment(String, String),
    #[error("{0}")]
    Build(String),
}

/// Headers the composer owns; a custom header may not replace them.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "subject",
    "date",
    "message-id",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
];

/// Checks a custom header before it is stored: a valid name, no line breaks.
pub fn check_header(name: &str, value: &str) -> Result<(), ComposeError> {
    let valid_name = !name.is_empty() && name.bytes().all(|byte| byte.is_ascii_graphic() && byte != b':');
    if !valid_name {
        return Err(ComposeError::HeaderName(name.to_owned()));
    }
    if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
        return Err(ComposeError::ReservedHeader(name.to_owned()));
    }
    if value.contains(['\r', '\n']) {
        return Err(ComposeError::HeaderValue(name.to_owned()));
    }
    Ok(())
}

fn mailboxes(field: &'static str, texts: &[String]) -> Result<Vec<Mailbox>, ComposeError> {
    texts.iter().map(|text| parse_mailbox(text).map_err(|source| ComposeError::Address { field, source })).collect()
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The bodies after signature, unsubscribe link and tracking pixel.
fn bodies(message: &OutgoingMessage) -> (Option<String>, Option<String>) {
    let mut text = message.text_body.clone();
    let mut html = message.html_body.clone();
    if let Some(signature) = message.signature.as_deref().filter(|signature| !signature.trim().is_empty()) {
        if let Some(text) = text.as_mut() {
            text.push_str(&format!("\n\n-- \n{signature}"));
        }
        if let Some(html) = html.as_mut() {
            let lines = escape_html(signature).replace('\n', "<br>\n");
            html.push_str(&format!("\n<div class=\"signature\">-- <br>\n{lines}</div>"));
        }
    }
    if let Some(url) = message.unsubscribe_url.as_deref() {
        if let Some(text) = text.as_mut() {
            text.push_str(&format!("\n\nUnsubscribe: {url}"));
        }
        if let Some(html) = html.as_mut() {
            html.push_str(&format!("\n<p class=\"unsubscribe\"><a href=\"{}\">Unsubscribe</a></p>", escape_html(url)));
        }
    }
    if let (Some(url), Some(html)) = (message.tracking_pixel_url.as_deref(), html.as_mut()) {
        html.push_str(&format!(
            "\n<img src=\"{}\" width=\"1\" height=\"1\" alt=\"\" style=\"display:none\">",
            escape_html(url)
        ));
    }
    (text, html)
}

fn attachment_part(attachment: &Attachment) -> Result<SinglePart, ComposeError> {
    let content_type = ContentType::parse(&attachment.content_type).map_err(|_| {
        ComposeError::Attachment(attachment.filename.clone(), format!("content type {:?}", attachment.content_type))
    })?;
    let builder = match &attachment.content_id {
        Some(content_id) => LettreAttachment::new_inline_with_name(content_id.clone(), attachment.filename.clone()),
        None => LettreAttachment::new(attachment.filename.clone()),
    };
    Ok(builder.body(attachment.content.clone(), content_type))
}

/// The MIME tree: alternative(text, related(html, inline…)) inside mixed(…, attachments).
fn body_tree(
    text: Option<String>,
    html: Option<String>,
    attachments: &[Attachment],
) -> Result<MultiPart, ComposeError> {
    let inline: Vec<SinglePart> = attachments
        .iter()
        .filter(|attachment| attachment.content_id.is_some())
        .map(attachment_part)
        .collect::<Result<_, _>>()?;
    let html_part = html.map(|html| {
        if inline.is_empty() {
            MultiPart::mixed().singlepart(SinglePart::html(html))
        } else {
            inline.into_iter().fold(MultiPart::related().singlepart(SinglePart::html(html)), MultiPart::singlepart)
        }
    });
    let mut mixed = MultiPart::mixed().build();
    mixed = match (text, html_part) {
        (Some(text), Some(html)) => {
            mixed.multipart(MultiPart::alternative().singlepart(SinglePart::plain(text)).multipart(html))
        }
        (Some(text), None) => mixed.singlepart(SinglePart::plain(text)),
        (None, Some(html)) => mixed.multipart(html),
        (None, None) => mixed.singlepart(SinglePart::plain(String::new())),
    };
    for attachment in attachments.iter().filter(|attachment| attachment.content_id.is_none()) {
        mixed = mixed.singlepart(attachment_part(attachment)?);
    }
    Ok(mixed)
}

pub fn compose(message: &OutgoingMessage) -> Result<ComposedMessage, ComposeError> {
    let from = parse_mailbox(&message.from).map_err(|source| ComposeError::Address { field: "from", source })?;
    let to = mailboxes("to", &message.to)?;
    let cc = mailboxes("cc", &message.cc)?;
    let bcc = mailboxes("bcc", &message.bcc)?;
    let reply_to = mailboxes("reply_to", &message.reply_to)?;
    let mut recipients: Vec<Address> = Vec::new();
    for mailbox in to.iter().chain(&cc).chain(&bcc) {
        if !recipients.contains(&mailbox.email) {
            recipients.push(mailbox.email.clone());
        }
    }
    if recipients.is_empty() {
        return Err(ComposeError::NoRecipients);
    }

    let mut builder = Message::builder()
        .message_id(Some(message.message_id.clone()))
        .from(from.clone())
        .raw_header(text_header("Subject", message.subject.clone())?)
        .date(message.date.unwrap_or_else(SystemTime::now));
    for mailbox in to {
        builder = builder.to(mailbox);
    }
    for mailbox in cc {
        builder = builder.cc(mailbox);
    }
    // Bcc recipients are in the envelope only: lettre drops the Bcc header.
    for mailbox in bcc {
        builder = builder.bcc(mailbox);
    }
    for mailbox in reply_to {
        builder = builder.reply_to(mailbox);
    }
    if let Some(parent) = &message.in_reply_to {
        builder = builder.in_reply_to(parent.clone());
    }
    if !message.references.is_empty() {
        builder = builder.references(message.references.join(" "));
    }
    if let Some(url) = &message.unsubscribe_url {
        builder = builder
            .raw_header(structured_header("List-Unsubscribe", format!("<{url}>"))?)
            .raw_header(structured_header("List-Unsubscribe-Post", "List-Unsubscribe=One-Click".to_owned())?);
    }
    for (name, value) in &message.headers {
        check_header(name, value)?;
        builder = builder.raw_header(text_header(name, value.clone())?);
    }
    let (text, html) = bodies(message);
    let email = builder
        .multipart(body_tree(text, html, &message.attachments)?)
        .map_err(|error| ComposeError::Build(error.to_string()))?;
    Ok(ComposedMessage { envelope_from: from.email, recipients, bytes: email.formatted() })
}

/// A header whose value has a syntax of its own (a URL in angle brackets):
/// never encoded-words, which only unstructured text may use.
fn structured_header(name: &str, value: String) -> Result<HeaderValue, ComposeError> {
    let header_name =
        HeaderName::new_from_ascii(name.to_owned()).map_err(|_| ComposeError::HeaderName(name.to_owned()))?;
    Ok(HeaderValue::new(header_name, value))
}

/// Words longer than this are RFC 2047-encoded, so the line can be folded.
const LONGEST_PLAIN_WORD: usize = 76;

/// A header as lettre encodes it when the value is plain ASCII in short
/// words; otherwise the whole value as RFC 2047 encoded-words. lettre
/// 0.11.23 encodes word by word and writes ASCII words as they are, which
/// the property test caught three ways: a 1,200-character subject became one
/// 1,210-octet line (over SMTP's 998), a subject "=?utf-8?B??=" arrived
/// empty, and the spaces between two non-ASCII words were lost (whitespace
/// between encoded-words is not text).
fn text_header(name: &str, value: String) -> Result<HeaderValue, ComposeError> {
    let plain = value.is_ascii()
        && !value.contains("=?")
        && value.split([' ', '\t']).all(|word| word.len() <= LONGEST_PLAIN_WORD);
    if plain {
        return structured_header(name, value);
    }
    let header_name =
        HeaderName::new_from_ascii(name.to_owned()).map_err(|_| ComposeError::HeaderName(name.to_owned()))?;
    let mut encoded = String::new();
    {
        let mut writer =
            email_encoding::headers::writer::EmailWriter::new(&mut encoded, name.len() + ": ".len(), 0, false);
        email_encoding::headers::rfc2047::encode(&value, &mut writer)
            .map_err(|error| ComposeError::Build(error.to_string()))?;
    }
    Ok(HeaderValue::dangerous_new_pre_encoded(header_name, value, encoded))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::MimeHeaders;

    fn base() -> OutgoingMessage {
        OutgoingMessage {
            message_id: "<1.abc@example.test>".to_owned(),
            from: "Sales <sales@example.test>".to_owned(),
            to: vec!["ann@example.com".to_owned()],
            subject: "Invoice 42 — ready".to_owned(),
            text_body: Some("Hello Ann".to_owned()),
            ..OutgoingMessage::default()
        }
    }

    fn text(composed: &ComposedMessage) -> String {
        String::from_utf8_lossy(&composed.bytes).into_owned()
    }

    #[test]
    fn plain_text_with_reply_headers() {
        let mut message = base();
        message.in_reply_to = Some("<parent@example.com>".to_owned());
        message.references = vec!["<root@example.com>".to_owned(), "<parent@example.com>".to_owned()];
        message.reply_to = vec!["support@example.test".to_owned()];
        let composed = compose(&message).unwrap();
        let text = text(&composed);
        assert!(text.contains("Message-ID: <1.abc@example.test>"), "{text}");
        assert!(text.contains("In-Reply-To: <parent@example.com>"), "{text}");
        assert!(text.contains("References: <root@example.com> <parent@example.com>"), "{text}");
        assert!(text.contains("Reply-To: support@example.test"), "{text}");
        // Non-ASCII: the whole subject as encoded-words, so its spaces survive.
        assert!(text.contains("Subject: =?utf-8?b?"), "{text}");
        let parsed = crate::parse::parse(&composed.bytes, 1000).unwrap();
        assert_eq!(parsed.subject.as_deref(), Some("Invoice 42 — ready"));
        assert_eq!(composed.envelope_from.to_string(), "sales@example.test");
    }

    #[test]
    fn bcc_is_only_in_the_envelope_and_recipients_are_unique() {
        let mut message = base();
        message.cc = vec!["Bob <bob@example.com>".to_owned(), "ann@example.com".to_owned()];
        message.bcc = vec!["secret@example.com".to_owned()];
        let composed = compose(&message).unwrap();
        let recipients: Vec<String> = composed.recipients.iter().map(ToString::to_string).collect();
        assert_eq!(recipients, ["ann@example.com", "bob@example.com", "secret@example.com"]);
        let text = text(&composed);
        assert!(!text.lines().any(|line| line.to_lowercase().starts_with("bcc:")), "{text}");
        assert!(!text.contains("secret@example.com"), "{text}");
        assert!(text.contains("Cc: Bob <bob@example.com>"), "{text}");
    }

    #[test]
    fn html_alternative_inline_images_attachments_signature_unsubscribe_and_pixel() {
        let mut message = base();
        message.html_body = Some("<p>Hello <img src=\"cid:logo\"></p>".to_owned());
        message.attachments = vec![
            Attachment {
                filename: "logo.png".to_owned(),
                content_type: "image/png".to_owned(),
                content: vec![137, 80, 78, 71],
                content_id: Some("logo".to_owned()),
            },
            Attachment {
                filename: "invoice.pdf".to_owned(),
                content_type: "application/pdf".to_owned(),
                content: b"%PDF-1.4".to_vec(),
                content_id: None,
            },
        ];
        message.signature = Some("Sales team\nExample & Co".to_owned());
        // Real tokens make URLs longer than a foldable word: they stay literal.
        let token = "t".repeat(120);
        message.unsubscribe_url = Some(format!("https://example.test/u?t={token}"));
        message.tracking_pixel_url = Some("https://example.test/o?t=def".to_owned());
        let composed = compose(&message).unwrap();
        let raw = text(&composed);
        assert!(raw.contains("multipart/mixed") && raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("multipart/related"), "inline images travel with the HTML: {raw}");
        assert!(raw.contains(&format!("List-Unsubscribe: <https://example.test/u?t={token}>")), "{raw}");
        assert!(raw.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"), "{raw}");

        // Read back as a receiver reads it.
        let parsed = mail_parser::MessageParser::default().parse(&composed.bytes).unwrap();
        let plain = parsed.body_text(0).unwrap().replace("\r\n", "\n");
        assert!(plain.starts_with("Hello Ann\n\n-- \nSales team\nExample & Co"), "{plain:?}");
        assert!(plain.ends_with(&format!("Unsubscribe: https://example.test/u?t={token}")), "{plain:?}");
        let html = parsed.body_html(0).unwrap();
        assert!(html.contains("Example &amp; Co</div>"), "{html}");
        assert!(html.contains(&format!("<a href=\"https://example.test/u?t={token}\">Unsubscribe</a>")), "{html}");
        assert!(html.contains("<img src=\"https://example.test/o?t=def\" width=\"1\""), "{html}");
        let attachments: Vec<(String, Vec<u8>, Option<String>)> = parsed
            .attachments()
            .map(|part| {
                (
                    part.attachment_name().unwrap_or_default().to_owned(),
                    part.contents().to_vec(),
                    part.content_id().map(str::to_owned),
                )
            })
            .collect();
        assert_eq!(
            attachments,
            [
                ("logo.png".to_owned(), vec![137, 80, 78, 71], Some("logo".to_owned())),
                ("invoice.pdf".to_owned(), b"%PDF-1.4".to_vec(), None)
            ]
        );
    }

    #[test]
    fn custom_headers_are_checked() {
        let mut message = base();
        message.headers = vec![("X-Ticket".to_owned(), "42".to_owned())];
        assert!(text(&compose(&message).unwrap()).contains("X-Ticket: 42"));
        assert_eq!(
            check_header("X-Evil", "a\r\nBcc: eve@example.com"),
            Err(ComposeError::HeaderValue("X-Evil".to_owned()))
        );
        assert_eq!(check_header("Bad Name", "x"), Err(ComposeError::HeaderName("Bad Name".to_owned())));
        assert_eq!(check_header("Bcc", "x"), Err(ComposeError::ReservedHeader("Bcc".to_owned())));
        message.headers = vec![("Message-ID".to_owned(), "<forged@x>".to_owned())];
        assert!(matches!(compose(&message), Err(ComposeError::ReservedHeader(_))));
    }

    #[test]
    fn bad_addresses_and_no_recipients_are_refused() {
        let mut message = base();
        message.to = vec![];
        assert_eq!(compose(&message).unwrap_err(), ComposeError::NoRecipients);
        message.to = vec!["not an address".to_owned()];
        assert!(matches!(compose(&message), Err(ComposeError::Address { field: "to", .. })));
        let mut message = base();
        message.from = "x".to_owned();
        assert!(matches!(compose(&message), Err(ComposeError::Address { field: "from", .. })));
    }
}
