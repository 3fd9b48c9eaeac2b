//! The delivery-report corpus (issue 16), 25 messages: DSNs as Postfix,
//! Exim, Sendmail, Exchange Online and on-premises, Outlook.com and Gmail
//! write them (several recipients, failed and delayed together, relayed,
//! success, a Latin-1 diagnostic), delayed-delivery warnings, RFC 6533
//! global reports, qmail's, Yahoo's and old Exim's non-standard bounces,
//! ARF complaints (Yahoo-style, AOL's Removal-Recipient, a redacted one),
//! and what only looks like a report (a person's mail, a read receipt, a
//! DMARC auth-failure report, a daemon's digest). Each with what must be
//! read from it.

use email_accounts_mail::receive::delivery_report::{recognise, Action, ReportKind};

/// (file, kind, [(address, action, status, hard)], Message-ID of the returned original)
type Expected = (
    &'static str,
    Option<&'static str>,
    &'static [(&'static str, Action, Option<&'static str>, bool)],
    Option<&'static str>,
);

const CORPUS: &[Expected] = &[
    (
        "postfix_hard.eml",
        Some("dsn"),
        &[("nobody@remote.test", Action::Failed, Some("5.1.1"), true)],
        Some("<postfix-hard@example.com>"),
    ),
    (
        "postfix_delayed.eml",
        Some("dsn"),
        &[("slow@remote.test", Action::Delayed, Some("4.4.1"), false)],
        Some("<postfix-delayed@example.com>"),
    ),
    (
        "postfix_one_of_three.eml",
        Some("dsn"),
        &[("b@remote.test", Action::Failed, Some("5.2.2"), true)],
        Some("<three@example.com>"),
    ),
    (
        "exim_dsn.eml",
        Some("dsn"),
        &[("user@exim.test", Action::Failed, Some("5.0.0"), true)],
        Some("<exim-dsn@example.com>"),
    ),
    (
        "exim_classic.eml",
        Some("bounce"),
        &[("gone@old.exim.test", Action::Failed, Some("5.1.1"), true)],
        Some("<exim-classic@example.com>"),
    ),
    (
        "qmail.eml",
        Some("bounce"),
        &[("lost@qmail.test", Action::Failed, Some("5.1.1"), true)],
        Some("<qmail@example.com>"),
    ),
    (
        "exchange_online.eml",
        Some("dsn"),
        &[("missing@contoso.test", Action::Failed, Some("5.1.10"), true)],
        Some("<exchange@example.com>"),
    ),
    (
        "gmail.eml",
        Some("dsn"),
        &[("nosuchuser@gmail.com", Action::Failed, Some("5.1.1"), true)],
        Some("<gmail@example.com>"),
    ),
    (
        "sendmail_alias.eml",
        Some("dsn"),
        &[("old@sendmail.test", Action::Failed, Some("5.1.1"), true)],
        Some("<sendmail@example.com>"),
    ),
    (
        "global_delivery_status.eml",
        Some("dsn"),
        &[("jörg@bücher.test", Action::Failed, Some("5.1.1"), true)],
        Some("<global@example.com>"),
    ),
    (
        "arf_abuse.eml",
        Some("complaint"),
        &[("reader@yahoo.test", Action::Delivered, None, false)],
        Some("<complained@example.com>"),
    ),
    ("arf_redacted_headers.eml", Some("complaint"), &[], Some("<redacted@example.com>")),
    ("not_a_report_human.eml", None, &[], None),
    ("read_receipt.eml", None, &[], None),
    ("daemon_without_addresses.eml", None, &[], None),
    (
        "yahoo_failure_notice.eml",
        Some("bounce"),
        &[("nouser@yahoo.test", Action::Failed, None, true)],
        Some("<yahoo@example.com>"),
    ),
    (
        "outlook_consumer.eml",
        Some("dsn"),
        &[("someone@outlook.test", Action::Failed, Some("5.5.0"), true)],
        Some("<outlook@example.com>"),
    ),
    (
        "exchange_onprem.eml",
        Some("dsn"),
        &[("former.employee@corp.test", Action::Failed, Some("5.1.1"), true)],
        Some("<onprem@example.com>"),
    ),
    (
        "postfix_two_failed.eml",
        Some("dsn"),
        &[
            ("one@remote.test", Action::Failed, Some("5.1.1"), true),
            ("two@remote.test", Action::Failed, Some("5.1.1"), true),
        ],
        Some("<two-failed@example.com>"),
    ),
    (
        "postfix_failed_and_delayed.eml",
        Some("dsn"),
        &[
            ("gone@remote.test", Action::Failed, Some("5.1.1"), true),
            ("slow@remote.test", Action::Delayed, Some("4.2.2"), false),
        ],
        Some("<mixed@example.com>"),
    ),
    (
        "aol_arf.eml",
        Some("complaint"),
        &[("member@aol.test", Action::Delivered, None, false)],
        Some("<aol@example.com>"),
    ),
    ("arf_auth_failure.eml", None, &[], None),
    (
        "dsn_relayed.eml",
        Some("dsn"),
        &[("legacy@old-system.test", Action::Relayed, Some("2.0.0"), false)],
        Some("<relayed@example.com>"),
    ),
    (
        "dsn_latin1_diagnostic.eml",
        Some("dsn"),
        &[("mueller@remote.test", Action::Failed, Some("5.1.1"), true)],
        Some("<latin1@example.com>"),
    ),
    (
        "gmail_success.eml",
        Some("dsn"),
        &[("friend@gmail.com", Action::Delivered, Some("2.0.0"), false)],
        Some("<success@example.com>"),
    ),
];

