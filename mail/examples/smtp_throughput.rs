//! Messages per second over one reused SMTP connection to a local sink:
//! lettre's own transport versus our socket layer, same ~2 KB message.
//! Usage: cargo run --release -p email_accounts_mail --example smtp_throughput -- PORT COUNT
//! (start `smtp-sink -u nobody 127.0.0.1:PORT 1000` first). Used by `make bench` later.

use email_accounts_mail::compose::{compose, OutgoingMessage};
use email_accounts_mail::connection::{Endpoint, Security};
use email_accounts_mail::smtp_client;
use lettre::transport::smtp::client::Tls;
use lettre::{SmtpTransport, Transport};
use std::time::{Duration, Instant};

fn main() {
    let arguments: Vec<String> = std::env::args().collect();
    let port: u16 = arguments.get(1).and_then(|port| port.parse().ok()).expect("PORT");
    let count: usize = arguments.get(2).and_then(|count| count.parse().ok()).unwrap_or(1000);
    let message = OutgoingMessage {
        message_id: "<bench@example.test>".to_owned(),
        from: "bench@example.test".to_owned(),
        to: vec!["sink@example.test".to_owned()],
        subject: "throughput".to_owned(),
        text_body: Some("x".repeat(1800)),
        ..OutgoingMessage::default()
    };
    let composed = compose(&message).unwrap();

    let lettre_transport = SmtpTransport::builder_dangerous("127.0.0.1").port(port).tls(Tls::None).build();
    let envelope =
        lettre::address::Envelope::new(Some(composed.envelope_from.clone()), composed.recipients.clone()).unwrap();
    let started = Instant::now();
    for _ in 0..count {
        lettre_transport.send_raw(&envelope, &composed.bytes).unwrap();
    }
    report("lettre 0.11.23 SmtpTransport (pooled, 1 connection)", count, started.elapsed());

    let endpoint = Endpoint {
        host: "127.0.0.1".to_owned(),
        port,
        security: Security::None,
        extra_ca_pem: None,
        timeout: Duration::from_secs(10),
    };
    let (mut client, _) = smtp_client::connect(&endpoint, None).unwrap();
    let started = Instant::now();
    for _ in 0..count {
        let delivery = client.send(&composed.envelope_from, &composed.recipients, &composed.bytes).unwrap();
        assert!(matches!(delivery.data, Some(Ok(_))));
    }
    report("email_accounts smtp_client (1 connection)", count, started.elapsed());
    client.quit();
}

fn report(what: &str, count: usize, elapsed: Duration) {
    println!(
        "{what}: {count} messages in {:.2} s = {:.0} msg/s",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}
