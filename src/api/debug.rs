//! Routes for tests alone, to break a core on purpose: `/debug/panic` panics the core
//! that serves it (payd must then stop at once: fail-stop), `/debug/stall` blocks it for
//! `STALL_MS` (the other cores must go on answering within their own bounds).
//!
//! They are compiled into debug builds only (`mod debug` is under
//! `cfg(debug_assertions)`, so a release build has no such routes at all) and served
//! only when the process was started with `PAYD_DEBUG_ROUTES=1`; otherwise their paths
//! are unknown routes.

use crate::http::Response;
use std::sync::OnceLock;
use std::time::Duration;

/// The environment variable that turns the routes on, in a debug build.
pub const ROUTES_VARIABLE: &str = "PAYD_DEBUG_ROUTES";
/// How long `/debug/stall` blocks its core.
pub const STALL_MS: u64 = 2_000;

/// Whether this process serves the debug routes: read once.
pub fn routes_enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var(ROUTES_VARIABLE).is_ok_and(|value| value == "1"))
}

/// Panics the calling core, as a broken invariant would.
pub fn panic_on_request() -> ! {
    panic!("debug panic requested with {ROUTES_VARIABLE}=1");
}

/// Blocks the calling core's thread, as a stuck core would, then answers 200.
pub fn stall(response: &mut Response) {
    std::thread::sleep(Duration::from_millis(STALL_MS));
    response.body.extend_from_slice(br#"{"status":"stalled"}"#);
}
