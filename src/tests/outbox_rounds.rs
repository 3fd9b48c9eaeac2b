//! Claims as HOT updates: a claim rewrites no outbox index, names its rows
//! in one round per account, and the rows out for delivery (lapsed claims,
//! rate limits, the sender's sleep) are found through the rounds.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::store::outbox::{self, RowResult};
    use email_accounts_mail::delivery::RecipientStatus;
    use email_accounts_mail::row_status::{RecipientUpdate, RowStatus};
    use pgrx::prelude::*;

    fn accounts() {
        Spi::run(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security, no_smtp_authentication)
             VALUES ('first', 'first@example.com', true, '127.0.0.1', 25, 'none', true),
                    ('second', 'second@example.com', true, '127.0.0.1', 25, 'none', true)",
        )
        .unwrap();
        // As the sender plans (see settings::prefer_indexes).
        Spi::run("SET LOCAL enable_seqscan = off").unwrap();
    }

    fn queue(account: &str, count: i32) {
        Spi::run(&format!(
            "SELECT email_accounts.send(\"to\" => '{{a@example.net}}', account => '{account}') FROM generate_series(1, {count})"
        ))
        .unwrap();
    }

    fn count(query: &str) -> i64 {
        Spi::get_one::<i64>(query).unwrap().unwrap_or_default()
    }

    /// Each round: its account, its rows, and whether they all still hold its claim.
    fn rounds() -> String {
        Spi::get_one::<String>(
            "SELECT string_agg(format('%s: %s %s', account.name, round.outbox_ids,
                                      CASE WHEN (SELECT bool_and(outbox.claim_token = round.claim_token AND outbox.status = 'sending')
                                                   FROM email_accounts.outbox WHERE outbox.outbox_id = ANY (round.outbox_ids))
                                           THEN 'held' ELSE 'partly held' END),
                               ', ' ORDER BY account.name)
               FROM email_accounts.outbox_round AS round JOIN email_accounts.account USING (account_id)",
        )
        .unwrap()
        .unwrap_or_default()
    }

    fn ids_of(account: &str) -> String {
        Spi::get_one::<String>(&format!(
            "SELECT array_agg(outbox_id ORDER BY outbox_id)::text FROM email_accounts.outbox
              WHERE account_id = (SELECT account_id FROM email_accounts.account WHERE name = '{account}')"
        ))
        .unwrap()
        .unwrap_or_default()
    }

    fn hot_updates() -> i64 {
        count("SELECT pg_stat_get_xact_tuples_hot_updated('email_accounts.outbox'::regclass)")
    }

    fn record_sent(rows: &[outbox::ClaimedRow]) {
        let sent = [RecipientUpdate {
            address: "a@example.net".to_owned(),
            status: RecipientStatus::Sent,
            reply: Some("250 ok".to_owned()),
            answered: true,
        }];
        let results: Vec<RowResult<'_>> = rows
            .iter()
            .map(|row| RowResult {
                outbox_id: row.outbox_id,
                claim_token: &row.claim_token,
                status: RowStatus::Sent,
                last_error: None,
                recipients: &sent,
            })
            .collect();
        outbox::record_all(&results, 60).unwrap();
    }

    /// A claim writes every row it takes as a HOT update (no index entry),
    /// its status still `sending`, and one round per account naming them
    /// under one token; recording a round's rows ends the round.
    #[pg_test]
    fn a_claim_is_a_hot_update_named_by_one_round_per_account() {
        accounts();
        queue("first", 3);
        queue("second", 2);
        let hot_before = hot_updates();
        let claimed = outbox::claim(200, 60, &[], &[], 10, true).unwrap();
        assert_eq!(claimed.len(), 5);
        assert_eq!(hot_updates() - hot_before, 5, "every claimed row is a HOT update");
        assert_eq!(count("SELECT count(*) FROM email_accounts.outbox WHERE status = 'sending'"), 5);
        assert_eq!(rounds(), format!("first: {} held, second: {} held", ids_of("first"), ids_of("second")));
        let first_account = count("SELECT account_id FROM email_accounts.account WHERE name = 'first'");
        let (first, second): (Vec<_>, Vec<_>) =
            claimed.into_iter().partition(|row| row.account_id == first_account);
        // Part of a round recorded: the round stays, for its other rows.
        record_sent(&first[..1]);
        assert_eq!(rounds(), format!("first: {} partly held, second: {} held", ids_of("first"), ids_of("second")));
        record_sent(&first[1..]);
        assert_eq!(rounds(), format!("second: {} held", ids_of("second")));
        // Handing rows back ends their round as well.
        let ids: Vec<i64> = second.iter().map(|row| row.outbox_id).collect();
        let tokens: Vec<&str> = second.iter().map(|row| row.claim_token.as_str()).collect();
        assert_eq!(outbox::hand_back(&ids, &tokens), Ok(2));
        assert_eq!(rounds(), "");
        assert_eq!(count("SELECT count(*) FROM email_accounts.outbox WHERE status = 'queued'"), 2);
    }

    /// Rows whose claim lapsed are found through their round and taken by
    /// the next claim (a new token, a new round); the lapsed round, left
    /// with no row, goes at the next expiry pass.
    #[pg_test]
    fn a_lapsed_claim_is_found_through_its_round_and_taken_back() {
        accounts();
        queue("first", 2);
        let claimed = outbox::claim(200, 60, &[], &[], 10, true).unwrap();
        assert_eq!(claimed.len(), 2);
        // Not lapsed: nothing to take.
        assert_eq!(outbox::claim(200, 60, &[], &[], 10, true).unwrap().len(), 0);
        Spi::run(
            "UPDATE email_accounts.outbox SET lease_until = now() - interval '1 second' WHERE status = 'sending';
             UPDATE email_accounts.outbox_round SET lease_until = now() - interval '1 second'",
        )
        .unwrap();
        // This sender's own rows of an account it has on the wire are not taken.
        let first_account = claimed[0].account_id;
        assert_eq!(outbox::claim(200, 60, &[], &[first_account], 10, false).unwrap().len(), 0);
        let again = outbox::claim(200, 60, &[], &[], 10, false).unwrap();
        assert_eq!(again.len(), 2);
        assert_ne!(again[0].claim_token, claimed[0].claim_token);
        assert_eq!(again[0].attempts, 2);
        assert_eq!(count("SELECT count(*) FROM email_accounts.outbox_round"), 2);
        // The expiry pass drops the lapsed round none of whose rows it holds.
        assert_eq!(outbox::claim(200, 60, &[], &[], 10, true).unwrap().len(), 0);
        assert_eq!(rounds(), format!("first: {} held", ids_of("first")));
    }

    /// An account's rows out for delivery count against its rate limits
    /// (found through their rounds), and so do the rows it sent.
    #[pg_test]
    fn rows_in_flight_count_against_the_rate_limit() {
        accounts();
        Spi::run("UPDATE email_accounts.account SET send_limit_per_minute = 3 WHERE name = 'first'").unwrap();
        queue("first", 5);
        let claimed = outbox::claim(2, 60, &[], &[], 10, true).unwrap();
        assert_eq!(claimed.len(), 2);
        assert_eq!(outbox::claim(200, 60, &[], &[], 10, true).unwrap().len(), 1, "3 a minute, 2 in flight");
        assert_eq!(outbox::claim(200, 60, &[], &[], 10, true).unwrap().len(), 0);
        record_sent(&claimed);
        assert_eq!(outbox::claim(200, 60, &[], &[], 10, true).unwrap().len(), 0, "sent in the last minute");
    }

    /// `rebuild_outbox_rounds()` (a starting sender, the upgrade) gives a
    /// claimed row without a round one (and a token, when it has none), and
    /// drops rounds none of whose rows it still holds.
    #[pg_test]
    fn rounds_are_rebuilt_from_the_claimed_rows() {
        accounts();
        queue("first", 2);
        queue("second", 1);
        Spi::run(
            "UPDATE email_accounts.outbox SET status = 'sending', attempts = 1, lease_until = now() + interval '1 minute',
                    claim_token = CASE WHEN account_id = (SELECT account_id FROM email_accounts.account WHERE name = 'first')
                                       THEN '00000000-0000-4000-8000-000000000001'::uuid END;
             INSERT INTO email_accounts.outbox_round (claim_token, account_id, lease_until, outbox_ids)
             SELECT gen_random_uuid(), account_id, now(), ARRAY[outbox_id] FROM email_accounts.outbox LIMIT 1",
        )
        .unwrap();
        assert_eq!(count("SELECT email_accounts.rebuild_outbox_rounds()"), 2);
        assert_eq!(rounds(), format!("first: {} held, second: {} held", ids_of("first"), ids_of("second")));
        assert_eq!(count("SELECT email_accounts.rebuild_outbox_rounds()"), 0);
    }

    /// Only the sender may rebuild rounds, and no tenant role reads them.
    #[pg_test]
    fn rounds_are_the_workers_alone() {
        Spi::run("CREATE ROLE test_rounds_admin; GRANT email_accounts_admin TO test_rounds_admin; SET LOCAL ROLE test_rounds_admin")
            .unwrap();
        crate::tests::assert_fails("SELECT * FROM email_accounts.outbox_round", "42501", "");
        crate::tests::assert_fails("SELECT email_accounts.rebuild_outbox_rounds()", "42501", "");
    }
}
