//! The payment routes of API.md section 3: create, read by id, read by order.
//!
//! This core does the stateless, CPU-heavy part (signature, JSON, validation); the shard
//! that owns the payment does the rest, reached through `Peers::submit`.

use super::create_request::parse_create_request;
use super::error::{ApiError, ErrorKind};
use super::payment_json::write_payment;
use super::{write_error, Context, Request};
use crate::auth::SignedHeaders;
use crate::http::{Response, ResponseHeader};
use crate::payment::{MerchantIndex, PaymentId, ORDER_ID_LENGTH_MAX};
use crate::shard::routing::shard_of;
use crate::shard::runtime::{Command, Reply};
use std::time::{SystemTime, UNIX_EPOCH};

pub async fn create(context: &Context, request: Request<'_>, response: &mut Response) {
    let merchant = match authenticate(context, &request) {
        Ok(merchant) => merchant,
        Err(error) => return write_error(response, &error),
    };
    if request.content_type_json == Some(false) {
        return write_error(response, &ApiError::new(ErrorKind::UnsupportedMediaType));
    }
    let terms = match parse_create_request(request.body, merchant) {
        Ok(terms) => terms,
        Err(error) => return write_error(response, &error),
    };
    let merchant_id = context.keys.merchant_id(merchant);
    let shard = shard_of(merchant_id, &terms.order_id, context.shard_count);
    let reply = context.peers.submit(shard, Command::Create(terms)).await;
    write_reply(context, reply, response);
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
    let reply = context
        .peers
        .submit(id.shard, Command::Get { merchant, id })
        .await;
    write_reply(context, reply, response);
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
        Ok(order_id) if is_order_id(order_id) => order_id.to_string(),
        _ => return write_error(response, &ApiError::new(ErrorKind::PaymentNotFound)),
    };
    let merchant_id = context.keys.merchant_id(merchant);
    let shard = shard_of(merchant_id, &order_id, context.shard_count);
    let reply = context
        .peers
        .submit(shard, Command::GetByOrder { merchant, order_id })
        .await;
    write_reply(context, reply, response);
}

fn is_order_id(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= ORDER_ID_LENGTH_MAX
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Checks the signature over the request as sent: its own method (a HEAD is signed as
/// HEAD), target and body.
pub(super) fn authenticate(
    context: &Context,
    request: &Request<'_>,
) -> Result<MerchantIndex, ApiError> {
    let method = request.method.as_str().as_bytes();
    let headers = SignedHeaders {
        merchant: request.merchant,
        timestamp: request.timestamp,
        signature: request.signature,
    };
    let now_secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let tolerance_secs = context.config.security.timestamp_tolerance_secs;
    context
        .keys
        .verify(
            &headers,
            method,
            request.target,
            request.body,
            now_secs,
            tolerance_secs,
        )
        .map_err(ApiError::from)
}

fn write_reply(context: &Context, reply: Reply, response: &mut Response) {
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
    write_payment(&mut response.body, &payment, context.keys);
}
