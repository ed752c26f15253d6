//! Shutdown on one core: a notice that every waiting task sees at once.
//!
//! The signal thread sets `lifecycle::begin_stopping`; each core's watcher notices within
//! `STOP_POLL_INTERVAL_MS` and triggers its `StopNotice`, which wakes the accept loop and
//! every idle connection. Closing a semaphore is glommio's cheapest broadcast wake-up.

use crate::lifecycle;
use glommio::sync::Semaphore;
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

pub const STOP_POLL_INTERVAL_MS: u64 = 20;

#[derive(Clone)]
pub struct StopNotice {
    inner: Rc<Inner>,
}

struct Inner {
    semaphore: Semaphore,
    triggered: Cell<bool>,
}

impl StopNotice {
    pub fn new() -> StopNotice {
        StopNotice {
            inner: Rc::new(Inner {
                semaphore: Semaphore::new(0),
                triggered: Cell::new(false),
            }),
        }
    }

    pub fn trigger(&self) {
        self.inner.triggered.set(true);
        self.inner.semaphore.close();
    }

    pub fn is_triggered(&self) -> bool {
        self.inner.triggered.get()
    }

    /// Resolves once the notice is triggered.
    pub async fn wait(&self) {
        // No permit is ever signalled, so acquire returns only when the semaphore closes.
        let _ = self.inner.semaphore.acquire(1).await;
    }

    /// Watches the process-wide stopping flag and triggers this core's notice.
    pub fn watch_process(&self) {
        let notice = self.clone();
        glommio::spawn_local(async move {
            while !lifecycle::is_stopping() {
                glommio::timer::sleep(Duration::from_millis(STOP_POLL_INTERVAL_MS)).await;
            }
            notice.trigger();
        })
        .detach();
    }
}

impl Default for StopNotice {
    fn default() -> StopNotice {
        StopNotice::new()
    }
}
