-- What happens to a new incoming message after it is stored, in the same
-- transaction: reply linking, the account's append_to table and
-- on_receive function, and the RFC 3834 automatic reply. The receiver worker
-- calls these; reparse() calls link_reply() again.
--
-- They are PL/pgSQL, not SQL, although most are one query: PostgreSQL 15
-- plans an SQL function with a subquery afresh on every call from the
-- worker's statements (message_fields() took 322 µs a call, 34 µs now);
-- PL/pgSQL keeps its plans for the session.

-- The fields of a message that append_to_columns can map, as one JSON object.
CREATE FUNCTION email_accounts.message_fields(wanted_message_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'message_id', message.message_id,
            'account', account.name,
            'folder', message.folder,
            'internet_message_id', message.internet_message_id,
            'subject', message.subject,
            'sender', message.from_address,
            'sender_address', email_accounts.mailbox_address(message.from_address),
            'sender_name', nullif(btrim(split_part(message.from_address, '<', 1), ' "'), ''),
            'to_addresses', message.to_addresses,
            'cc_addresses', message.cc_addresses,
            'reply_to', message.reply_to,
            'body', coalesce(message.body_text, message.body_html),
            'body_text', message.body_text,
            'body_html', message.body_html,
            'sent_at', message.sent_at,
            'received_at', message.received_at,
            'thread_id', message.thread_id,
            'attachment_count', (SELECT count(*) FROM email_accounts.message_attachment AS part WHERE part.message_id = message.message_id))
          FROM email_accounts.message
          JOIN email_accounts.account USING (account_id)
         WHERE message.message_id = wanted_message_id);
END;
$$;

COMMENT ON FUNCTION email_accounts.message_fields(bigint) IS
  'The fields append_to_columns may name, for one message: message_id, account, folder, internet_message_id, subject, sender (Name <address>), sender_address, sender_name, to_addresses, cc_addresses, reply_to, body (text, else HTML), body_text, body_html, sent_at, received_at, thread_id, attachment_count.';

CREATE FUNCTION email_accounts.message_field_names() RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN ARRAY['message_id', 'account', 'folder', 'internet_message_id', 'subject', 'sender', 'sender_address', 'sender_name',
             'to_addresses', 'cc_addresses', 'reply_to', 'body', 'body_text', 'body_html', 'sent_at', 'received_at',
             'thread_id', 'attachment_count'];

COMMENT ON FUNCTION email_accounts.message_field_names() IS 'The message fields append_to_columns may map (see message_fields()).';

-- The single-column primary key of a table, or NULL.
CREATE FUNCTION email_accounts.primary_key_column(target regclass) RETURNS name
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT attribute.attname
          FROM pg_index AS index
          JOIN pg_attribute AS attribute ON attribute.attrelid = index.indrelid AND attribute.attnum = index.indkey[0]
         WHERE index.indrelid = target AND index.indisprimary AND index.indnatts = 1);
END;
$$;

COMMENT ON FUNCTION email_accounts.primary_key_column(regclass) IS 'The column of a table''s single-column primary key, or NULL when it has none (or a composite one).';

-- A reply in one mailbox may point at mail of another (reply_to_outbox_id,
-- reply_to_message_id, and the reference it copies) only when whoever sees
-- the reply sees that mail too: the same account, an account the whole
-- tenant sees, or a private mailbox's own owner role receiving it privately.
CREATE FUNCTION email_accounts.mail_may_be_linked(original_account_id bigint, reply_account_id bigint) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN original_account_id IS NULL
        OR original_account_id = reply_account_id
        OR EXISTS (SELECT FROM email_accounts.account AS original
                    WHERE original.account_id = original_account_id
                      AND (original.visibility = 'tenant'
                           OR EXISTS (SELECT FROM email_accounts.account AS reply
                                       WHERE reply.account_id = reply_account_id AND reply.visibility = 'private'
                                         AND reply.owner_role = original.owner_role)));
END;
$$;

COMMENT ON FUNCTION email_accounts.mail_may_be_linked(bigint, bigint) IS
  'Whether a message received by one account may be linked to mail of another: no account, the same one, one of visibility tenant, or a private reply mailbox of the same owner_role (whoever sees the reply sees the original).';

REVOKE EXECUTE ON FUNCTION email_accounts.mail_may_be_linked(bigint, bigint) FROM PUBLIC;

-- Links a message to the mail it answers, found in one look-up: In-Reply-To
-- first, then the References from the newest; for each id an outbox mail
-- before an earlier incoming message. Only within the message's tenant, and
-- only to mail that everyone who sees this message may see too (see
-- mail_may_be_linked()). Returns whether it linked.
CREATE FUNCTION email_accounts.link_reply(linked_message_id bigint) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    incoming email_accounts.message;
    answered record;
