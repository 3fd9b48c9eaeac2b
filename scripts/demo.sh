#!/usr/bin/env bash
# `make demo`: a throwaway PostgreSQL 15 cluster with email_accounts, plus
# local Dovecot (IMAP/POP3) and Postfix (SMTP) on 127.0.0.1, all under
# .demo/ in the checkout. `make demo-stop` tears everything down.
#
# Usage: demo.sh start|stop
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
services="$top/scripts/services"
demo="$top/.demo"

# Fixed ports so the printed commands stay valid; override through the environment.
PG_PORT=${PG_PORT:-55432}
IMAP_PORT=${IMAP_PORT:-10143}; IMAPS_PORT=${IMAPS_PORT:-10993}
POP3_PORT=${POP3_PORT:-10110}; POP3S_PORT=${POP3S_PORT:-10995}
LMTP_PORT=${LMTP_PORT:-10024}
SMTP_PORT=${SMTP_PORT:-10025}; SMTPS_PORT=${SMTPS_PORT:-10465}

stop() {
  bash "$services/postgres.sh" stop "$demo/postgres" fast
  bash "$services/postfix.sh" stop "$demo/postfix"
  bash "$services/dovecot.sh" stop "$demo/dovecot"
  rm -rf "$demo"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

case "${1:-}" in
  stop)
    stop
    echo "demo stopped and removed"
    exit 0 ;;
  start) ;;
  *) echo "usage: demo.sh start|stop" >&2; exit 2 ;;
esac

if [ -d "$demo" ]; then
  echo "==> a previous demo is still here; stopping it first"
  stop
fi
for port in $PG_PORT $IMAP_PORT $IMAPS_PORT $POP3_PORT $POP3S_PORT $LMTP_PORT $SMTP_PORT $SMTPS_PORT; do
  if port_in_use "$port"; then
    echo "port $port on 127.0.0.1 is in use; set PG_PORT/IMAP_PORT/... to free ones" >&2
    exit 1
  fi
done

mkdir -p "$demo"
chmod 0755 "$demo"
trap 'echo "demo failed; the end of the server log:" >&2; tail -40 "$demo/postgres/server.log" >&2 || true; stop' ERR

echo "==> certificates (a throwaway CA)"
bash "$services/certificates.sh" "$demo/certificates"
echo "==> Dovecot: IMAP $IMAP_PORT, IMAPS $IMAPS_PORT, POP3 $POP3_PORT, POP3S $POP3S_PORT, LMTP $LMTP_PORT"
bash "$services/dovecot.sh" start "$demo/dovecot" "$demo/certificates" \
  "$IMAP_PORT" "$IMAPS_PORT" "$POP3_PORT" "$POP3S_PORT" "$LMTP_PORT"
echo "==> Postfix: SMTP $SMTP_PORT (STARTTLS), SMTPS $SMTPS_PORT"
bash "$services/postfix.sh" start "$demo/postfix" "$demo/certificates" "$demo/dovecot" \
  "$SMTP_PORT" "$SMTPS_PORT" "$LMTP_PORT"
echo "==> PostgreSQL 15 on port $PG_PORT with email_accounts preloaded"
bash "$services/postgres.sh" start "$demo/postgres" "$PG_PORT" "email_accounts.fallback_poll_interval = '1s'"

psql=(psql -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1)
# Waits (up to 10 s) until this many outbox rows are sent.
wait_until_sent() {
  for _ in $(seq 1 100); do
    [ "$("${psql[@]}" -tAc "SELECT count(*) FROM email_accounts.outbox WHERE status = 'sent'")" = "$1" ] && return
    sleep 0.1
  done
}
"${psql[@]}" -c "CREATE EXTENSION email_accounts"
echo "==> waiting for the background workers to pick up the extension"
for _ in $(seq 1 100); do
  idle=$("${psql[@]}" -tAc "SELECT count(*) FROM email_accounts.worker_status() WHERE database = current_database() AND state = 'idle' AND pid IS NOT NULL")
  [ "$idle" = 2 ] && break
  sleep 0.1
done
"${psql[@]}" -P pager=off -c "SELECT database, worker_name, pid, state, started_at FROM email_accounts.worker_status()"

echo "==> an account on the local mail servers, through its domain"
"${psql[@]}" -v ca="$(cat "$demo/certificates/ca.pem")" <<SQL
INSERT INTO email_accounts.domain (domain_name, incoming_protocol, incoming_host, incoming_port, incoming_security,
                                   smtp_host, smtp_port, smtp_security, extra_ca_certificate)
VALUES ('example.test', 'imap', 'localhost', $IMAPS_PORT, 'ssl', 'localhost', $SMTP_PORT, 'starttls', :'ca');
INSERT INTO email_accounts.account (name, address, enable_incoming, enable_outgoing, default_incoming, default_outgoing)
VALUES ('Alice', 'alice@example.test', true, true, true, true);
SQL
# A throwaway test password; applications pass it as a bind parameter ($2).
"${psql[@]}" -c "SELECT email_accounts.set_password('Alice', 'alice-password')"
"${psql[@]}" -P pager=off -c "SELECT name, address, incoming_host, incoming_port, smtp_port, smtp_security, ready_to_send, ready_to_receive FROM email_accounts.account_settings"
"${psql[@]}" -P pager=off -c "SELECT jsonb_pretty(email_accounts.test_account('Alice'))"

