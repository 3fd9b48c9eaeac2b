//! SASL bearer-token mechanisms for OAuth2 sign-in (issue 15): XOAUTH2
//! (Google's, the one Microsoft accepts) and OAUTHBEARER (RFC 7628). Builds
//! the client's response, reads the error a server sends as a challenge when
//! it refuses the token, and chooses a mechanism from what a server offers.
//! SMTP, IMAP and POP3 carry the same bytes. No I/O here.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

/// A SASL mechanism that carries an OAuth2 access token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerMechanism {
    Xoauth2,
    Oauthbearer,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// A value that would break the message's framing (\x01, CR, LF, or a
    /// space inside a token); never echoed, it may be a secret.
    #[error("the {field} for {mechanism} contains a control character or a space")]
    BadCharacter { field: &'static str, mechanism: &'static str },
}

impl BearerMechanism {
    /// The mechanism's name in AUTH / AUTHENTICATE commands and capabilities.
    pub fn name(self) -> &'static str {
        match self {
            BearerMechanism::Xoauth2 => "XOAUTH2",
            BearerMechanism::Oauthbearer => "OAUTHBEARER",
        }
    }

    /// The client's response carrying the token, before base64. `host` and
    /// `port` are the server's (OAUTHBEARER names them; XOAUTH2 does not).
    pub fn client_response(self, user: &str, token: &str, host: &str, port: u16) -> Result<Vec<u8>, SaslError> {
        let mechanism = self.name();
        if user.contains(['\x01', '\r', '\n']) {
            return Err(SaslError::BadCharacter { field: "login", mechanism });
        }
        if token.is_empty() || token.contains(|character: char| character.is_ascii_control() || character == ' ') {
            return Err(SaslError::BadCharacter { field: "access token", mechanism });
        }
        let text = match self {
            BearerMechanism::Xoauth2 => format!("user={user}\x01auth=Bearer {token}\x01\x01"),
            BearerMechanism::Oauthbearer => {
                if host.contains(['\x01', '\r', '\n']) {
                    return Err(SaslError::BadCharacter { field: "host", mechanism });
                }
                // RFC 5801 saslname: ',' and '=' are escaped in the authzid.
                let authorization = user.replace('=', "=3D").replace(',', "=2C");
                format!("n,a={authorization},\x01host={host}\x01port={port}\x01auth=Bearer {token}\x01\x01")
            }
        };
        Ok(text.into_bytes())
    }

    /// The client response in base64, as the AUTH line or the answer to `+ ` / `334 ` carries it.
    pub fn encoded_client_response(self, user: &str, token: &str, host: &str, port: u16) -> Result<String, SaslError> {
        self.client_response(user, token, host, port).map(|bytes| STANDARD.encode(bytes))
    }

    /// What the client sends after the server's error challenge, so the
    /// server ends the exchange with its failure reply (535, NO, -ERR):
    /// RFC 7628 §3.2.3's %x01 for OAUTHBEARER, an empty response for XOAUTH2.
    pub fn response_to_refusal(self) -> &'static [u8] {
        match self {
            BearerMechanism::Xoauth2 => b"",
            BearerMechanism::Oauthbearer => b"\x01",
        }
    }

    /// The same in base64, as a line of SMTP or POP3 carries it.
    pub fn encoded_response_to_refusal(self) -> &'static str {
        match self {
            BearerMechanism::Xoauth2 => "",
            BearerMechanism::Oauthbearer => "AQ==",
        }
    }
}

/// Why a server refused a token, from the JSON it sends as a challenge
/// (RFC 7628 §3.2.2; Google and Microsoft send the same shape).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refusal {
    /// `invalid_token`, `insufficient_scope`, or an HTTP-like code such as `400`.
    pub status: String,
    /// The scope the server wants, when it says.
    pub scope: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.scope {
            Some(scope) => write!(formatter, "the server refused the access token ({}; scope {scope})", self.status),
            None => write!(formatter, "the server refused the access token ({})", self.status),
        }
    }
}

/// The refusal in a server's challenge (base64, as after `334 ` or `+ `);
/// `None` when it is not one (then it is a protocol error to the caller).
pub fn parse_refusal(challenge: &str) -> Option<Refusal> {
    parse_decoded_refusal(&STANDARD.decode(challenge.trim()).ok()?)
}

/// The same, from a challenge already decoded (as IMAP clients hand it over).
pub fn parse_decoded_refusal(challenge: &[u8]) -> Option<Refusal> {
    let value: serde_json::Value = serde_json::from_slice(challenge).ok()?;
    let object = value.as_object()?;
    let text = |key: &str| -> Option<String> {
        object.get(key).and_then(|field| match field {
            serde_json::Value::String(text) => Some(text.clone()),
            serde_json::Value::Number(number) => Some(number.to_string()),
            _ => None,
        })
    };
    let cleaned = |text: String| crate::oauth::clean(&text);
    Some(Refusal { status: text("status").map(cleaned)?, scope: text("scope").map(cleaned) })
}

