//! One WebSocket connection after its 101: read frames, answer messages, push statuses,
//! ping, and close, all from one task that polls the socket's read and write sides, the
//! requests in flight (in place, see `requests`), the outbox of status pushes, the ping
//! timer and the shutdown notice together. Every answer ready after a read or a wake-up
//! is framed into one output buffer and goes out in one write.
//!
//! Bounds: at most `websocket.max_in_flight_per_connection` requests whose answers are
//! not yet written (the extra get 429 `overloaded`); past `OUTPUT_BYTES_MAX` of unwritten
//! output the session stops reading until the client reads again; a message is at most
//! `websocket.max_message_bytes` (tungstenite refuses larger with 1009); a connection
//! silent for two ping intervals is closed with 1001.

use super::super::core::Core;
use super::answers::{
    answer, pending_payment, record, spawn_push, Connection, Finished, Job, Outbox, Received,
};
use super::requests::Requests;
use crate::api;
use crate::api::error::{ApiError, ErrorKind};
use crate::http::websocket::codec::{
    close_code, write_text_frame, write_text_frame_parts, Codec, Decoded,
};
use crate::http::websocket::message::{
    parse_message, write_answer_head, Fault, MessageId, Refusal, ANSWER_TAIL,
};
use crate::http::{Method, Response, ResponseHeader};
use crate::metrics::Route;
use crate::payment::MerchantIndex;
use futures_lite::{AsyncRead, AsyncWrite};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tungstenite::Utf8Bytes;

/// Unwritten output past which the session stops reading requests (API.md: about 1 MiB).
pub const OUTPUT_BYTES_MAX: usize = 1 << 20;
/// Bytes asked of the socket per read.
pub const READ_BYTES: usize = 4096;
/// How long the last frames (answers, then the close) may take to leave at the end.
pub const CLOSE_FLUSH_TIMEOUT_MS: u64 = 1_000;
/// Responses and request buffers a connection keeps for reuse, each.
pub const SPARES_MAX: usize = 8;

/// What woke the session.
enum Event {
    Wrote,
    Read(usize),
    /// End of stream, or a socket error: nothing more can be said.
    Gone,
    /// Status pushes arrived.
    Pushes,
    Tick,
    Stop,
}

/// Where the session is in its life.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Shutdown: requests in flight are answered, new ones get 503 `not_ready`.
    Draining,
    /// A close frame is in the output; once it is written the connection ends.
    Closing,
}

struct Session<S, M, F: Future<Output = Finished>> {
    connection: Connection,
    /// Makes a request's future: `answers::answer`, a type parameter so that its future's
    /// type is known and its call is inlined where the future is written into its slot.
    start: M,
    requests: Requests<F>,
    /// Requests that finished in the last poll (reused).
    finished: Vec<Finished>,
    /// Responses and request buffers kept for the next requests.
    spare_responses: Vec<Response>,
    spare_buffers: Vec<Vec<u8>>,
    /// The session's `run` returned: answers are no longer written.
    ended: bool,
    stream: S,
    codec: Codec,
    phase: Phase,
    /// The close code sent or received, for the metrics.
    close_code: Option<u16>,
    read_buffer: Vec<u8>,
    /// Frames waiting for the socket; `written` bytes of them are already out.
    output: Vec<u8>,
    written: usize,
    /// Bytes were written since the last flush: TLS may hold them until flushed.
    unflushed: bool,
    /// Where each unwritten answer ends in `output`: an answer is in flight until then.
    answer_ends: VecDeque<usize>,
    pushes: Vec<Vec<u8>>,
    /// A message's text, copied for simd-json to parse in place.
    scratch: Vec<u8>,
    /// An answer's envelope up to its body.
    answer_head: Vec<u8>,
    last_heard: Instant,
    ping_interval: Duration,
    /// The ping timer, and when it is due: it is polled (which costs a clock read and a
    /// timer update) only once to arm it and then once it is due.
    timer: Pin<Box<dyn Future<Output = ()>>>,
    timer_armed: bool,
    tick_at: Instant,
    /// The shutdown notice, polled once to register and then only once triggered.
    stop: Pin<Box<dyn Future<Output = ()>>>,
    stop_armed: bool,
}