echo "==> mail queued from SQL in a transaction, delivered by the sender worker at commit"
"${psql[@]}" <<'SQL'
BEGIN;
SELECT email_accounts.send("to" => '{bob@example.test}', subject => 'Never sent: rolled back');
ROLLBACK;
BEGIN;
CREATE TABLE public.demo_order (order_id integer PRIMARY KEY, customer text);
INSERT INTO public.demo_order VALUES (1001, 'Bob');
SELECT email_accounts.send("to" => '{Bob <bob@example.test>}', cc => '{carol@example.test}',
                           subject => 'Hello from PostgreSQL', body_text => 'Sent by email_accounts.',
                           body_html => '<p>Sent by <b>email_accounts</b>.</p>',
                           reference_table => 'public.demo_order', reference_id => '1001') AS outbox_id;
COMMIT;
SQL
wait_until_sent 1
"${psql[@]}" -P pager=off -c "SELECT outbox_id, account, status, attempts, message_id, sent_at - created_at AS took FROM email_accounts.outbox"
"${psql[@]}" -P pager=off -c "SELECT outbox_id, address, kind, status, reply FROM email_accounts.outbox_recipient"
echo "==> and it is in bob's Dovecot mailbox (read back over IMAPS):"
python3 - "$IMAPS_PORT" "$demo/certificates/ca.pem" <<'PYTHON'
import imaplib, ssl, sys, time
context = ssl.create_default_context(cafile=sys.argv[2])
for _ in range(50):
    imap = imaplib.IMAP4_SSL("localhost", int(sys.argv[1]), ssl_context=context)
    imap.login("bob@example.test", "bob-password")
    imap.select("INBOX", readonly=True)
    _, found = imap.search(None, "ALL")
    if found[0]:
        _, data = imap.fetch(found[0].split()[-1], "(BODY.PEEK[HEADER.FIELDS (FROM TO CC SUBJECT MESSAGE-ID)])")
        print("   " + data[0][1].decode().strip().replace("\r\n", "\n   "))
        break
    imap.logout()
    time.sleep(0.1)
PYTHON

echo "==> the mail comes back in: Bob's mailbox over IMAP, Carol's over POP3 (deleted from the server once stored)"
"${psql[@]}" <<SQL
INSERT INTO email_accounts.account (name, address, enable_incoming, enable_outgoing, sync_option)
VALUES ('Bob', 'bob@example.test', true, true, 'all');
INSERT INTO email_accounts.account (name, address, enable_incoming, incoming_protocol, incoming_port, incoming_security,
                                    pop3_retrieval)
VALUES ('Carol over POP3', 'carol@example.test', true, 'pop3', $POP3S_PORT, 'ssl', 'delete_after_store');
SQL
"${psql[@]}" -c "SELECT email_accounts.set_password('Bob', 'bob-password')"
"${psql[@]}" -c "SELECT email_accounts.set_password('Carol over POP3', 'carol-password')"
"${psql[@]}" -P pager=off -c "SELECT * FROM email_accounts.sync_now('Bob')"
"${psql[@]}" -P pager=off -c "SELECT * FROM email_accounts.sync_now('Carol over POP3')"
"${psql[@]}" -P pager=off -c "SELECT message_id, account, folder, from_address, subject, received_at FROM email_accounts.inbox"

echo "==> Bob answers from SQL; the reply reaches Alice's inbox linked to the mail and the order it is about"
"${psql[@]}" <<'SQL'
SELECT email_accounts.send(account => 'Bob', "to" => '{alice@example.test}', subject => 'Re: Hello from PostgreSQL',
                           body_text => 'Got it, thanks!',
                           in_reply_to => (SELECT internet_message_id FROM email_accounts.message
                                            JOIN email_accounts.account USING (account_id) WHERE account.name = 'Bob'));
SQL
wait_until_sent 2
"${psql[@]}" -P pager=off -c "SELECT * FROM email_accounts.sync_now('Alice')"
"${psql[@]}" -P pager=off -c "SELECT message_id, account, from_address, subject, reply_to_outbox_id, reference_table, reference_id, thread_messages FROM email_accounts.inbox WHERE account = 'Alice'"
"${psql[@]}" -P pager=off -c "SELECT account, protocol, folder, state, last_new_messages, messages_stored, next_attempt_at FROM email_accounts.sync_status"
trap - ERR

cat <<TEXT
The demo is running. Look around with:

  psql -h 127.0.0.1 -p $PG_PORT -U postgres postgres

  postgres=# \\dx+ email_accounts
  postgres=# SELECT * FROM email_accounts.worker_status();
  postgres=# SELECT * FROM email_accounts.account_settings;
  postgres=# SELECT * FROM email_accounts.test_all();
  postgres=# SELECT email_accounts.send("to" => '{carol@example.test}', subject => 'Hi', body_text => 'Hello');
  postgres=# SELECT * FROM email_accounts.outbox_status;
  postgres=# SELECT * FROM email_accounts.inbox;
  postgres=# SELECT * FROM email_accounts.sync_status;
  postgres=# SELECT * FROM email_accounts.sync_now('Alice');
  postgres=# SELECT email_accounts.is_valid_address('ann@example.test');

Mail servers on 127.0.0.1 (users and passwords in scripts/services/mail-users.txt,
TLS certificates signed by $demo/certificates/ca.pem):
  SMTP $SMTP_PORT (STARTTLS) / $SMTPS_PORT (TLS)   IMAP $IMAP_PORT / $IMAPS_PORT   POP3 $POP3_PORT / $POP3S_PORT

Stop and remove it all with: make demo-stop
TEXT
