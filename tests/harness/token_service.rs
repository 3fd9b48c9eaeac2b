//! An OAuth2 authorization server of our own on 127.0.0.1 over HTTPS (the
//! run's CA), standing in for Microsoft's or Google's: a token endpoint
//! (refresh tokens, rotated on every use; client credentials; device codes),
//! a device authorization endpoint (RFC 8628) whose logins the test approves
//! or denies, and the token introspection (RFC 7662) Dovecot asks, so Dovecot
//! and Postfix through its SASL accept exactly the access tokens issued, not
//! revoked and not expired. The test controls and counts everything.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

#[derive(Clone)]
struct AccessToken {
    mailbox: String,
    expires: Instant,
    revoked: bool,
}

struct DeviceLogin {
    user_code: String,
    client_id: String,
    expires: Instant,
    /// Set by the test: the mailbox that approved, or denial.
    decision: Option<Result<String, ()>>,
}

struct Client {
    secret: Option<String>,
    /// The mailbox app-only (client credentials) tokens are for.
    app_only_mailbox: Option<String>,
}

#[derive(Default)]
struct State {
    clients: HashMap<String, Client>,
    access_tokens: HashMap<String, AccessToken>,
    /// Refresh token → (client id, mailbox); a used one is gone (rotation).
    refresh_tokens: HashMap<String, (String, String)>,
    devices: HashMap<String, DeviceLogin>,
    access_token_lifetime: Duration,
    /// Token endpoint requests by grant type, and introspections.
    counts: HashMap<String, usize>,
    /// Every token ever issued (used, rotated and revoked ones too).
    issued: Vec<String>,
}

