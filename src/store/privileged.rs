//! Functions that touch secrets (`set_password`, `test_account`) or the
//! worker's tables (`reparse`) are not SECURITY DEFINER: they first decide
//! on behalf of the role that is really calling — `GetUserId()`, which is
//! the role a security-restricted operation runs as (an account's owner role
//! inside the receiver's routing), never the worker's superuser behind it —
//! and only then do the privileged part as the extension's owner.

use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// The role on whose behalf the current SQL function acts.
pub fn caller() -> pg_sys::Oid {
    unsafe { pg_sys::GetUserId() }
}

/// Whether the caller runs inside a security-restricted operation (an index
/// expression, a maintenance command, or the receiver's routing code).
pub fn in_restricted_operation() -> bool {
    unsafe { pg_sys::InSecurityRestrictedOperation() }
}

/// Runs `body` as `role`, adding `context` (SECURITY_* flags) to the
/// caller's security context; SET ROLE is refused inside (the user change is
/// local). An error rolls back to the enclosing (sub)transaction, which
/// restores the user.
pub fn as_user<R>(role: pg_sys::Oid, context: u32, body: impl FnOnce() -> R) -> R {
    let mut saved_user = pg_sys::InvalidOid;
    let mut saved_context = 0;
    unsafe {
        pg_sys::GetUserIdAndSecContext(&mut saved_user, &mut saved_context);
        pg_sys::SetUserIdAndSecContext(role, saved_context | (pg_sys::SECURITY_LOCAL_USERID_CHANGE | context) as i32);
    }
    let result = body();
    unsafe { pg_sys::SetUserIdAndSecContext(saved_user, saved_context) };
    result
}

/// Runs `body` as the owner of the extension (who owns its tables).
pub fn as_extension_owner<R>(body: impl FnOnce() -> R) -> Result<R, SpiError> {
    let owner = Spi::get_one::<pg_sys::Oid>(
        "SELECT extowner FROM pg_catalog.pg_extension WHERE extname OPERATOR(pg_catalog.=) 'email_accounts'",
    )?
    .unwrap_or(pg_sys::InvalidOid);
    Ok(as_user(owner, 0, body))
}
