//! WebSocket intake on `GET /v1/ws` (API.md section 9): the opening, answered by the HTTP
//! connection loop, and the session that serves the connection from then on.
//!
//! The opening is an HTTP request like any other until its answer: `open` asks the API
//! (signature, readiness, upgrade headers) and writes either `101 Switching Protocols` or
//! the HTTP error. After a 101 the connection loop hands its stream, and any bytes it had
//! already read past the request, to `session::serve`. The session is generic over the
//! stream, so a TLS stream serves `wss://` the same way a TCP stream serves `ws://`.

mod answers;
mod requests;
mod session;

pub use session::serve;

use super::access_log::{AccessRecord, Transport};
use super::core::Core;
use super::pipeline::{is_valid_request_id, REQUEST_ID_BYTES_MAX};
use crate::api;
use crate::http::websocket::write_switching_protocols;
use crate::http::{ConnectionHeader, Method, RequestHead, Response};
use crate::metrics::Route;
use crate::payment::MerchantIndex;

/// Whether `head` opens a WebSocket: a GET of `/v1/ws` without a body. (Any other request
/// to `/v1/ws` is routed like every request and refused there.)
pub fn is_opening(head: &RequestHead, request: &[u8]) -> bool {
    let target = &request[head.target.clone()];
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    head.method == Method::Get
        && head.framing == crate::http::BodyFraming::Empty
        && path == api::WEBSOCKET_PATH
}

/// Answers an opening whose head starts `request`: the 101, or the HTTP error (after
/// which the connection goes on as HTTP). Returns the merchant on a 101.
pub fn open(
    core: &Core,
    request: &[u8],
    head: &RequestHead,
    response: &mut Response,
    output: &mut Vec<u8>,
) -> Option<MerchantIndex> {
    let clock = core.stamps.clock();
    let field = |range: &std::ops::Range<usize>| &request[range.clone()];
    let mut no_body = [0u8; 0];
    let api_request = api::Request {
        method: Method::Get,
        target: field(&head.target),
        content_type_json: head.content_type_json,
        merchant: head.merchant.as_ref().map(field),
        timestamp: head.timestamp.as_ref().map(field),
        signature: head.signature.as_ref().map(field),
        auth_header_repeated: head.auth_header_repeated,
        body: &mut no_body,
        unix_ms: clock.unix_ms,
    };
    let key = head.websocket.key.as_ref().map(field);
    let decision = api::open_websocket(&core.api, &api_request, &head.websocket, key);
    let mut generated = [0u8; REQUEST_ID_BYTES_MAX];
    let request_id = match head.request_id.as_ref().map(field) {
        Some(id) if is_valid_request_id(id) => id,
        _ => core.stamps.generate_request_id(&mut generated),
    };
    let status = match (&decision, key) {
        (Ok(_), Some(key)) => {
            write_switching_protocols(output, key, request_id, &clock.date);
            101
        }
        (Err(error), _) => {
            response.reset();
            api::write_error(response, error);
            let connection = match (head.keep_alive, head.version_minor) {
                (false, _) => ConnectionHeader::Close,
                (true, 0) => ConnectionHeader::KeepAlive,
                (true, _) => ConnectionHeader::Omitted,
            };
            response.write_to(output, request_id, &clock.date, connection, false);
            response.status
        }
        (Ok(_), None) => unreachable!("an accepted opening has a key"),
    };
    core.api
        .metrics
        .borrow_mut()
        .record_request(Route::WebSocket, status, 0);
    core.access_log.record(&AccessRecord {
        unix_ms: clock.unix_ms,
        method: Method::Get,
        route: Route::WebSocket,
        status,
        latency_us: 0,
        request_id,
        merchant: head.merchant.as_ref().map(field),
        transport: Transport::Http,
    });
    decision.ok()
}
