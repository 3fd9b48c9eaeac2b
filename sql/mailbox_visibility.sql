-- Who may read a mailbox inside its tenant (account.visibility): the row-level
-- security of the mail tables (sql/security.sql) hides the mail of the
-- accounts this returns, and send() and sync_now() refuse them.

-- Runs as the caller (current_user, so after SET ROLE the role set), under
-- the account table's own row-level security: accounts of tenants it cannot
-- see are not listed, their rows are hidden by the tenant check already.
-- Called once per query, as (SELECT email_accounts.hidden_mailboxes()).
-- PL/pgSQL for its kept plan (see tenants_of() in sql/tenants.sql).
CREATE FUNCTION email_accounts.hidden_mailboxes() RETURNS bigint[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN (
        SELECT coalesce(array_agg(account.account_id ORDER BY account.account_id), '{}')
          FROM email_accounts.account
         WHERE account.visibility <> 'tenant'
           AND NOT coalesce(pg_has_role(current_user, to_regrole('email_accounts_admin'), 'MEMBER'), false)
           AND NOT coalesce(pg_has_role(current_user, to_regrole(quote_ident(account.owner_role)), 'MEMBER'), false)
           AND NOT (account.visibility = 'shared'
                    AND EXISTS (SELECT FROM unnest(account.shared_with) AS reader (role_name)
                                 WHERE coalesce(pg_has_role(current_user, to_regrole(quote_ident(reader.role_name)), 'MEMBER'), false))));
END;
$$;

COMMENT ON FUNCTION email_accounts.hidden_mailboxes() IS
  'The accounts of the current role''s tenants whose mail it may not see or send: visibility private or shared, and it is neither a member of owner_role, nor (for shared) of a role in shared_with, nor of email_accounts_admin. Superusers see everything (row-level security does not apply to them).';

-- The error send() and sync_now() give, naming the account (anyone may
-- raise it: it says nothing the caller cannot see).
CREATE FUNCTION email_accounts.raise_mailbox_hidden(account_name text) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'account %: its mail is private to the members of its owner role (and the roles it is shared with)', quote_literal(account_name)
        USING ERRCODE = 'insufficient_privilege', SCHEMA = 'email_accounts', TABLE = 'account', COLUMN = 'visibility',
              HINT = 'Send through another account, or ask an email_accounts admin to share it (visibility, shared_with).';
END;
$$;

COMMENT ON FUNCTION email_accounts.raise_mailbox_hidden(text) IS
  'Raises insufficient_privilege (42501) naming an account whose visibility excludes the current role.';
