//! Property tests of our own parsing and composition code: generated inputs,
//! many of them hostile. `make test` runs the default number of cases
//! (quick); `make fuzz` runs many more (PROPTEST_CASES).

use email_accounts_mail::compose::{check_header, compose, Attachment, OutgoingMessage};
use email_accounts_mail::parse::parse;
use email_accounts_mail::smtp_client::dot_stuff;
use email_accounts_mail::token::{sign, verify, LinkKey, Purpose};
use proptest::prelude::*;

/// Text with the characters that break mail: CR, LF, dots at line starts,
/// encoded-word look-alikes, non-ASCII, long runs without spaces. (No NUL:
/// PostgreSQL text, where every field comes from, cannot hold one.)
fn hostile_text() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("\r".to_owned()),
            Just("\n".to_owned()),
            Just("\r\n".to_owned()),
            Just("\r\n.\r\n".to_owned()),
            Just(".".to_owned()),
            Just("=?utf-8?B?".to_owned()),
            Just("?=".to_owned()),
            Just("Bcc: eve@example.com".to_owned()),
            Just(" ".to_owned()),
            "[a-zA-Z0-9]{1,12}",
            "\\PC{1,6}",
            "x{200,1200}",
        ],
        0..40,
    )
    .prop_map(|parts| parts.concat())
}

fn without_line_breaks(text: String) -> String {
    text.replace(['\r', '\n'], " ")
}

/// Undoes dot-stuffing and strips the terminator.
fn unstuff(payload: &[u8]) -> Vec<u8> {
    let body = &payload[..payload.len() - 3];
    let mut out = Vec::with_capacity(body.len());
    let mut at_line_start = true;
    let mut index = 0;
    while index < body.len() {
        if at_line_start && body[index] == b'.' {
            index += 1;
        }
        if index < body.len() {
            out.push(body[index]);
            at_line_start = body[index] == b'\n';
        }
        index += 1;
    }
    out
}