pub struct TokenService {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

fn random_text(prefix: &str) -> String {
    let mut bytes = [0u8; 18];
    getrandom::getrandom(&mut bytes).expect("random bytes");
    format!("{prefix}{}", bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>())
}

impl TokenService {
    /// Listens with this certificate and key (PEM, PKCS#8).
    pub fn start(certificate_pem: &[u8], key_pem: &[u8]) -> TokenService {
        let identity = native_tls::Identity::from_pkcs8(certificate_pem, key_pem).expect("certificate and key");
        let acceptor = Arc::new(native_tls::TlsAcceptor::new(identity).expect("TLS acceptor"));
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("token service port");
        let port = listener.local_addr().expect("token service address").port();
        let state =
            Arc::new(Mutex::new(State { access_token_lifetime: Duration::from_secs(3600), ..State::default() }));
        let shared = state.clone();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (acceptor, state) = (acceptor.clone(), shared.clone());
                thread::spawn(move || {
                    if let Ok(stream) = acceptor.accept(stream) {
                        let _ = serve(stream, &state);
                    }
                });
            }
        });
        TokenService { port, state }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}/{path}", self.port)
    }

    pub fn introspection_url(&self) -> String {
        self.url("introspect")
    }

    /// The token endpoint, with `{tenant}` as Microsoft's has it.
    pub fn token_url_template(&self) -> String {
        self.url("{tenant}/token")
    }

    pub fn device_url_template(&self) -> String {
        self.url("{tenant}/devicecode")
    }

    pub fn register_client(&self, client_id: &str, secret: Option<&str>, app_only_mailbox: Option<&str>) {
        self.state.lock().unwrap().clients.insert(
            client_id.to_owned(),
            Client { secret: secret.map(str::to_owned), app_only_mailbox: app_only_mailbox.map(str::to_owned) },
        );
    }

    /// How long access tokens issued from now on are valid.
    pub fn set_access_token_lifetime(&self, lifetime: Duration) {
        self.state.lock().unwrap().access_token_lifetime = lifetime;
    }

    fn issue_access(state: &mut State, mailbox: &str) -> String {
        let token = random_text("at.");
        state.issued.push(token.clone());
        let expires = Instant::now() + state.access_token_lifetime;
        state.access_tokens.insert(token.clone(), AccessToken { mailbox: mailbox.to_owned(), expires, revoked: false });
        token
    }

    /// A new access token for `mailbox` (as if some application had one).
    pub fn issue(&self, mailbox: &str) -> String {
        Self::issue_access(&mut self.state.lock().unwrap(), mailbox)
    }

    /// A refresh token for `mailbox` issued to `client_id` (what an
    /// application gets from the authorization code flow).
    pub fn issue_refresh_token(&self, client_id: &str, mailbox: &str) -> String {
        let token = random_text("rt.");
        let mut state = self.state.lock().unwrap();
        state.issued.push(token.clone());
        state.refresh_tokens.insert(token.clone(), (client_id.to_owned(), mailbox.to_owned()));
        token
    }

    pub fn revoke(&self, token: &str) {
        if let Some(entry) = self.state.lock().unwrap().access_tokens.get_mut(token) {
            entry.revoked = true;
        }
    }

    /// The user withdraws consent: every refresh and access token of `mailbox` stops working.
    pub fn revoke_grants_of(&self, mailbox: &str) {
        let mut state = self.state.lock().unwrap();
        state.refresh_tokens.retain(|_, (_, owner)| owner != mailbox);
        for token in state.access_tokens.values_mut().filter(|token| token.mailbox == mailbox) {
            token.revoked = true;
        }
    }

    /// Every access token of `mailbox` expires now (refresh tokens stay good).
    pub fn expire_access_tokens_of(&self, mailbox: &str) {
        let now = Instant::now();
        for token in self.state.lock().unwrap().access_tokens.values_mut().filter(|token| token.mailbox == mailbox) {
            token.expires = now;
        }
    }

    /// Approves (`Some(mailbox)`) or denies (`None`) the device login with this user code.
    pub fn decide_device_login(&self, user_code: &str, mailbox: Option<&str>) {
        let mut state = self.state.lock().unwrap();
        let login = state
            .devices
            .values_mut()
            .find(|login| login.user_code == user_code)
            .expect("a device login with this code");
        login.decision = Some(mailbox.map(str::to_owned).ok_or(()));
    }

    /// How often the token endpoint was asked for this grant type
    /// (`refresh_token`, `client_credentials`, `device_code`, `devicecode`
    /// for device authorizations, `introspect`).
    pub fn count(&self, what: &str) -> usize {
        self.state.lock().unwrap().counts.get(what).copied().unwrap_or(0)
    }

    pub fn introspections(&self) -> usize {
        self.count("introspect")
    }

    /// Every token the service ever issued and every client secret (to look for in logs).
    pub fn secrets(&self) -> Vec<String> {
        let state = self.state.lock().unwrap();
        let mut secrets = state.issued.clone();
        secrets.extend(state.clients.values().filter_map(|client| client.secret.clone()));
        secrets
    }
}

