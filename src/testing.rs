//! Helpers for unit tests that need a glommio executor. Each keeps `io_memory` small:
//! the machine's locked-memory limit (8 MiB) is shared by every executor of the test
//! process, and tests run in parallel.

use glommio::LocalExecutorBuilder;
use std::future::Future;

/// Runs `test` on a small executor of its own thread and returns what it returns.
pub fn on_executor<T, F>(test: impl FnOnce() -> F + Send + 'static) -> T
where
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    LocalExecutorBuilder::default()
        .io_memory(128 << 10)
        .spawn(test)
        .expect("executor starts")
        .join()
        .expect("executor finishes")
}

/// Runs `body` on a small executor on this thread (for a body that is not `Send`).
pub fn run_here<T>(body: impl Future<Output = T>) -> T {
    LocalExecutorBuilder::default()
        .io_memory(256 << 10)
        .make()
        .expect("executor")
        .run(body)
}