/// Serves a connection whose opening was answered 101, for `merchant`, starting with the
/// bytes the HTTP loop had read past the opening.
pub async fn serve<S>(core: Rc<Core>, stream: S, merchant: MerchantIndex, leftover: Vec<u8>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    core.api.metrics.borrow_mut().websocket.connections_opened += 1;
    core.api.metrics.borrow_mut().websocket.connections_open += 1;
    let mut session = Session::new(Rc::clone(&core), stream, merchant, answer);
    if !leftover.is_empty() {
        session.on_input(&leftover);
    }
    session.run().await;
    session.ended = true;
    session.connection.outbox.close();
    session.run_requests_to_end().await;
    let mut metrics = core.api.metrics.borrow_mut();
    metrics.websocket.connections_open -= 1;
    if session.phase != Phase::Closing {
        metrics.websocket.record_close(None);
    }
}

impl<S, M, F> Session<S, M, F>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: Fn(Job) -> F,
    F: Future<Output = Finished>,
{
    fn new(core: Rc<Core>, stream: S, merchant: MerchantIndex, start: M) -> Self {
        let settings = &core.api.config.websocket;
        let ping_interval = Duration::from_millis(settings.ping_interval_ms);
        let stop_notice = core.stop.clone();
        let codec = Codec::new(settings.max_message_bytes);
        Session {
            connection: Connection {
                core,
                outbox: Outbox::new(),
                merchant,
            },
            start,
            requests: Requests::default(),
            finished: Vec::new(),
            spare_responses: Vec::new(),
            spare_buffers: Vec::new(),
            ended: false,
            stream,
            codec,
            phase: Phase::Open,
            close_code: None,
            read_buffer: vec![0; READ_BYTES],
            output: Vec::new(),
            written: 0,
            unflushed: false,
            answer_ends: VecDeque::new(),
            pushes: Vec::new(),
            scratch: Vec::new(),
            answer_head: Vec::new(),
            last_heard: Instant::now(),
            ping_interval,
            timer: Box::pin(glommio::timer::sleep(ping_interval)),
            timer_armed: false,
            tick_at: Instant::now() + ping_interval,
            stop: Box::pin(async move { stop_notice.wait().await }),
            stop_armed: false,
        }
    }

    async fn run(&mut self) {
        loop {
            self.frame_pushes();
            if self.phase == Phase::Draining && self.in_flight() == 0 {
                self.close(close_code::GOING_AWAY);
            }
            if self.phase == Phase::Closing {
                // Counted before the last write: a client that saw the close then
                // scrapes /metrics finds it there.
                let metrics = &self.connection.core.api.metrics;
                metrics.borrow_mut().websocket.record_close(self.close_code);
                self.finish().await;
                return;
            }
            match std::future::poll_fn(|cx| self.poll_event(cx)).await {
                Event::Wrote | Event::Pushes => {}
                Event::Read(count) => {
                    let input = std::mem::take(&mut self.read_buffer);
                    self.on_input(&input[..count]);
                    self.read_buffer = input;
                }
                Event::Gone => return,
                Event::Tick => self.on_tick(),
                Event::Stop => self.phase = Phase::Draining,
            }
        }
    }

    /// Requests whose answers are not yet written: running, or waiting in the output.
    fn in_flight(&self) -> usize {
        self.requests.running() + self.answer_ends.len()
    }

    /// Whether answers still go out: not after a close frame, nor once the session ended.
    fn writing(&self) -> bool {
        self.phase != Phase::Closing && !self.ended
    }

    fn unwritten(&self) -> usize {
        self.output.len() - self.written
    }

    /// Polls everything the session waits on: the requests woken first, so their answers
    /// go out in this write; then writing, so a reading client always makes room; reads
    /// only while the unwritten output is within its bound.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
        self.poll_requests(cx);
        if self.written < self.output.len() {
            let unwritten = &self.output[self.written..];
            match Pin::new(&mut self.stream).poll_write(cx, unwritten) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Event::Gone),
                Poll::Ready(Ok(count)) => {
                    self.advance_written(count);
                    self.unflushed = true;
                    return Poll::Ready(Event::Wrote);
                }
                Poll::Pending => {}
            }
        }
        if self.unflushed {
            match Pin::new(&mut self.stream).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(_)) => return Poll::Ready(Event::Gone),
                Poll::Pending => {}
            }
        }
        let outbox = &self.connection.outbox;
        outbox.set_waker(cx.waker());
        if outbox.has_ready() {
            return Poll::Ready(Event::Pushes);
        }
        if self.unwritten() <= OUTPUT_BYTES_MAX {
            match Pin::new(&mut self.stream).poll_read(cx, &mut self.read_buffer) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(Event::Gone),
                Poll::Ready(Ok(count)) => return Poll::Ready(Event::Read(count)),
                Poll::Pending => {}
            }
        }
        if self.poll_tick(cx) {
            return Poll::Ready(Event::Tick);
        }
        let stopping = self.connection.core.stop.is_triggered();
        if self.phase == Phase::Open && (stopping || !self.stop_armed) {
            self.stop_armed = true;
            if self.stop.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Stop);
            }
        }
        Poll::Pending
    }

    /// Whether the ping timer fired; arms the next one when it did.
    fn poll_tick(&mut self, cx: &mut Context<'_>) -> bool {
        if self.timer_armed && Instant::now() < self.tick_at {
            return false;
        }
        self.timer_armed = true;
        if self.timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        self.timer = Box::pin(glommio::timer::sleep(self.ping_interval));
        self.timer_armed = false;
        self.tick_at = Instant::now() + self.ping_interval;
        true
    }

    fn advance_written(&mut self, count: usize) {
        self.written += count;
        while self
            .answer_ends
            .front()
            .is_some_and(|&end| end <= self.written)
        {
            self.answer_ends.pop_front();
        }
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        } else if self.written >= OUTPUT_BYTES_MAX / 4 {
            // Keep the buffer from growing with a slow reader: drop what went out.
            self.output.drain(..self.written);
            for end in self.answer_ends.iter_mut() {
                *end -= self.written;
            }
            self.written = 0;
        }
    }

    /// Polls the requests woken since the last look and answers those that finished.
    fn poll_requests(&mut self, cx: &Context<'_>) {
        let mut finished = std::mem::take(&mut self.finished);
        self.requests.poll_woken(cx, &mut finished);
        for request in finished.drain(..) {
            self.on_finished(request);
        }
        self.finished = finished;
    }

    /// Waits until every request started has finished (its answer is not written).
    async fn run_requests_to_end(&mut self) {
        std::future::poll_fn(|cx| {
            self.poll_requests(cx);
            match self.requests.running() {
                0 => Poll::Ready(()),
                _ => Poll::Pending,
            }
        })
        .await;
    }

    /// Counts and logs a finished request, frames its answer, and starts its push if it
    /// was a create answered 202.
    fn on_finished(&mut self, finished: Finished) {
        let Finished {
            id,
            method,
            route,
            response,
            buffer,
            received,
        } = finished;
        let connection = &self.connection;
        record(
            connection,
            Some(&id),
            Some(method),
            route,
            &response,
            received,
        );
        self.frame_answer(Some(&id), &response);
        if let Some(payment) = pending_payment(route, &response).filter(|_| self.writing()) {
            spawn_push(&self.connection, payment);
        }
        self.recycle(response, buffer);
    }

    /// Appends an answer's frame to the output, where it counts as in flight until written.
    fn frame_answer(&mut self, id: Option<&MessageId>, response: &Response) {
        if !self.writing() {
            return;
        }
        let replayed = response
            .headers
            .contains(&Some(ResponseHeader::IdempotentReplayed));
        self.answer_head.clear();
        write_answer_head(&mut self.answer_head, id, response.status, replayed);
        let parts = [&self.answer_head[..], &response.body, ANSWER_TAIL];
        write_text_frame_parts(&mut self.output, &parts);
        self.answer_ends.push_back(self.output.len());
    }

    fn recycle(&mut self, response: Response, buffer: Vec<u8>) {
        if self.spare_responses.len() < SPARES_MAX {
            self.spare_responses.push(response);
        }
        if self.spare_buffers.len() < SPARES_MAX {
            self.spare_buffers.push(buffer);
        }
    }

    /// Frames every status push that arrived since the last look.
    fn frame_pushes(&mut self) {
        let mut pushes = std::mem::take(&mut self.pushes);
        self.connection.outbox.take_ready(&mut pushes);
        if self.writing() {
            for push in &pushes {
                write_text_frame(&mut self.output, push);
            }
        }
        pushes.clear();
        self.pushes = pushes;
    }

    /// Decodes what was read; every complete message is answered or started.
    fn on_input(&mut self, mut input: &[u8]) {
        let received = Received {
            instant: Instant::now(),
            unix_ms: self.connection.core.stamps.clock().unix_ms,
        };
        self.last_heard = received.instant;
        while self.phase != Phase::Closing {
            match self.codec.decode(&mut input, &mut self.output) {
                Decoded::Text(text) => self.on_message(text, received),
                Decoded::Control => {}
                Decoded::NeedInput => return,
                Decoded::ClosedByPeer(code) => {
                    self.close_code = Some(code.unwrap_or(close_code::NORMAL));
                    self.phase = Phase::Closing;
                }
                Decoded::Failed(code) => {
                    self.close_code = Some(code);
                    self.phase = Phase::Closing;
                }
            }
        }
    }

    /// Answers a message at once (refused) or starts its request, which may finish at
    /// once too.
    fn on_message(&mut self, text: Utf8Bytes, received: Received) {
        self.scratch.clear();
        self.scratch.extend_from_slice(text.as_bytes());
        drop(text);
        let max_body_bytes = self.connection.core.api.config.limits.max_body_bytes;
        let buffer = self.spare_buffers.pop().unwrap_or_default();
        match parse_message(&mut self.scratch, max_body_bytes, buffer) {
            Err(Refusal { id, fault }) => {
                self.refuse(id, None, &envelope_error(fault), received);
            }
            Ok(request) => match self.admission() {
                Some(error) => {
                    let method = Some(request.method);
                    self.refuse(Some(request.id), method, &error, received);
                    self.spare_buffers.push(request.into_buffer());
                }
                None => {
                    let job = Job {
                        core: Rc::clone(&self.connection.core),
                        merchant: self.connection.merchant,
                        request,
                        response: self.spare_responses.pop().unwrap_or_default(),
                        received,
                    };
                    let start = &self.start;
                    if let Some(finished) = self.requests.start(|| start(job)) {
                        self.on_finished(finished);
                    }
                }
            },
        }
    }

    /// Answers at once, without the API: an envelope refused, the in-flight limit, shutdown.
    fn refuse(
        &mut self,
        id: Option<MessageId>,
        method: Option<Method>,
        error: &ApiError,
        received: Received,
    ) {
        let mut response = self.spare_responses.pop().unwrap_or_default();
        response.reset();
        api::write_error(&mut response, error);
        let route = Route::Unrouted;
        record(
            &self.connection,
            id.as_ref(),
            method,
            route,
            &response,
            received,
        );
        self.frame_answer(id.as_ref(), &response);
        if self.spare_responses.len() < SPARES_MAX {
            self.spare_responses.push(response);
        }
    }

    /// Why a new request is refused, if it is: shutdown, or the in-flight limit.
    fn admission(&self) -> Option<ApiError> {
        let settings = &self.connection.core.api.config.websocket;
        if self.phase == Phase::Draining {
            Some(ApiError::new(ErrorKind::NotReady))
        } else if self.in_flight() >= settings.max_in_flight_per_connection {
            Some(ApiError::new(ErrorKind::InFlightLimit))
        } else {
            None
        }
    }

    /// Every ping interval: close a connection silent for two, ping the others.
    fn on_tick(&mut self) {
        self.requests.shrink_if_idle();
        if self.last_heard.elapsed() >= 2 * self.ping_interval {
            self.close(close_code::GOING_AWAY);
        } else if self.phase != Phase::Closing {
            self.codec.ping(&mut self.output);
        }
    }

    fn close(&mut self, code: u16) {
        self.codec.close(code, &mut self.output);
        self.close_code = Some(code);
        self.phase = Phase::Closing;
    }

    /// Writes what is left (the close frame last), for a bounded time, then closes. The
    /// requests still running are polled meanwhile: a client slow to read must not stall
    /// a create between its decision and its answer.
    async fn finish(&mut self) {
        let timeout = Duration::from_millis(CLOSE_FLUSH_TIMEOUT_MS);
        let _ = glommio::timer::timeout(timeout, async {
            std::future::poll_fn(|cx| self.poll_last_write(cx)).await;
            Ok(())
        })
        .await;
    }

    fn poll_last_write(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        self.poll_requests(cx);
        let mut stream = Pin::new(&mut self.stream);
        while self.written < self.output.len() {
            match stream.as_mut().poll_write(cx, &self.output[self.written..]) {
                Poll::Ready(Ok(0) | Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(count)) => self.written += count,
                Poll::Pending => return Poll::Pending,
            }
        }
        if stream.as_mut().poll_flush(cx).is_pending() {
            return Poll::Pending;
        }
        stream.poll_close(cx).map(|_| ())
    }
}

/// The answer to a message whose envelope is refused.
fn envelope_error(fault: Fault) -> ApiError {
    match fault {
        Fault::NotAnObjectWithId => ApiError::with_message(
            ErrorKind::InvalidRequest,
            "a message is a JSON object with an id: a string of 1-64 visible ASCII \
             characters or an integer from 0 to 2^53-1",
        ),
        Fault::Field(field) => ApiError::invalid_param(
            field,
            "method and target are required strings, body a string; no other or repeated fields",
        ),
        Fault::BodyTooLarge => ApiError::new(ErrorKind::BodyTooLarge),
    }
}
