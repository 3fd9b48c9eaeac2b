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

-- Inlined into the row-level security policies of tenant-keyed tables.
CREATE FUNCTION email_accounts.tenant_is_visible(tenant text) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
RETURN NOT EXISTS (SELECT FROM email_accounts.tenant_member)
    OR tenant IN (SELECT binding.tenant FROM email_accounts.tenant_member AS binding);

COMMENT ON FUNCTION email_accounts.tenant_is_visible(text) IS
  'True when the current role may see rows of this tenant: it is bound to it, or it is bound to no tenant at all. Used by row-level security.';

SELECT pg_catalog.pg_extension_config_dump('email_accounts.tenant_member', '');
