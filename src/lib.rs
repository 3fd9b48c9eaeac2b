//! `email_accounts`: a PostgreSQL extension that makes the database the mail
//! gateway. See README.md for the tour and ../DESIGN for the layers:
//! `api` (SQL functions) → `store` (the only SPI code) ← `worker` (loops),
//! with the pure mail core in the `email_accounts_mail` crate.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;

pub mod api;
pub mod settings;
pub mod store;
#[cfg(any(test, feature = "pg_test"))]
mod tests;
mod threads;
pub mod worker;

::pgrx::pg_module_magic!(name, version);

// The schema a DBA reads, in dependency order.
pgrx::extension_sql_file!("../sql/providers.sql", name = "providers", requires = [restoring]);
pgrx::extension_sql_file!("../sql/domains.sql", name = "domains", requires = ["providers", is_valid_certificate]);
pgrx::extension_sql_file!("../sql/tenants.sql", name = "tenants");
pgrx::extension_sql_file!(
    "../sql/accounts.sql",
    name = "accounts",
    requires = ["domains", "tenants", is_valid_address, is_valid_certificate]
);
pgrx::extension_sql_file!("../sql/secrets.sql", name = "secrets", requires = ["accounts"]);
pgrx::extension_sql_file!("../sql/mailbox_visibility.sql", name = "mailbox_visibility", requires = ["accounts"]);
pgrx::extension_sql_file!("../sql/oauth.sql", name = "oauth", requires = ["accounts"]);
pgrx::extension_sql_file!(
    "../sql/account_settings.sql",
    name = "account_settings",
    requires = ["accounts", "secrets", "oauth", wake_workers_at_commit, settings_change_at_commit]
);
pgrx::extension_sql_file!(
    "../sql/account_tests.sql",
    name = "account_tests",
    requires = ["account_settings", test_account]
);
pgrx::extension_sql_file!("../sql/outbox.sql", name = "outbox", requires = ["accounts", is_valid_mailbox]);
pgrx::extension_sql_file!(
    "../sql/outbox_queue.sql",
    name = "outbox_queue",
    requires = [
        "outbox",
        "mailbox_visibility",
        header_problem,
        mailbox_address,
        wake_sender_at_commit,
        sender_for_new_mail,
        claim_never_taken,
        current_user_is_superuser
    ]
);
pgrx::extension_sql_file!("../sql/outbox_admin.sql", name = "outbox_admin", requires = ["outbox_queue"]);
pgrx::extension_sql_file!("../sql/inbox.sql", name = "inbox", requires = ["outbox"]);
pgrx::extension_sql_file!(
    "../sql/inbox_routing.sql",
    name = "inbox_routing",
    requires = ["inbox", "outbox_queue", "account_settings", "mailbox_visibility", mailbox_address]
);
pgrx::extension_sql_file!("../sql/suppression.sql", name = "suppression", requires = ["outbox", random_bytes]);
pgrx::extension_sql_file!("../sql/outbox_claims.sql", name = "outbox_claims", requires = ["suppression"]);
pgrx::extension_sql_file!(
    "../sql/delivery_reports.sql",
    name = "delivery_reports",
    requires = ["inbox", "suppression", "outbox_claims", "outbox_admin", "security"]
);
pgrx::extension_sql_file!(
    "../sql/document_links.sql",
    name = "document_links",
    requires = ["outbox_claims", "account_settings", tagged_address]
);
pgrx::extension_sql_file!(
    "../sql/templates.sql",
    name = "templates",
    requires = [
        "outbox_queue",
        "document_links",
        "delivery_reports",
        "security",
        "outbox_claims",
        "tenants",
        template_problem,
        included_template_names,
        render_chosen_template,
        restoring
    ]
);
pgrx::extension_sql_file!(
    "../sql/security.sql",
    name = "security",
    requires = [
        "account_tests",
        "secrets",
        "mailbox_visibility",
        "outbox_admin",
        "suppression",
        "outbox_claims",
        "inbox_routing",
        "document_links",
        set_password_of_side,
        sync_now,
        reparse,
        rotate_encryption_key,
        worker_status,
        flush,
        unsubscribe,
        mark_opened
    ]
);
pgrx::extension_sql_file!(
    "../sql/restore.sql",
    name = "restore",
    requires = ["tenants", "secrets", "oauth", "outbox_claims", "inbox", "suppression", "templates", restoring]
);
pgrx::extension_sql_file!("../sql/home.sql", name = "home", requires = ["restore", wake_workers_at_commit]);
pgrx::extension_sql_file!("../sql/comments.sql", name = "comments", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Shared memory and static workers only exist when the postmaster loads
    // the library; anything else would half-work, so refuse.
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        ErrorReport::new(
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "email_accounts must be loaded via shared_preload_libraries",
            "_PG_init",
        )
        .set_hint("Add email_accounts to shared_preload_libraries in postgresql.conf and restart the server.")
        .report(PgLogLevel::ERROR);
        return;
    }
    settings::register();
    worker::board::initialize_shared_memory();
    worker::register_static_workers();
    worker::utility_hook::install();
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        // The launcher starts workers where the extension is created (the
        // test database too: they find nothing to send). Rows are not
        // claimed on insert for that idle sender, so a test's rows stay
        // queued for the statements it calls (tests/outbox.rs covers the claim on insert).
        vec!["shared_preload_libraries = 'email_accounts'", "email_accounts.claim_on_insert = off"]
    }
}
