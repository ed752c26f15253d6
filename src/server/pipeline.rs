//! Pipelined requests of one connection, answered concurrently and written strictly in
//! request order (HTTP/1.1 requires the order; nothing requires the waiting).
//!
//! The connection frames every complete request of a read into a `Batch` (heads as
//! positions in its read buffer, bodies copied into one arena), then `answer_batch` starts
//! them all and writes each response as soon as it and every earlier one are ready. A
//! client that pipelines N creates against a slow acquirer so waits one round trip, not N.
//!
//! Only creates start before the requests ahead of them have finished: they are the ones
//! that wait on the log and the acquirer. Any other request (reads above all) starts once
//! everything ahead of it in the batch is answered, so a pipelined read still sees the
//! writes pipelined before it.

use super::access_log::AccessRecord;
use super::core::Core;
use super::stamps::Clock;
use crate::api::{self, Request};
use crate::http::{ConnectionHeader, Method, RequestHead, Response};
use crate::metrics::Route;
use futures_lite::AsyncWriteExt;
use glommio::net::TcpStream;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A client's `X-Request-Id` is echoed only if it is this short and visible ASCII.
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// Responses a connection keeps for reuse after a deep pipeline; the rest are freed, so
/// an idle connection holds little whatever depth it once used.
pub const RESPONSES_KEPT_MAX: usize = 16;

/// One complete request of a batch.
pub struct Framed {
    pub head: RequestHead,
    /// Where the request starts in the read buffer: the head's ranges are relative to it.
    pub base: usize,
    /// The request's body in the batch's body arena.
    pub body: Range<usize>,
}

impl Framed {
    /// The bytes of a head field, in the read buffer `input`.
    fn bytes<'a>(&self, input: &'a [u8], range: &Range<usize>) -> &'a [u8] {
        &input[self.base + range.start..self.base + range.end]
    }

    fn optional<'a>(&self, input: &'a [u8], range: &Option<Range<usize>>) -> Option<&'a [u8]> {
        range.as_ref().map(|range| self.bytes(input, range))
    }

    /// Whether this request may start while earlier ones of its batch still run.
    fn starts_early(&self) -> bool {
        self.head.method == Method::Post
    }
}

/// The requests framed from one read, with the connection's reusable buffers.
#[derive(Default)]
pub struct Batch {
    pub framed: Vec<Framed>,
    /// Every body of the batch, one after the other (simd-json parses each in place).
    pub bodies: Vec<u8>,
    /// Scratch space for decoding a chunked body before it joins the arena.
    pub chunked: Vec<u8>,
    responses: Vec<Response>,
}

impl Batch {
    pub fn clear(&mut self) {
        self.framed.clear();
        self.bodies.clear();
    }
}

/// A request's answer, once its handler returned. The response lives in the batch's
/// pool: answers borrow it rather than move it around.
struct Answered<'r> {
    route: Route,
    response: &'r mut Response,
    finished: Instant,
}

enum Slot<'r, F> {
    /// Not started: waits for the requests ahead of it, or never starts after a close.
    Waiting(F),
    Running(Pin<Box<F>>),
    Done(Answered<'r>),
    /// Written, or dropped unanswered after the connection decided to close.
    Finished,
}

/// Answers every request of `batch` and appends the responses to `output` in order,
/// writing to `stream` whenever later answers are still running. Every request that
/// started runs to its end even when the connection fails or closes midway, so no
/// create is abandoned between its decision and its answer. Returns whether to close.
pub async fn answer_batch(
    core: &Core,
    input: &[u8],
    batch: &mut Batch,
    clock: &Clock,
    output: &mut Vec<u8>,
    stream: &mut TcpStream,
) -> io::Result<bool> {
    let Batch {
        framed,
        bodies,
        responses,
        ..
    } = batch;
    let count = framed.len();
    assert!((1..=super::connection::PIPELINE_REQUESTS_MAX).contains(&count));
    if responses.len() < count {
        responses.resize_with(count, Response::new);
    }
    if count == 1 {
        // The common case, not pipelined: no slots, no allocation.
        let body = &mut bodies[framed[0].body.clone()];
        let request = request_of(&framed[0], input, body, clock);
        let answered = answer(&core.api, request, &mut responses[0]).await;
        return Ok(write_answer(
            core, input, &framed[0], answered, clock, output,
        ));
    }
    let mut slots = Vec::with_capacity(count);
    let mut rest: &mut [u8] = bodies;
    for (framed, response) in framed.iter().zip(responses.iter_mut()) {
        let (body, tail) = std::mem::take(&mut rest).split_at_mut(framed.body.len());
        rest = tail;
        let request = request_of(framed, input, body, clock);
        slots.push(Slot::Waiting(answer(&core.api, request, response)));
    }
    let mut order = Order::default();
    let mut failure = None;
    while order.written < count {
        std::future::poll_fn(|cx| drive(&mut slots, framed, &mut order, cx)).await;
        write_ready(core, input, framed, &mut slots, &mut order, clock, output);
        if order.written < count && failure.is_none() && !output.is_empty() {
            if let Err(error) = stream.write_all(output).await {
                failure = Some(error);
                order.closing = true;
            }
            output.clear();
        }
    }
    drop(slots);
    responses.truncate(RESPONSES_KEPT_MAX);
    match failure {
        Some(error) => Err(error),
        None => Ok(order.closing),
    }
}

/// How far a batch has got: requests started, responses written, and whether the
/// connection closes after the last response written.
#[derive(Default)]
struct Order {
    started: usize,
    written: usize,
    closing: bool,
}

