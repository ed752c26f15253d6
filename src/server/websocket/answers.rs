//! Requests of one WebSocket connection in flight: each runs in a task of its own through
//! the API, and its answer (then perhaps a status push) lands in the connection's
//! `Outbox`, which wakes the session to frame and write it.
//!
//! Answers come back in the order they finish, not the order requests came: the `id`
//! ties them together (API.md section 9). A task always runs to its end, even if the
//! connection is gone by then, so no create is abandoned between its decision and its
//! answer; only the answer is dropped. Responses and request buffers are kept for reuse
//! (a few per connection), so a steady stream of messages allocates little.

use super::super::access_log::{AccessRecord, Transport};
use super::super::core::Core;
use crate::api::{self, error::ApiError};
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
/// Responses and request buffers a connection keeps for reuse, each.
pub const SPARES_MAX: usize = 8;

/// What the session's tasks hand back to it.
#[derive(Default)]
pub struct Outbox {
    ready: RefCell<Vec<Ready>>,
    /// Request tasks still running.
    running: Cell<usize>,
    /// Pushes awaited.
    awaited: Cell<usize>,
    /// False once the session ended: late answers and pushes are dropped.
    open: Cell<bool>,
    waker: RefCell<Option<Waker>>,
    spare_responses: RefCell<Vec<Response>>,
    spare_buffers: RefCell<Vec<Vec<u8>>>,
}

/// Something to send: an answer, which counts against the in-flight limit until written,
/// or a status push, which does not.
pub enum Ready {
    Answer {
        id: Option<MessageId>,
        response: Response,
    },
    Push(Vec<u8>),
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

    /// A buffer for the next request's fields.
    pub fn take_buffer(&self) -> Vec<u8> {
        self.spare_buffers.borrow_mut().pop().unwrap_or_default()
    }

    /// A written answer's response, for the next request.
    pub fn recycle(&self, response: Response) {
        let mut spares = self.spare_responses.borrow_mut();
        if spares.len() < SPARES_MAX {
            spares.push(response);
        }
    }

    fn recycle_buffer(&self, buffer: Vec<u8>) {
        let mut spares = self.spare_buffers.borrow_mut();
        if spares.len() < SPARES_MAX {
            spares.push(buffer);
        }
    }

    fn take_response(&self) -> Response {
        let mut response = self.spare_responses.borrow_mut().pop().unwrap_or_default();
        response.reset();
        response
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

/// Starts a task that answers `request` through the API.
pub fn spawn_request(connection: &Connection, mut request: MessageRequest, received: Received) {
    let connection = connection.clone();
    let outbox = &connection.outbox;
    outbox.running.set(outbox.running.get() + 1);
    glommio::spawn_local(async move {
        let core = &connection.core;
        let outbox = &connection.outbox;
        let mut response = outbox.take_response();
        let merchant_id = core.api.keys.merchant_id(connection.merchant);
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
        outbox.running.set(outbox.running.get() - 1);
        outbox.recycle_buffer(request.into_buffer());
        let pending = (route == Route::CreatePayment && response.status == 202)
            .then(|| api::answered_payment_id(&response.body))
            .flatten();
        record(
            &connection,
            Some(&id),
            Some(method),
            route,
            &response,
            received,
        );
        outbox.deliver(Ready::Answer {
            id: Some(id),
            response,
        });
        if let Some(payment) = pending {
            await_push(&connection, payment).await;
        }
    })
    .detach();
}

/// Answers at once, without the API: an envelope refused, the in-flight limit, shutdown.
pub fn answer_now(
    connection: &Connection,
    id: Option<MessageId>,
    method: Option<Method>,
    error: &ApiError,
    received: Received,
) {
    let mut response = connection.outbox.take_response();
    api::write_error(&mut response, error);
    record(
        connection,
        id.as_ref(),
        method,
        Route::Unrouted,
        &response,
        received,
    );
    connection.outbox.deliver(Ready::Answer { id, response });
}

/// Counts an answer and writes its access-log line.
fn record(
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
        outbox.deliver(Ready::Push(text));
        core.api.metrics.borrow_mut().websocket.pushes += 1;
    }
}