/// application/x-www-form-urlencoded, decoded.
fn form(body: &str) -> HashMap<String, String> {
    let decode = |text: &str| -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut index = 0;
        while index < bytes.len() {
            match bytes[index] {
                b'+' => out.push(b' '),
                b'%' if index + 2 < bytes.len() => {
                    out.push(u8::from_str_radix(&text[index + 1..index + 3], 16).unwrap_or(b'?'));
                    index += 2;
                }
                byte => out.push(byte),
            }
            index += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    body.split('&').filter_map(|pair| pair.split_once('=')).map(|(name, value)| (decode(name), decode(value))).collect()
}

fn error(code: &str, description: &str) -> (&'static str, String) {
    ("400 Bad Request", format!(r#"{{"error":"{code}","error_description":"{description}"}}"#))
}

fn tokens(state: &mut State, client_id: &str, mailbox: &str, with_refresh: bool) -> (&'static str, String) {
    let access = TokenService::issue_access(state, mailbox);
    let lifetime = state.access_token_lifetime.as_secs();
    let refresh = if with_refresh {
        let token = random_text("rt.");
        state.issued.push(token.clone());
        state.refresh_tokens.insert(token.clone(), (client_id.to_owned(), mailbox.to_owned()));
        format!(r#","refresh_token":"{token}""#)
    } else {
        String::new()
    };
    ("200 OK", format!(r#"{{"access_token":"{access}","token_type":"Bearer","expires_in":{lifetime}{refresh}}}"#))
}

/// One request: the path and form decide; returns the status and JSON.
fn answer(path: &str, form: &HashMap<String, String>, state: &mut State) -> (&'static str, String) {
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    if path == "/introspect" {
        *state.counts.entry("introspect".to_owned()).or_default() += 1;
        let json = match state.access_tokens.get(field("token")) {
            Some(token) if !token.revoked && token.expires > Instant::now() => {
                format!(r#"{{"active":true,"email":"{}","token_type":"bearer"}}"#, token.mailbox)
            }
            _ => r#"{"active":false}"#.to_owned(),
        };
        return ("200 OK", json);
    }
    let client_id = field("client_id").to_owned();
    let client_ok = match state.clients.get(&client_id) {
        Some(client) => client.secret.as_deref().is_none_or(|secret| secret == field("client_secret")),
        None => false,
    };
    if path.ends_with("/devicecode") {
        *state.counts.entry("devicecode".to_owned()).or_default() += 1;
        if !client_ok {
            return error("invalid_client", "AADSTS7000215: Invalid client secret provided.");
        }
        let device_code = random_text("dc.");
        let user_code = random_text("").chars().take(8).collect::<String>().to_uppercase();
        state.devices.insert(
            device_code.clone(),
            DeviceLogin {
                user_code: user_code.clone(),
                client_id,
                expires: Instant::now() + Duration::from_secs(900),
                decision: None,
            },
        );
        return (
            "200 OK",
            format!(
                r#"{{"device_code":"{device_code}","user_code":"{user_code}","verification_uri":"https://login.test/device","expires_in":900,"interval":1,"message":"To sign in, enter the code."}}"#
            ),
        );
    }
    if !path.ends_with("/token") {
        return ("404 Not Found", "{}".to_owned());
    }
    let grant = match field("grant_type") {
        "urn:ietf:params:oauth:grant-type:device_code" => "device_code",
        other => other,
    }
    .to_owned();
    *state.counts.entry(grant.clone()).or_default() += 1;
    if !client_ok {
        return error("invalid_client", "AADSTS7000215: Invalid client secret provided.");
    }
    match grant.as_str() {
        "refresh_token" => match state.refresh_tokens.remove(field("refresh_token")) {
            Some((owner, mailbox)) if owner == client_id => tokens(state, &client_id, &mailbox, true),
            Some(entry) => {
                state.refresh_tokens.insert(field("refresh_token").to_owned(), entry);
                error("invalid_grant", "AADSTS70000: the refresh token was issued to another client.")
            }
            None => error("invalid_grant", "AADSTS700082: The refresh token has expired or was revoked."),
        },
        "client_credentials" => {
            match state.clients.get(&client_id).and_then(|client| client.app_only_mailbox.clone()) {
                Some(mailbox) => tokens(state, &client_id, &mailbox, false),
                None => error("unauthorized_client", "the client may not use client credentials"),
            }
        }
        "device_code" => {
            let device_code = field("device_code").to_owned();
            let Some(login) = state.devices.get(&device_code) else {
                return error("invalid_grant", "unknown device code");
            };
            if login.client_id != client_id {
                return error("invalid_grant", "the device code belongs to another client");
            }
            if login.expires <= Instant::now() {
                return error("expired_token", "the device code expired");
            }
            match login.decision.clone() {
                None => error("authorization_pending", "waiting for the user"),
                Some(Err(())) => {
                    state.devices.remove(&device_code);
                    error("access_denied", "the user declined")
                }
                Some(Ok(mailbox)) => {
                    state.devices.remove(&device_code);
                    tokens(state, &client_id, &mailbox, true)
                }
            }
        }
        _ => error("unsupported_grant_type", "unknown grant type"),
    }
}

/// HTTP/1.1 requests on one connection until the client closes it.
fn serve(stream: native_tls::TlsStream<std::net::TcpStream>, state: &Mutex<State>) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 {
                return Ok(());
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body)?;
        let path = request_line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let fields = form(&String::from_utf8_lossy(&body));
        let (status, json) = answer(&path, &fields, &mut state.lock().unwrap());
        let stream = reader.get_mut();
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )?;
        stream.flush()?;
    }
}
