//! The operations endpoints of API.md section 6: `/healthz`, `/readyz`, `/metrics`.

use super::error::{ApiError, ErrorKind};
use super::{write_error, Context};
use crate::http::{Response, ResponseHeader};
use crate::lifecycle;
use crate::metrics::{self, Route};

pub fn route_of(path: &[u8]) -> Route {
    match path {
        b"/healthz" => Route::Healthz,
        b"/readyz" => Route::Readyz,
        _ => Route::Metrics,
    }
}

pub fn healthz(response: &mut Response) {
    response.body.extend_from_slice(br#"{"status":"ok"}"#);
}

pub fn readyz(response: &mut Response) {
    if lifecycle::is_ready() {
        response.body.extend_from_slice(br#"{"status":"ready"}"#);
    } else {
        write_error(response, &ApiError::new(ErrorKind::NotReady));
    }
}

/// Prometheus text of every core, gathered over the mesh.
pub async fn metrics(context: &Context, response: &mut Response) {
    let Ok(cores) = context.peers.gather_metrics().await else {
        let message = "too many scrapes at once on this core; retry later";
        return write_error(
            response,
            &ApiError::with_message(ErrorKind::Overloaded, message),
        );
    };
    let mut text = String::with_capacity(16 * 1024);
    metrics::render(&cores, metrics::resident_memory_bytes(), &mut text);
    response.body.extend_from_slice(text.as_bytes());
    response.add_header(ResponseHeader::ContentTypePrometheus);
}
