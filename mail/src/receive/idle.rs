//! IMAP IDLE (RFC 2177) on one folder: tells the caller when the folder
//! changes, so new mail is synced within moments instead of at the next
//! poll. Runs on its own thread with its own connection; reconnects with a
//! growing pause when the server fails, and stops when asked (at the latest
//! one idle period later).

use crate::connection::{Endpoint, Login};
use crate::imap_client;
use imap::extensions::idle::WaitOutcome;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long one IDLE command waits before it is renewed (RFC 2177: under 29 minutes).
const IDLE_PERIOD: Duration = Duration::from_secs(5 * 60);
const LONGEST_PAUSE: Duration = Duration::from_secs(5 * 60);

/// Watches `folder` until `stop` is set; calls `changed` whenever the server
/// reports a change (and once after each reconnect, in case mail arrived
/// while the connection was down). Returns a reason when the server does not support IDLE.
pub fn watch(
    endpoint: &Endpoint,
    login: &Login,
    folder: &str,
    stop: &AtomicBool,
    changed: &dyn Fn(),
) -> Option<String> {
    let mut pause = Duration::from_secs(5);
    let mut connected_before = false;
    while !stop.load(Ordering::Relaxed) {
        let session = imap_client::connect(endpoint, login);
        let (mut session, hello) = match session {
            Ok(connected) => connected,
            Err(_) => {
                sleep_unless_stopped(pause, stop);
                pause = (pause * 2).min(LONGEST_PAUSE);
                continue;
            }
        };
        if !hello.capabilities.iter().any(|capability| capability.eq_ignore_ascii_case("IDLE")) {
            let _ = session.logout();
            return Some("the server does not support IDLE".to_owned());
        }
        if session.examine(folder).is_err() {
            let _ = session.logout();
            sleep_unless_stopped(pause, stop);
            pause = (pause * 2).min(LONGEST_PAUSE);
            continue;
        }
        if connected_before {
            changed();
        }
        connected_before = true;
        pause = Duration::from_secs(5);
        while !stop.load(Ordering::Relaxed) {
            let outcome =
                session.idle().timeout(IDLE_PERIOD).keepalive(false).wait_while(imap::extensions::idle::stop_on_any);
            match outcome {
                Ok(WaitOutcome::MailboxChanged) => {
                    if !stop.load(Ordering::Relaxed) {
                        changed();
                    }
                }
                Ok(WaitOutcome::TimedOut) => {}
                Err(_) => break,
            }
        }
        let _ = session.logout();
    }
    None
}

fn sleep_unless_stopped(pause: Duration, stop: &AtomicBool) {
    let step = Duration::from_millis(200);
    let mut slept = Duration::ZERO;
    while slept < pause && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(step);
        slept += step;
    }
}
