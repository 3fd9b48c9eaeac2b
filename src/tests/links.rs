//! Links in mail: opaque, expiring, and keys that rotate while links
//! already sent keep working until they expire.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::{assert_fails, outcome_of};
    use email_accounts_mail::token::{sign, unix_now, Purpose};
    use pgrx::prelude::*;

    #[pg_test]
    fn link_keys_rotate_and_links_expire() {
        let outbox_id =
            Spi::get_one::<i64>("SELECT email_accounts.send(\"to\" => '{ann@example.com}')").unwrap().unwrap();
        let first = crate::store::links::current_link_key().unwrap();
        assert_eq!(first.id, 1, "the first key is made when first needed");
        let token = sign(&first, Purpose::Open, outbox_id, "ann@example.com", unix_now() + 3600, [1; 12]);
        let opened = |token: &str| outcome_of(&format!("SELECT email_accounts.mark_opened('{token}')"));
        assert_eq!(opened(&token).sqlstate, "ok");

        let second = Spi::get_one::<i32>("SELECT email_accounts.rotate_link_signing_key()").unwrap().unwrap();
        assert_eq!(second, 2);
        assert_eq!(crate::store::links::current_link_key().unwrap().id, 2, "new links use the new key");
        assert_eq!(opened(&token).sqlstate, "ok", "links made with the old key still work");

        let expired = sign(&first, Purpose::Open, outbox_id, "ann@example.com", unix_now() - 1, [2; 12]);
        assert_fails(&format!("SELECT email_accounts.mark_opened('{expired}')"), "22023", "expired");

        // Once the successor is older than every link's lifetime, the old key goes.
        Spi::run(
            "UPDATE email_accounts.link_signing_key SET created_at = now() - interval '400 days' WHERE key_id = 2",
        )
        .unwrap();
        Spi::run("SELECT email_accounts.rotate_link_signing_key()").unwrap();
        let kept = Spi::get_one::<String>(
            "SELECT string_agg(key_id::text, ',' ORDER BY key_id) FROM email_accounts.link_signing_key",
        );
        assert_eq!(kept, Ok(Some("2,3".to_owned())), "key 2 made links until just now");
        assert_fails(&format!("SELECT email_accounts.mark_opened('{token}')"), "22023", "retired");

        // Nobody but a superuser rotates.
        Spi::run("CREATE ROLE link_admin IN ROLE email_accounts_admin").unwrap();
        outcome_of("SELECT 1");
        Spi::run("SET LOCAL ROLE link_admin").unwrap();
        assert_fails("SELECT email_accounts.rotate_link_signing_key()", "42501", "rotate_link_signing_key");
        Spi::run("RESET ROLE").unwrap();
    }
}
