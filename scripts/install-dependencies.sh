#!/usr/bin/env bash
# Installs what `make test`, `make demo` and `make bench` need on a fresh
# Debian 12 machine, and skips whatever is already there, so a second run
# returns at once. Runs as root (the normal case here) or through sudo.
set -euo pipefail
PGRX_VERSION=0.18.1
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

packages=(
  postgresql-15 postgresql-server-dev-15 libclang-dev clang pkg-config libssl-dev sudo
  dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix openssl ca-certificates python3 python3-psycopg
)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing Debian packages: ${missing[*]}"
  # Postfix asks questions on install; answer "Local only" (we run our own instances).
  echo "postfix postfix/main_mailer_type select Local only" | $sudo debconf-set-selections
  echo "postfix postfix/mailname string localhost" | $sudo debconf-set-selections
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The packages start system-wide services on some machines; ours run privately
# on free ports, so the stock ones are not needed. Leave them alone if running.

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  echo "==> installing cargo-pgrx $PGRX_VERSION (about 5 minutes, once)"
  cargo install cargo-pgrx --version "=$PGRX_VERSION" --locked
fi

pgrx_home=${PGRX_HOME:-$HOME/.pgrx}
if ! grep -qs "pg15 = \"$PG_CONFIG\"" "$pgrx_home/config.toml"; then
  echo "==> cargo pgrx init against Debian's PostgreSQL 15"
  cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi
