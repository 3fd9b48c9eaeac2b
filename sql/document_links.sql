-- Automatic linking (ERPNext "Enable Automatic Linking"): every application
-- row has a mail address of its own, the account's address with a
-- sub-address naming it (local+<table>=<id>@domain, both percent-encoded).
-- Mail to it is linked to the row by the receiver (src/store/routing.rs);
-- mail about the row can carry it as Reply-To.

ALTER TABLE email_accounts.outbox ADD COLUMN reply_to_document boolean;

COMMENT ON COLUMN email_accounts.outbox.reply_to_document IS
  'With reference_table/reference_id: Reply-To is that row''s document address (see document_address()), so answers come back linked; NULL follows the account''s reply_to_document_address.';

-- The document address of a row for an account: the tenant's (or the only
-- visible) default incoming account when none is named. Runs as the caller:
-- only accounts it can see, and only those with automatic linking on.
CREATE FUNCTION email_accounts.document_address(reference_table regclass, reference_id text, account text DEFAULT NULL,
                                                tenant text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    chosen email_accounts.account;
    candidate email_accounts.account;
    matches integer := 0;
BEGIN
    IF reference_table IS NULL OR reference_id IS NULL OR reference_id = '' THEN
        RAISE EXCEPTION 'document_address needs a reference_table and a reference_id'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    FOR candidate IN
        SELECT * FROM email_accounts.account
         WHERE (CASE WHEN document_address.account IS NULL THEN account.default_incoming ELSE account.name = document_address.account END)
           AND (document_address.tenant IS NULL OR account.tenant = document_address.tenant)
    LOOP
        matches := matches + 1;
        chosen := candidate;
    END LOOP;
    IF matches <> 1 THEN
        RAISE EXCEPTION '%', CASE WHEN matches = 0 THEN format('no account %s is visible', coalesce(quote_literal(document_address.account), 'that is a default incoming account'))
                                  ELSE format('%s accounts match; name the account and its tenant', matches) END
            USING ERRCODE = CASE WHEN matches = 0 THEN 'undefined_object' ELSE 'ambiguous_parameter' END;
    END IF;
    IF NOT chosen.enable_automatic_linking THEN
        RAISE EXCEPTION 'account %: enable_automatic_linking is off, so mail to a document address would not be linked', quote_literal(chosen.name)
            USING ERRCODE = 'object_not_in_prerequisite_state', HINT = 'Turn enable_automatic_linking on for the account.';
    END IF;
    -- Schema-qualified, so the receiver (whatever its search_path) finds the same table.
    RETURN email_accounts.tagged_address(chosen.address,
        (SELECT pg_catalog.format('%I.%I', namespace.nspname, class.relname)
           FROM pg_catalog.pg_class AS class JOIN pg_catalog.pg_namespace AS namespace ON namespace.oid = class.relnamespace
          WHERE class.oid = reference_table),
        reference_id);
END;
$$;

COMMENT ON FUNCTION email_accounts.document_address(regclass, text, text, text) IS
  'The mail address of an application row for automatic linking: the account''s address with a sub-address naming the table and key (local+<table>=<id>@domain, percent-encoded, so any name round-trips). The account is the named one (in tenant) or the default incoming account; it must have enable_automatic_linking on. Runs as the caller.';
