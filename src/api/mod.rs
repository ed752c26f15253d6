//! The API: routes, handlers, and the error catalogue of API.md.
//!
//! The connection loop in `server` hands each complete request here as a `Request` (head
//! fields and body already framed by `http`) and gets a `Response` back, plus the route it
//! was answered on for metrics and the access log. Handlers reach the stateful part of
//! payd only through `shard`.
//!
//! Both transports come through here: an HTTP request through `handle`, a WebSocket
//! message through `handle_message` (the payment routes of `handle`, nothing else), and
//! the WebSocket opening through `open_websocket`. One signature check, one validation,
//! one route to the shards and one error catalogue serve both.

pub mod create_request;
#[cfg(debug_assertions)]
mod debug;
pub mod error;
pub(crate) mod events;
pub mod json_scan;
mod operations;
mod payment_json;
mod payments;

use crate::auth::MerchantKeys;
use crate::config::Config;
use crate::http::websocket::is_valid_key;
use crate::http::{Method, Response, ResponseHeader, UpgradeHeaders};
use crate::metrics::{CoreMetrics, Route};
use crate::payment::{MerchantIndex, PaymentId};
use crate::shard::mesh::Peers;
use error::{ApiError, ErrorKind};
use std::cell::RefCell;
use std::rc::Rc;

/// What handlers on one core can reach. Cheap to clone; one per core.
#[derive(Clone)]
pub struct Context {
    pub config: &'static Config,
    pub keys: &'static MerchantKeys,
    /// Shards in the data directory (fixed when it was created).
    pub shard_count: u16,
    pub metrics: Rc<RefCell<CoreMetrics>>,
    pub peers: Rc<Peers>,
}

/// A complete request, framed by `http`. The body is a private copy the handler may
/// parse in place (simd-json needs it mutable).
pub struct Request<'a> {
    pub method: Method,
    /// Path and query exactly as sent on the request line.
    pub target: &'a [u8],
    pub content_type_json: Option<bool>,
    pub merchant: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub signature: Option<&'a [u8]>,
    /// An authentication header came twice: the request is not authenticated.
    pub auth_header_repeated: bool,
    pub body: &'a mut [u8],
    /// Wall-clock time the request is handled at, read once per batch of requests by the
    /// connection: handlers take "now" from here instead of reading the clock again.
    pub unix_ms: u64,
}

/// Answers one request. Returns the route it was answered on.
pub async fn handle(context: &Context, request: Request<'_>, response: &mut Response) -> Route {
    let path = request
        .target
        .split(|&b| b == b'?')
        .next()
        .unwrap_or_default();
    let is_get = matches!(request.method, Method::Get | Method::Head);
    match path {
        #[cfg(debug_assertions)]
        b"/debug/panic" if debug::routes_enabled() => debug::panic_on_request(),
        #[cfg(debug_assertions)]
        b"/debug/stall" if debug::routes_enabled() => {
            debug::stall(response);
            Route::NotFound
        }
        b"/healthz" | b"/readyz" | b"/metrics" if !is_get => {
            let route = operations::route_of(path);
            method_not_allowed(response, "GET, HEAD");
            route
        }
        b"/healthz" => {
            operations::healthz(response);
            Route::Healthz
        }
        b"/readyz" => {
            operations::readyz(context, response).await;
            Route::Readyz
        }
        b"/metrics" => {
            operations::metrics(context, response).await;
            Route::Metrics
        }
        b"/v1/payments" if request.method != Method::Post => {
            method_not_allowed(response, "POST");
            Route::CreatePayment
        }
        b"/v1/payments" => {
            payments::create(context, request, response).await;
            Route::CreatePayment
        }
        WEBSOCKET_PATH if request.method != Method::Get => {
            method_not_allowed(response, "GET");
            Route::WebSocket
        }
        WEBSOCKET_PATH => {
            // An upgrade never gets here (the connection answers it through
            // `open_websocket`); a GET with a body does.
            write_error(response, &upgrade_required());
            Route::WebSocket
        }
        b"/v1/events" if !is_get => {
            method_not_allowed(response, "GET, HEAD");
            Route::ListEvents
        }
        b"/v1/events" => {
            events::list(context, request, response).await;
            Route::ListEvents
        }
        _ => {
            if let Some(id) = resource(path, b"/v1/payments/") {
                if is_get {
                    payments::get(context, request, id, response).await;
                } else {
                    method_not_allowed(response, "GET, HEAD");
                }
                Route::GetPayment
            } else if let Some(order_id) = resource(path, b"/v1/orders/") {
                if is_get {
                    payments::get_by_order(context, request, order_id, response).await;
                } else {
                    method_not_allowed(response, "GET, HEAD");
                }
                Route::GetOrder
            } else {
                write_error(response, &ApiError::new(ErrorKind::NotFound));
                Route::NotFound
            }
        }
    }
}

