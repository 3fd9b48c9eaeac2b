//! An OAuth2 token service of our own on 127.0.0.1 over HTTPS (the run's
//! CA), standing in for Microsoft's or Google's: it issues and revokes
//! access tokens, and answers Dovecot's token introspection (RFC 7662), so
//! Dovecot (and Postfix through its SASL) accept exactly the tokens issued
//! and not revoked. Only what Dovecot's `passdb { driver = oauth2 }` asks.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::thread;

pub struct TokenService {
    pub port: u16,
    /// Access token → (mailbox it is for, still valid).
    tokens: Arc<Mutex<HashMap<String, (String, bool)>>>,
    /// Introspection requests answered so far.
    introspections: Arc<Mutex<usize>>,
}

impl TokenService {
    /// Listens with this certificate and key (PEM, PKCS#8).
    pub fn start(certificate_pem: &[u8], key_pem: &[u8]) -> TokenService {
        let identity = native_tls::Identity::from_pkcs8(certificate_pem, key_pem).expect("certificate and key");
        let acceptor = Arc::new(native_tls::TlsAcceptor::new(identity).expect("TLS acceptor"));
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("token service port");
        let port = listener.local_addr().expect("token service address").port();
        let tokens: Arc<Mutex<HashMap<String, (String, bool)>>> = Arc::default();
        let introspections: Arc<Mutex<usize>> = Arc::default();
        let (shared_tokens, shared_count) = (tokens.clone(), introspections.clone());
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (acceptor, tokens, count) = (acceptor.clone(), shared_tokens.clone(), shared_count.clone());
                thread::spawn(move || {
                    if let Ok(stream) = acceptor.accept(stream) {
                        let _ = answer(stream, &tokens, &count);
                    }
                });
            }
        });
        TokenService { port, tokens, introspections }
    }

    pub fn introspection_url(&self) -> String {
        format!("https://127.0.0.1:{}/introspect", self.port)
    }

    /// A new access token for `address`.
    pub fn issue(&self, address: &str) -> String {
        let mut bytes = [0u8; 24];
        getrandom::getrandom(&mut bytes).expect("random bytes");
        let token = format!("at.{}", bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>());
        self.tokens.lock().unwrap().insert(token.clone(), (address.to_owned(), true));
        token
    }

    pub fn revoke(&self, token: &str) {
        if let Some(entry) = self.tokens.lock().unwrap().get_mut(token) {
            entry.1 = false;
        }
    }

    pub fn introspections(&self) -> usize {
        *self.introspections.lock().unwrap()
    }
}

/// HTTP/1.1 requests on one connection until the client closes it (RFC
/// 7662: a form with `token=`), each answered with JSON.
fn answer(
    stream: native_tls::TlsStream<std::net::TcpStream>,
    tokens: &Mutex<HashMap<String, (String, bool)>>,
    count: &Mutex<usize>,
) -> std::io::Result<()> {
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
        let form = String::from_utf8_lossy(&body).into_owned();
        let token = form.split('&').find_map(|pair| pair.strip_prefix("token=")).unwrap_or_default();
        let json = match tokens.lock().unwrap().get(token) {
            Some((address, true)) => format!(r#"{{"active":true,"email":"{address}","token_type":"bearer"}}"#),
            _ => r#"{"active":false}"#.to_owned(),
        };
        *count.lock().unwrap() += 1;
        let status = if request_line.starts_with("POST /introspect ") { "200 OK" } else { "404 Not Found" };
        let stream = reader.get_mut();
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
            json.len()
        )?;
        stream.flush()?;
    }
}
