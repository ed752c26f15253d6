//! The payment routes of API.md section 3: create, read by id, read by order.
//!
//! This core does the stateless, CPU-heavy part (signature, JSON, validation); the shard
//! that owns the payment does the rest: called directly when it lives on this core (and
//! the answer is written from its own copy of the payment), through `Peers::submit`
//! otherwise. "Now" is the connection's clock read for the batch (`Request::unix_ms`).

use super::create_request::parse_create_request;
use super::error::{ApiError, ErrorKind};
use super::payment_json::write_payment;
use super::{write_error, Context, Request};
use crate::auth::{AuthError, SignedHeaders};
use crate::http::{Response, ResponseHeader};
use crate::metrics::Stage;
use crate::payment::{is_valid_order_id, MerchantIndex, PaymentId};
use crate::shard::routing::shard_of;
use crate::shard::runtime::{Command, Reply};
use std::time::Instant;

pub async fn create(context: &Context, request: Request<'_>, response: &mut Response) {
    let merchant = match authenticate(context, &request) {
        Ok(merchant) => merchant,
        Err(error) => return write_error(response, &error),
    };
    if request.content_type_json == Some(false) {
        return write_error(response, &ApiError::new(ErrorKind::UnsupportedMediaType));
    }
    let parsing = Instant::now();
    let parsed = parse_create_request(request.body, merchant);
    record_stage(context, Stage::Parse, parsing);
    let terms = match parsed {
        Ok(terms) => terms,
        Err(error) => return write_error(response, &error),
    };
    let merchant_id = context.keys.merchant_id(merchant);
    let shard = shard_of(merchant_id, &terms.order_id, context.shard_count);
    let command = Command::Create {
        terms,
        now_ms: request.unix_ms,
    };
    run(context, shard, command, response).await;
}

/// `GET /v1/payments/{id}`.
pub async fn get(context: &Context, request: Request<'_>, id: &[u8], response: &mut Response) {
    let merchant = match authenticate(context, &request) {
        Ok(merchant) => merchant,
        Err(error) => return write_error(response, &error),
    };
    // An id that cannot exist is simply not found: no hint about the id format.
    let id = std::str::from_utf8(id).ok().and_then(PaymentId::parse);
    let Some(id) = id.filter(|id| id.shard < context.shard_count) else {
        return write_error(response, &ApiError::new(ErrorKind::PaymentNotFound));
    };
    run(context, id.shard, Command::Get { merchant, id }, response).await;
}

/// `GET /v1/orders/{order_id}`.
pub async fn get_by_order(
    context: &Context,
    request: Request<'_>,
    order_id: &[u8],
    response: &mut Response,
) {
    let merchant = match authenticate(context, &request) {
        Ok(merchant) => merchant,
        Err(error) => return write_error(response, &error),
    };
    let order_id = match std::str::from_utf8(order_id) {
        Ok(order_id) if is_valid_order_id(order_id) => order_id.to_string(),
        _ => return write_error(response, &ApiError::new(ErrorKind::PaymentNotFound)),
    };
    let merchant_id = context.keys.merchant_id(merchant);
    let shard = shard_of(merchant_id, &order_id, context.shard_count);
    let command = Command::GetByOrder { merchant, order_id };
    run(context, shard, command, response).await;
}

/// Waits for a payment to be final (see `Command::AwaitFinal`) and appends it to `out`.
pub async fn await_final(
    context: &Context,
    merchant: MerchantIndex,
    id: PaymentId,
    out: &mut Vec<u8>,
) -> bool {
    let keys = context.keys;
    let command = Command::AwaitFinal { merchant, id };
    let reply = match context.peers.local_shard(id.shard) {
        Some(local) => {
            let reply = local
                .execute_with(command, |payment| write_payment(out, payment, keys))
                .await;
            return matches!(reply, Reply::Found(()));
        }
        None => context.peers.submit(id.shard, command).await,
    };
    match reply {
        Reply::Found(payment) => {
            write_payment(out, &payment, keys);
            true
        }
        _ => false,
    }
}

/// Checks the signature over the request as sent: its own method (a HEAD is signed as
/// HEAD), target and body.
pub(super) fn authenticate(
    context: &Context,
    request: &Request<'_>,
) -> Result<MerchantIndex, ApiError> {
    if request.auth_header_repeated {
        // Two values of one header: which was signed is ambiguous, so neither counts.
        return Err(ApiError::from(AuthError::AuthenticationRequired));
    }
    let method = request.method.as_str().as_bytes();
    let headers = SignedHeaders {
        merchant: request.merchant,
        timestamp: request.timestamp,
        signature: request.signature,
    };
    let now_secs = request.unix_ms / 1000;
    let tolerance_secs = context.config.security.timestamp_tolerance_secs;
    let verifying = Instant::now();
    let verified = context.keys.verify(
        &headers,
        method,
        request.target,
        request.body,
        now_secs,
        tolerance_secs,
    );
    record_stage(context, Stage::Verify, verifying);
    verified.map_err(ApiError::from)
}

fn record_stage(context: &Context, stage: Stage, started: Instant) {
    let duration_ns = started.elapsed().as_nanos() as u64;
    context
        .metrics
        .borrow_mut()
        .record_stage(stage, duration_ns);
}

/// Runs a command on the shard that owns it and writes the answer. A shard on this core
/// writes the payment object straight from its own copy; another core's shard sends a
/// copy over the mesh, written here.
async fn run(context: &Context, shard: u16, command: Command, response: &mut Response) {
    let keys = context.keys;
    if let Some(local) = context.peers.local_shard(shard) {
        let body = &mut response.body;
        let reply = local
            .execute_with(command, |payment| write_payment(body, payment, keys))
            .await;
        return write_reply(reply, response, |(), _| {});
    }
    let reply = context.peers.submit(shard, command).await;
    write_reply(reply, response, |payment, body| {
        write_payment(body, &payment, keys)
    });
}

/// Sets the status and headers of a reply; `render` writes a payment into the body
/// (or has already).
fn write_reply<P>(reply: Reply<P>, response: &mut Response, render: impl FnOnce(P, &mut Vec<u8>)) {
    let (status, payment) = match reply {
        Reply::Created {
            payment,
            r#final: true,
        } => (201, payment),
        Reply::Created {
            payment,
            r#final: false,
        } => (202, payment),
        Reply::Replayed(payment) => {
            response.add_header(ResponseHeader::IdempotentReplayed);
            (200, payment)
        }
        Reply::Found(payment) => (200, payment),
        Reply::NotFound => {
            return write_error(response, &ApiError::new(ErrorKind::PaymentNotFound))
        }
        Reply::InProgress => {
            return write_error(response, &ApiError::new(ErrorKind::RequestInProgress))
        }
        Reply::Conflict => return write_error(response, &ApiError::new(ErrorKind::OrderConflict)),
        Reply::Overloaded => return write_error(response, &ApiError::new(ErrorKind::Overloaded)),
        Reply::NotReady => return write_error(response, &ApiError::new(ErrorKind::NotReady)),
        Reply::Unavailable => {
            let error = ApiError::with_message(
                ErrorKind::Overloaded,
                "the payment store is unavailable; retry later",
            );
            return write_error(response, &error);
        }
    };
    response.status = status;
    render(payment, &mut response.body);
}
