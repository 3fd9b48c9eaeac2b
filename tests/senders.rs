//! Several senders in one database (`email_accounts.senders`) share the
//! outbox: every row goes out once, one account is on one sender at a time
//! (its rate limit holds across them), and a sender that stops or dies
//! leaves the others sending.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{add_account_without_login, wait_until, workers_here, Behaviour, Postgres, SmtpResponder};
use std::collections::HashSet;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(120);
const ACCOUNTS: usize = 12;
const ROWS: i64 = 20_000;

/// A cluster with `senders` senders, each taking at most 2 accounts at once
/// (so 12 accounts need several of them).
fn cluster_with_senders(senders: usize, extra: &[&str]) -> (Postgres, postgres::Client) {
    let senders_setting = format!("email_accounts.senders = {senders}");
    let mut settings =
        vec![senders_setting.as_str(), "email_accounts.smtp_connections = 2", "email_accounts.batch_size = 100"];
    settings.extend_from_slice(extra);
    let cluster = Postgres::start(&settings);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("every sender and the receiver to be idle", LIMIT, || {
        (workers_here(&mut client, "idle") == senders as i64 + 1).then_some(())
    });
    (cluster, client)
}

/// One server per account, so each sees only its account's sessions.
fn accounts_on_servers(client: &mut postgres::Client, behaviour: Behaviour) -> Vec<SmtpResponder> {
    (0..ACCOUNTS)
        .map(|index| {
            let server = SmtpResponder::start(None, behaviour.clone(), true);
            add_account_without_login(client, &format!("account{index}"), server.port);
            server
        })
        .collect()
}

fn queue(client: &mut postgres::Client, rows: i64) {
    client
        .execute(
            "INSERT INTO email_accounts.outbox (account, to_addresses, subject)
             SELECT 'account' || (n % $2::bigint), ARRAY['to' || n || '@example.test'], 'message ' || n
               FROM generate_series(1, $1::bigint) AS n",
            &[&rows, &(ACCOUNTS as i64)],
        )
        .unwrap();
}

fn count(client: &mut postgres::Client, query: &str) -> i64 {
    client.query_one(query, &[]).unwrap().get(0)
}

/// The senders (process ids) seen holding claims while the outbox drains,
/// until `sent` rows are sent.
fn claimants_until_sent(client: &mut postgres::Client, sent: i64) -> HashSet<i32> {
    let mut claimants = HashSet::new();
    wait_until("every row to be sent", LIMIT, || {
        for row in client
            .query(
                "SELECT sender_process_id FROM email_accounts.outbox_claim
                  UNION SELECT sender_process_id FROM email_accounts.outbox WHERE status = 'sending'",
                &[],
            )
            .unwrap()
        {
            claimants.extend(row.get::<_, Option<i32>>(0));
        }
        (count(client, "SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'") == sent).then_some(())
    });
    claimants
}

#[test]
fn two_and_three_senders_send_every_row_once_one_account_on_one_sender() {
    for senders in [2, 3] {
        let (_cluster, mut client) = cluster_with_senders(senders, &[]);
        let servers = accounts_on_servers(&mut client, Behaviour::Accept);
        // An account with a rate limit: 30 an hour, whichever sender sends.
        let limited_server = SmtpResponder::start(None, Behaviour::Accept, true);
        add_account_without_login(&mut client, "limited", limited_server.port);
        client
            .batch_execute("UPDATE email_accounts.account SET send_limit_per_hour = 30 WHERE name = 'limited'")
            .unwrap();
        client
            .batch_execute(
                "INSERT INTO email_accounts.outbox (account, to_addresses, subject)
                 SELECT 'limited', ARRAY['limited' || n || '@example.test'], 'limited ' || n FROM generate_series(1, 100) AS n",
            )
            .unwrap();
        queue(&mut client, ROWS);

        let claimants = claimants_until_sent(&mut client, ROWS + 30);
        let sent: usize = servers.iter().map(SmtpResponder::distinct_messages).sum();
        let duplicates: usize = servers.iter().map(SmtpResponder::duplicates).sum();
        assert_eq!((sent, duplicates), (ROWS as usize, 0), "{senders} senders: every row once");
        for (index, server) in servers.iter().enumerate() {
            assert_eq!(
                server.most_transactions_at_once(),
                1,
                "{senders} senders: account{index} used by one at a time"
            );
        }
        assert!(claimants.len() >= 2, "{senders} senders: several took part ({claimants:?})");

        // The rate limit held across the senders: 30 sent, the rest waits.
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(limited_server.distinct_messages(), 30, "{senders} senders: the hourly limit held");
        let waiting = count(
            &mut client,
            "SELECT count(*) FROM email_accounts.outbox WHERE account = 'limited' AND status = 'queued'",
        );
        assert_eq!(waiting, 70);
    }
}

