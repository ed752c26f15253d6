//! What one WebSocket message becomes: a request run through the API (`answer`, a future
//! the session polls in place, see `requests`), its record in the metrics and the access
//! log, and, for a create answered 202, a status push once the payment is final.
//!
//! Answers come back in the order they finish, not the order requests came: the `id`
//! ties them together (API.md section 9). A request always runs to its end, even if the
//! connection is gone by then, so no create is abandoned between its decision and its
//! answer; only the answer is dropped. A push waits in a task of its own (it may wait
//! long, and it does not count against the in-flight limit) and lands in the
//! connection's `Outbox`, which wakes the session to frame and write it.

use super::super::access_log::{AccessRecord, Transport};
use super::super::core::Core;
use crate::api;
use crate::http::websocket::message::{write_payment_updated, MessageId, MessageRequest};
use crate::http::{Method, Response};
use crate::metrics::Route;
use crate::payment::{MerchantIndex, PaymentId};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

/// Payments of one connection awaited at once for a status push; beyond this a 202 is
/// not pushed (webhooks stay the durable channel).
pub const PUSHES_AWAITED_MAX: usize = 1024;

/// Status pushes ready for the session.
#[derive(Default)]
pub struct Outbox {
    pushes: RefCell<Vec<Vec<u8>>>,
    /// Pushes awaited.
    awaited: Cell<usize>,
    /// False once the session ended: late pushes are dropped.
    open: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Outbox {
    pub fn new() -> Rc<Outbox> {
        let outbox = Outbox::default();
        outbox.open.set(true);
        Rc::new(outbox)
    }

    pub fn has_ready(&self) -> bool {
        !self.pushes.borrow().is_empty()
    }

    /// Moves the pushes ready into `into` (emptied first).
    pub fn take_ready(&self, into: &mut Vec<Vec<u8>>) {
        into.clear();
        std::mem::swap(&mut *self.pushes.borrow_mut(), into);
    }

    /// The session waits on this waker for pushes.
    pub fn set_waker(&self, waker: &Waker) {
        let mut slot = self.waker.borrow_mut();
        if !slot.as_ref().is_some_and(|known| known.will_wake(waker)) {
            *slot = Some(waker.clone());
        }
    }

    pub fn close(&self) {
        self.open.set(false);
        self.pushes.borrow_mut().clear();
    }

    fn deliver(&self, push: Vec<u8>) {
        if !self.open.get() {
            return;
        }
        self.pushes.borrow_mut().push(push);
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

/// When a message arrived: the latency clock and the wall clock of its access-log line.
#[derive(Clone, Copy)]
pub struct Received {
    pub instant: Instant,
    pub unix_ms: u64,
}

/// The method label index of `payd_websocket_messages_total`.
fn method_slot(method: Option<Method>) -> usize {
    match method {
        Some(Method::Get) => 0,
        Some(Method::Post) => 1,
        Some(Method::Head | Method::Other) => 2,
        None => 3,
    }
}

/// A request to answer, with everything its future owns: it borrows nothing from the
/// session, so the session can hold it in place while it reads and writes.
pub struct Job {
    pub core: Rc<Core>,
    pub merchant: MerchantIndex,
    pub request: MessageRequest,
    pub response: Response,
    pub received: Received,
}

/// A request's answer, with its buffers back for the next request.
pub struct Finished {
    pub id: MessageId,
    pub method: Method,
    pub route: Route,
    pub response: Response,
    pub buffer: Vec<u8>,
    pub received: Received,
}

/// Answers one request through the API.
pub async fn answer(job: Job) -> Finished {
    let Job {
        core,
        merchant,
        mut request,
        mut response,
        received,
    } = job;
    response.reset();
    let merchant_id = core.api.keys.merchant_id(merchant);
    let (id, method) = (request.id, request.method);
    let parts = request.parts();
    let api_request = api::Request {
        method,
        target: parts.target,
        content_type_json: None,
        merchant: Some(merchant_id.as_bytes()),
        timestamp: parts.timestamp,
        signature: parts.signature,
        // A message is one JSON object: its fields cannot be repeated headers.
        auth_header_repeated: false,
        body: parts.body,
        unix_ms: received.unix_ms,
    };
    let route = api::handle_message(&core.api, api_request, &mut response).await;
    Finished {
        id,
        method,
        route,
        response,
        buffer: request.into_buffer(),
        received,
    }
}

/// The payment to push for an answer: a create answered 202 `pending`.
pub fn pending_payment(route: Route, response: &Response) -> Option<PaymentId> {
    if route == Route::CreatePayment && response.status == 202 {
        api::answered_payment_id(&response.body)
    } else {
        None
    }
}

/// Starts a task that pushes `payment` once it is final (see `await_push`).
pub fn spawn_push(connection: &Connection, payment: PaymentId) {
    let connection = connection.clone();
    glommio::spawn_local(async move { await_push(&connection, payment).await }).detach();
}

/// Counts an answer and writes its access-log line.
pub fn record(
    connection: &Connection,
    id: Option<&MessageId>,
    method: Option<Method>,
    route: Route,
    response: &Response,
    received: Received,
) {
    let core = &connection.core;
    let latency_us = received.instant.elapsed().as_micros() as u64;
    core.api
        .metrics
        .borrow_mut()
        .websocket
        .record_message(method_slot(method), response.status);
    let merchant_id = core.api.keys.merchant_id(connection.merchant);
    core.access_log.record(&AccessRecord {
        unix_ms: received.unix_ms,
        method: method.unwrap_or(Method::Other),
        route,
        status: response.status,
        latency_us,
        request_id: id.map_or(b"-", |id| id.log_text()),
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
        outbox.deliver(text);
        core.api.metrics.borrow_mut().websocket.pushes += 1;
    }
}
