//! TLS connectors, built once and shared by the connections of a process.
//! Building one makes OpenSSL parse the system's trusted roots (Debian's
//! bundle of 144 certificates, read twice): ~40 ms of CPU, which every
//! IMAP, POP3, SMTP and OAuth2 connection paid before its handshake — a
//! third of the time an IMAP sync took to store its first message. A
//! connector holds no session cache on the client side, and verifies the
//! host name per connection, so sharing it shares nothing between accounts
//! but the roots; each distinct extra CA gets a connector of its own.

use crate::connection::{pem_blocks, ConnectionError};
use native_tls::{Certificate, TlsConnector};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A connector is rebuilt after this long, so that a changed system CA
/// store (update-ca-certificates) reaches long-running workers.
const MAX_AGE: Duration = Duration::from_secs(300);

/// Connectors kept at once (each holds its own copy of the roots, ~0.5 MB).
const MAX_KEPT: usize = 16;

static KEPT: Mutex<Kept<TlsConnector>> = Mutex::new(Kept::new(MAX_AGE, MAX_KEPT));

/// A connector that trusts the system roots plus `extra_ca_pem`.
pub fn trusting(extra_ca_pem: Option<&str>) -> Result<TlsConnector, ConnectionError> {
    let key = extra_ca_pem.filter(|pem| !pem.trim().is_empty());
    let kept = |now| {
        let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        kept.find(key, now)
    };
    if let Some(connector) = kept(Instant::now()) {
        return Ok(connector);
    }
    // Built outside the lock: other connections need not wait 40 ms.
    let connector = build(key)?;
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(kept.keep(key, Instant::now(), connector))
}

fn build(extra_ca_pem: Option<&str>) -> Result<TlsConnector, ConnectionError> {
    let mut builder = TlsConnector::builder();
    for block in extra_ca_pem.map(pem_blocks).transpose()?.unwrap_or_default() {
        let certificate =
            Certificate::from_pem(block.as_bytes()).map_err(|error| ConnectionError::Tls(error.to_string()))?;
        builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|error| ConnectionError::Tls(error.to_string()))
}

/// Values by the extra CA they trust, each for a bounded time, oldest first.
struct Kept<T> {
    entries: Vec<(Option<String>, Instant, T)>,
    max_age: Duration,
    max_kept: usize,
}

impl<T: Clone> Kept<T> {
    const fn new(max_age: Duration, max_kept: usize) -> Kept<T> {
        Kept { entries: Vec::new(), max_age, max_kept }
    }

    fn find(&mut self, key: Option<&str>, now: Instant) -> Option<T> {
        let max_age = self.max_age;
        self.entries.retain(|(_, built, _)| now.saturating_duration_since(*built) < max_age);
        self.entries.iter().find(|(kept, _, _)| kept.as_deref() == key).map(|(_, _, value)| value.clone())
    }

    /// Keeps `value` unless another thread kept one for `key` meanwhile; returns the kept one.
    fn keep(&mut self, key: Option<&str>, now: Instant, value: T) -> T {
        if let Some(kept) = self.find(key, now) {
            return kept;
        }
        if self.entries.len() >= self.max_kept {
            self.entries.remove(0);
        }
        self.entries.push((key.map(str::to_owned), now, value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_found_for_its_own_extra_ca_only() {
        let mut kept = Kept::new(Duration::from_secs(60), 4);
        let now = Instant::now();
        assert_eq!(kept.keep(None, now, 1), 1);
        assert_eq!(kept.keep(Some("ca one"), now, 2), 2);
        assert_eq!(kept.find(None, now), Some(1));
        assert_eq!(kept.find(Some("ca one"), now), Some(2));
        assert_eq!(kept.find(Some("ca two"), now), None);
    }

    #[test]
    fn a_value_expires_after_the_maximum_age() {
        let mut kept = Kept::new(Duration::from_secs(60), 4);
        let built = Instant::now();
        kept.keep(None, built, 1);
        assert_eq!(kept.find(None, built + Duration::from_secs(59)), Some(1));
        assert_eq!(kept.find(None, built + Duration::from_secs(60)), None);
        assert!(kept.entries.is_empty());
    }

    #[test]
    fn the_first_value_kept_wins_a_race_and_the_oldest_goes_when_full() {
        let mut kept = Kept::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        kept.keep(Some("a"), now, 1);
        assert_eq!(kept.keep(Some("a"), now, 9), 1, "a second build for the same CA is dropped");
        kept.keep(Some("b"), now, 2);
        kept.keep(Some("c"), now, 3);
        assert_eq!(kept.find(Some("a"), now), None);
        assert_eq!((kept.find(Some("b"), now), kept.find(Some("c"), now)), (Some(2), Some(3)));
    }

    #[test]
    fn connectors_are_shared_and_a_bad_extra_ca_is_refused_every_time() {
        assert!(trusting(None).is_ok());
        assert!(trusting(Some("  ")).is_ok(), "a blank extra CA is no extra CA");
        for _ in 0..2 {
            assert!(matches!(trusting(Some("not a certificate")), Err(ConnectionError::Tls(_))));
        }
    }
}