BEGIN
    SELECT * INTO incoming FROM email_accounts.message WHERE message_id = linked_message_id;
    SELECT found.* INTO answered
      FROM (SELECT incoming.in_reply_to AS id, 0 AS rank
            UNION ALL
            SELECT reference, position FROM unnest(incoming."references") WITH ORDINALITY AS refs(reference, position)
           ) AS ids
     CROSS JOIN LATERAL (
            SELECT 0 AS source, outbox.outbox_id, NULL::bigint AS message_id, outbox.reference_table, outbox.reference_id
              FROM email_accounts.outbox
             WHERE outbox.message_id = ids.id AND outbox.tenant IS NOT DISTINCT FROM incoming.tenant
               AND email_accounts.mail_may_be_linked(outbox.account_id, incoming.account_id)
            UNION ALL
            -- (The messages with that Message-ID found first, then the
            -- earliest of them: ordered in one query, a plan made while the
            -- inbox looked empty could walk its whole primary key instead.)
            (SELECT 1, NULL, earlier.message_id, earlier.reference_table, earlier.reference_id
               FROM (SELECT same.message_id, same.reference_table, same.reference_id
                       FROM email_accounts.message AS same
                      WHERE same.internet_message_id = ids.id AND same.message_id <> linked_message_id
                        AND same.tenant IS NOT DISTINCT FROM incoming.tenant
                        AND email_accounts.mail_may_be_linked(same.account_id, incoming.account_id)
                     OFFSET 0) AS earlier
              ORDER BY earlier.message_id
              LIMIT 1)
           ) AS found
     WHERE ids.id IS NOT NULL
     ORDER BY ids.rank = 0 DESC, ids.rank DESC, found.source
     LIMIT 1;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE email_accounts.message
       SET reply_to_outbox_id = answered.outbox_id,
           reply_to_message_id = answered.message_id,
           reference_table = coalesce(answered.reference_table, message.reference_table),
           reference_id = CASE WHEN answered.reference_table IS NOT NULL THEN answered.reference_id ELSE message.reference_id END
     WHERE message_id = linked_message_id;
    RETURN true;
END;
$$;

COMMENT ON FUNCTION email_accounts.link_reply(bigint) IS
  'Links an incoming message to the mail it answers (In-Reply-To, else References newest first; outbox mail before earlier incoming messages; same tenant only, and not to mail of a mailbox private to others than those who see this one) and copies that mail''s reference_table/reference_id. Returns whether a link was found.';

-- The INSERT that appends a message to its account's append_to_table; run
-- by the worker as the account's owner role with $1 = append_to_values().
CREATE FUNCTION email_accounts.append_to_statement(wanted_account_id bigint) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT format('INSERT INTO %s (%s) SELECT %s FROM pg_catalog.jsonb_populate_record(NULL::%s, $1) RETURNING %I::text',
                      account.append_to_table, columns.list, columns.list, account.append_to_table,
                      email_accounts.primary_key_column(account.append_to_table))
          FROM email_accounts.account
         CROSS JOIN LATERAL (
            SELECT string_agg(quote_ident(mapping.key), ', ' ORDER BY mapping.key) AS list
              FROM jsonb_each_text(account.append_to_columns) AS mapping
         ) AS columns
         WHERE account.account_id = wanted_account_id AND account.append_to_table IS NOT NULL);
END;
$$;

COMMENT ON FUNCTION email_accounts.append_to_statement(bigint) IS
  'The INSERT … RETURNING key statement that adds a message to its account''s append_to_table, taking the values of append_to_values() as $1.';

CREATE FUNCTION email_accounts.append_to_values(wanted_message_id bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT jsonb_object_agg(mapping.key, fields.value -> mapping.value)
          FROM email_accounts.message
          JOIN email_accounts.account USING (account_id)
         CROSS JOIN LATERAL jsonb_each_text(account.append_to_columns) AS mapping
         CROSS JOIN LATERAL (SELECT email_accounts.message_fields(message.message_id) AS value) AS fields
         WHERE message.message_id = wanted_message_id);
END;
$$;

COMMENT ON FUNCTION email_accounts.append_to_values(bigint) IS
  'For one message, the JSON object column → value that append_to_columns maps into the account''s append_to_table.';

-- RFC 3834: record why no automatic reply is sent, or queue one. The rules
-- that need only the message were judged by the worker (refusal); this adds
-- the one that needs the outbox: one reply per sender per auto_reply_interval.
CREATE FUNCTION email_accounts.auto_reply(answered_message_id bigint, recipient text, reply_subject text, refusal text)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    incoming email_accounts.message;
    settings email_accounts.account;
    queued bigint;
