//! Looking up accounts on behalf of a caller, with the permission rules of
//! functions that touch secrets: superusers, members of the account's owner
//! role, and email_accounts_admin members who may see the account's tenant.

use pgrx::prelude::*;
use pgrx::spi::SpiError;

#[derive(Debug, thiserror::Error)]
pub enum AccountAccessError {
    #[error("no account named {0:?}")]
    Unknown(String),
    #[error("permission denied for account {0:?}: only its owner role, a superuser, or an email_accounts_admin of its tenant may do this")]
    Denied(String),
    #[error(transparent)]
    Spi(#[from] SpiError),
}

/// An account the caller may manage.
#[derive(Debug, Clone)]
pub struct ManagedAccount {
    pub account_id: i64,
    pub name: String,
    pub ascii_encode_password: bool,
}

// Tenant bindings of the caller ($2), evaluated for that role explicitly
// because these functions run as SECURITY DEFINER.
const ACCESS_QUERY: &str = "
WITH caller_tenants AS (
    SELECT binding.tenant
      FROM email_accounts.tenant_member AS binding
     WHERE coalesce(pg_catalog.pg_has_role($2, pg_catalog.to_regrole(pg_catalog.quote_ident(binding.role_name)), 'MEMBER'), false)
)
SELECT account.account_id,
       account.ascii_encode_password,
       NOT EXISTS (SELECT FROM caller_tenants) OR account.tenant IN (SELECT tenant FROM caller_tenants) AS visible,
       coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = $2), false)
       OR coalesce(pg_catalog.pg_has_role($2, pg_catalog.to_regrole(pg_catalog.quote_ident(account.owner_role)), 'MEMBER'), false)
       OR coalesce(pg_catalog.pg_has_role($2, pg_catalog.to_regrole('email_accounts_admin'), 'MEMBER'), false) AS may_manage,
       coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = $2), false) AS is_superuser
  FROM email_accounts.account
 WHERE account.name = $1";

/// What ACCESS_QUERY says about one account and one caller.
struct Access {
    account_id: i64,
    ascii_encode_password: bool,
    visible: bool,
    may_manage: bool,
    is_superuser: bool,
}

/// The account named `name` if `caller` may manage it (set its password, test it).
pub fn managed_by(name: &str, caller: pg_sys::Oid) -> Result<ManagedAccount, AccountAccessError> {
    let access = Spi::connect(|client| -> Result<Option<Access>, SpiError> {
        let table = client.select(ACCESS_QUERY, Some(1), &[name.into(), caller.into()])?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok(Some(Access {
            account_id: row.get::<i64>(1)?.unwrap_or_default(),
            ascii_encode_password: row.get::<bool>(2)?.unwrap_or_default(),
            visible: row.get::<bool>(3)?.unwrap_or_default(),
            may_manage: row.get::<bool>(4)?.unwrap_or_default(),
            is_superuser: row.get::<bool>(5)?.unwrap_or_default(),
        }))
    })?;
    match access {
        // Accounts of other tenants look like unknown ones.
        None => Err(AccountAccessError::Unknown(name.to_owned())),
        Some(access) if !access.visible && !access.is_superuser => Err(AccountAccessError::Unknown(name.to_owned())),
        Some(access) if !access.may_manage => Err(AccountAccessError::Denied(name.to_owned())),
        Some(access) => Ok(ManagedAccount {
            account_id: access.account_id,
            name: name.to_owned(),
            ascii_encode_password: access.ascii_encode_password,
        }),
    }
}
