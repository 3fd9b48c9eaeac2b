-- Tenants: one database serves several customers or contracts. A role bound
-- to one or more tenants sees and uses only those tenants' rows; a role bound
-- to none is not restricted (single-tenant set-ups need no rows here).

CREATE TABLE email_accounts.tenant_member (
    role_name name NOT NULL,
    tenant    text NOT NULL CONSTRAINT "tenant must not be empty" CHECK (tenant <> ''),
    PRIMARY KEY (role_name, tenant)
);

COMMENT ON TABLE email_accounts.tenant_member IS
  'Binds database roles to tenants. A role that is a member of a bound role sees only rows of those tenants in account, outbox and message; a role bound to no tenant sees all. Only superusers change this table.';
COMMENT ON COLUMN email_accounts.tenant_member.role_name IS 'A database role; its members are bound too.';
COMMENT ON COLUMN email_accounts.tenant_member.tenant IS 'The tenant the role may see and use.';

-- Each role sees only its own bindings, so tenants do not learn of each other.
ALTER TABLE email_accounts.tenant_member ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_bindings ON email_accounts.tenant_member
    FOR SELECT USING (pg_catalog.pg_has_role(current_user, role_name, 'MEMBER'));

-- The tenants the current role is bound to, evaluated for current_user
-- explicitly. Superusers are bound to none (pg_has_role would make them
-- members of every role, and row-level security never applies to them).
CREATE FUNCTION email_accounts.current_tenants() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE
RETURN (SELECT coalesce(array_agg(DISTINCT binding.tenant), '{}')
          FROM email_accounts.tenant_member AS binding
         WHERE NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)
           AND coalesce(pg_catalog.pg_has_role(current_user, pg_catalog.to_regrole(pg_catalog.quote_ident(binding.role_name)), 'MEMBER'), false));

COMMENT ON FUNCTION email_accounts.current_tenants() IS
  'The tenants the current role is bound to (directly or through role membership); empty when it is bound to none.';

-- Used by the row-level security policies of tenant-keyed tables.
CREATE FUNCTION email_accounts.tenant_is_visible(tenant text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN cardinality(email_accounts.current_tenants()) = 0 OR tenant = ANY (email_accounts.current_tenants());

COMMENT ON FUNCTION email_accounts.tenant_is_visible(text) IS
  'True when the current role may see rows of this tenant: it is bound to it, or it is bound to no tenant at all. Used by row-level security.';

SELECT pg_catalog.pg_extension_config_dump('email_accounts.tenant_member', '');