#[test]
fn every_report_of_the_corpus_reads_as_expected() {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/delivery_reports");
    let files = std::fs::read_dir(&directory).unwrap().count();
    assert_eq!(files, CORPUS.len(), "every fixture has its expectation");
    for (file, kind, recipients, original) in CORPUS {
        let raw = std::fs::read(directory.join(file)).unwrap();
        let report = recognise(&raw);
        let Some(report) = report else {
            assert_eq!(*kind, None, "{file}: not recognised");
            continue;
        };
        let read_kind = match &report.kind {
            ReportKind::DeliveryStatus => "dsn",
            ReportKind::NonStandardBounce => "bounce",
            ReportKind::Complaint { feedback_type } => {
                assert_eq!(feedback_type, "abuse", "{file}");
                "complaint"
            }
        };
        assert_eq!(Some(read_kind), *kind, "{file}: {report:?}");
        let read: Vec<(&str, Action, Option<&str>, bool)> = report
            .recipients
            .iter()
            .map(|recipient| {
                (recipient.address.as_str(), recipient.action, recipient.status.as_deref(), recipient.is_hard_bounce())
            })
            .collect();
        assert_eq!(read, recipients.to_vec(), "{file}");
        assert_eq!(report.original_message_id.as_deref(), *original, "{file}");
        if read_kind == "dsn" && report.recipients.iter().any(|recipient| recipient.action == Action::Failed) {
            assert!(report.recipients[0].diagnostic.is_some(), "{file}: the remote server's words");
        }
    }
}

/// The returned original's envelope sender (where a signed one is checked),
/// from a complaint's full copy, a DSN's returned message and a qmail quote.
#[test]
fn the_returned_originals_return_path_is_read() {
    let directory = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/delivery_reports");
    for file in ["arf_abuse.eml", "postfix_hard.eml", "qmail.eml"] {
        let report = recognise(&std::fs::read(directory.join(file)).unwrap()).unwrap();
        assert_eq!(report.original_return_path.as_deref(), Some("<support@example.com>"), "{file}");
    }
    let report = recognise(&std::fs::read(directory.join("gmail.eml")).unwrap()).unwrap();
    assert_ne!(report.original_return_path.as_deref(), Some("<>"), "never the report's own null sender");
}
