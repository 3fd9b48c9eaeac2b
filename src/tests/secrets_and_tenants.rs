//! Passwords are readable by no role, through no table or view; tenants see
//! and use only their own accounts.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::{assert_fails, assert_ok, outcome_of};
    use pgrx::prelude::*;

    const PASSWORD: &str = "Zebra-Quartz-1917";

    fn setup_roles_and_accounts() {
        Spi::run(
            "CREATE ROLE test_admin_a; CREATE ROLE test_sender_a; CREATE ROLE test_admin_b; CREATE ROLE test_global_admin;
             GRANT email_accounts_admin TO test_admin_a, test_admin_b, test_global_admin;
             GRANT email_accounts_sender TO test_sender_a;
             INSERT INTO email_accounts.tenant_member (role_name, tenant)
                  VALUES ('test_admin_a', 'a'), ('test_sender_a', 'a'), ('test_admin_b', 'b'), ('test_global_admin', '*');
             INSERT INTO email_accounts.account (name, tenant, address, provider, enable_outgoing)
                  VALUES ('account a', 'a', 'a@gmail.com', 'gmail', true),
                         ('account b', 'b', 'b@gmail.com', 'gmail', true),
                         ('shared', NULL, 'shared@gmail.com', 'gmail', true)",
        )
        .unwrap();
        for account in ["account a", "account b", "shared"] {
            Spi::run_with_args("SELECT email_accounts.set_password($1, $2)", &[account.into(), PASSWORD.into()])
                .unwrap();
        }
    }

    /// Every table and view of the schema, read as `role` (rows as JSON text,
    /// or the SQLSTATE when the role may not read it at all).
    fn everything_visible_to(role: &str) -> Vec<(String, String)> {
        let relations: Vec<String> = Spi::connect(|client| {
            client
                .select(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                      WHERE n.nspname = 'email_accounts' AND c.relkind IN ('r', 'v', 'm', 'p') ORDER BY 1",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| row.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        assert!(relations.len() >= 6, "{relations:?}");
        outcome_of("SELECT 1"); // create the helper before switching roles
        Spi::run(&format!("SET LOCAL ROLE {role}")).unwrap();
        let seen = relations
            .into_iter()
            .map(|relation| {
                let query = format!("SELECT string_agg(row_to_json(t)::text, E'\\n') FROM {relation} t");
                let outcome = outcome_of(&query);
                let text = if outcome.sqlstate == "ok" {
                    Spi::get_one::<String>(&query).unwrap().unwrap_or_default()
                } else {
                    format!("SQLSTATE {}", outcome.sqlstate)
                };
                (relation, text)
            })
            .collect();
        Spi::run("RESET ROLE").unwrap();
        seen
    }

    #[pg_test]
    fn no_role_reads_a_password_or_its_ciphertext() {
        setup_roles_and_accounts();
        let ciphertexts: Vec<String> = Spi::connect(|client| {
            client
                .select("SELECT encode(ciphertext, 'hex') FROM email_accounts.account_secret", None, &[])
                .unwrap()
                .map(|row| row.get::<String>(1).unwrap().unwrap())
                .collect()
        });
        // Three passwords, one row per side each.
        assert_eq!(ciphertexts.len(), 6);
        for role in
            ["email_accounts_admin", "email_accounts_sender", "test_admin_a", "test_sender_a", "test_global_admin"]
        {
            for (relation, text) in everything_visible_to(role) {
                assert!(!text.contains(PASSWORD), "{role} reads the password in {relation}");
                for ciphertext in &ciphertexts {
                    assert!(!text.contains(&ciphertext[..16]), "{role} reads ciphertext in {relation}");
                }
                if relation == "email_accounts.account_secret" {
                    assert_eq!(text, "SQLSTATE 42501", "{role} may not even query account_secret");
                }
            }
        }
    }

    #[pg_test]
    fn tenants_see_and_use_only_their_own_accounts() {
        setup_roles_and_accounts();
        let visible = |role: &str| -> String {
            Spi::run(&format!("SET LOCAL ROLE {role}")).unwrap();
            let names = Spi::get_one::<String>(
                "SELECT string_agg(name, ',' ORDER BY name) FROM email_accounts.account_settings",
            )
            .unwrap()
            .unwrap_or_default();
            Spi::run("RESET ROLE").unwrap();
            names
        };
        assert_eq!(visible("test_admin_a"), "account a");
        assert_eq!(visible("test_sender_a"), "account a");
        assert_eq!(visible("test_admin_b"), "account b");
        assert_eq!(visible("test_global_admin"), "account a,account b,shared");
        // Deny by default: the group roles and a role bound to nothing see nothing.
        Spi::run("CREATE ROLE test_unbound IN ROLE email_accounts_admin").unwrap();
        for role in ["email_accounts_admin", "email_accounts_sender", "test_unbound"] {
            assert_eq!(visible(role), "", "{role} sees nothing");
        }

        outcome_of("SELECT 1"); // create the helper before switching roles
        Spi::run("SET LOCAL ROLE test_admin_a").unwrap();
        // B's account cannot be changed, created, used for secrets or tested.
        assert_ok("UPDATE email_accounts.account SET signature = 'x' WHERE name = 'account b'");
        assert_fails(
            "INSERT INTO email_accounts.account (name, tenant, address) VALUES ('sneaky', 'b', 'sneaky@x.com')",
            "42501",
            "row-level security",
        );
        assert_fails("SELECT email_accounts.set_password('account b', 'x')", "42704", "account b");
        assert_fails("SELECT email_accounts.test_account('account b')", "42704", "account b");
        assert_fails("SELECT * FROM email_accounts.sync_now('account b')", "42704", "account b");
        // Shared domains and presets are not theirs to rewire.
        assert_fails(
            "INSERT INTO email_accounts.domain (domain_name, smtp_host) VALUES ('b.example', 'evil.example')",
            "42501",
            "row-level security",
        );
        assert_ok("SELECT email_accounts.set_password('account a', 'new-password')");
        Spi::run("RESET ROLE").unwrap();
        let untouched = Spi::get_one::<String>("SELECT signature FROM email_accounts.account WHERE name = 'account b'");
        assert_eq!(untouched, Ok(None));

        // A sender reads its tenant's accounts but does not manage them.
        Spi::run("SET LOCAL ROLE test_sender_a").unwrap();
        assert_fails("UPDATE email_accounts.account SET signature = 'x'", "42501", "account");
        assert_fails("SELECT email_accounts.set_password('account a', 'x')", "42501", "account a");
        assert_fails("SELECT email_accounts.rotate_encryption_key()", "42501", "rotate_encryption_key");
        Spi::run("RESET ROLE").unwrap();
    }

    /// The tenant check of row-level security looks up the caller's tenants
    /// once per query (an InitPlan), not once per row: per row it read every
    /// tenant binding each time (2.8 s for 20,000 rows and 21 bindings).
    #[pg_test]
    fn the_tenant_check_runs_once_per_query() {
        setup_roles_and_accounts();
        for table in ["account", "outbox", "suppression", "message", "template"] {
            Spi::run("SET LOCAL ROLE test_admin_a").unwrap();
            let plan: Vec<String> = Spi::connect(|client| {
                client
                    .select(&format!("EXPLAIN (VERBOSE, COSTS OFF) SELECT * FROM email_accounts.{table}"), None, &[])
                    .unwrap()
                    .map(|row| row.get::<String>(1).unwrap().unwrap_or_default())
                    .collect()
            });
            Spi::run("RESET ROLE").unwrap();
            let plan = plan.join("\n");
            assert!(plan.contains("InitPlan"), "{table}: {plan}");
            for line in plan.lines().filter(|line| line.trim_start().starts_with("Filter:")) {
                assert!(!line.contains("current_tenants") && !line.contains("tenants_of"), "{table}, per row: {line}");
            }
        }
    }

    /// The tenant functions keep their plans for the session (PL/pgSQL):
    /// each answer is still the role's of the moment, after SET ROLE to a
    /// member or a group, back, and with a temporary `pg_roles` in front of
    /// the search path; missing and NULL roles are bound to nothing.
    #[pg_test]
    fn the_tenants_of_a_session_follow_its_role() {
        Spi::run(
            "CREATE ROLE test_member; CREATE ROLE test_group; CREATE ROLE \"Test Mixed Case\";
             GRANT test_group TO test_member; GRANT \"Test Mixed Case\" TO test_group;
             GRANT email_accounts_sender TO \"Test Mixed Case\";
             INSERT INTO email_accounts.tenant_member (role_name, tenant)
                  VALUES ('test_member', 'acme'), ('test_group', 'beta'), ('Test Mixed Case', 'gamma')",
        )
        .unwrap();
        let tenants = || Spi::get_one::<Vec<String>>("SELECT email_accounts.current_tenants()").unwrap().unwrap();
        let strings = |tenants: &[&str]| tenants.iter().map(|tenant| tenant.to_string()).collect::<Vec<_>>();
        assert_eq!(tenants(), strings(&["*"]));
        for _ in 0..2 {
            Spi::run("SET LOCAL ROLE test_member").unwrap();
            assert_eq!(tenants(), strings(&["acme", "beta", "gamma"]));
            Spi::run("SET LOCAL ROLE test_group").unwrap();
            assert_eq!(tenants(), strings(&["beta", "gamma"]));
            Spi::run("SET LOCAL ROLE \"Test Mixed Case\"").unwrap();
            assert_eq!(tenants(), strings(&["gamma"]));
            Spi::run("RESET ROLE").unwrap();
            assert_eq!(tenants(), strings(&["*"]));
        }
        for role in ["NULL", "0"] {
            let bound = Spi::get_one::<Vec<String>>(&format!("SELECT email_accounts.tenants_of({role})")).unwrap();
            assert_eq!(bound, Some(Vec::new()), "tenants_of({role})");
        }
        // A role's own temporary pg_roles saying it is a superuser changes nothing.
        Spi::run("SET LOCAL ROLE test_member").unwrap();
        Spi::run(
            "CREATE TEMP TABLE pg_roles AS SELECT oid, true AS rolsuper, rolname FROM pg_catalog.pg_roles;
             SET LOCAL search_path = pg_temp, public",
        )
        .unwrap();
        assert_eq!(tenants(), strings(&["acme", "beta", "gamma"]));
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn rotation_keeps_every_password_readable() {
        setup_roles_and_accounts();
        let before = Spi::get_one::<i32>("SELECT max(key_id) FROM email_accounts.account_secret").unwrap().unwrap();
        let new_key = Spi::get_one::<i32>("SELECT email_accounts.rotate_encryption_key()").unwrap().unwrap();
        // Key ids are random (see secret.rs), never 0, never the old one.
        assert!(new_key > 0 && new_key != before);
        let keys =
            Spi::get_one::<String>("SELECT string_agg(DISTINCT key_id::text, ',') FROM email_accounts.account_secret")
                .unwrap()
                .unwrap();
        assert_eq!(keys, new_key.to_string());
        for account_id in 1..=3i64 {
            let id = Spi::get_one_with_args::<i64>(
                "SELECT account_id FROM email_accounts.account ORDER BY account_id OFFSET $1 LIMIT 1",
                &[(account_id - 1).into()],
            )
            .unwrap()
            .unwrap();
            for side in [crate::store::secrets::Side::Incoming, crate::store::secrets::Side::Smtp] {
                let password = crate::store::secrets::read_password(id, side).unwrap();
                assert_eq!(password.as_deref(), Some(PASSWORD), "{side:?}");
            }
        }
    }
}
