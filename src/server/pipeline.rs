//! Pipelined requests of one connection, answered concurrently and written strictly in
//! request order (HTTP/1.1 requires the order; nothing requires the waiting).
//!
//! The connection frames every complete request of a read into a `Batch` (heads as
//! positions in its read buffer, bodies copied into one arena), then `answer_batch`
//! answers them, writing each response as soon as it and every earlier one are ready. A
//! client that pipelines N creates against a slow acquirer so waits one round trip, not N.
//!
//! Only consecutive creates run together: they are the ones that wait on the log and the
//! acquirer. Any other request (reads above all) runs alone once everything ahead of it
//! in the batch is answered, so a pipelined read still sees the writes pipelined before
//! it, and a pipeline of reads or health checks costs no more than one request at a time.

use super::access_log::{AccessRecord, Transport};
use super::core::Core;
use super::stamps::Clock;
use crate::api::{self, Request};
use crate::http::{BodyDecoder, ConnectionHeader, Method, RequestHead, Response};
use crate::metrics::Route;
use crate::tls::Stream;
use futures_lite::AsyncWriteExt;
use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// A client's `X-Request-Id` is echoed only if it is this short and visible ASCII.
pub const REQUEST_ID_BYTES_MAX: usize = 64;
/// Creates of one connection that run at once. A running request's state is about 2 KiB,
/// so this bounds what a deep pipeline of creates holds beyond its read buffer; a longer
/// run of creates goes in groups of this many.
pub const CREATES_CONCURRENT_MAX: usize = 32;
/// Responses a connection keeps for reuse after a deep pipeline; the rest are freed, so
/// an idle connection holds little whatever depth it once used.
pub const RESPONSES_KEPT_MAX: usize = 16;
/// Answers waiting in a connection's output are written once they reach this many
/// bytes, without waiting for the rest of the batch: a client that pipelines reads of
/// large payments and reads nothing back holds about this much, not a batch's worth.
pub const OUTPUT_BYTES_FLUSH: usize = 64 * 1024;
/// A response body larger than this is freed once written rather than kept for reuse:
/// a payment answer is well under it, a large one (or `/metrics`) is rare.
pub const RESPONSE_BODY_BYTES_KEPT_MAX: usize = 4 * 1024;

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
    /// A chunked body still arriving, decoded so far, before it joins the arena.
    pub chunked: BodyDecoder,
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

/// One request of a concurrent group. The slots live in a vector allocated at the
/// group's length that never grows, and a slot is only overwritten in place: a future
/// never moves once polled, so it is polled where it lies (`poll_slot`), no box each.
enum Slot<'r, F> {
    Running(F),
    Done(Answered<'r>),
    /// Written, or answered after the connection decided to close and dropped.
    Finished,
}

/// Answers every request of `batch` and appends the responses to `output` in order.
/// Consecutive creates run together (`answer_together`); any other request runs alone,
/// once everything before it is answered. Returns whether to close.
pub async fn answer_batch(
    core: &Core,
    input: &[u8],
    batch: &mut Batch,
    clock: &Clock,
    output: &mut Vec<u8>,
    stream: &mut Stream,
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
    let mut bodies_left: &mut [u8] = bodies;
    let mut responses_left: &mut [Response] = &mut responses[..count];
    let mut first = 0;
    while first < count {
        let end = group_end(framed, first);
        let group = &framed[first..end];
        let (group_responses, rest) = std::mem::take(&mut responses_left).split_at_mut(group.len());
        responses_left = rest;
        let close = if let [alone] = group {
            // Not pipelined, or not a create: awaited in place, no slot, no allocation.
            let request = request_of(alone, input, take_body(&mut bodies_left, alone), clock);
            let answered = answer(&core.api, request, &mut group_responses[0]).await;
            let close = write_answer(core, input, alone, answered, clock, output);
            if output.len() >= OUTPUT_BYTES_FLUSH && !close {
                stream.write_all(output).await?;
                output.clear();
            }
            close
        } else {
            let bodies = &mut bodies_left;
            let context = GroupContext { core, input, clock };
            answer_together(&context, group, bodies, group_responses, output, stream).await?
        };
        if close {
            return Ok(true);
        }
        first = end;
    }
    responses.truncate(RESPONSES_KEPT_MAX);
    Ok(false)
}

/// The end of the group that starts at `first`: the run of creates there (at most
/// `CREATES_CONCURRENT_MAX`), or just the request at `first`.
fn group_end(framed: &[Framed], first: usize) -> usize {
    if !framed[first].starts_early() {
        return first + 1;
    }
    let window = &framed[first..framed.len().min(first + CREATES_CONCURRENT_MAX)];
    let length = window
        .iter()
        .position(|request| !request.starts_early())
        .unwrap_or(window.len());
    first + length
}

/// The next request's body, split off the front of the bodies not yet handed out.
fn take_body<'a>(bodies_left: &mut &'a mut [u8], framed: &Framed) -> &'a mut [u8] {
    let (body, rest) = std::mem::take(bodies_left).split_at_mut(framed.body.len());
    *bodies_left = rest;
    body
}

/// What every request of a group shares.
struct GroupContext<'c> {
    core: &'c Core,
    input: &'c [u8],
    clock: &'c Clock,
}

