#!/usr/bin/env python3
"""The baseline a user would otherwise deploy: a Frappe-style queue in Python.
Reads queued outbox rows of one account with psycopg, sends each with smtplib
over one reused connection, marks it sent and commits, row by row. Prints the
number sent. Usage: python_outbox.py PG_PORT SMTP_PORT ACCOUNT"""
import smtplib
import sys
from email.message import EmailMessage

import psycopg

pg_port, smtp_port, account = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
db = psycopg.connect(host="127.0.0.1", port=pg_port, user="postgres", dbname="postgres")
smtp = smtplib.SMTP("127.0.0.1", smtp_port)
sent = 0
while True:
    rows = db.execute(
        "SELECT outbox_id, to_addresses, subject, body_text, message_id FROM email_accounts.outbox"
        " WHERE account = %s AND status = 'queued' ORDER BY outbox_id LIMIT 500", (account,)).fetchall()
    db.commit()
    if not rows:
        break
    for outbox_id, to_addresses, subject, body_text, message_id in rows:
        message = EmailMessage()
        message["From"] = f"{account}@example.test"
        message["To"] = ", ".join(to_addresses)
        message["Subject"] = subject
        message["Message-ID"] = message_id
        message.set_content(body_text)
        smtp.send_message(message)
        db.execute("UPDATE email_accounts.outbox SET status = 'sent', sent_at = now() WHERE outbox_id = %s", (outbox_id,))
        db.commit()
        sent += 1
smtp.quit()
print(sent)
