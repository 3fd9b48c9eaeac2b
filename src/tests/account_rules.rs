//! Every rule the database enforces on accounts, each failing with a proper
//! SQLSTATE and an error that names the field.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use crate::tests::{assert_fails, assert_ok};
    use pgrx::prelude::*;

    const CHECK: &str = "23514";
    const UNIQUE: &str = "23505";

    /// An outgoing-and-incoming account on explicit servers, with overrides.
    fn account(name: &str, extra_columns: &str, extra_values: &str) -> String {
        format!(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_host,
                 incoming_port, incoming_security, enable_outgoing, smtp_host, smtp_port, smtp_security{extra_columns})
             VALUES ('{name}', '{name}@example.com', true, 'imap', 'imap.example.com', 993, 'ssl', true,
                 'smtp.example.com', 587, 'starttls'{extra_values})"
        )
    }

    #[pg_test]
    fn column_rules_name_their_field() {
        assert_ok(&account("good", "", ""));
        assert_fails(
            "INSERT INTO email_accounts.account (name, address) VALUES ('a1', 'not an address')",
            CHECK,
            "address",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address) VALUES ('a2', 'Ann <ann@example.com>')",
            CHECK,
            "address",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, smtp_port) VALUES ('a3', 'a3@x.com', 0)",
            CHECK,
            "smtp_port",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, incoming_port) VALUES ('a4', 'a4@x.com', 65536)",
            CHECK,
            "incoming_port",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, smtp_security) VALUES ('a5', 'a5@x.com', 'tls')",
            CHECK,
            "smtp_security",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, incoming_protocol) VALUES ('a6', 'a6@x.com', 'exchange')",
            CHECK,
            "incoming_protocol",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, sync_option) VALUES ('a7', 'a7@x.com', 'some')",
            CHECK,
            "sync_option",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, folders) VALUES ('a8', 'a8@x.com', '{INBOX,\"\"}')",
            CHECK,
            "folders",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, poll_interval) VALUES ('a9', 'a9@x.com', '1 second')",
            CHECK,
            "poll_interval",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, pop3_retrieval) VALUES ('a10', 'a10@x.com', 'delete_after_days')",
            CHECK,
            "pop3_delete_after_days",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_auto_reply) VALUES ('a11', 'a11@x.com', true)",
            CHECK,
            "auto_reply_message",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, add_signature) VALUES ('a12', 'a12@x.com', true)",
            CHECK,
            "signature",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, default_incoming) VALUES ('a13', 'a13@x.com', true)",
            CHECK,
            "default_incoming",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, extra_ca_certificate) VALUES ('a14', 'a14@x.com', 'hello')",
            CHECK,
            "extra_ca_certificate",
        );
        // Checked before the PEM (constraints run in name order): never parsed.
        let too_long = assert_fails(
            "INSERT INTO email_accounts.account (name, address, extra_ca_certificate)
             VALUES ('a14', 'a14@x.com', repeat('-----BEGIN CERTIFICATE-----', 10000))",
            CHECK,
            "extra_ca_certificate",
        );
        assert_eq!(too_long.constraint, "extra_ca_certificate length must be at most 262144 bytes");
        let domain = assert_fails(
            "INSERT INTO email_accounts.domain (domain_name, extra_ca_certificate) VALUES ('long.test', repeat('x', 262145))",
            CHECK,
            "extra_ca_certificate",
        );
        assert_eq!(domain.constraint, "domain extra_ca_certificate length must be at most 262144 bytes");
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, send_limit_per_minute) VALUES ('a15', 'a15@x.com', 0)",
            CHECK,
            "send_limit_per_minute",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address) VALUES ('good', 'other@x.com')",
            UNIQUE,
            "name",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, tenant) VALUES ('a16', 'a16@x.com', '')",
            CHECK,
            "tenant",
        );
    }

    #[pg_test]
    fn enabling_a_side_requires_its_server() {
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing) VALUES ('s1', 's1@nowhere.example', true)",
            CHECK,
            "smtp_host",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol)
             VALUES ('s2', 's2@nowhere.example', true, 'imap')",
            CHECK,
            "incoming_host",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_security)
             VALUES ('s3', 's3@nowhere.example', true, 'smtp.example.com', 'ssl')",
            CHECK,
            "smtp_port",
        );
        // A provider or a domain supplies the servers.
        assert_ok(
            "INSERT INTO email_accounts.account (name, address, provider, enable_incoming, enable_outgoing)
             VALUES ('s4', 's4@gmail.com', 'gmail', true, true)",
        );
        assert_ok(
            "INSERT INTO email_accounts.domain (domain_name, incoming_protocol, incoming_host, incoming_port,
                 incoming_security, smtp_host, smtp_port, smtp_security)
             VALUES ('corp.example', 'imap', 'mail.corp.example', 993, 'ssl', 'mail.corp.example', 465, 'ssl')",
        );
        assert_ok(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, enable_outgoing)
             VALUES ('s5', 's5@corp.example', true, true)",
        );
        // Taking the server away from the domain is refused while an account needs it.
        assert_fails(
            "UPDATE email_accounts.domain SET smtp_host = NULL WHERE domain_name = 'corp.example'",
            CHECK,
            "smtp_host",
        );
        assert_fails(
            "DELETE FROM email_accounts.domain WHERE domain_name = 'corp.example'",
            CHECK,
            "incoming_protocol",
        );
        // The settings in effect come from the domain, then the provider.
        let effective = Spi::get_two::<String, i32>(
            "SELECT smtp_host, smtp_port FROM email_accounts.account_settings WHERE name = 's5'",
        )
        .unwrap();
        assert_eq!(effective, (Some("mail.corp.example".to_owned()), Some(465)));
        let from_provider =
            Spi::get_one::<String>("SELECT incoming_host FROM email_accounts.account_settings WHERE name = 's4'")
                .unwrap();
        assert_eq!(from_provider.as_deref(), Some("imap.gmail.com"));
    }

    #[pg_test]
    fn incompatible_security_choices_are_refused() {
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security)
             VALUES ('c1', 'c1@x.com', true, 'smtp.x.com', 465, 'starttls')",
            CHECK,
            "smtp_security",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security)
             VALUES ('c2', 'c2@x.com', true, 'smtp.x.com', 587, 'ssl')",
            CHECK,
            "smtp_security",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_host,
                 incoming_port, incoming_security)
             VALUES ('c3', 'c3@x.com', true, 'imap', 'imap.x.com', 143, 'ssl')",
            CHECK,
            "incoming_security",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_host,
                 incoming_port, incoming_security)
             VALUES ('c4', 'c4@x.com', true, 'pop3', 'pop.x.com', 993, 'ssl')",
            CHECK,
            "incoming_security",
        );
        // Clear-text passwords only when the account says so.
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security)
             VALUES ('c5', 'c5@x.com', true, 'smtp.x.com', 2525, 'none')",
            CHECK,
            "smtp_security",
        );
        assert_ok(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security,
                 allow_plaintext_authentication)
             VALUES ('c6', 'c6@x.com', true, 'smtp.x.com', 2525, 'none', true)",
        );
        assert_ok(
            "INSERT INTO email_accounts.account (name, address, enable_outgoing, smtp_host, smtp_port, smtp_security,
                 no_smtp_authentication)
             VALUES ('c7', 'c7@x.com', true, 'relay.x.com', 25, 'none', true)",
        );
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_host,
                 incoming_port, incoming_security)
             VALUES ('c8', 'c8@x.com', true, 'imap', 'imap.x.com', 143, 'none')",
            CHECK,
            "incoming_security",
        );
    }

    #[pg_test]
    fn pop3_has_one_folder() {
        assert_fails(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_host,
                 incoming_port, incoming_security, folders)
             VALUES ('p1', 'p1@x.com', true, 'pop3', 'pop.x.com', 995, 'ssl', '{INBOX,Archive}')",
            CHECK,
            "folders",
        );
        assert_ok(
            "INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_host,
                 incoming_port, incoming_security, folders)
             VALUES ('p2', 'p2@x.com', true, 'imap', 'imap.x.com', 993, 'ssl', '{INBOX,Archive}')",
        );
        assert_fails(
            "UPDATE email_accounts.account SET incoming_protocol = 'pop3', incoming_port = 995 WHERE name = 'p2'",
            CHECK,
            "folders",
        );
    }

    #[pg_test]
    fn one_default_incoming_and_outgoing_per_tenant() {
        let with_defaults = |name: &str, tenant: &str| {
            account(name, ", tenant, default_incoming, default_outgoing", &format!(", {tenant}, true, true"))
        };
        assert_ok(&with_defaults("d1", "NULL"));
        assert_fails(&with_defaults("d2", "NULL"), UNIQUE, "default_incoming");
        assert_ok(&with_defaults("d3", "'acme'"));
        assert_ok(&with_defaults("d4", "'globex'"));
        assert_fails(&with_defaults("d5", "'acme'"), UNIQUE, "default_incoming");
        assert_ok(&account("d6", ", tenant, default_outgoing", ", 'acme', false"));
        assert_fails(
            "UPDATE email_accounts.account SET default_outgoing = true WHERE name = 'd6'",
            UNIQUE,
            "default_outgoing",
        );
    }

    #[pg_test]
    fn set_password_checks_its_input() {
        assert_ok(&account("w1", ", ascii_encode_password, awaiting_password", ", true, true"));
        assert_fails("SELECT email_accounts.set_password('nobody', 'x')", "42704", "nobody");
        assert_fails("SELECT email_accounts.set_password('w1', '')", "22023", "password");
        assert_fails("SELECT email_accounts.set_password('w1', 'line\nbreak')", "22023", "password");
        let outcome =
            assert_fails("SELECT email_accounts.set_password('w1', 'pässword')", "22021", "ascii_encode_password");
        assert!(!outcome.message.contains("pässword"), "the password is echoed: {outcome:?}");
        assert_ok("SELECT email_accounts.set_password('w1', 'plain-ascii')");
        let state = Spi::get_two::<bool, bool>(
            "SELECT awaiting_password, password_set_at IS NOT NULL FROM email_accounts.account WHERE name = 'w1'",
        )
        .unwrap();
        assert_eq!(state, (Some(false), Some(true)), "set_password ends awaiting_password");
    }

    #[pg_test]
    fn accounts_awaiting_a_password_are_not_ready_for_the_workers() {
        assert_ok(&account("r1", ", awaiting_password", ", true"));
        assert_ok(&account("r2", ", no_smtp_authentication", ", true"));
        assert_ok("UPDATE email_accounts.account SET enable_incoming = false WHERE name = 'r2'");
        let readiness = |name: &str| {
            Spi::get_two_with_args::<bool, bool>(
                "SELECT ready_to_send, ready_to_receive FROM email_accounts.account_settings WHERE name = $1",
                &[name.into()],
            )
            .unwrap()
        };
        assert_eq!(readiness("r1"), (Some(false), Some(false)));
        assert_ok("SELECT email_accounts.set_password('r1', 'secret')");
        assert_eq!(readiness("r1"), (Some(true), Some(true)));
        // No password needed to send through a relay without AUTH; nothing to receive.
        assert_eq!(readiness("r2"), (Some(true), Some(false)));
    }

    #[pg_test]
    fn routing_settings_are_checked_and_owner_roles_are_guarded() {
        assert_ok("CREATE TABLE public.issue (id bigserial PRIMARY KEY, title text, raised_by text)");
        assert_ok("CREATE TABLE public.no_key (title text)");
        assert_ok("CREATE FUNCTION public.two_arguments(a bigint, b bigint) RETURNS void LANGUAGE sql AS ''");
        assert_ok("CREATE FUNCTION public.handler(id bigint) RETURNS void LANGUAGE sql AS ''");
        assert_ok(&account("route", "", ""));
        let set = |assignments: &str| format!("UPDATE email_accounts.account SET {assignments} WHERE name = 'route'");
        // User code never runs as a superuser (owner_role defaults to the
        // role creating the account, here one), nor as a role bound to no tenant.
        let routing = r#"append_to_table = 'public.issue', append_to_columns = '{"title": "subject", "raised_by": "sender_address"}'"#;
        assert_fails(&set(routing), "42501", "owner_role");
        assert_ok("CREATE ROLE route_owner NOLOGIN");
        assert_ok("GRANT INSERT, SELECT ON public.issue TO route_owner");
        assert_fails(&set(&format!("owner_role = 'route_owner', {routing}")), "42501", "owner_role");
        assert_ok("INSERT INTO email_accounts.tenant_member VALUES ('route_owner', '*')");
        assert_ok(&set(&format!("owner_role = 'route_owner', {routing}")));
        assert_fails(&set("owner_role = 'email_accounts_admin'"), "42501", "owner_role");
        assert_fails(&set("append_to_columns = '{}'"), CHECK, "append_to_columns");
        assert_fails(&set(r#"append_to_columns = '{"title": "not_a_field"}'"#), CHECK, "append_to_columns");
        assert_fails(&set(r#"append_to_columns = '{"missing_column": "subject"}'"#), CHECK, "append_to_columns");
        assert_fails(&set("append_to_table = 'public.no_key'"), CHECK, "append_to_table");
        assert_fails(
            &set("on_receive_function = 'public.two_arguments(bigint, bigint)'"),
            CHECK,
            "on_receive_function",
        );
        assert_ok(&set("on_receive_function = 'public.handler(bigint)'"));
        assert_ok("SELECT email_accounts.message_fields(1) IS NULL");
        // Code runs as owner_role: only its members may name it.
        assert_ok("CREATE ROLE route_admin NOLOGIN IN ROLE email_accounts_admin");
        assert_ok("INSERT INTO email_accounts.tenant_member VALUES ('route_admin', '*')");
        assert_ok("UPDATE email_accounts.account SET owner_role = 'route_admin', append_to_table = NULL, on_receive_function = NULL WHERE name = 'route'");
        assert_ok("SET LOCAL ROLE route_admin");
        // An admin (not a superuser) changes accounts...
        assert_eq!(
            crate::tests::outcome_of(
                "UPDATE email_accounts.account SET poll_interval = '10 minutes' WHERE name = 'route'"
            )
            .sqlstate,
            "ok"
        );
        assert_eq!(
            Spi::get_one::<bool>(
                "SELECT poll_interval = '10 minutes' FROM email_accounts.account WHERE name = 'route'"
            ),
            Ok(Some(true))
        );
        // ...but may not hand one to a role it is not a member of, nor change what runs as it.
        assert_fails(&set("owner_role = 'route_owner'"), "42501", "owner_role");
        assert_ok("RESET ROLE");
    }
}
