//! Looking up accounts on behalf of a caller, with the permission rules of
//! functions that touch secrets: superusers, members of the account's owner
//! role, and email_accounts_admin members bound to the account's tenant.
//! Run as the extension owner (row-level security does not apply), so every
//! rule about the caller is spelled out here, for the caller's role.

use pgrx::prelude::*;
use pgrx::spi::SpiError;

#[derive(Debug, thiserror::Error)]
pub enum AccountAccessError {
    #[error("no account named {0:?}")]
    Unknown(String),
    #[error("account name {0:?} is ambiguous: accounts of several tenants you can see have it")]
    Ambiguous(String),
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

// Accounts named $1 (in tenant $3 when given) that the caller $2 can see,
// and whether it may manage each. Deny by default: a role bound to no
// tenant sees none.
const ACCESS_QUERY: &str = "
SELECT account.account_id,
       account.ascii_encode_password,
       coalesce((SELECT role.rolsuper FROM pg_catalog.pg_roles AS role WHERE role.oid OPERATOR(pg_catalog.=) $2), false)
       OR coalesce(pg_catalog.pg_has_role($2, pg_catalog.to_regrole(pg_catalog.quote_ident(account.owner_role)), 'MEMBER'), false)
       OR coalesce(pg_catalog.pg_has_role($2, pg_catalog.to_regrole('email_accounts_admin'), 'MEMBER'), false) AS may_manage
  FROM email_accounts.account
 WHERE account.name OPERATOR(pg_catalog.=) $1
   AND ($3::text IS NULL OR account.tenant OPERATOR(pg_catalog.=) $3)
   AND email_accounts.tenant_is_among(account.tenant, email_accounts.tenants_of($2))";

/// The account named `name` (in `tenant`, when given) if `caller` may
/// manage it (set its password, test it). Another tenant's account looks
/// like an unknown one.
pub fn managed_by(name: &str, tenant: Option<&str>, caller: pg_sys::Oid) -> Result<ManagedAccount, AccountAccessError> {
    let visible = Spi::connect(|client| -> Result<Vec<(i64, bool, bool)>, SpiError> {
        client
            .select(ACCESS_QUERY, Some(2), &[name.into(), caller.into(), tenant.into()])?
            .map(|row| {
                Ok((
                    row.get::<i64>(1)?.unwrap_or_default(),
                    row.get::<bool>(2)?.unwrap_or_default(),
                    row.get::<bool>(3)?.unwrap_or_default(),
                ))
            })
            .collect()
    })?;
    match visible.as_slice() {
        [] => Err(AccountAccessError::Unknown(name.to_owned())),
        [(_, _, false)] => Err(AccountAccessError::Denied(name.to_owned())),
        [(account_id, ascii_encode_password, true)] => Ok(ManagedAccount {
            account_id: *account_id,
            name: name.to_owned(),
            ascii_encode_password: *ascii_encode_password,
        }),
        _ => Err(AccountAccessError::Ambiguous(name.to_owned())),
    }
}
