-- Comments a DBA sees with \df+ and \d+: what each SQL object of the
-- extension is for. Loaded last, after every object exists.

COMMENT ON SCHEMA email_accounts IS
  'Email accounts, a transactional outbox delivered over SMTP, and inboxes synced over IMAP/POP3.';

COMMENT ON FUNCTION email_accounts.is_valid_address(text) IS
  'True when the text is an email address (optionally with a display name) that the SMTP side can deliver to; parsed exactly as the sender parses it.';

COMMENT ON FUNCTION email_accounts.worker_status() IS
  'One row per background worker role (sender, receiver): its process id, what it is doing, when it started, configuration reloads, the fallback poll interval in use and latch wake-ups. Read from shared memory.';
