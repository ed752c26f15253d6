//! The process's lifecycle flags: ready once every core listens and recovery is done,
//! stopping once a signal asked for shutdown.
//!
//! These are the only process-wide mutable values. They are written once each (by the
//! start-up thread and the signal thread) and only loaded elsewhere: no read-modify-write,
//! no lock, nothing on the request path but a relaxed load.

use std::sync::atomic::{AtomicBool, Ordering};

static READY: AtomicBool = AtomicBool::new(false);
static STOPPING: AtomicBool = AtomicBool::new(false);

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
