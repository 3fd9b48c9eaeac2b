//! The background workers against a real PostgreSQL 15 cluster: the
//! launcher starts them where the extension is created (in every database,
//! templates excepted) and stops them where it is dropped, DDL on databases
//! that needs them gone works, they reload their configuration on SIGHUP,
//! come back after SIGTERM and after a crash, and never run on a hot standby.
// Run by `make test-integration`; `cargo pgrx test` (feature pg_test) runs only the #[pg_test]s.
#![cfg(not(feature = "pg_test"))]

mod harness;

use harness::{
    add_account_without_login, wait_until, wait_until_held_as_copy, workers_here, Behaviour, Postgres, SmtpResponder,
};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);
const FAST_POLL: &str = "email_accounts.fallback_poll_interval = '100ms'";

/// Process ids of the running email_accounts workers, by backend type.
fn worker_pids(client: &mut postgres::Client) -> Vec<(String, i32)> {
    worker_pids_checked(client).expect("pg_stat_activity")
}

fn worker_pids_checked(client: &mut postgres::Client) -> Result<Vec<(String, i32)>, postgres::Error> {
    Ok(client
        .query(
            "SELECT backend_type, pid FROM pg_stat_activity
              WHERE backend_type IN ('email_accounts sender', 'email_accounts receiver') ORDER BY backend_type",
            &[],
        )?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

fn both_running(client: &mut postgres::Client) -> Option<Vec<(String, i32)>> {
    let pids = worker_pids(client);
    (pids.len() == 2).then_some(pids)
}

/// The states of this database's workers.
fn worker_states(client: &mut postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT role, state FROM email_accounts.worker_status() WHERE database = current_database() ORDER BY role",
            &[],
        )
        .expect("worker_status()")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn states_are(client: &mut postgres::Client, state: &str) -> Option<()> {
    let states = worker_states(client);
    states.iter().all(|(_, current)| current == state).then_some(())
}

/// Worker lines the server logged at ERROR or worse.
fn worker_errors(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|line| line.contains("email_accounts"))
        .filter(|line| line.contains("ERROR") || line.contains("FATAL") || line.contains("PANIC"))
        .collect()
}

/// The database workers running, by database: (database, backend type).
fn workers_by_database(client: &mut postgres::Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT datname::text, backend_type FROM pg_stat_activity
              WHERE backend_type IN ('email_accounts sender', 'email_accounts receiver') ORDER BY 1, 2",
            &[],
        )
        .expect("pg_stat_activity")
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

fn pair(database: &str) -> Vec<(String, String)> {
    vec![
        (database.to_owned(), "email_accounts receiver".to_owned()),
        (database.to_owned(), "email_accounts sender".to_owned()),
    ]
}

#[test]
fn the_launcher_starts_workers_where_the_extension_is_created_and_stops_them_where_it_is_dropped() {
    let cluster = Postgres::start(&[FAST_POLL]);
    let mut client = cluster.connect("postgres");

    wait_until("the launcher to start", LIMIT, || {
        client
            .query_opt("SELECT 1 FROM pg_stat_activity WHERE backend_type = 'email_accounts launcher'", &[])
            .unwrap()
            .map(|_| ())
    });
    // It looked at the database once (its first sender found no extension and left).
    wait_until("the look at database postgres to end", LIMIT, || {
        cluster.server_log().contains("the extension is not created in database \"postgres\"").then_some(())
    });
    assert_eq!(worker_pids(&mut client), Vec::new(), "no workers where the extension is not created");
    // Leaving, it touched nothing of the extension (there is none).
    wait_until("the sender to have stopped", LIMIT, || {
        cluster.server_log().contains("email_accounts sender stopped").then_some(())
    });
    assert!(!cluster.server_log().contains("cannot give back"), "{}", cluster.server_log());

    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    let pids = wait_until("both workers to start", LIMIT, || both_running(&mut client));
    assert_eq!(
        pids.iter().map(|(kind, _)| kind.as_str()).collect::<Vec<_>>(),
        ["email_accounts receiver", "email_accounts sender"]
    );
    wait_until("both workers to be idle", LIMIT, || states_are(&mut client, "idle"));
    let status_pids: Vec<i32> = client
        .query("SELECT pid FROM email_accounts.worker_status() WHERE database = current_database() ORDER BY role", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(status_pids, pids.iter().map(|(_, pid)| *pid).collect::<Vec<_>>());

    client.batch_execute("DROP EXTENSION email_accounts").unwrap();
    wait_until("both workers to leave with the extension", LIMIT, || worker_pids(&mut client).is_empty().then_some(()));
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("both workers to start again", LIMIT, || both_running(&mut client));
    client.batch_execute("DROP SCHEMA email_accounts CASCADE").unwrap();
    wait_until("both workers to leave with the schema", LIMIT, || worker_pids(&mut client).is_empty().then_some(()));
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("both workers to start once more", LIMIT, || both_running(&mut client));

    // DROP EXTENSION while the sender keeps querying the outbox: the worker
    // gives way (lock_timeout below deadlock_timeout), the DBA's DDL never fails.
    for _ in 0..15 {
        client
            .batch_execute(
                "INSERT INTO email_accounts.account (name, address, provider, enable_outgoing, default_outgoing)
                 VALUES ('out', 'out@gmail.com', 'gmail', true, true);
                 SELECT email_accounts.send(\"to\" => '{a@example.com}');",
            )
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(120));
        client.batch_execute("DROP EXTENSION email_accounts").unwrap();
        client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    }
    let deadline = std::time::Instant::now() + LIMIT;
    while both_running(&mut client).and_then(|_| states_are(&mut client, "idle")).is_none() {
        if std::time::Instant::now() > deadline {
            let status: Vec<String> = client
                .query(
                    "SELECT concat_ws(' ', database, worker_name, pid, state) FROM email_accounts.worker_status()",
                    &[],
                )
                .unwrap()
                .iter()
                .map(|row| row.get(0))
                .collect();
            panic!(
                "both workers to run after the last CREATE EXTENSION: processes {:?}, worker_status {status:?}",
                worker_pids(&mut client)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(worker_errors(&cluster.server_log()), Vec::<&str>::new());
}

#[test]
fn every_database_with_the_extension_gets_workers_and_database_ddl_still_works() {
    let cluster = Postgres::start(&[FAST_POLL, "email_accounts.worker_restart_interval = 1"]);
    let mut client = cluster.connect("postgres");
    for database in ["shop", "crm", "plain"] {
        client.batch_execute(&format!("CREATE DATABASE {database}")).unwrap();
    }
    for database in ["shop", "crm"] {
        cluster.connect(database).batch_execute("CREATE EXTENSION email_accounts").unwrap();
    }
    let mut expected = [pair("crm"), pair("shop")].concat();
    wait_until("workers in shop and crm only", LIMIT, || (workers_by_database(&mut client) == expected).then_some(()));

    // Each database sends its own mail.
    let server = SmtpResponder::start(None, Behaviour::Accept, true);
    for database in ["shop", "crm"] {
        let mut database_client = cluster.connect(database);
        add_account_without_login(&mut database_client, "out", server.port);
        database_client
            .execute(
                "INSERT INTO email_accounts.outbox (account, to_addresses, subject)
                 SELECT 'out', ARRAY['to' || n || '@example.test'], current_database() || ' ' || n FROM generate_series(1, 50) AS n",
                &[],
            )
            .unwrap();
    }
    wait_until("both databases to send their mail", LIMIT, || (server.distinct_messages() == 100).then_some(()));
    // worker_status() lists the other database's workers too, with its name.
    let mut shop = cluster.connect("shop");
    wait_until("shop's and crm's workers listed as idle", LIMIT, || {
        let listed: i64 = shop
            .query_one(
                "SELECT count(*) FROM email_accounts.worker_status() WHERE database IN ('shop', 'crm') AND state = 'idle'",
                &[],
            )
            .unwrap()
            .get(0);
        (listed == 4).then_some(())
    });
    drop(shop);

    // Commands that need a database without connections stop its workers
    // for their duration and start them again.
    client.batch_execute("CREATE DATABASE shop_copy TEMPLATE shop").unwrap();
    expected = [pair("crm"), pair("shop"), pair("shop_copy")].concat();
    wait_until("workers in the copy too", LIMIT, || (workers_by_database(&mut client) == expected).then_some(()));
    // The copy's workers hold off while shop is served: its mail is shop's.
    let mut copy = cluster.connect("shop_copy");
    wait_until_held_as_copy(&mut copy);
    copy.execute(
        "SELECT email_accounts.send(\"to\" => '{copied@example.test}', account => 'out') FROM generate_series(1, 5)",
        &[],
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(server.distinct_messages(), 100, "a copy sends nothing while the original is served");
    assert!(cluster.server_log().contains("is a copy of database \"shop\""));
    // Somebody who may not rename, drop or copy crm stops nothing by trying.
    client.batch_execute("CREATE ROLE intruder LOGIN CREATEDB").unwrap();
    let crm_workers = workers_by_database(&mut client);
    let pids_before = worker_pids(&mut client);
    let mut intruder = cluster.connect_as("postgres", "intruder");
    for attempt in ["ALTER DATABASE crm RENAME TO taken", "DROP DATABASE crm", "CREATE DATABASE stolen TEMPLATE crm"] {
        let error = intruder.batch_execute(attempt).expect_err(attempt);
        assert_eq!(error.as_db_error().unwrap().code().code(), "42501", "{attempt}");
    }
    assert_eq!(worker_pids(&mut client), pids_before, "nobody's workers were stopped");
    assert_eq!(workers_by_database(&mut client), crm_workers);
    // A DROP DATABASE that fails (someone is connected) gives the workers back.
    let mut connected = cluster.connect("crm");
    let error = client.batch_execute("DROP DATABASE crm").expect_err("crm is in use");
    assert_eq!(error.as_db_error().unwrap().code().code(), "55006");
    wait_until("crm's workers back", LIMIT, || (workers_by_database(&mut client) == crm_workers).then_some(()));
    connected.batch_execute("SELECT 1").unwrap();
    drop(connected);
    client.batch_execute("ALTER DATABASE crm RENAME TO customers").unwrap();
    expected = [pair("customers"), pair("shop"), pair("shop_copy")].concat();
    wait_until("workers back in the renamed database", LIMIT, || {
        (workers_by_database(&mut client) == expected).then_some(())
    });
    client.batch_execute("DROP DATABASE shop").unwrap();
    expected = [pair("customers"), pair("shop_copy")].concat();
    wait_until("the dropped database's workers gone", LIMIT, || {
        (workers_by_database(&mut client) == expected).then_some(())
    });
    // The original is gone: the copy takes its mail over.
    wait_until("the copy to send once the original is gone", LIMIT, || {
        (server.distinct_messages() == 105).then_some(())
    });
    drop(copy);

    // A template database with the extension has no workers, so databases
    // can be created from it; they get theirs.
    client.batch_execute("ALTER DATABASE shop_copy IS_TEMPLATE true").unwrap();
    expected = pair("customers");
    wait_until("no workers in the template", LIMIT, || (workers_by_database(&mut client) == expected).then_some(()));
    client.batch_execute("CREATE DATABASE tenant_one TEMPLATE shop_copy").unwrap();
    expected = [pair("customers"), pair("tenant_one")].concat();
    wait_until("workers in the new database", LIMIT, || (workers_by_database(&mut client) == expected).then_some(()));

    // email_accounts.databases narrows what is served; senders adds senders.
    client.batch_execute("ALTER SYSTEM SET email_accounts.databases = 'tenant_one'").unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    expected = pair("tenant_one");
    wait_until("only tenant_one served", LIMIT, || (workers_by_database(&mut client) == expected).then_some(()));
    client.batch_execute("ALTER SYSTEM SET email_accounts.senders = 3").unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("three senders in tenant_one", LIMIT, || {
        let senders = workers_by_database(&mut client).iter().filter(|(_, kind)| kind.ends_with("sender")).count();
        (senders == 3).then_some(())
    });
    let names: Vec<String> = cluster
        .connect("tenant_one")
        .query(
            "SELECT worker_name FROM email_accounts.worker_status() WHERE database = 'tenant_one' ORDER BY worker_name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        names,
        ["email_accounts receiver", "email_accounts sender", "email_accounts sender 2", "email_accounts sender 3"]
    );
    assert_eq!(worker_errors(&cluster.server_log()), Vec::<&str>::new());
}

#[test]
fn workers_reload_configuration_on_sighup_and_stop_on_sigterm() {
    let cluster = Postgres::start(&[FAST_POLL]);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("both workers to be idle", LIMIT, || states_are(&mut client, "idle"));

    client.batch_execute("ALTER SYSTEM SET email_accounts.fallback_poll_interval = '250ms'").unwrap();
    client.batch_execute("SELECT pg_reload_conf()").unwrap();
    wait_until("both workers to reload their configuration", LIMIT, || {
        let reloaded = client
            .query_one(
                "SELECT bool_and(config_reloads >= 1 AND fallback_poll_interval_ms = 250)
                   FROM email_accounts.worker_status()",
                &[],
            )
            .unwrap()
            .get::<_, Option<bool>>(0);
        (reloaded == Some(true)).then_some(())
    });

    let before = worker_pids(&mut client);
    let sender: i32 =
        client.query_one("SELECT pid FROM email_accounts.worker_status() WHERE role = 'sender'", &[]).unwrap().get(0);
    client.execute("SELECT pg_terminate_backend($1)", &[&sender]).unwrap();
    wait_until("the sender to stop", LIMIT, || {
        cluster.server_log().contains("email_accounts sender stopped").then_some(())
    });
    // The launcher starts a new one (after worker_restart_interval); the receiver carried on.
    let after = wait_until("a new sender", LIMIT, || {
        both_running(&mut client).filter(|pids| pids.iter().all(|(_, pid)| *pid != sender))
    });
    assert_eq!(after[0], before[0], "SIGTERM stopped only the worker it was sent to");
    assert_eq!(worker_errors(&cluster.server_log()), Vec::<&str>::new());
}

#[test]
fn workers_restart_after_a_crash() {
    let cluster = Postgres::start(&[FAST_POLL]);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    let before = wait_until("both workers to start", LIMIT, || both_running(&mut client));
    let sender = before.iter().find(|(kind, _)| kind == "email_accounts sender").unwrap().1;

    // SIGKILL is a crash: the postmaster resets every backend and restarts the workers.
    let killed = std::process::Command::new("kill").args(["-KILL", &sender.to_string()]).status().unwrap();
    assert!(killed.success());
    drop(client);

    let (mut client, after) = cluster.reconnect_until("both workers to run again", |client| {
        let pids = worker_pids_checked(client)?;
        Ok(Some(pids).filter(|pids| pids.len() == 2 && pids.iter().all(|(_, pid)| *pid != sender)))
    });
    assert_ne!(after, before);
    wait_until("the restarted workers to be idle", LIMIT, || states_are(&mut client, "idle"));
}

#[test]
fn workers_never_run_on_a_hot_standby() {
    let primary = Postgres::start(&[FAST_POLL]);
    let mut client = primary.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("the primary's workers to be idle", LIMIT, || states_are(&mut client, "idle"));

    // 2,000 messages queued and sent on the primary: the standby must send none again.
    let server = SmtpResponder::start(None, Behaviour::Accept, true);
    add_account_without_login(&mut client, "steady", server.port);
    client
        .execute(
            "INSERT INTO email_accounts.outbox (account, to_addresses, subject)
             SELECT 'steady', ARRAY['to' || n || '@example.test'], 'standby ' || n FROM generate_series(1, 2000) AS n",
            &[],
        )
        .unwrap();

    let standby = primary.start_standby();
    let mut replica = standby.connect_when_ready("postgres");
    let in_recovery: bool = replica.query_one("SELECT pg_is_in_recovery()", &[]).unwrap().get(0);
    assert!(in_recovery);
    // The extension replicated; its workers were registered but not started.
    wait_until("the extension to replicate", LIMIT, || {
        replica.query_opt("SELECT 1 FROM pg_extension WHERE extname = 'email_accounts'", &[]).unwrap().map(|_| ())
    });
    assert_eq!(worker_pids(&mut replica), Vec::new());
    assert_eq!(
        worker_states(&mut replica),
        [("receiver".to_owned(), "not started".to_owned()), ("sender".to_owned(), "not started".to_owned())]
    );
    let launcher: String = replica
        .query_one("SELECT state FROM email_accounts.worker_status() WHERE role = 'launcher'", &[])
        .unwrap()
        .get(0);
    assert_eq!(launcher, "not started");
    wait_until("the primary to send all 2,000", LIMIT, || (server.distinct_messages() == 2000).then_some(()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(server.duplicates(), 0, "nothing was sent twice (the standby sent nothing)");

    // Once promoted it is a primary, and its workers start.
    replica.batch_execute("SELECT pg_promote()").unwrap();
    wait_until("the promoted server's workers to be idle", LIMIT, || states_are(&mut replica, "idle"));
    assert_eq!(worker_pids(&mut replica).len(), 2);
    // What the primary sent arrived as sent: the promoted server sends none of it again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!((server.distinct_messages(), server.duplicates()), (2000, 0));
}

#[test]
fn create_extension_without_preload_is_refused_clearly() {
    let cluster = Postgres::start(&["shared_preload_libraries = ''"]);
    let mut client = cluster.connect("postgres");
    let error = client.batch_execute("CREATE EXTENSION email_accounts").unwrap_err();
    let database_error = error.as_db_error().expect("a database error");
    assert_eq!(database_error.code().code(), "55000");
    assert_eq!(database_error.message(), "email_accounts must be loaded via shared_preload_libraries");
    assert!(database_error.hint().unwrap_or_default().contains("shared_preload_libraries"));
    // The session and server carry on.
    let one: i32 = client.query_one("SELECT 1", &[]).unwrap().get(0);
    assert_eq!(one, 1);
}

/// The sender's counters: wake-up requests (exact: one per committing
/// transaction), latch wake-ups (at least those; PostgreSQL sets the latch
/// itself too, e.g. a catch-up signal after the DDL of CREATE EXTENSION)
/// and timeouts.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Wakeups {
    requests: i64,
    latch: i64,
    timeouts: i64,
}

fn sender_wakeups(client: &mut postgres::Client) -> Wakeups {
    let row = client
        .query_one(
            "SELECT wake_requests, latch_wakeups, timeouts FROM email_accounts.worker_status() WHERE role = 'sender'",
            &[],
        )
        .unwrap();
    Wakeups { requests: row.get(0), latch: row.get(1), timeouts: row.get(2) }
}

/// Waits until the sender has woken after `before`, then checks that exactly
/// one more wake-up was requested and the fallback poll played no part.
fn woken_once_since(client: &mut postgres::Client, before: Wakeups, what: &str) -> Wakeups {
    let now = wait_until(what, LIMIT, || {
        let now = sender_wakeups(client);
        (now.requests > before.requests && now.latch > before.latch).then_some(now)
    });
    assert_eq!(now.requests, before.requests + 1, "{what}: one request, {before:?} -> {now:?}");
    assert_eq!(now.timeouts, before.timeouts, "{what}: no timeout");
    now
}

#[test]
fn the_sender_is_woken_once_per_committed_transaction_and_never_on_rollback() {
    // A fallback poll of an hour: every wake-up below comes from a commit.
    let cluster = Postgres::start(&["email_accounts.fallback_poll_interval = '1h'"]);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("CREATE EXTENSION to wake both workers", LIMIT, || states_are(&mut client, "idle"));
    // Adding an account wakes the sender too (mail may have waited for it).
    let before_account = sender_wakeups(&mut client);
    client
        .batch_execute(
            "INSERT INTO email_accounts.account (name, address, provider, enable_outgoing, default_outgoing)
             VALUES ('out', 'out@gmail.com', 'gmail', true, true)",
        )
        .unwrap();
    let before = woken_once_since(&mut client, before_account, "the account change to wake the sender");

    // Three messages in one transaction: one wake-up, after the commit.
    let mut transaction = client.transaction().unwrap();
    for _ in 0..3 {
        transaction.execute("SELECT email_accounts.send(\"to\" => '{a@example.com}')", &[]).unwrap();
    }
    assert_eq!(sender_wakeups(&mut cluster.connect("postgres")).requests, before.requests, "nothing before the commit");
    transaction.commit().unwrap();
    let after_commit = woken_once_since(&mut client, before, "the commit to wake the sender");

    // A rolled-back transaction wakes nobody; a later commit shows the
    // requests moved by exactly one more.
    let mut transaction = client.transaction().unwrap();
    transaction.execute("INSERT INTO email_accounts.outbox (to_addresses) VALUES ('{b@example.com}')", &[]).unwrap();
    transaction.rollback().unwrap();
    assert_eq!(sender_wakeups(&mut client).requests, after_commit.requests, "the rollback woke nobody");
    client.execute("SELECT email_accounts.send(\"to\" => '{c@example.com}')", &[]).unwrap();
    let after_second_commit = woken_once_since(&mut client, after_commit, "the second commit to wake the sender");
    let queued: i64 = client.query_one("SELECT count(*) FROM email_accounts.outbox", &[]).unwrap().get(0);
    assert_eq!(queued, 4, "the rolled-back row is not queued");

    // flush() wakes it at once.
    let flushed: bool = client.query_one("SELECT email_accounts.flush()", &[]).unwrap().get(0);
    assert!(flushed);
    woken_once_since(&mut client, after_second_commit, "flush() to wake the sender");
}

#[test]
fn a_database_without_a_free_worker_process_says_so_and_gets_one_when_one_is_free() {
    // The launcher and one database's two workers: nothing left for a second database.
    let cluster = Postgres::start(&[
        FAST_POLL,
        "max_worker_processes = 3",
        "max_parallel_workers = 0",
        // (The logical replication launcher would take one of the three.)
        "max_logical_replication_workers = 0",
        "email_accounts.worker_restart_interval = 1",
    ]);
    let mut client = cluster.connect("postgres");
    client.batch_execute("CREATE DATABASE first").unwrap();
    client.batch_execute("CREATE DATABASE second").unwrap();
    cluster.connect("first").batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("first's workers", LIMIT, || (workers_by_database(&mut client) == pair("first")).then_some(()));
    let mut second = cluster.connect("second");
    second.batch_execute("CREATE EXTENSION email_accounts").unwrap();
    wait_until("second to say it has no worker process", LIMIT, || {
        (workers_here(&mut second, "no background worker process free%") >= 1).then_some(())
    });
    assert!(cluster.server_log().contains("no background worker process free"));
    assert!(cluster.server_log().contains("database \"second\""));

    // first gives its processes up; second gets them.
    cluster.connect("first").batch_execute("DROP EXTENSION email_accounts").unwrap();
    wait_until("second's workers", LIMIT, || (workers_by_database(&mut client) == pair("second")).then_some(()));
}
