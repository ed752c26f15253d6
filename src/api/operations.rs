//! The operations endpoints of API.md section 6: `/healthz`, `/readyz`, `/metrics`.

use super::error::{ApiError, ErrorKind};
use super::{write_error, Context};
use crate::http::{Response, ResponseHeader};
use crate::lifecycle;
use crate::metrics::{self, Route};
use crate::shard::mesh::PersistState;

/// What a `/metrics` page usually takes: room enough not to grow while it is written.
const METRICS_PAGE_BYTES_TYPICAL: usize = 64 * 1024;

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

/// Ready once recovered and listening, until shutdown, while every shard can persist
/// (asked of every core over the mesh); otherwise 503 `not_ready` saying why.
pub async fn readyz(context: &Context, response: &mut Response) {
    if !lifecycle::is_ready() {
        return write_error(response, &ApiError::new(ErrorKind::NotReady));
    }
    let state = context.peers.persist_state().await;
    if let Some(message) = not_ready_message(&state) {
        return write_error(
            response,
            &ApiError::with_message(ErrorKind::NotReady, message),
        );
    }
    response.body.extend_from_slice(br#"{"status":"ready"}"#);
}

/// Why the shards make payd not ready, if they do.
fn not_ready_message(state: &PersistState) -> Option<String> {
    let shards: Vec<String> = state.unable.iter().map(u16::to_string).collect();
    let cannot_persist = match shards.as_slice() {
        [] => None,
        [shard] => Some(format!(
            "shard {shard} cannot persist (its write-ahead log failed)"
        )),
        _ => Some(format!(
            "shards {} cannot persist (their write-ahead logs failed)",
            shards.join(", ")
        )),
    };
    let silent = match state.cores_silent {
        0 => None,
        1 => Some("1 core did not answer in time".to_string()),
        cores => Some(format!("{cores} cores did not answer in time")),
    };
    let reasons: Vec<String> = cannot_persist.into_iter().chain(silent).collect();
    (!reasons.is_empty()).then(|| reasons.join("; "))
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
    let mut text = String::with_capacity(METRICS_PAGE_BYTES_TYPICAL);
    let process = metrics::ProcessView {
        figures: metrics::ProcessFigures::read(),
        shard_count: context.shard_count,
        started: lifecycle::is_ready(),
    };
    metrics::render(&cores, &process, &mut text);
    response.body.extend_from_slice(text.as_bytes());
    response.add_header(ResponseHeader::ContentTypePrometheus);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_ready_names_the_shards_and_silent_cores() {
        let state = |unable: Vec<u16>, cores_silent| PersistState {
            unable,
            cores_silent,
        };
        assert_eq!(not_ready_message(&state(vec![], 0)), None);
        assert_eq!(
            not_ready_message(&state(vec![3], 0)).unwrap(),
            "shard 3 cannot persist (its write-ahead log failed)"
        );
        assert_eq!(
            not_ready_message(&state(vec![0, 2], 1)).unwrap(),
            "shards 0, 2 cannot persist (their write-ahead logs failed); 1 core did not answer in time"
        );
    }
}
