//! OAuth2 for mail sign-in (issue 15): talking to a provider's token
//! endpoint (refresh tokens, client credentials, the device-code flow of RFC
//! 8628) with the `oauth2` crate over our HTTPS client, and keeping a
//! connection's access token fresh while it signs in. No PostgreSQL here;
//! nothing in this module writes a token or a client secret into an error.

mod error;
mod http;
mod renewal;
mod token_endpoint;

pub use error::{clean, OAuthError};
pub use renewal::{Grant, Renewal, SignIn, TokenReport};
pub use token_endpoint::{DeviceLogin, DevicePoll, OAuthClient, Tokens};
