//! Restarts hold no mail back: with 1,000 messages queued and the default
//! five-minute lease, a fast restart, an immediate stop and a SIGKILL of the
//! sender each end with every message sent within seconds of the sender
//! being back. A sender that stops hands back what it had claimed but not
//! started (its attempt uncounted); one that starts takes back what a sender
//! that is gone had claimed. Only the round on the wire when a sender died
//! can go out twice, and the count is reported (README "Restarts").
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{add_account_without_login, Behaviour, Postgres, SmtpResponder, OUT_FOR_DELIVERY};
use std::time::{Duration, Instant};

const MESSAGES: i64 = 1000;
const BATCH: i64 = 200;

fn count(client: &mut postgres::Client, condition: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM email_accounts.outbox WHERE {condition}"), &[]).unwrap().get(0)
}

fn sender_pid(client: &mut postgres::Client) -> Result<Option<i32>, postgres::Error> {
    client
        .query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'sender' AND state = 'idle'", &[])?
        .try_get(0)
}

#[test]
fn a_fast_restart_an_immediate_stop_and_a_killed_sender_hold_no_mail_back() {
    for stop in ["pg_ctl restart -m fast", "pg_ctl stop -m immediate", "SIGKILL of the sender"] {
        // The default lease (5 minutes): waiting for it would fail the test.
        let cluster = Postgres::start(&[
            &format!("email_accounts.batch_size = {BATCH}"),
            "email_accounts.smtp_connections = 1",
            "email_accounts.fallback_poll_interval = '1h'",
        ]);
        let mut client = cluster.connect("postgres");
        client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
        // Each message's final answer takes 5 ms: the stop lands mid-queue.
        let server = SmtpResponder::start(None, Behaviour::AcceptSlowly(5), true);
        add_account_without_login(&mut client, "steady", server.port);
        client
            .execute(
                "INSERT INTO email_accounts.outbox (account, to_addresses, subject, body_text)
                 SELECT 'steady', ARRAY['to' || n || '@example.test'], 'restart ' || n, 'message ' || n
                   FROM generate_series(1, $1::bigint) AS n",
                &[&MESSAGES],
            )
            .unwrap();
        let started = Instant::now();
        while count(&mut client, "status = 'sent'") < 250 {
            assert!(started.elapsed() < Duration::from_secs(120), "{stop}: the queue does not move");
            std::thread::sleep(Duration::from_millis(5));
        }

        let before = sender_pid(&mut client).unwrap().expect("a running sender");
        let claimed = count(&mut client, OUT_FOR_DELIVERY);
        match stop {
            "pg_ctl restart -m fast" => {
                cluster.stop("fast");
                cluster.start_again();
            }
            "pg_ctl stop -m immediate" => {
                cluster.stop("immediate");
                cluster.start_again();
            }
            _ => {
                let killed = std::process::Command::new("kill").args(["-KILL", &before.to_string()]).status().unwrap();
                assert!(killed.success());
            }
        }
        let (mut client, _) =
            cluster.reconnect_until("a new sender", |client| Ok(sender_pid(client)?.filter(|pid| *pid != before)));
        let back = Instant::now();
        while count(&mut client, "status = 'sent'") < MESSAGES {
            let waited = back.elapsed();
            assert!(
                waited < Duration::from_secs(10),
                "{stop}: not every row sent 10 s after the sender came back; by status: {:?}",
                client
                    .query("SELECT status, count(*) FROM email_accounts.outbox GROUP BY 1 ORDER BY 1", &[])
                    .unwrap()
                    .iter()
                    .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1)))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let all_sent_after = back.elapsed();
        assert_eq!(server.distinct_messages(), MESSAGES as usize, "{stop}: nothing lost");
        let duplicates = server.duplicates() as i64;
        let attempted_twice = count(&mut client, "attempts > 1");
        eprintln!(
            "{stop}: {claimed} rows claimed when stopped, all {MESSAGES} sent {:.1} s after the sender was back, \
             {duplicates} sent twice, {attempted_twice} attempted twice",
            all_sent_after.as_secs_f64()
        );
        if stop == "pg_ctl restart -m fast" {
            // The stopping sender finished the message it was sending, recorded
            // what went out and handed back the rest uncounted.
            assert_eq!(duplicates, 0, "{stop}");
            assert_eq!(attempted_twice, 0, "{stop}: handed-back rows keep their attempt count");
        } else {
            // Only the round on the wire (one account, one connection) can go
            // out twice; the round claimed behind it did not go out, but a dead
            // sender cannot say so: its attempt is counted.
            assert!(duplicates <= BATCH, "{stop}: {duplicates} duplicates");
            assert!(attempted_twice <= 2 * BATCH, "{stop}: {attempted_twice} rows attempted twice");
        }
        if stop != "pg_ctl restart -m fast" && claimed > 0 {
            assert!(
                cluster.server_log().contains("claimed by a sender that is no longer running"),
                "{stop}: the new sender says it took rows back"
            );
        }
    }
}
