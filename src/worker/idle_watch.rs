//! The receiver's IMAP IDLE watchers: one thread and connection per IMAP
//! account, on its first folder. A watcher that sees a change marks the
//! account and signals this process (SIGUSR1 sets the worker's latch on the
//! main thread; threads may not call PostgreSQL), so the receiver syncs it
//! at once.

use crate::store::inbox::ReceivingAccount;
use crate::store::oauth::{self, WorkerCredential};
use crate::store::secrets::Side;
use crate::store::transaction::in_transaction;
use crate::threads;
use email_accounts_mail::receive::idle;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

struct Watcher {
    fingerprint: String,
    stop: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct IdleWatchers {
    running: HashMap<i64, Watcher>,
    changed: Arc<Mutex<HashSet<i64>>>,
}

impl IdleWatchers {
    /// Accounts whose folder changed since the last call.
    pub fn take_changed(&mut self) -> Vec<i64> {
        let mut changed = self.changed.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        changed.drain().collect()
    }

    /// Keeps one watcher per IMAP account, restarting those whose settings changed.
    pub fn refresh(&mut self, accounts: &[ReceivingAccount]) {
        let imap: HashMap<i64, &ReceivingAccount> = accounts
            .iter()
            .filter(|account| !account.is_pop3() && !account.folders.is_empty())
            .map(|account| (account.account_id, account))
            .collect();
        self.running.retain(|account_id, watcher| {
            let keep = imap.get(account_id).is_some_and(|account| account.fingerprint == watcher.fingerprint);
            if !keep {
                watcher.stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        for (account_id, account) in imap {
            if self.running.contains_key(&account_id) {
                continue;
            }
            // An OAuth2 watcher uses the stored access token; the regular
            // sync renews it, which changes the fingerprint and restarts this.
            let credential =
                in_transaction(|| oauth::worker_credential(account_id, Side::Incoming, account.oauth2, None));
            let Ok(Ok(Some(credential))) = credential else { continue };
            if matches!(credential, WorkerCredential::Bearer { access_token: None, .. }) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            self.running.insert(account_id, Watcher { fingerprint: account.fingerprint.clone(), stop: stop.clone() });
            start(account, credential, stop, self.changed.clone());
        }
    }

    pub fn stop_all(&mut self) {
        for watcher in self.running.values() {
            watcher.stop.store(true, Ordering::Relaxed);
        }
        self.running.clear();
    }
}

fn start(
    account: &ReceivingAccount,
    credential: WorkerCredential,
    stop: Arc<AtomicBool>,
    changed: Arc<Mutex<HashSet<i64>>>,
) {
    let account_id = account.account_id;
    let endpoint = account.incoming.endpoint(account.extra_ca_certificate.clone());
    let login = credential.sign_in(account.login_id.clone(), account.allow_plaintext_authentication).login;
    let folder = account.folders[0].clone();
    threads::spawn_without_signals(move || {
        let notify = || {
            changed.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(account_id);
            // SAFETY: kill() to our own process; every thread but the main one blocks signals.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
        };
        // A server without IDLE ends the watcher; the account is still synced every poll_interval.
        let _ = idle::watch(&endpoint, &login, &folder, &stop, &notify);
    });
}
