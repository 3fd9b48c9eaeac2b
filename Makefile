# email_accounts — every target installs what it is missing first (see
# scripts/install-dependencies.sh), so these work on a fresh Debian 12 machine.

PG_CONFIG      := /usr/lib/postgresql/15/bin/pg_config
PGRX_TEST_DATA := $(CURDIR)/target/pgrx-test-data

.PHONY: all setup install test test-unit test-pg test-integration demo demo-stop bench fuzz fmt

all: test

setup:
	@bash scripts/install-dependencies.sh

# Builds the extension and installs it into Debian's PostgreSQL 15, with the
# install scripts of the released versions (sql/released/) next to the upgrade
# scripts pgrx copies, so CREATE EXTENSION ... VERSION and ALTER EXTENSION
# UPDATE work from every release.
install: setup
	cargo pgrx install --pg-config $(PG_CONFIG)
	install -m 0644 sql/released/*.sql $$($(PG_CONFIG) --sharedir)/extension/

# The three test layers, in order; stops at the first failure.
test: setup test-unit test-pg test-integration

# Pure Rust: the mail core, no PostgreSQL. Includes the property tests
# (mail/tests/properties.rs) at proptest's default 256 cases each.
test-unit:
	cargo test -p email_accounts_mail

# The property tests for longer: FUZZ_CASES cases each (default 100,000), release build.
FUZZ_CASES ?= 100000
fuzz: setup
	PROPTEST_CASES=$(FUZZ_CASES) cargo test --release -p email_accounts_mail --test properties

# #[pg_test]s: SQL functions inside a pgrx-managed PostgreSQL (run as the
# unprivileged postgres user; initdb refuses root).
test-pg:
	install -d -o postgres -g postgres $(PGRX_TEST_DATA)
	cargo pgrx test pg15 --runas postgres --pgdata $(PGRX_TEST_DATA)

# tests/*.rs against the harness: a throwaway cluster, Dovecot and Postfix.
# `cargo pgrx test` leaves a test build installed, so install the real one first.
test-integration: install
	cargo test -p email_accounts --test '*'

# A throwaway cluster plus local mail servers, with the extension created.
demo: install
	@bash scripts/demo.sh start

demo-stop:
	@bash scripts/demo.sh stop

# Figures, not tests: delivery and ingest against smtp-sink/smtp-source,
# Dovecot and Python baselines, on a release build (bench/run.py).
bench: setup
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	install -m 0644 sql/released/*.sql $$($(PG_CONFIG) --sharedir)/extension/
	/usr/bin/python3 bench/run.py  # Debian's, where python3-psycopg lives

fmt:
	cargo fmt