/// The mechanism to use with a server that offers `offered` (names as in
/// its capabilities, any case): the account's choice if offered, else
/// XOAUTH2 (what every provider takes), else OAUTHBEARER; `None` when the
/// server offers neither.
pub fn choose<'a>(
    offered: impl IntoIterator<Item = &'a str>,
    wanted: Option<BearerMechanism>,
) -> Option<BearerMechanism> {
    let offered: Vec<String> = offered.into_iter().map(str::to_ascii_uppercase).collect();
    let is_offered = |mechanism: BearerMechanism| offered.iter().any(|name| name == mechanism.name());
    match wanted {
        Some(mechanism) => is_offered(mechanism).then_some(mechanism),
        None => [BearerMechanism::Xoauth2, BearerMechanism::Oauthbearer]
            .into_iter()
            .find(|mechanism| is_offered(*mechanism)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoauth2_is_googles_example_byte_for_byte() {
        // https://developers.google.com/gmail/imap/xoauth2-protocol
        let encoded = BearerMechanism::Xoauth2
            .encoded_client_response("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", "", 0)
            .unwrap();
        assert_eq!(
            encoded,
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn oauthbearer_is_rfc_7628s_example_byte_for_byte() {
        // RFC 7628 section 4.1.
        let encoded = BearerMechanism::Oauthbearer
            .encoded_client_response(
                "user@example.com",
                "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
                "server.example.com",
                143,
            )
            .unwrap();
        assert_eq!(
            encoded,
            "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB"
        );
        // The authorization identity escapes ',' and '='.
        let raw = BearerMechanism::Oauthbearer.client_response("a,b=c", "t", "h", 1).unwrap();
        assert!(raw.starts_with(b"n,a=a=2Cb=3Dc,\x01"));
    }

    #[test]
    fn values_that_would_break_the_framing_are_refused_without_echoing_them() {
        let bad_login = SaslError::BadCharacter { field: "login", mechanism: "XOAUTH2" };
        let bad_token = SaslError::BadCharacter { field: "access token", mechanism: "XOAUTH2" };
        for (user, token, expected) in [
            ("a\x01b", "secret", &bad_login),
            ("a\r\nb", "secret", &bad_login),
            ("a", "secret\x01part", &bad_token),
            ("a", "secret part", &bad_token),
            ("a", "", &bad_token),
        ] {
            let error = BearerMechanism::Xoauth2.client_response(user, token, "h", 1).unwrap_err();
            assert_eq!(&error, expected);
            assert!(!error.to_string().contains("secret"), "{error}");
        }
        assert!(BearerMechanism::Oauthbearer.client_response("a", "t", "h\x01", 1).is_err());
    }

    #[test]
    fn a_refusal_challenge_is_read_and_answered() {
        // RFC 7628 section 4.3's error, and Google's shape (status as a number-like string).
        let refusal = parse_refusal(
            "eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIiwic2NvcGUiOiJleGFtcGxlX3Njb3BlIiwib3BlbmlkLWNvbmZpZ3VyYXRpb24iOiJodHRwczovL2V4YW1wbGUuY29tLy53ZWxsLWtub3duL29wZW5pZC1jb25maWd1cmF0aW9uIn0=",
        )
        .unwrap();
        assert_eq!(refusal, Refusal { status: "invalid_token".to_owned(), scope: Some("example_scope".to_owned()) });
        assert_eq!(refusal.to_string(), "the server refused the access token (invalid_token; scope example_scope)");
        let google = STANDARD.encode(r#"{"status":"400","schemes":"Bearer","scope":"https://mail.google.com/"}"#);
        assert_eq!(parse_refusal(&google).unwrap().status, "400");
        assert_eq!(parse_refusal("not base64!"), None);
        assert_eq!(parse_refusal(&STANDARD.encode("[1]")), None);
        assert_eq!(BearerMechanism::Oauthbearer.response_to_refusal(), b"\x01");
        assert_eq!(BearerMechanism::Xoauth2.response_to_refusal(), b"");
        for mechanism in [BearerMechanism::Xoauth2, BearerMechanism::Oauthbearer] {
            assert_eq!(mechanism.encoded_response_to_refusal(), STANDARD.encode(mechanism.response_to_refusal()));
        }
    }

    #[test]
    fn the_mechanism_is_chosen_from_what_the_server_offers() {
        assert_eq!(choose(["PLAIN", "xoauth2", "OAUTHBEARER"], None), Some(BearerMechanism::Xoauth2));
        assert_eq!(choose(["OAUTHBEARER"], None), Some(BearerMechanism::Oauthbearer));
        assert_eq!(
            choose(["XOAUTH2", "OAUTHBEARER"], Some(BearerMechanism::Oauthbearer)),
            Some(BearerMechanism::Oauthbearer)
        );
        assert_eq!(choose(["XOAUTH2"], Some(BearerMechanism::Oauthbearer)), None);
        assert_eq!(choose(["PLAIN", "LOGIN"], None), None);
    }
}
