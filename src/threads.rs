//! Network I/O off the main thread. PostgreSQL may only be called from the
//! main thread, and its signal handlers must run there too, so helper
//! threads start with every signal blocked; the main thread waits for them
//! while still answering query cancel and termination.

use pgrx::pg_sys;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// Starts `work` on a new thread that receives no signals.
pub fn spawn_without_signals<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> thread::JoinHandle<T> {
    // SAFETY: plain libc calls on a local signal set; the previous mask is restored.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let handle = thread::spawn(work);
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        handle
    }
}

/// Runs one job on its own thread (see `run_all`) and returns its result.
pub fn run_one<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> T {
    let job: Box<dyn FnOnce() -> T + Send> = Box::new(job);
    run_all(vec![job]).pop().expect("one result per job")
}

/// Runs every job on its own thread and returns their results in order. While
/// waiting, the calling backend still reacts to cancel and terminate (which
/// raise an ERROR here; the threads then finish on their own, bounded by the
/// jobs' own timeouts).
pub fn run_all<T: Send + 'static>(jobs: Vec<Box<dyn FnOnce() -> T + Send>>) -> Vec<T> {
    let count = jobs.len();
    let (sender, receiver) = mpsc::channel();
    for (index, job) in jobs.into_iter().enumerate() {
        let sender = sender.clone();
        spawn_without_signals(move || {
            let _ = sender.send((index, job()));
        });
    }
    drop(sender);
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let mut received = 0;
    while received < count {
        match receiver.recv_timeout(Duration::from_millis(20)) {
            Ok((index, result)) => {
                results[index] = Some(result);
                received += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                pg_sys::check_for_interrupts!();
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    results.into_iter().map(|result| result.expect("a probe thread panicked")).collect()
}