/// Starts every request of `group` at once and writes each response as soon as it and
/// every earlier one are ready, flushing to `stream` while later ones still run. Every
/// request runs to its end even when the connection fails or closes midway, so no create
/// is abandoned between its decision and its answer. Returns whether to close.
async fn answer_together(
    context: &GroupContext<'_>,
    group: &[Framed],
    bodies_left: &mut &mut [u8],
    responses: &mut [Response],
    output: &mut Vec<u8>,
    stream: &mut Stream,
) -> io::Result<bool> {
    let GroupContext { core, input, clock } = *context;
    let mut slots = Vec::with_capacity(group.len());
    for (framed, response) in group.iter().zip(responses.iter_mut()) {
        let request = request_of(framed, input, take_body(bodies_left, framed), clock);
        slots.push(Slot::Running(answer(&core.api, request, response)));
    }
    let mut written = 0;
    let mut closing = false;
    let mut failure = None;
    while written < slots.len() {
        std::future::poll_fn(|cx| drive(&mut slots, written, cx)).await;
        while output.len() < OUTPUT_BYTES_FLUSH && matches!(slots.get(written), Some(Slot::Done(_)))
        {
            let Slot::Done(answered) = std::mem::replace(&mut slots[written], Slot::Finished)
            else {
                unreachable!()
            };
            if !closing {
                closing = write_answer(core, input, &group[written], answered, clock, output);
            }
            written += 1;
        }
        let more_to_come = written < slots.len() || output.len() >= OUTPUT_BYTES_FLUSH;
        if more_to_come && failure.is_none() && !output.is_empty() {
            if let Err(error) = write_while_running(stream, output, &mut slots, written).await {
                failure = Some(error);
                closing = true;
            }
            output.clear();
        }
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(closing),
    }
}

/// Writes the responses ready so far while polling the requests still running: a client
/// slow to read must not stall creates between their decision and their answer (an
/// authorisation, a response timeout, the shard's in-flight count), only its own answers.
async fn write_while_running<'r, F: Future<Output = Answered<'r>>>(
    stream: &mut Stream,
    output: &[u8],
    slots: &mut [Slot<'r, F>],
    written: usize,
) -> io::Result<()> {
    // Flushed too: TLS holds what it encrypted until asked to write it all out.
    let mut write = std::pin::pin!(async {
        stream.write_all(output).await?;
        stream.flush().await
    });
    std::future::poll_fn(|cx| {
        for index in written..slots.len() {
            poll_slot(slots, index, cx);
        }
        write.as_mut().poll(cx)
    })
    .await
}

/// Polls every request still running, until the next response to write is ready.
fn drive<'r, F: Future<Output = Answered<'r>>>(
    slots: &mut [Slot<'r, F>],
    written: usize,
    cx: &mut Context<'_>,
) -> Poll<()> {
    for index in written..slots.len() {
        poll_slot(slots, index, cx);
    }
    match slots[written] {
        Slot::Running(_) => Poll::Pending,
        _ => Poll::Ready(()),
    }
}

/// Polls request `index` once if it still runs.
fn poll_slot<'r, F: Future<Output = Answered<'r>>>(
    slots: &mut [Slot<'r, F>],
    index: usize,
    cx: &mut Context<'_>,
) {
    let Slot::Running(future) = &mut slots[index] else {
        return;
    };
    // SAFETY: the future stays where it is until it is dropped in place: see `Slot`.
    let future = unsafe { Pin::new_unchecked(future) };
    if let Poll::Ready(answered) = future.poll(cx) {
        slots[index] = Slot::Done(answered);
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
        auth_header_repeated: head.auth_header_repeated,
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
    if response.body.capacity() > RESPONSE_BODY_BYTES_KEPT_MAX {
        response.body = Vec::new();
    }
    // Every request of a batch is timed from the read that completed the batch.
    let latency = finished.saturating_duration_since(clock.instant);
    let latency_us = latency.as_micros() as u64;
    core.api
        .metrics
        .borrow_mut()
        .record_request(route, response.status, latency.as_nanos() as u64);
    core.access_log.record(&AccessRecord {
        unix_ms: clock.unix_ms,
        method: head.method,
        route,
        status: response.status,
        latency_us,
        request_id,
        merchant: framed.optional(input, &head.merchant),
        transport: Transport::Http,
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
    use super::*;
    use crate::http::BodyFraming;

    fn framed(method: Method) -> Framed {
        Framed {
            head: RequestHead {
                method,
                target: 0..1,
                version_minor: 1,
                head_length: 1,
                framing: BodyFraming::Empty,
                keep_alive: true,
                expect_continue: false,
                content_type_json: None,
                request_id: None,
                merchant: None,
                timestamp: None,
                signature: None,
                auth_header_repeated: false,
                websocket: Default::default(),
            },
            base: 0,
            body: 0..0,
        }
    }

    /// Groups of a batch, as `answer_batch` walks them.
    fn groups(methods: &[Method]) -> Vec<std::ops::Range<usize>> {
        let batch: Vec<Framed> = methods.iter().map(|&method| framed(method)).collect();
        let mut groups = Vec::new();
        let mut first = 0;
        while first < batch.len() {
            let end = group_end(&batch, first);
            assert!(end > first);
            groups.push(first..end);
            first = end;
        }
        groups
    }

    #[test]
    fn consecutive_creates_group_and_anything_else_runs_alone() {
        use Method::{Get, Head, Post};
        assert_eq!(groups(&[Get]), vec![0..1]);
        assert_eq!(groups(&[Post]), vec![0..1]);
        assert_eq!(
            groups(&[Post, Post, Get, Head, Post, Post, Post]),
            vec![0..2, 2..3, 3..4, 4..7]
        );
    }

    #[test]
    fn a_long_run_of_creates_goes_in_bounded_groups() {
        let methods = vec![Method::Post; 2 * CREATES_CONCURRENT_MAX + 3];
        let groups = groups(&methods);
        assert_eq!(groups.len(), 3);
        assert!(groups
            .iter()
            .all(|group| group.len() <= CREATES_CONCURRENT_MAX));
        assert_eq!(groups[2], 2 * CREATES_CONCURRENT_MAX..methods.len());
    }

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
