//! Requests of one WebSocket connection in flight: each runs in a task of its own through
//! the API, and its answer (then perhaps a status push) lands in the connection's
//! `Outbox`, which wakes the session to frame and write it.
//!
//! Answers come back in the order they finish, not the order requests came: the `id`
//! ties them together (API.md section 9). A task always runs to its end, even if the
//! connection is gone by then, so no create is abandoned between its decision and its
//! answer; only the answer is dropped.

use super::super::access_log::{AccessRecord, Transport};
use super::super::core::Core;
use crate::api::{self, error::ApiError};
use crate::http::websocket::message::{
    write_answer, write_payment_updated, MessageId, MessageRequest,
};
use crate::http::{Method, Response, ResponseHeader};
use crate::metrics::Route;
use crate::payment::{MerchantIndex, PaymentId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

/// Payments of one connection awaited at once for a status push; beyond this a 202 is
/// not pushed (webhooks stay the durable channel).
pub const PUSHES_AWAITED_MAX: usize = 1024;

/// What the session's tasks hand back to it.
#[derive(Default)]
pub struct Outbox {
    /// Answers and pushes ready to be framed, each a complete JSON text.
    ready: RefCell<Vec<Ready>>,
    /// Request tasks still running.
    running: Cell<usize>,
    /// Pushes awaited.
    awaited: Cell<usize>,
    /// False once the session ended: late answers and pushes are dropped.
    open: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

pub struct Ready {
    pub text: Vec<u8>,
    /// An answer (true) counts against the in-flight limit until written; a push does not.
    pub answer: bool,
}

impl Outbox {
    pub fn new() -> Rc<Outbox> {
        let outbox = Outbox::default();
        outbox.open.set(true);
        Rc::new(outbox)
    }

    pub fn running(&self) -> usize {
        self.running.get()
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.borrow().is_empty()
    }

    /// Moves what is ready into `into` (emptied first).
    pub fn take_ready(&self, into: &mut Vec<Ready>) {
        into.clear();
        std::mem::swap(&mut *self.ready.borrow_mut(), into);
    }

    /// The session waits on this waker for answers.
    pub fn set_waker(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    pub fn close(&self) {
        self.open.set(false);
        self.ready.borrow_mut().clear();
    }

    fn deliver(&self, ready: Ready) {
        if !self.open.get() {
            return;
        }
        self.ready.borrow_mut().push(ready);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }
}

/// What every request of one connection shares.
#[derive(Clone)]
pub struct Connection {
    pub core: Rc<Core>,
    pub outbox: Rc<Outbox>,
    pub merchant: MerchantIndex,
}

/// The method label index of `payd_websocket_messages_total`.
pub fn method_slot(method: Option<Method>) -> usize {
    match method {
        Some(Method::Get) => 0,
        Some(Method::Post) => 1,
        Some(Method::Head | Method::Other) => 2,
        None => 3,
    }
}

/// Starts a task that answers `request` through the API.
pub fn spawn_request(
    connection: &Connection,
    request: MessageRequest,
    received: Instant,
    unix_ms: u64,
) {
    let connection = connection.clone();
    connection
        .outbox
        .running
        .set(connection.outbox.running.get() + 1);
    glommio::spawn_local(async move {
        let mut response = Response::new();
        let MessageRequest {
            id,
            method,
            target,
            timestamp,
            signature,
            mut body,
        } = request;
        let core = &connection.core;
        let merchant_id = core.api.keys.merchant_id(connection.merchant);
        let api_request = api::Request {
            method,
            target: target.as_bytes(),
            content_type_json: None,
            merchant: Some(merchant_id.as_bytes()),
            timestamp: timestamp.as_deref().map(str::as_bytes),
            signature: signature.as_deref().map(str::as_bytes),
            body: &mut body,
            unix_ms,
        };
        let route = api::handle_message(&core.api, api_request, &mut response).await;
        let outbox = &connection.outbox;
        outbox.running.set(outbox.running.get() - 1);
        let answered = Answered {
            id: Some(&id),
            method: Some(method),
            route,
            response: &response,
            received,
            unix_ms,
        };
        deliver_answer(&connection, &answered);
        let pending = (route == Route::CreatePayment && response.status == 202)
            .then(|| api::answered_payment_id(&response.body))
            .flatten();
        if let Some(payment) = pending {
            await_push(&connection, payment).await;
        }
    })
    .detach();
}

/// Answers at once, without the API: an envelope refused, the in-flight limit, shutdown.
pub fn answer_now(
    connection: &Connection,
    id: Option<&MessageId>,
    method: Option<Method>,
    error: &ApiError,
    received: Instant,
    unix_ms: u64,
) {
    let mut response = Response::new();
    api::write_error(&mut response, error);
    let answered = Answered {
        id,
        method,
        route: Route::Unrouted,
        response: &response,
        received,
        unix_ms,
    };
    deliver_answer(connection, &answered);
}

struct Answered<'a> {
    id: Option<&'a MessageId>,
    method: Option<Method>,
    route: Route,
    response: &'a Response,
    received: Instant,
    unix_ms: u64,
}

/// Writes the answer's JSON into the outbox, and counts and logs it.
fn deliver_answer(connection: &Connection, answered: &Answered<'_>) {
    let response = answered.response;
    let replayed = response
        .headers
        .contains(&Some(ResponseHeader::IdempotentReplayed));
    let mut text = Vec::with_capacity(response.body.len() + 64);
    write_answer(
        &mut text,
        answered.id,
        response.status,
        replayed,
        &response.body,
    );
    connection.outbox.deliver(Ready { text, answer: true });
    let core = &connection.core;
    let latency_us = answered.received.elapsed().as_micros() as u64;
    core.api
        .metrics
        .borrow_mut()
        .websocket
        .record_message(method_slot(answered.method), response.status);
    let merchant_id = core.api.keys.merchant_id(connection.merchant);
    core.access_log.record(&AccessRecord {
        unix_ms: answered.unix_ms,
        method: answered.method.unwrap_or(Method::Other),
        route: answered.route,
        status: response.status,
        latency_us,
        request_id: answered.id.map_or(b"-", |id| id.log_text()),
        merchant: Some(merchant_id.as_bytes()),
        transport: Transport::WebSocket,
    });
}

/// Waits until `payment` (answered 202) is final and pushes it, if the connection is
/// still open and has room for one more awaited push.
async fn await_push(connection: &Connection, payment: PaymentId) {
    let outbox = &connection.outbox;
    if !outbox.open.get() || outbox.awaited.get() >= PUSHES_AWAITED_MAX {
        return;
    }
    outbox.awaited.set(outbox.awaited.get() + 1);
    let mut json = Vec::new();
    let core = &connection.core;
    let found = api::await_final(&core.api, connection.merchant, payment, &mut json).await;
    outbox.awaited.set(outbox.awaited.get() - 1);
    if found && outbox.open.get() {
        let mut text = Vec::with_capacity(json.len() + 48);
        write_payment_updated(&mut text, &json);
        outbox.deliver(Ready {
            text,
            answer: false,
        });
        core.api.metrics.borrow_mut().websocket.pushes += 1;
    }
}
