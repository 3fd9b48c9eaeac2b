#!/usr/bin/env python3
"""The ingest baseline: imaplib over TLS, the email package, psycopg. Reads a
whole mailbox in chunks (BODY.PEEK), parses each message and inserts subject,
sender, date, text body and raw bytes into a table, committing per chunk.
Prints the number stored. Usage: python_ingest.py PG_PORT IMAPS_PORT CA LOGIN PASSWORD"""
import email
import email.policy
import imaplib
import ssl
import sys

import psycopg

pg_port, imaps_port, ca, login, password = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
db = psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres")
db.execute("CREATE TABLE IF NOT EXISTS python_inbox (uid bigint PRIMARY KEY, subject text, sender text,"
           " sent text, body text, raw bytea)")
db.execute("TRUNCATE python_inbox")
db.commit()
imap = imaplib.IMAP4_SSL("localhost", imaps_port, ssl_context=ssl.create_default_context(cafile=ca))
imap.login(login, password)
imap.select("INBOX", readonly=True)
_, found = imap.uid("SEARCH", None, "ALL")
uids = found[0].split()
stored = 0
for start in range(0, len(uids), 200):
    chunk = uids[start:start + 200]
    _, data = imap.uid("FETCH", b",".join(chunk), "(UID BODY.PEEK[])")
    rows = []
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = int(item[0].split(b"UID ")[1].split()[0])
        message = email.message_from_bytes(item[1], policy=email.policy.default)
        body = message.get_body(preferencelist=("plain", "html"))
        rows.append((uid, str(message["Subject"]), str(message["From"]), str(message["Date"]),
                     body.get_content() if body else None, item[1]))
    with db.cursor() as cursor:
        cursor.executemany("INSERT INTO python_inbox VALUES (%s, %s, %s, %s, %s, %s)", rows)
    db.commit()
    stored += len(rows)
imap.logout()
print(stored)
