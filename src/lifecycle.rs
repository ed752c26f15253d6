//! The process's lifecycle flags: ready once every core listens and recovery is done,
//! stopping once a signal asked for shutdown, and how many times SIGHUP asked the cores
//! to reopen their access logs.
//!
//! These are the only process-wide mutable values. Each has one writer (the start-up
//! thread or the signal thread) and is only loaded elsewhere: no read-modify-write, no
//! lock, nothing on the request path but a relaxed load.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static READY: AtomicBool = AtomicBool::new(false);
static STOPPING: AtomicBool = AtomicBool::new(false);
static LOG_REOPENS: AtomicU64 = AtomicU64::new(0);

pub fn set_ready() {
    READY.store(true, Ordering::Release);
}

pub fn begin_stopping() {
    STOPPING.store(true, Ordering::Release);
}

pub fn is_stopping() -> bool {
    STOPPING.load(Ordering::Acquire)
}

/// `/readyz`: up, recovered, and not shutting down.
pub fn is_ready() -> bool {
    READY.load(Ordering::Acquire) && !is_stopping()
}

/// Asks every core to reopen its access log (SIGHUP). Only the signal thread calls this,
/// so a load and a store are enough.
pub fn request_log_reopen() {
    let reopens = LOG_REOPENS.load(Ordering::Acquire);
    LOG_REOPENS.store(reopens + 1, Ordering::Release);
}

/// How many reopens were asked for so far: a core reopens when this moved.
pub fn log_reopens() -> u64 {
    LOG_REOPENS.load(Ordering::Acquire)
}