/// The path of the WebSocket intake (API.md section 9).
pub const WEBSOCKET_PATH: &[u8] = b"/v1/ws";

/// Answers one request carried by a WebSocket message: the payment routes of API.md
/// section 3, answered exactly as `handle` answers them over HTTP; any other target is
/// `not_found`.
pub async fn handle_message(
    context: &Context,
    request: Request<'_>,
    response: &mut Response,
) -> Route {
    let path = request
        .target
        .split(|&b| b == b'?')
        .next()
        .unwrap_or_default();
    let payment_route = path == b"/v1/payments"
        || resource(path, b"/v1/payments/").is_some()
        || resource(path, b"/v1/orders/").is_some();
    if !payment_route {
        write_error(response, &ApiError::new(ErrorKind::NotFound));
        return Route::NotFound;
    }
    handle(context, request, response).await
}

/// Decides a WebSocket opening (`GET /v1/ws` with upgrade headers): the merchant the
/// connection will belong to, or the HTTP error to answer instead. The signature is
/// checked first, as for any `/v1` request: an unsigned opening learns nothing more.
pub fn open_websocket(
    context: &Context,
    request: &Request<'_>,
    upgrade: &UpgradeHeaders,
    key: Option<&[u8]>,
) -> Result<MerchantIndex, ApiError> {
    let merchant = payments::authenticate(context, request)?;
    if !crate::lifecycle::is_ready() {
        return Err(ApiError::new(ErrorKind::NotReady));
    }
    if !upgrade.requested || !upgrade.version_13 || !key.is_some_and(is_valid_key) {
        return Err(upgrade_required());
    }
    Ok(merchant)
}

fn upgrade_required() -> ApiError {
    ApiError::with_message(
        ErrorKind::InvalidRequest,
        "GET /v1/ws opens a WebSocket: send Upgrade: websocket, Connection: Upgrade, \
         Sec-WebSocket-Version: 13 and a Sec-WebSocket-Key",
    )
}

/// Waits until payment `id` of `merchant` is final and appends it to `out` as the
/// payment object. Returns false if there is no such payment.
pub async fn await_final(
    context: &Context,
    merchant: MerchantIndex,
    id: PaymentId,
    out: &mut Vec<u8>,
) -> bool {
    payments::await_final(context, merchant, id, out).await
}

/// The id of the payment a create answered with (its body is a payment object).
pub fn answered_payment_id(body: &[u8]) -> Option<PaymentId> {
    payment_json::id_of_written(body)
}

/// The single path segment after `prefix`, if the path is exactly `prefix` + segment.
fn resource<'a>(path: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    let rest = path.strip_prefix(prefix)?;
    (!rest.is_empty() && !rest.contains(&b'/')).then_some(rest)
}

/// Fills `response` with an error: its status, and the JSON body of API.md section 2.
pub fn write_error(response: &mut Response, error: &ApiError) {
    response.status = error.kind.status();
    response.body.clear();
    error.write_json(&mut response.body);
    match error.kind {
        ErrorKind::Overloaded | ErrorKind::RequestInProgress | ErrorKind::NotReady => {
            response.add_header(ResponseHeader::RetryAfterSecs(1));
        }
        _ => {}
    }
}

fn method_not_allowed(response: &mut Response, allow: &'static str) {
    write_error(response, &ApiError::new(ErrorKind::MethodNotAllowed));
    response.add_header(ResponseHeader::Allow(allow));
}