/// One commit of a burst wakes one sender. That sender's step goes on as
/// long as rounds come back, which in a drain is until the outbox is
/// empty: the other senders are woken by its first full claim, not at the
/// end of its step (then they slept through the whole burst).
#[test]
fn every_sender_takes_part_in_a_burst_queued_by_one_commit() {
    let (_cluster, mut client) = cluster_with_senders(
        2,
        &[
            "email_accounts.smtp_connections = 4",
            // (Rows claimed on insert go to the sender the commit wakes
            // anyway; off, the whole burst goes through the claim.)
            "email_accounts.claim_on_insert = off",
        ],
    );
    // Each recording takes 50 ms more (as on a busy database): the rounds
    // on the wire meanwhile are back at every turn of the step, so the step
    // lasts the whole drain. Without it a debug build's slow couriers end
    // the step now and then, and the old rule (wake at the step's end)
    // passed here too.
    client
        .batch_execute(
            "CREATE FUNCTION public.slow_recording() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_catalog.pg_sleep(0.05); RETURN NULL; END $$;
             CREATE TRIGGER slow_recording AFTER UPDATE ON email_accounts.outbox_recipient
                FOR EACH STATEMENT EXECUTE FUNCTION public.slow_recording();",
        )
        .unwrap();
    let _servers = accounts_on_servers(&mut client, Behaviour::Accept);
    let burst = 4_000;
    queue(&mut client, burst);
    let claimants = claimants_until_sent(&mut client, burst);
    assert_eq!(claimants.len(), 2, "both senders took part ({claimants:?})");
}

#[test]
fn a_sender_that_stops_or_dies_leaves_the_others_sending() {
    // A slow restart, so the time without the stopped sender can be seen.
    let (cluster, mut client) = cluster_with_senders(3, &["email_accounts.worker_restart_interval = 60"]);
    let servers = accounts_on_servers(&mut client, Behaviour::AcceptSlowly(5));
    queue(&mut client, 3_000);
    let sender_pid = |client: &mut postgres::Client, name: &str| -> i32 {
        client
            .query_one(
                "SELECT pid FROM email_accounts.worker_status() WHERE database = current_database() AND worker_name = $1",
                &[&name],
            )
            .unwrap()
            .get(0)
    };
    let sent = |client: &mut postgres::Client| {
        count(client, "SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'")
    };
    wait_until("some mail to go out", LIMIT, || (sent(&mut client) >= 300).then_some(()));

    // SIGTERM: the sender hands back what it has not sent and leaves; the
    // launcher starts it again only after a minute; meanwhile the others send.
    let second = sender_pid(&mut client, "email_accounts sender 2");
    client.execute("SELECT pg_terminate_backend($1)", &[&second]).unwrap();
    wait_until("sender 2 to stop", LIMIT, || {
        cluster.server_log().contains("email_accounts sender 2 stopped").then_some(())
    });
    let at_stop = sent(&mut client);
    wait_until("the other senders to go on", LIMIT, || (sent(&mut client) >= at_stop + 300).then_some(()));
    let state: String = client
        .query_one(
            "SELECT state FROM email_accounts.worker_status() WHERE worker_name = 'email_accounts sender 2'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(state, "stopped", "sender 2 is not back yet");
    let duplicates: usize = servers.iter().map(SmtpResponder::duplicates).sum();
    assert_eq!(duplicates, 0, "a stopping sender hands back: nothing twice");

    // SIGKILL is a crash: PostgreSQL restarts every process; the senders
    // take back the claims of the dead ones and finish.
    let third = sender_pid(&mut client, "email_accounts sender 3");
    drop(client);
    assert!(std::process::Command::new("kill").args(["-KILL", &third.to_string()]).status().unwrap().success());
    wait_until("the crash restart", LIMIT, || {
        cluster.server_log().contains("all server processes terminated; reinitializing").then_some(())
    });
    let (mut client, ()) = cluster.reconnect_until("the server to be back", |client| {
        client.query_one("SELECT 1", &[])?;
        Ok(Some(()))
    });
    wait_until("every row to be sent after the crash", LIMIT, || {
        let done = count(&mut client, "SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'");
        (done == 3_000).then_some(())
    });
    let delivered: usize = servers.iter().map(SmtpResponder::distinct_messages).sum();
    let duplicates: usize = servers.iter().map(SmtpResponder::duplicates).sum();
    assert_eq!(delivered, 3_000);
    // At least once: only rows on the wire when the crash came can go twice
    // (at most one round per account: 2 accounts × 100 rows per sender).
    assert!(duplicates <= 3 * 2 * 100, "{duplicates} sent twice");
    for server in &servers {
        assert_eq!(server.most_transactions_at_once(), 1);
    }
}
