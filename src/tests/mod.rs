//! `#[pg_test]`s of the SQL surface that span several modules.

mod account_rules;
mod links;
mod outbox_queue;
mod secrets_and_tenants;

use pgrx::prelude::*;

/// The outcome of running one statement: `ok`, or its SQLSTATE with the
/// message, column and constraint the error names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub sqlstate: String,
    pub message: String,
    pub column: String,
    pub constraint: String,
}

/// Runs `statement` in a subtransaction and reports how it ended.
pub fn outcome_of(statement: &str) -> Outcome {
    // Created once per session, before any SET ROLE (only its owner may replace it).
    if Spi::get_one::<bool>("SELECT to_regprocedure('pg_temp.outcome_of(text)') IS NOT NULL").unwrap() != Some(true) {
        Spi::run(
            "CREATE FUNCTION pg_temp.outcome_of(statement text,
                 OUT error_code text, OUT message text, OUT column_name text, OUT constraint_name text)
             LANGUAGE plpgsql AS $$
             BEGIN
                 EXECUTE statement;
                 error_code := 'ok'; message := ''; column_name := ''; constraint_name := '';
             EXCEPTION WHEN OTHERS THEN
                 GET STACKED DIAGNOSTICS error_code = RETURNED_SQLSTATE, message = MESSAGE_TEXT,
                                         column_name = COLUMN_NAME, constraint_name = CONSTRAINT_NAME;
             END $$",
        )
        .unwrap();
    }
    Spi::connect(|client| {
        let table = client.select("SELECT * FROM pg_temp.outcome_of($1)", Some(1), &[statement.into()]).unwrap();
        let row = table.first();
        Outcome {
            sqlstate: row.get::<String>(1).unwrap().unwrap_or_default(),
            message: row.get::<String>(2).unwrap().unwrap_or_default(),
            column: row.get::<String>(3).unwrap().unwrap_or_default(),
            constraint: row.get::<String>(4).unwrap().unwrap_or_default(),
        }
    })
}

/// Asserts the statement succeeds.
pub fn assert_ok(statement: &str) {
    let outcome = outcome_of(statement);
    assert_eq!(outcome.sqlstate, "ok", "{statement}\n→ {outcome:?}");
}

/// Asserts the statement fails with `sqlstate` and that the error names `field`
/// (as its column, its constraint, or in its message).
pub fn assert_fails(statement: &str, sqlstate: &str, field: &str) -> Outcome {
    let outcome = outcome_of(statement);
    assert_eq!(outcome.sqlstate, sqlstate, "{statement}\n→ {outcome:?}");
    assert!(
        outcome.column == field || outcome.constraint.contains(field) || outcome.message.contains(field),
        "the error does not name {field:?}: {outcome:?}"
    );
    outcome
}
