-- Tenants: one database serves several customers or contracts. Deny by
-- default: a role sees the rows of the tenants it is bound to here (directly
-- or through a role it is a member of), a role bound to '*' sees every
-- tenant, and a role bound to nothing sees nothing. Superusers see all.

CREATE TABLE email_accounts.tenant_member (
    role_name name NOT NULL
              CONSTRAINT "role_name must not be one of the email_accounts group roles"
              CHECK (role_name NOT IN ('email_accounts_admin', 'email_accounts_sender')),
    tenant    text NOT NULL CONSTRAINT "tenant must not be empty" CHECK (tenant <> ''),
    PRIMARY KEY (role_name, tenant)
);

COMMENT ON TABLE email_accounts.tenant_member IS
  'Binds database roles to tenants. A role that is a member of a bound role sees and uses only rows of those tenants in every table of the extension; tenant ''*'' binds a role to every tenant (and to rows without tenant). A role bound to nothing sees nothing. The group roles email_accounts_admin and email_accounts_sender cannot be bound (every tenant''s roles are their members). Only superusers change this table.';
COMMENT ON COLUMN email_accounts.tenant_member.role_name IS 'A database role; its members are bound too.';
COMMENT ON COLUMN email_accounts.tenant_member.tenant IS 'The tenant the role may see and use, or * for all tenants.';

-- Each role sees only its own bindings, so tenants do not learn of each other.
ALTER TABLE email_accounts.tenant_member ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_bindings ON email_accounts.tenant_member
    FOR SELECT USING (coalesce(pg_catalog.pg_has_role(current_user, pg_catalog.to_regrole(pg_catalog.quote_ident(role_name)), 'MEMBER'), false));

-- The tenants a role is bound to. Evaluated for an explicit role because
-- SECURITY DEFINER code (set_password, the workers) asks on a caller's
-- behalf. A superuser counts as bound to '*' (row-level security never
-- applies to it anyway); pg_has_role would otherwise make it a member of
-- every bound role. PL/pgSQL, as is current_tenants(): PostgreSQL 15 plans
-- the body of an SQL function that reads a table afresh wherever a query
-- starts it, so every policy check and every row a tenant's role queued
-- planned both (0.3 ms each, six times per INSERT into the outbox);
-- PL/pgSQL keeps its plans for the session.
CREATE FUNCTION email_accounts.tenants_of(member oid) RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF (SELECT role.rolsuper FROM pg_roles AS role WHERE role.oid = member) THEN
        RETURN ARRAY['*'];
    END IF;
    RETURN (SELECT coalesce(array_agg(DISTINCT binding.tenant ORDER BY binding.tenant), '{}')
              FROM email_accounts.tenant_member AS binding
             WHERE coalesce(pg_has_role(member, to_regrole(quote_ident(binding.role_name)), 'MEMBER'), false));
END;
$$;

COMMENT ON FUNCTION email_accounts.tenants_of(oid) IS
  'The tenants a role is bound to (directly or through role membership); {*} for superusers and roles bound to every tenant; empty when it is bound to none.';

CREATE FUNCTION email_accounts.current_tenants() RETURNS text[]
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RETURN email_accounts.tenants_of((SELECT role.oid FROM pg_roles AS role WHERE role.rolname = current_user));
END;
$$;

COMMENT ON FUNCTION email_accounts.current_tenants() IS
  'The tenants the current role (current_user, so after SET ROLE the role set) is bound to; {*} when bound to every tenant; empty when bound to none.';

-- Whether a role bound to these tenants may see a row of this tenant. Rows
-- without tenant belong to the whole database: only '*' sees them (a NULL
-- element overlaps nothing). `tenants` is used once, so the planner inlines
-- the function around the policies' (SELECT current_tenants()), which is
-- then evaluated once per query rather than once per row.
CREATE FUNCTION email_accounts.tenant_is_among(tenant text, tenants text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN tenants OPERATOR(pg_catalog.&&) ARRAY['*', tenant];

COMMENT ON FUNCTION email_accounts.tenant_is_among(text, text[]) IS
  'True when a row of this tenant is visible to a role bound to these tenants: one of them is the row''s tenant, or * (every tenant, and rows without tenant).';

-- For one-off checks; the row-level security policies call tenant_is_among
-- with (SELECT current_tenants()) so that it is evaluated once per query.
CREATE FUNCTION email_accounts.tenant_is_visible(tenant text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN email_accounts.tenant_is_among(tenant, email_accounts.current_tenants());

COMMENT ON FUNCTION email_accounts.tenant_is_visible(text) IS
  'True when the current role may see rows of this tenant: it is bound to it or to *; a role bound to no tenant sees nothing. The row-level security policies ask the same with the role''s tenants looked up once per query.';

CREATE FUNCTION email_accounts.bound_to_every_tenant() RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN '*' OPERATOR(pg_catalog.=) ANY (email_accounts.current_tenants());

COMMENT ON FUNCTION email_accounts.bound_to_every_tenant() IS
  'True when the current role is a superuser or bound to tenant *: only such roles change the shared domains and provider presets.';

SELECT pg_catalog.pg_extension_config_dump('email_accounts.tenant_member', '');
