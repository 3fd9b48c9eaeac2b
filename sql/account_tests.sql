-- Testing every account from psql.

CREATE FUNCTION email_accounts.test_all()
RETURNS TABLE (account text, ok boolean, result jsonb)
LANGUAGE sql VOLATILE SET search_path = pg_catalog, pg_temp
AS $$
    SELECT tested.name, (report ->> 'ok')::boolean, report
      FROM email_accounts.account AS tested
     CROSS JOIN LATERAL email_accounts.test_account(tested.name, tested.tenant) AS report
     WHERE tested.enable_incoming OR tested.enable_outgoing
     ORDER BY tested.name
$$;