/// Starts what may start and polls what runs, until the next response to write is ready
/// (or will never come).
fn drive<'r, F: Future<Output = Answered<'r>>>(
    slots: &mut [Slot<'r, F>],
    framed: &[Framed],
    order: &mut Order,
    cx: &mut Context<'_>,
) -> Poll<()> {
    // Bounded: every pass starts at least one request or stops.
    for _ in 0..=slots.len() {
        for slot in slots[order.written..order.started].iter_mut() {
            if let Slot::Running(future) = slot {
                if let Poll::Ready(answered) = future.as_mut().poll(cx) {
                    *slot = Slot::Done(answered);
                }
            }
        }
        let before = order.started;
        while order.started < slots.len() && !order.closing {
            let ahead_finished = slots[order.written..order.started]
                .iter()
                .all(|slot| matches!(slot, Slot::Done(_) | Slot::Finished));
            if !framed[order.started].starts_early() && !ahead_finished {
                break;
            }
            let slot = &mut slots[order.started];
            let Slot::Waiting(future) = std::mem::replace(slot, Slot::Finished) else {
                unreachable!("requests start in order, once")
            };
            *slot = Slot::Running(Box::pin(future));
            order.started += 1;
        }
        if order.started == before {
            break;
        }
    }
    match &slots[order.written] {
        Slot::Running(_) => Poll::Pending,
        Slot::Waiting(_) if !order.closing => Poll::Pending,
        _ => Poll::Ready(()),
    }
}

/// Writes every answer ready at the head of the batch. After a closing answer, the rest
/// are dropped: never started, or (started) left to finish unanswered.
fn write_ready<F>(
    core: &Core,
    input: &[u8],
    framed: &[Framed],
    slots: &mut [Slot<'_, F>],
    order: &mut Order,
    clock: &Clock,
    output: &mut Vec<u8>,
) {
    while order.written < slots.len() {
        let slot = &mut slots[order.written];
        match slot {
            Slot::Running(_) => return,
            Slot::Waiting(_) if !order.closing => return,
            _ => {}
        }
        if let Slot::Done(_) = slot {
            let Slot::Done(answered) = std::mem::replace(slot, Slot::Finished) else {
                unreachable!()
            };
            if !order.closing {
                let framed = &framed[order.written];
                order.closing = write_answer(core, input, framed, answered, clock, output);
            }
        }
        order.written += 1;
    }
}

fn request_of<'a>(
    framed: &Framed,
    input: &'a [u8],
    body: &'a mut [u8],
    clock: &Clock,
) -> Request<'a> {
    let head = &framed.head;
    Request {
        method: head.method,
        target: framed.bytes(input, &head.target),
        content_type_json: head.content_type_json,
        merchant: framed.optional(input, &head.merchant),
        timestamp: framed.optional(input, &head.timestamp),
        signature: framed.optional(input, &head.signature),
        body,
        unix_ms: clock.unix_ms,
    }
}

async fn answer<'r>(
    api: &api::Context,
    request: Request<'_>,
    response: &'r mut Response,
) -> Answered<'r> {
    response.reset();
    let route = api::handle(api, request, response).await;
    Answered {
        route,
        response,
        finished: Instant::now(),
    }
}

/// Appends one answer to `output` and records it in the metrics and the access log.
/// Returns whether the connection closes after it.
fn write_answer(
    core: &Core,
    input: &[u8],
    framed: &Framed,
    answered: Answered<'_>,
    clock: &Clock,
    output: &mut Vec<u8>,
) -> bool {
    let Answered {
        route,
        response,
        finished,
    } = answered;
    let head = &framed.head;
    let close = !head.keep_alive || response.close || core.stop.is_triggered();
    let connection = match (close, head.version_minor) {
        (true, _) => ConnectionHeader::Close,
        (false, 0) => ConnectionHeader::KeepAlive,
        (false, _) => ConnectionHeader::Omitted,
    };
    let mut generated = [0u8; REQUEST_ID_BYTES_MAX];
    let request_id = match framed
        .optional(input, &head.request_id)
        .filter(|id| is_valid_request_id(id))
    {
        Some(id) => id,
        None => core.stamps.generate_request_id(&mut generated),
    };
    let body_omitted = head.method == Method::Head;
    response.write_to(output, request_id, &clock.date, connection, body_omitted);
    // Every request of a batch is timed from the read that completed the batch.
    let latency_us = finished
        .saturating_duration_since(clock.instant)
        .as_micros() as u64;
    core.api
        .metrics
        .borrow_mut()
        .record_request(route, response.status, latency_us);
    core.access_log.record(&AccessRecord {
        unix_ms: clock.unix_ms,
        method: head.method,
        route,
        status: response.status,
        latency_us,
        request_id,
        merchant: framed.optional(input, &head.merchant),
    });
    close
}

/// 1 to 64 visible ASCII characters (API.md section 2).
pub fn is_valid_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_BYTES_MAX
        && id.iter().all(|b| (0x21..=0x7e).contains(b))
}

#[cfg(test)]
mod tests {
    use super::is_valid_request_id;

    #[test]
    fn request_ids_are_short_visible_ascii() {
        assert!(is_valid_request_id(b"r-1"));
        assert!(is_valid_request_id(&[b'a'; 64]));
        assert!(!is_valid_request_id(&[b'a'; 65]));
        assert!(!is_valid_request_id(b""));
        assert!(!is_valid_request_id(b"has space"));
        assert!(!is_valid_request_id("é".as_bytes()));
    }
}
