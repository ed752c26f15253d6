//! A route for tests alone: `/debug/panic` panics the core that serves it, so the tests
//! can check that payd is fail-stop (a panic ends the whole process at once).
//!
//! It is compiled into debug builds only (`mod debug` is under `cfg(debug_assertions)`,
//! so a release build has no such route at all) and served only when the process was
//! started with `PAYD_DEBUG_PANIC_ROUTE=1`; otherwise the path is an unknown route.

use std::sync::OnceLock;

/// The environment variable that turns the route on, in a debug build.
pub const PANIC_ROUTE_VARIABLE: &str = "PAYD_DEBUG_PANIC_ROUTE";

/// Whether this process serves the panic route: read once.
pub fn panic_route_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(PANIC_ROUTE_VARIABLE).is_ok_and(|value| value == "1"))
}

/// Panics the calling core, as a broken invariant would.
pub fn panic_on_request() -> ! {
    panic!("debug panic requested with {PANIC_ROUTE_VARIABLE}=1");
}
