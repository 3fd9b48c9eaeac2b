//! Reading an account's effective settings (view account_settings) into the
//! values the mail core needs to connect.

use crate::settings;
use email_accounts_mail::connection::{Endpoint, Security};
use pgrx::prelude::*;
use pgrx::spi::SpiError;

/// One side (incoming or outgoing) of an account: where its server is.
#[derive(Debug, Clone, Default)]
pub struct ServerSettings {
    pub protocol: Option<String>,
    pub host: Option<String>,
    pub port: Option<i32>,
    pub security: Option<String>,
}

impl ServerSettings {
    /// Where to connect, with the account's extra CA and the configured timeout.
    pub fn endpoint(&self, extra_ca_certificate: Option<String>) -> Endpoint {
        Endpoint {
            host: self.host.clone().unwrap_or_default(),
            port: self.port.unwrap_or_default().clamp(0, u16::MAX as i32) as u16,
            security: self.security.as_deref().and_then(Security::parse).unwrap_or(Security::Ssl),
            extra_ca_pem: extra_ca_certificate,
            timeout: settings::connect_timeout(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct EffectiveAccount {
    pub account_id: i64,
    pub name: String,
    pub login_id: String,
    pub awaiting_password: bool,
    pub password_is_set: bool,
    pub allow_plaintext_authentication: bool,
    pub extra_ca_certificate: Option<String>,
    pub enable_incoming: bool,
    pub incoming: ServerSettings,
    pub enable_outgoing: bool,
    pub outgoing: ServerSettings,
    pub no_smtp_authentication: bool,
    /// The incoming side signs in with an OAuth2 access token.
    pub oauth2: bool,
    /// The SMTP side's login, sign-in and whether its password is stored
    /// (load_with_sign_in; the incoming side's until then).
    pub smtp_login_id: String,
    pub smtp_oauth2: bool,
    pub smtp_password_is_set: bool,
    /// account_settings.oauth_state (NULL for password accounts).
    pub oauth_state: Option<String>,
}

const SETTINGS_QUERY: &str = "
SELECT account_id, name, login_id, awaiting_password, password_is_set, allow_plaintext_authentication,
       extra_ca_certificate, enable_incoming, incoming_protocol, incoming_host, incoming_port, incoming_security,
       enable_outgoing, smtp_host, smtp_port, smtp_security, no_smtp_authentication
  FROM email_accounts.account_settings
 WHERE account_id = $1";

/// The settings with how each side signs in (auth_method, oauth_state and the
/// SMTP side's: 0.4.0 columns, asked for separately so set_password() still
/// works on an older schema until ALTER EXTENSION UPDATE).
pub fn load_with_sign_in(account_id: i64) -> Result<Option<EffectiveAccount>, SpiError> {
    let Some(mut settings) = load(account_id)? else { return Ok(None) };
    Spi::connect(|client| {
        let table = client.select(
            "SELECT auth_method = 'oauth2', oauth_state, smtp_login_id, smtp_auth_method = 'oauth2', smtp_password_is_set
               FROM email_accounts.account_settings WHERE account_id = $1",
            Some(1),
            &[account_id.into()],
        )?;
        if !table.is_empty() {
            let row = table.first();
            settings.oauth2 = row.get::<bool>(1)?.unwrap_or(false);
            settings.oauth_state = row.get::<String>(2)?;
            settings.smtp_login_id = row.get::<String>(3)?.unwrap_or_else(|| settings.login_id.clone());
            settings.smtp_oauth2 = row.get::<bool>(4)?.unwrap_or(false);
            settings.smtp_password_is_set = row.get::<bool>(5)?.unwrap_or(false);
        }
        Ok::<_, SpiError>(())
    })?;
    Ok(Some(settings))
}

pub fn load(account_id: i64) -> Result<Option<EffectiveAccount>, SpiError> {
    Spi::connect(|client| {
        let table = client.select(SETTINGS_QUERY, Some(1), &[account_id.into()])?;
        if table.is_empty() {
            return Ok(None);
        }
        let row = table.first();
        Ok(Some(EffectiveAccount {
            account_id: row.get::<i64>(1)?.unwrap_or_default(),
            name: row.get::<String>(2)?.unwrap_or_default(),
            login_id: row.get::<String>(3)?.unwrap_or_default(),
            awaiting_password: row.get::<bool>(4)?.unwrap_or_default(),
            password_is_set: row.get::<bool>(5)?.unwrap_or_default(),
            allow_plaintext_authentication: row.get::<bool>(6)?.unwrap_or_default(),
            extra_ca_certificate: row.get::<String>(7)?,
            enable_incoming: row.get::<bool>(8)?.unwrap_or_default(),
            incoming: ServerSettings {
                protocol: row.get::<String>(9)?,
                host: row.get::<String>(10)?,
                port: row.get::<i32>(11)?,
                security: row.get::<String>(12)?,
            },
            enable_outgoing: row.get::<bool>(13)?.unwrap_or_default(),
            outgoing: ServerSettings {
                protocol: Some("smtp".to_owned()),
                host: row.get::<String>(14)?,
                port: row.get::<i32>(15)?,
                security: row.get::<String>(16)?,
            },
            no_smtp_authentication: row.get::<bool>(17)?.unwrap_or_default(),
            oauth2: false,
            smtp_login_id: row.get::<String>(3)?.unwrap_or_default(),
            smtp_oauth2: false,
            smtp_password_is_set: row.get::<bool>(5)?.unwrap_or_default(),
            oauth_state: None,
        }))
    })
}