proptest! {
    /// Whatever the bytes, parsing returns (a message or a parse error) and never panics.
    #[test]
    fn parsing_never_panics(raw in prop::collection::vec(any::<u8>(), 0..4096), limit in 0u64..10_000) {
        let _ = parse(&raw, limit);
    }

    /// The same for header-shaped input, which gets deeper into the parser.
    #[test]
    fn parsing_header_shaped_input_never_panics(
        headers in prop::collection::vec(("[A-Za-z-]{1,20}", hostile_text()), 0..12),
        body in hostile_text(),
    ) {
        let mut raw = String::new();
        for (name, value) in &headers {
            raw.push_str(&format!("{name}: {value}\r\n"));
        }
        raw.push_str("\r\n");
        raw.push_str(&body);
        let _ = parse(raw.as_bytes(), 1000);
    }

    /// The DATA payload ends with the one terminator, has no other line that
    /// is a lone dot, uses CRLF only, and unstuffs to the message.
    #[test]
    fn dot_stuffing_is_reversible_and_ends_exactly_once(message in prop::collection::vec(
        prop_oneof![Just(b'.'), Just(b'\r'), Just(b'\n'), any::<u8>()], 0..2000)
    ) {
        let payload = dot_stuff(&message);
        prop_assert!(payload.ends_with(b"\r\n.\r\n"));
        let lines: Vec<&[u8]> = payload[..payload.len() - 2].split(|byte| *byte == b'\n').collect();
        let lone_dots = lines.iter().filter(|line| **line == b".\r" || **line == b".").count();
        prop_assert_eq!(lone_dots, 1, "only the terminator is a lone dot");
        for (index, byte) in payload.iter().enumerate() {
            if *byte == b'\n' {
                prop_assert!(index > 0 && payload[index - 1] == b'\r', "bare LF at {}", index);
            }
        }
        let mut expected = Vec::new();
        let mut previous = 0u8;
        for &byte in &message {
            if byte == b'\n' && previous != b'\r' {
                expected.push(b'\r');
            }
            expected.push(byte);
            previous = byte;
        }
        if !expected.ends_with(b"\r\n") {
            expected.extend_from_slice(b"\r\n");
        }
        prop_assert_eq!(unstuff(&payload), expected);
    }

    /// A composed message: lines of at most 998 octets, CRLF only, no header
    /// that was not asked for (a subject or custom header cannot inject one),
    /// and it parses back to the same subject and text.
    #[test]
    fn composed_messages_are_well_formed_and_parse_back(
        subject in hostile_text().prop_map(without_line_breaks),
        text in hostile_text(),
        header_value in hostile_text(),
        attachment in prop::collection::vec(any::<u8>(), 0..3000),
        filename in hostile_text().prop_map(without_line_breaks),
        unsubscribe_token in proptest::option::of("[A-Za-z0-9_.-]{1,300}"),
    ) {
        let custom = ("X-Custom".to_owned(), header_value.clone());
        let headers = if check_header(&custom.0, &custom.1).is_ok() { vec![custom] } else { Vec::new() };
        let message = OutgoingMessage {
            message_id: "<property@example.test>".to_owned(),
            from: "Sender <sender@example.test>".to_owned(),
            to: vec!["to@example.test".to_owned()],
            subject: subject.clone(),
            text_body: Some(text.clone()),
            attachments: vec![Attachment {
                filename: if filename.trim().is_empty() { "file".to_owned() } else { filename },
                content_type: "application/octet-stream".to_owned(),
                content: attachment,
                content_id: None,
            }],
            headers,
            unsubscribe_url: unsubscribe_token.as_ref().map(|token| format!("https://app.example.test/u?token={token}")),
            ..Default::default()
        };
        let composed = match compose(&message) {
            Ok(composed) => composed,
            // A refusal is an answer; only a panic or a malformed message is a failure.
            Err(_) => return Ok(()),
        };
        let bytes = &composed.bytes;
        for line in bytes.split(|byte| *byte == b'\n') {
            prop_assert!(line.len() <= 999, "a line of {} octets", line.len());
        }
        for (index, byte) in bytes.iter().enumerate() {
            if *byte == b'\n' {
                prop_assert!(index > 0 && bytes[index - 1] == b'\r', "bare LF at {}", index);
            }
        }
        let parsed = parse(bytes, u64::MAX).expect("a composed message parses");
        let allowed = ["from", "to", "subject", "message-id", "date", "mime-version", "content-type",
                       "content-transfer-encoding", "x-custom", "list-unsubscribe", "list-unsubscribe-post"];
        if let Some(url) = &message.unsubscribe_url {
            // A URL header is structured: literal, never encoded-words.
            let literal = format!("List-Unsubscribe: <{url}>\r\n");
            prop_assert!(bytes.windows(literal.len()).any(|window| window == literal.as_bytes()), "{}", literal);
        }
        for (name, _) in &parsed.headers {
            prop_assert!(allowed.contains(&name.to_ascii_lowercase().as_str()), "unexpected header {}", name);
        }
        let normalize = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
        prop_assert_eq!(normalize(parsed.subject.as_deref().unwrap_or("")), normalize(&subject));
        let parsed_text = parsed.text_body.unwrap_or_default();
        let expected = match &message.unsubscribe_url {
            Some(url) => format!("{text} Unsubscribe: {url}"),
            None => text.clone(),
        };
        prop_assert_eq!(normalize(&parsed_text), normalize(&expected));
    }

    /// Signed links verify for their purpose only, and any change breaks them.
    #[test]
    fn link_tokens_verify_only_unchanged(
        secret in prop::collection::vec(any::<u8>(), 32),
        key_id in 1u32..1000,
        nonce in any::<[u8; 12]>(),
        outbox_id in any::<i64>(),
        expires_at in 0i64..4_000_000_000,
        address in "[a-z0-9.]{1,20}@[a-z]{1,10}\\.test",
        flip in any::<prop::sample::Index>(),
    ) {
        let keys = [LinkKey { id: key_id, secret }];
        let token = sign(&keys[0], Purpose::Unsubscribe, outbox_id, &address, expires_at, nonce);
        let claim = verify(&keys, Purpose::Unsubscribe, &token, expires_at).expect("the token verifies");
        prop_assert_eq!(claim.outbox_id, outbox_id);
        prop_assert_eq!(claim.expires_at, Some(expires_at));
        prop_assert!(!token.contains(&address), "the address is not readable in the token");
        prop_assert_eq!(claim.address, address);
        prop_assert!(verify(&keys, Purpose::Open, &token, expires_at).is_err(), "another purpose is refused");
        prop_assert!(verify(&keys, Purpose::Unsubscribe, &token, expires_at + 1).is_err(), "an expired token is refused");
        let key = &keys;
        let mut changed = token.clone().into_bytes();
        let at = flip.index(changed.len());
        changed[at] = if changed[at] == b'A' { b'B' } else { b'A' };
        let changed = String::from_utf8(changed).unwrap();
        if changed != token {
            prop_assert!(verify(key, Purpose::Unsubscribe, &changed, expires_at).is_err(), "a changed token is refused");
        }
    }
}

/// The case the property test found: a word too long to fold (lettre wrote
/// it on one line). Now every line stays within SMTP's 998 octets.
#[test]
fn long_words_in_headers_are_folded() {
    let long = "x".repeat(1200);
    let message = OutgoingMessage {
        message_id: "<long@example.test>".to_owned(),
        from: "sender@example.test".to_owned(),
        to: vec!["to@example.test".to_owned()],
        subject: long.clone(),
        text_body: Some("body".to_owned()),
        headers: vec![("X-Custom".to_owned(), long.clone())],
        ..Default::default()
    };
    let composed = compose(&message).unwrap();
    assert!(composed.bytes.split(|byte| *byte == b'\n').all(|line| line.len() <= 999));
    let parsed = parse(&composed.bytes, 1000).unwrap();
    assert_eq!(parsed.subject.as_deref(), Some(long.as_str()));
}