BEGIN
    SELECT * INTO incoming FROM email_accounts.message WHERE message_id = answered_message_id;
    SELECT * INTO settings FROM email_accounts.account WHERE account_id = incoming.account_id;
    IF NOT settings.enable_auto_reply THEN
        RETURN NULL;
    END IF;
    IF refusal IS NULL AND EXISTS (
        SELECT FROM email_accounts.outbox
         WHERE outbox.account_id = settings.account_id
           AND outbox.headers ->> 'Auto-Submitted' = 'auto-replied'
           AND lower(recipient) = ANY (outbox.to_addresses)
           AND outbox.created_at > now() - settings.auto_reply_interval)
    THEN
        refusal := format('%s already got an automatic reply within %s', recipient, settings.auto_reply_interval);
    END IF;
    IF refusal IS NOT NULL THEN
        UPDATE email_accounts.message SET no_auto_reply_reason = refusal WHERE message_id = answered_message_id;
        RETURN NULL;
    END IF;
    queued := email_accounts.send(
        "to" => ARRAY[lower(recipient)],
        -- From a template, its own subject (reply_subject is in the context).
        subject => CASE WHEN settings.auto_reply_template IS NULL
                          OR (email_accounts.choose_template(incoming.tenant, settings.auto_reply_template, NULL)).subject IS NULL
                        THEN reply_subject END,
        body_text => CASE WHEN settings.auto_reply_template IS NULL THEN settings.auto_reply_message END,
        template => settings.auto_reply_template,
        context => CASE WHEN settings.auto_reply_template IS NOT NULL THEN
                       jsonb_build_object('from', incoming.from_address,
                                          'subject', incoming.subject, 'reply_subject', reply_subject,
                                          'received_at', incoming.received_at, 'account', settings.name,
                                          'account_address', settings.address) END,
        account => settings.name,
        headers => jsonb_build_object('Auto-Submitted', 'auto-replied', 'X-Auto-Response-Suppress', 'All'),
        in_reply_to => CASE WHEN incoming.internet_message_id ~ '^<[^<>\s]+>$' THEN incoming.internet_message_id END,
        reference_table => incoming.reference_table,
        reference_id => incoming.reference_id,
        tenant => incoming.tenant);
    UPDATE email_accounts.message SET auto_reply_outbox_id = queued WHERE message_id = answered_message_id;
    RETURN queued;
END;
$$;

COMMENT ON FUNCTION email_accounts.auto_reply(bigint, text, text, text) IS
  'Used by the receiver: queues the account''s automatic reply to a new message (Auto-Submitted: auto-replied), unless the worker found an RFC 3834 reason not to (refusal) or the recipient already got one within auto_reply_interval; records the reason otherwise.';

-- Views for psql.
CREATE VIEW email_accounts.inbox WITH (security_invoker = true) AS
SELECT message.message_id,
       account.name AS account,
       message.folder,
       message.received_at,
       message.sent_at,
       message.from_address,
       message.subject,
       message.thread_id,
       (SELECT count(*) FROM email_accounts.message AS thread WHERE thread.thread_id = message.thread_id) AS thread_messages,
       message.reply_to_outbox_id,
       message.reply_to_message_id,
       message.reference_table,
       message.reference_id,
       message.seen,
       (SELECT count(*) FROM email_accounts.message_attachment AS part WHERE part.message_id = message.message_id) AS attachments,
       message.auto_reply_outbox_id,
       message.parse_error,
       message.routing_error
  FROM email_accounts.message
  JOIN email_accounts.account USING (account_id)
 ORDER BY message.received_at DESC, message.message_id DESC;

COMMENT ON VIEW email_accounts.inbox IS 'Incoming messages, newest first, with their thread, what they answer, and the application row they are about.';
COMMENT ON COLUMN email_accounts.inbox.thread_messages IS 'Incoming messages in the same thread (same thread_id).';
COMMENT ON COLUMN email_accounts.inbox.attachments IS 'Number of attachments and inline parts.';

CREATE VIEW email_accounts.sync_status WITH (security_invoker = true) AS
SELECT settings.name AS account,
       settings.incoming_protocol AS protocol,
       folders.folder,
       CASE
           WHEN NOT settings.enable_incoming THEN 'disabled'
           WHEN NOT settings.ready_to_receive THEN 'awaiting password'
           WHEN state.last_sync_at IS NULL THEN 'never synced'
           WHEN state.last_error IS NOT NULL THEN 'failing'
           ELSE 'ok'
       END AS state,
       state.last_sync_at,
       state.last_success_at,
       state.last_new_messages,
       state.messages_stored,
       state.consecutive_failures,
       state.last_error_kind,
       state.last_error,
       state.next_attempt_at,
       state.uidvalidity,
       state.last_uid,
       settings.account_id
  FROM email_accounts.account_settings AS settings
 CROSS JOIN LATERAL unnest(settings.folders) AS folders(folder)
  LEFT JOIN email_accounts.sync_state AS state ON state.account_id = settings.account_id AND state.folder = folders.folder
 WHERE settings.enable_incoming
   AND settings.account_id <> ALL ((SELECT email_accounts.hidden_mailboxes())::bigint[])
 ORDER BY settings.name, folders.folder;

COMMENT ON VIEW email_accounts.sync_status IS 'One row per incoming account and folder (of the mailboxes whose mail the role sees, see account.visibility): ok, failing (with why), never synced or awaiting password; when it last synced and tries next.';
COMMENT ON COLUMN email_accounts.sync_status.state IS 'ok, failing, never synced, awaiting password or disabled.';
COMMENT ON COLUMN email_accounts.sync_status.account_id IS 'The account (names are unique only per tenant).';
