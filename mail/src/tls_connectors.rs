//! TLS connectors of the workers, built once and shared by their
//! connections. Building one makes OpenSSL parse the system's trusted roots
//! (Debian's bundle of 144 certificates, read twice): ~40 ms of CPU, which
//! every IMAP, POP3, SMTP and OAuth2 connection paid before its handshake —
//! a third of the time an IMAP sync took to store its first message.
//!
//! A connector holds no client-side session cache, and SNI and the host
//! name check are set per connection, so sharing it shares nothing between
//! accounts but the roots: the system's as they were when it was built (at
//! most five minutes ago), plus its own extra CA. Only the workers share
//! (`share_in_this_process`): `test_account()` in a backend builds its own,
//! so a DBA who fixed the roots sees the effect at once.

use crate::connection::{pem_blocks, ConnectionError};
use native_tls::{Certificate, TlsConnector};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A connector is rebuilt after this long, so that a changed system CA
/// store (update-ca-certificates) reaches long-running workers.
const MAX_AGE: Duration = Duration::from_secs(300);

/// Connectors kept at once (each holds its own copy of the roots).
const MAX_KEPT: usize = 16;

/// A larger extra CA bundle gets a connector per connection, as before:
/// what one account sets must not make the workers hold much.
const MAX_EXTRA_CERTIFICATES_KEPT: usize = 32;

static SHARED: AtomicBool = AtomicBool::new(false);

static KEPT: Mutex<Kept<TlsConnector>> = Mutex::new(Kept::new(MAX_AGE, MAX_KEPT));

/// Lets this process's connections share connectors (the workers call it).
pub fn share_in_this_process() {
    SHARED.store(true, Ordering::Relaxed);
}

/// A connector that trusts the system roots plus `extra_ca_pem`.
pub fn trusting(extra_ca_pem: Option<&str>) -> Result<TlsConnector, ConnectionError> {
    let blocks = match extra_ca_pem.filter(|pem| !pem.trim().is_empty()) {
        Some(pem) => pem_blocks(pem)?,
        None => Vec::new(),
    };
    if !SHARED.load(Ordering::Relaxed) || blocks.len() > MAX_EXTRA_CERTIFICATES_KEPT {
        return build(&blocks);
    }
    // The certificates say what is trusted, not the text around them.
    let key: [u8; 32] = Sha256::digest(blocks.join("\n")).into();
    let kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).find(&key, Instant::now());
    if let Some(connector) = kept {
        return Ok(connector);
    }
    // Built outside the lock: other connections need not wait 40 ms.
    let connector = build(&blocks)?;
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    Ok(kept.keep(key, Instant::now(), connector))
}

fn build(extra_ca_blocks: &[&str]) -> Result<TlsConnector, ConnectionError> {
    let mut builder = TlsConnector::builder();
    for block in extra_ca_blocks {
        let certificate =
            Certificate::from_pem(block.as_bytes()).map_err(|error| ConnectionError::Tls(error.to_string()))?;
        builder.add_root_certificate(certificate);
    }
    builder.build().map_err(|error| ConnectionError::Tls(error.to_string()))
}

/// Values by key, each for a bounded time; the least recently used first.
struct Kept<T> {
    entries: Vec<([u8; 32], Instant, T)>,
    max_age: Duration,
    max_kept: usize,
}

impl<T: Clone> Kept<T> {
    const fn new(max_age: Duration, max_kept: usize) -> Kept<T> {
        Kept { entries: Vec::new(), max_age, max_kept }
    }

    fn find(&mut self, key: &[u8; 32], now: Instant) -> Option<T> {
        let max_age = self.max_age;
        self.entries.retain(|(_, built, _)| now.saturating_duration_since(*built) < max_age);
        let position = self.entries.iter().position(|(kept, _, _)| kept == key)?;
        let entry = self.entries.remove(position);
        let value = entry.2.clone();
        self.entries.push(entry);
        Some(value)
    }

    /// Keeps `value` unless another thread kept one for `key` meanwhile; returns the kept one.
    fn keep(&mut self, key: [u8; 32], now: Instant, value: T) -> T {
        if let Some(kept) = self.find(&key, now) {
            return kept;
        }
        if self.entries.len() >= self.max_kept {
            self.entries.remove(0);
        }
        self.entries.push((key, now, value.clone()));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [u8; 32] = [0; 32];
    const ONE: [u8; 32] = [1; 32];
    const TWO: [u8; 32] = [2; 32];
    const THREE: [u8; 32] = [3; 32];

    #[test]
    fn a_value_is_found_for_its_own_key_only() {
        let mut kept = Kept::new(Duration::from_secs(60), 4);
        let now = Instant::now();
        assert_eq!(kept.keep(NONE, now, 1), 1);
        assert_eq!(kept.keep(ONE, now, 2), 2);
        assert_eq!(kept.find(&NONE, now), Some(1));
        assert_eq!(kept.find(&ONE, now), Some(2));
        assert_eq!(kept.find(&TWO, now), None);
    }

    #[test]
    fn a_value_expires_after_the_maximum_age() {
        let mut kept = Kept::new(Duration::from_secs(60), 4);
        let built = Instant::now();
        kept.keep(NONE, built, 1);
        assert_eq!(kept.find(&NONE, built + Duration::from_secs(59)), Some(1));
        assert_eq!(kept.find(&NONE, built + Duration::from_secs(60)), None);
        assert!(kept.entries.is_empty());
    }

    #[test]
    fn the_first_value_kept_wins_a_race_and_the_least_recently_used_goes_when_full() {
        let mut kept = Kept::new(Duration::from_secs(60), 2);
        let now = Instant::now();
        kept.keep(NONE, now, 1);
        assert_eq!(kept.keep(NONE, now, 9), 1, "a second build for the same key is dropped");
        kept.keep(ONE, now, 2);
        assert_eq!(kept.find(&NONE, now), Some(1), "used again: the other one is older now");
        kept.keep(TWO, now, 3);
        assert_eq!(kept.find(&ONE, now), None);
        assert_eq!((kept.find(&NONE, now), kept.find(&TWO, now)), (Some(1), Some(3)));
        kept.keep(THREE, now, 4);
        assert_eq!(kept.find(&NONE, now), None);
    }

    #[test]
    fn connectors_are_built_and_a_bad_extra_ca_is_refused_every_time() {
        for shared in [false, true] {
            if shared {
                share_in_this_process();
            }
            assert!(trusting(None).is_ok());
            assert!(trusting(Some("  ")).is_ok(), "a blank extra CA is no extra CA");
            for _ in 0..2 {
                assert!(matches!(trusting(Some("not a certificate")), Err(ConnectionError::Tls(_))));
            }
        }
    }
}
