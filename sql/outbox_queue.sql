-- Queueing: every row inserted into the outbox (by send(), a plain INSERT or
-- an application trigger) is checked, given its account and Message-ID, and
-- split into per-recipient rows; the sender worker is woken at commit.

CREATE FUNCTION email_accounts.raise_outbox_error(field text, problem text, code text DEFAULT 'check_violation') RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION '%: %', field, problem
        USING ERRCODE = code, SCHEMA = 'email_accounts', TABLE = 'outbox', COLUMN = field;
END;
$$;

COMMENT ON FUNCTION email_accounts.raise_outbox_error(text, text, text) IS
  'Raises an error about an outbox field (check_violation unless told otherwise), naming the field.';

CREATE FUNCTION email_accounts.check_mailboxes(field text, mailboxes text[]) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    mailbox text;
BEGIN
    FOREACH mailbox IN ARRAY coalesce(mailboxes, '{}') LOOP
        IF mailbox IS NULL OR NOT email_accounts.is_valid_mailbox(mailbox) THEN
            PERFORM email_accounts.raise_outbox_error(field, format('%s is not a valid email address', coalesce(quote_literal(mailbox), 'NULL')));
        END IF;
    END LOOP;
END;
$$;

COMMENT ON FUNCTION email_accounts.check_mailboxes(text, text[]) IS 'Raises check_violation naming the field if any entry is not a valid mailbox.';

-- The global default outgoing account: the fallback of every tenant without
-- one of its own (the system's default outbox keeps working for contracts
-- without a mailbox). Roles bound to a tenant cannot see accounts without
-- tenant, so this reads it as the extension owner and tells only what a
-- queued row needs of it.
CREATE FUNCTION email_accounts.global_default_outgoing(OUT account_id bigint, OUT name text, OUT address_domain text,
                                                       OUT attachment_size_limit bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp
RETURN (SELECT ROW(account.account_id, account.name, split_part(account.address, '@', 2), account.attachment_size_limit)
          FROM email_accounts.account WHERE account.default_outgoing AND account.tenant IS NULL);

COMMENT ON FUNCTION email_accounts.global_default_outgoing() IS
  'The account with default_outgoing among accounts without a tenant (id, name, address domain, attachment_size_limit), or NULLs.';

-- Which account sends: the one named, else the sender's own, else the
-- tenant's default outgoing, else the global default; NULL when none fits.
-- Runs as the caller, so row-level security limits it to the caller's
-- tenants (and the global default). Names are unique per tenant: a name is
-- looked up in the row's tenant when it has one.
CREATE FUNCTION email_accounts.choose_outgoing_account(account_name text, sender text, tenant text) RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.account;
    matches integer;
BEGIN
    IF account_name IS NOT NULL THEN
        -- The row's own tenant's account of that name (for a row without
        -- tenant, the one without tenant); a row without tenant may also name
        -- any account it can see, if only one has the name.
        SELECT * INTO chosen FROM email_accounts.account
         WHERE name = account_name AND account.tenant IS NOT DISTINCT FROM choose_outgoing_account.tenant;
        IF chosen.account_id IS NULL AND choose_outgoing_account.tenant IS NULL THEN
            SELECT count(*) INTO matches FROM email_accounts.account WHERE name = account_name;
            IF matches > 1 THEN
                PERFORM email_accounts.raise_outbox_error('account',
                    format('account name %s is ambiguous: accounts of several tenants have it; name the tenant too', quote_literal(account_name)),
                    'ambiguous_parameter');
            END IF;
            SELECT * INTO chosen FROM email_accounts.account WHERE name = account_name;
        END IF;
        IF chosen.account_id IS NULL THEN
            PERFORM email_accounts.raise_outbox_error('account', format('no account named %s', quote_literal(account_name)), 'foreign_key_violation');
        END IF;
        IF NOT chosen.enable_outgoing THEN
            PERFORM email_accounts.raise_outbox_error('account', format('account %s has enable_outgoing off', quote_literal(account_name)));
        END IF;
        RETURN chosen.account_id;
    END IF;
    IF sender IS NOT NULL THEN
        SELECT * INTO chosen FROM email_accounts.account
         WHERE lower(address) = lower(email_accounts.mailbox_address(sender)) AND enable_outgoing
           AND (choose_outgoing_account.tenant IS NULL OR account.tenant = choose_outgoing_account.tenant)
         ORDER BY account.tenant IS NOT DISTINCT FROM choose_outgoing_account.tenant DESC, account.account_id
         LIMIT 1;
        IF FOUND THEN
            RETURN chosen.account_id;
        END IF;
    END IF;
    IF tenant IS NOT NULL THEN
        SELECT * INTO chosen FROM email_accounts.account
         WHERE default_outgoing AND account.tenant = choose_outgoing_account.tenant;
        IF FOUND THEN
            RETURN chosen.account_id;
        END IF;
    END IF;
    RETURN (email_accounts.global_default_outgoing()).account_id;
END;
$$;

COMMENT ON FUNCTION email_accounts.choose_outgoing_account(text, text, text) IS
  'The account mail is sent through: the one named (error if unknown, ambiguous or not enabled for outgoing), else the enabled account whose address is the sender''s, else the tenant''s default outgoing, else the global default outgoing, else NULL. Only accounts of the row''s tenant (when it has one) and the global default qualify.';

-- An outbox row's account is of the row's tenant, or the global default
-- outgoing account (every tenant's fallback). Runs as the caller.
CREATE FUNCTION email_accounts.check_outbox_account(outbox_tenant text, chosen_account_id bigint) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF chosen_account_id IS NULL
       OR chosen_account_id = (email_accounts.global_default_outgoing()).account_id
       OR EXISTS (SELECT FROM email_accounts.account
                   WHERE account.account_id = chosen_account_id AND account.tenant IS NOT DISTINCT FROM outbox_tenant) THEN
        RETURN;
    END IF;
    PERFORM email_accounts.raise_outbox_error('account_id',
        format('account %s is not an account of the row''s tenant (%s)', chosen_account_id, coalesce(quote_literal(outbox_tenant), 'none')));
END;
$$;

COMMENT ON FUNCTION email_accounts.check_outbox_account(text, bigint) IS
  'Raises check_violation (naming account_id) unless the account is of the outbox row''s tenant or is the global default outgoing account.';

-- What the tenant of mail being queued is, before its account is chosen:
-- the row's, else the caller's only tenant.
CREATE FUNCTION email_accounts.queuing_tenant(given text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    bound_tenants text[];
BEGIN
    IF given IS NOT NULL THEN
        RETURN given;
    END IF;
    bound_tenants := email_accounts.current_tenants();
    IF cardinality(bound_tenants) = 1 AND bound_tenants[1] <> '*' THEN
        RETURN bound_tenants[1];
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.queuing_tenant(text) IS
  'The tenant of mail being queued: the one given, else the caller''s only tenant, else NULL.';

CREATE FUNCTION email_accounts.outbox_before_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    header record;
    problem text;
    account_tenant text;
    account_domain text;
BEGIN
    PERFORM email_accounts.check_mailboxes('to_addresses', NEW.to_addresses);
    PERFORM email_accounts.check_mailboxes('cc_addresses', NEW.cc_addresses);
    PERFORM email_accounts.check_mailboxes('bcc_addresses', NEW.bcc_addresses);
    PERFORM email_accounts.check_mailboxes('reply_to', NEW.reply_to);
    IF cardinality(NEW.to_addresses) + cardinality(NEW.cc_addresses) + cardinality(NEW.bcc_addresses) = 0 THEN
        PERFORM email_accounts.raise_outbox_error('to_addresses', 'the message has no recipients (to, cc and bcc are all empty)');
    END IF;
    FOR header IN SELECT key, value FROM jsonb_each(NEW.headers) LOOP
        IF jsonb_typeof(header.value) <> 'string' THEN
            PERFORM email_accounts.raise_outbox_error('headers', format('the value of header %s must be a JSON string', quote_literal(header.key)));
        END IF;
        problem := email_accounts.header_problem(header.key, header.value #>> '{}');
        IF problem IS NOT NULL THEN
            PERFORM email_accounts.raise_outbox_error('headers', problem);
        END IF;
    END LOOP;

    -- A role bound to exactly one tenant queues mail of that tenant.
    NEW.tenant := email_accounts.queuing_tenant(NEW.tenant);
    -- Mail made from a template (sql/templates.sql) is rendered now, in the
    -- caller's transaction: an error reaches the application at once. The
    -- tenant decides which template, so a named account settles it first.
    NEW.template_id := NULL;
    NEW.template_language := NULL;
    IF NEW.template IS NOT NULL THEN
        IF NEW.tenant IS NULL AND NEW.account IS NOT NULL THEN
            NEW.tenant := (SELECT min(account.tenant) FROM email_accounts.account WHERE account.name = NEW.account
                           HAVING count(*) = 1);
        END IF;
        NEW := email_accounts.apply_template(NEW);
    END IF;
    -- account_id is always chosen here, never taken from the row: the choice
    -- is of the row's tenant (or the global default), so an inserted row
    -- cannot point across tenants (updates are checked by outbox_check_update).
    NEW.account_id := email_accounts.choose_outgoing_account(NEW.account, NEW.sender, NEW.tenant);
    IF NEW.account_id IS NOT NULL THEN
        SELECT name, tenant, split_part(address, '@', 2) INTO NEW.account, account_tenant, account_domain
          FROM email_accounts.account WHERE account_id = NEW.account_id;
        IF NOT FOUND THEN
            -- The global default, which roles bound to a tenant cannot see; the
            -- row stays the tenant's (see system_sends_as_itself).
            SELECT fallback.name, fallback.address_domain INTO NEW.account, account_domain
              FROM email_accounts.global_default_outgoing() AS fallback;
        END IF;
        NEW.tenant := coalesce(NEW.tenant, account_tenant);
        -- A mailbox private to others (sql/mailbox_visibility.sql): said
        -- here, naming it, rather than by the row-level check's generic error.
        IF NEW.account_id = ANY (email_accounts.hidden_mailboxes()) THEN
            PERFORM email_accounts.raise_mailbox_hidden(NEW.account);
        END IF;
    END IF;

    NEW.attempts := 0;
    NEW.lease_until := NULL;
    NEW.claim_token := NULL;
    NEW.sender_process_id := NULL;
    NEW.sender_started_at := NULL;
    NEW.sent_at := NULL;
    NEW.next_attempt_at := greatest(NEW.send_after, now());
    IF NEW.account_id IS NULL THEN
        NEW.status := 'error';
        NEW.last_error := 'no account to send through: name one in account, or set default_outgoing on an account of the tenant or on one without tenant; then call email_accounts.retry()';
    ELSE
        NEW.status := 'queued';
        NEW.last_error := NULL;
        -- email_accounts.claim_on_insert: a row due now is claimed here for
        -- an idle sender (the attempt counted, without a token: the sender
        -- takes the row without writing to it). This transaction's commit
        -- makes the claim durable, so the sender needs no flush of its own
        -- before the wire.
        IF NEW.next_attempt_at <= now() AND (NEW.expires_at IS NULL OR NEW.expires_at > now()) THEN
            SELECT taker.sender_process_id, taker.sender_started_at, taker.lease_until
              INTO NEW.sender_process_id, NEW.sender_started_at, NEW.lease_until
              FROM email_accounts.sender_for_new_mail(NEW.account_id) AS taker;
            IF NEW.sender_process_id IS NOT NULL THEN
                NEW.status := 'sending';
                NEW.attempts := 1;
            END IF;
        END IF;
    END IF;
    IF NEW.in_reply_to IS NOT NULL AND cardinality(NEW."references") = 0 THEN
        NEW."references" := ARRAY[NEW.in_reply_to];
    END IF;
    IF NEW.message_id IS NULL THEN
        NEW.message_id := format('<%s@%s>', replace(gen_random_uuid()::text, '-', ''),
            coalesce(account_domain,
                     split_part(email_accounts.mailbox_address(NEW.sender), '@', 2),
                     'email-accounts.invalid'));
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_before_insert() IS
  'Trigger: checks a new outbox row (addresses, recipients, headers, account), chooses its account (of the row''s tenant, or the global default), and fixes its Message-ID and initial status.';

-- Whether the outbox row is out for delivery under a sender's claim
-- (outbox_claim). With the caller's rights: row-level security shows a
-- role only the claims of rows it sees, so it learns nothing of others'.
-- (A role that may update the outbox without email_accounts_admin's read
-- of the claims is refused by the update check: permission denied.)
CREATE FUNCTION email_accounts.being_sent(id bigint) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT FROM email_accounts.outbox_claim AS claim WHERE claim.outbox_id = id)
$$;

COMMENT ON FUNCTION email_accounts.being_sent(bigint) IS
  'True when the outbox row (one the caller can see) is claimed by a sender worker, out for delivery: cancel(), retry() and the update check refuse such a row.';

-- Admins may re-point a row (retry() does), but never across tenants, and
-- they steer only what cancel() and retry() steer: a row that is being sent
-- or was sent is the sender's (a fake 'sending' row would count against the
-- account's rate limits forever). Checked after the update, under the row's
-- lock, and the statement undone on failure (see check_account).
CREATE FUNCTION email_accounts.outbox_check_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.account_id IS DISTINCT FROM OLD.account_id OR NEW.tenant IS DISTINCT FROM OLD.tenant
       OR (NEW.status IN ('queued', 'retry') AND NEW.status IS DISTINCT FROM OLD.status) THEN
        PERFORM email_accounts.check_outbox_account(NEW.tenant, NEW.account_id);
    END IF;
    -- (Mail that went out stays with the account it went through: the rate
    -- limits count it there. Re-pointed at the global default, a tenant's
    -- sent rows would use up that account's limits for every tenant. An
    -- account's deletion clears it as the table's owner, past this check.)
    IF NEW.account_id IS DISTINCT FROM OLD.account_id AND OLD.status IN ('sent', 'bounced') THEN
        PERFORM email_accounts.raise_outbox_error('account_id',
            format('a row that was %s keeps the account it went through', OLD.status),
            'insufficient_privilege');
    END IF;
    IF NEW.status IS DISTINCT FROM OLD.status
       AND NOT (NEW.status = 'cancelled' AND OLD.status IN ('queued', 'retry', 'error'))
       -- (Claimed on insert, not yet taken by its sender: see cancel().)
       AND NOT (NEW.status = 'cancelled' AND OLD.status = 'sending' AND OLD.claim_token IS NULL AND NEW.claim_token IS NULL
                AND email_accounts.claim_never_taken(OLD.sender_process_id, OLD.sender_started_at, OLD.outbox_id) IS TRUE)
       AND NOT (NEW.status IN ('queued', 'error') AND OLD.status IN ('retry', 'failed', 'expired', 'cancelled', 'error')) THEN
        PERFORM email_accounts.raise_outbox_error('status',
            format('a row that is %s cannot be made %s: only cancel() and retry() moves are allowed (queued, retry or error to cancelled, and sending to cancelled before its sender took it; retry, failed, expired, cancelled or error to queued)',
                   OLD.status, NEW.status),
            'insufficient_privilege');
    END IF;
    -- (Claimed by the sender: its status is the sender's until recorded.)
    IF NEW.status IS DISTINCT FROM OLD.status AND email_accounts.being_sent(OLD.outbox_id) THEN
        PERFORM email_accounts.raise_outbox_error('status',
            format('a row that is being sent cannot be made %s: its sender records what the server answered', NEW.status),
            'insufficient_privilege');
    END IF;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_check_update() IS
  'Trigger (for roles other than superusers, the sender among them): an outbox row''s account stays one of its tenant (or the global default) when the row is changed, a sent or bounced row keeps the account it went through, and its status moves only as cancel() and retry() move it (42501).';

CREATE FUNCTION email_accounts.outbox_after_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO email_accounts.outbox_recipient (outbox_id, address, kind)
    SELECT NEW.outbox_id, recipient.address, (array_agg(recipient.kind ORDER BY recipient.rank))[1]
      FROM (SELECT email_accounts.mailbox_address(mailbox) AS address, kind, rank
              FROM (SELECT unnest(NEW.to_addresses), 'to', 1
                    UNION ALL SELECT unnest(NEW.cc_addresses), 'cc', 2
                    UNION ALL SELECT unnest(NEW.bcc_addresses), 'bcc', 3) AS listed (mailbox, kind, rank)) AS recipient
     GROUP BY recipient.address;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_after_insert() IS
  'Trigger: one outbox_recipient row per distinct address (To before Cc before Bcc).';

CREATE FUNCTION email_accounts.outbox_inserted() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM email_accounts.wake_sender_at_commit();
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_inserted() IS 'Trigger: asks for the sender worker to be woken when the inserting transaction commits.';

-- A restore takes rows as they were dumped, recipients included (see sql/restore.sql).
CREATE TRIGGER check_and_resolve BEFORE INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.outbox_before_insert();
-- The outbox has no BEFORE UPDATE row trigger: with one, PostgreSQL locks
-- every row an UPDATE writes once more before looking at the trigger's WHEN
-- (GetTupleForTrigger), the sender's recording of every delivery included.
-- Its checks run AFTER the update instead (the statement is undone all the
-- same), and what rewrote the row for an application's update is a second,
-- rare UPDATE of that row. Drains of 20,000, four alternated pairs in one
-- cluster: row locks 2.8 → 1.7 a message, WAL 14.1 → 13.0 records and
-- 1,342 → 1,244 bytes, 22,156 → 23,973 msg/s (medians).
-- Not for superusers (the sender worker among them): the current user, not
-- the is_superuser setting, which is the session's, also while a tenant's
-- routing code runs as its owner role inside the worker. Only for rows
-- whose account, tenant or status changed (all it checks): an AFTER
-- trigger's event is kept in memory until the statement ends.
CREATE TRIGGER check_account AFTER UPDATE ON email_accounts.outbox
    FOR EACH ROW WHEN (NOT email_accounts.current_user_is_superuser()
                       AND (OLD.account_id IS DISTINCT FROM NEW.account_id OR OLD.tenant IS DISTINCT FROM NEW.tenant
                            OR OLD.status IS DISTINCT FROM NEW.status))
    EXECUTE FUNCTION email_accounts.outbox_check_update();

-- A row claimed on insert (email_accounts.claim_on_insert) and cancelled
-- before its sender took it, by cancel(): the claim goes with it, its
-- attempt uncounted. For every role (admins may not write a worker's
-- claim, so cancel() cannot: this runs as the table's owner); the sender
-- never cancels a row. (The cancelling UPDATE's RETURNING shows the row
-- before this.)
CREATE FUNCTION email_accounts.outbox_cancel_untaken_claim() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE email_accounts.outbox AS row
       SET attempts = OLD.attempts - 1, lease_until = NULL, sender_process_id = NULL, sender_started_at = NULL
     WHERE row.outbox_id = NEW.outbox_id;
    RETURN NULL;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_cancel_untaken_claim() IS
  'Trigger: a row claimed on insert and cancelled before its sender took it loses the claim, its attempt uncounted.';

-- (AFTER triggers fire in name order: this one after check_account, which
-- asks claim_never_taken() about the sender this clears.)
CREATE TRIGGER release_untaken_claim AFTER UPDATE OF status ON email_accounts.outbox
    FOR EACH ROW WHEN (OLD.status = 'sending' AND NEW.status = 'cancelled' AND OLD.claim_token IS NULL)
    EXECUTE FUNCTION email_accounts.outbox_cancel_untaken_claim();

-- The system's default account sends for tenants without a mailbox as
-- itself: no tenant sends as another's domain through the operator's server.
-- The sender asked for gets the replies. An inserted row is rewritten before
-- it is written (runs after check_and_resolve); a row re-pointed at that
-- account (retry() does, and admins may) is written a second time after
-- the update, as the table's owner, since the role that re-pointed it may
-- not write the sender or Reply-To (that UPDATE's RETURNING shows the row
-- before this).
CREATE FUNCTION email_accounts.system_sends_as_itself() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL
       AND NEW.account_id = (email_accounts.global_default_outgoing()).account_id THEN
        IF TG_OP = 'INSERT' THEN
            IF cardinality(NEW.reply_to) = 0 THEN
                NEW.reply_to := ARRAY[NEW.sender];
            END IF;
            NEW.sender := NULL;
        ELSE
            UPDATE email_accounts.outbox AS row
               SET sender = NULL,
                   reply_to = CASE WHEN cardinality(row.reply_to) = 0 THEN ARRAY[row.sender] ELSE row.reply_to END
             WHERE row.outbox_id = NEW.outbox_id;
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.system_sends_as_itself() IS
  'Trigger: a tenant''s row sent through the global default outgoing account goes out from that account''s own address; the sender it asked for becomes its Reply-To.';

CREATE TRIGGER system_sends_as_itself BEFORE INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL AND NOT email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.system_sends_as_itself();
CREATE TRIGGER system_sends_as_itself_after_update AFTER UPDATE OF account_id, tenant, sender ON email_accounts.outbox
    FOR EACH ROW WHEN (NEW.tenant IS NOT NULL AND NEW.sender IS NOT NULL AND NOT email_accounts.restoring())
    EXECUTE FUNCTION email_accounts.system_sends_as_itself();
CREATE TRIGGER split_recipients AFTER INSERT ON email_accounts.outbox
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.outbox_after_insert();
CREATE TRIGGER wake_sender AFTER INSERT ON email_accounts.outbox
    FOR EACH STATEMENT EXECUTE FUNCTION email_accounts.outbox_inserted();

-- An attachment the account would not accept incoming is refused outgoing
-- too: better a clear error in the caller's transaction than a 552 later.
-- Runs as the caller: an outbox row it cannot see is left to row-level
-- security to refuse, and nothing about it is said.
CREATE FUNCTION email_accounts.outbox_attachment_before_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued email_accounts.outbox;
    size_limit bigint;
BEGIN
    SELECT * INTO queued FROM email_accounts.outbox WHERE outbox_id = NEW.outbox_id;
    IF NOT FOUND THEN
        RETURN NEW;
    END IF;
    size_limit := coalesce((SELECT attachment_size_limit FROM email_accounts.account WHERE account_id = queued.account_id),
                           (SELECT fallback.attachment_size_limit FROM email_accounts.global_default_outgoing() AS fallback
                             WHERE fallback.account_id = queued.account_id));
    IF octet_length(NEW.content) > size_limit THEN
        PERFORM email_accounts.raise_outbox_error('attachments',
            format('attachment %s (%s) is %s bytes, over the attachment_size_limit of account %s (%s bytes)',
                   NEW.position, NEW.filename, octet_length(NEW.content), quote_literal(queued.account), size_limit),
            'program_limit_exceeded');
    END IF;
    RETURN NEW;
END;
$$;

COMMENT ON FUNCTION email_accounts.outbox_attachment_before_insert() IS
  'Trigger: refuses an attachment larger than its account''s attachment_size_limit (SQLSTATE 54000, naming the field).';

CREATE TRIGGER check_size BEFORE INSERT OR UPDATE OF content ON email_accounts.outbox_attachment
    FOR EACH ROW WHEN (NOT email_accounts.restoring()) EXECUTE FUNCTION email_accounts.outbox_attachment_before_insert();

CREATE FUNCTION email_accounts.send(
    "to"            text[] DEFAULT '{}',
    subject         text DEFAULT '',
    body_text       text DEFAULT NULL,
    body_html       text DEFAULT NULL,
    cc              text[] DEFAULT '{}',
    bcc             text[] DEFAULT '{}',
    reply_to        text[] DEFAULT '{}',
    attachments     email_accounts.attachment[] DEFAULT '{}',
    headers         jsonb DEFAULT '{}',
    account         text DEFAULT NULL,
    sender          text DEFAULT NULL,
    priority        smallint DEFAULT 0,
    send_after      timestamptz DEFAULT now(),
    expires_at      timestamptz DEFAULT NULL,
    reference_table regclass DEFAULT NULL,
    reference_id    text DEFAULT NULL,
    in_reply_to     text DEFAULT NULL,
    tenant          text DEFAULT NULL,
    reply_to_document boolean DEFAULT NULL,
    template        text DEFAULT NULL,
    context         jsonb DEFAULT NULL,
    language        text DEFAULT NULL
) RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    queued bigint;
    file email_accounts.attachment;
    position integer := 0;
BEGIN
    INSERT INTO email_accounts.outbox (to_addresses, subject, body_text, body_html, cc_addresses, bcc_addresses, reply_to,
                                       headers, account, sender, priority, send_after, expires_at, reference_table,
                                       reference_id, in_reply_to, tenant, reply_to_document, template, context, language)
    VALUES (coalesce("to", '{}'), coalesce(subject, ''), body_text, body_html, coalesce(cc, '{}'), coalesce(bcc, '{}'),
            coalesce(reply_to, '{}'), coalesce(headers, '{}'), account, sender, coalesce(priority, 0),
            coalesce(send_after, now()), expires_at, reference_table, reference_id, in_reply_to, tenant, reply_to_document,
            template, context, language)
    RETURNING outbox_id INTO queued;
    -- After the template's own attachments, if any.
    SELECT count(*) INTO position FROM email_accounts.outbox_attachment WHERE outbox_attachment.outbox_id = queued;
    -- A bad attachment raises, and the whole call (the row above too) is undone.
    FOREACH file IN ARRAY coalesce(attachments, '{}') LOOP
        position := position + 1;
        IF file.filename IS NULL OR btrim(file.filename) = '' THEN
            PERFORM email_accounts.raise_outbox_error('attachments', format('attachment %s has no filename', position));
        END IF;
        IF file.content IS NULL THEN
            PERFORM email_accounts.raise_outbox_error('attachments', format('attachment %s (%s) has no content', position, file.filename));
        END IF;
        INSERT INTO email_accounts.outbox_attachment (outbox_id, position, filename, content_type, content, content_id)
        VALUES (queued, position, file.filename, coalesce(file.content_type, 'application/octet-stream'), file.content, file.content_id);
    END LOOP;
    RETURN queued;
END;
$$;

COMMENT ON FUNCTION email_accounts.send(text[], text, text, text, text[], text[], text[], email_accounts.attachment[], jsonb, text, text, smallint, timestamptz, timestamptz, regclass, text, text, text, boolean, text, jsonb, text) IS
  'Queues a message in the caller''s transaction and returns its outbox_id; delivered after commit, never on rollback. Call with named arguments, e.g. send("to" => ''{ann@example.com}'', subject => ''Hi'', body_text => ''…''). tenant: for roles that see several tenants (default: the caller''s only tenant, else the account''s). reply_to_document: with reference_table/reference_id, Reply-To is the row''s document address (NULL: the account''s reply_to_document_address). template, context, language: render the subject and bodies not given from a template (see the template table) over context, in language.';
