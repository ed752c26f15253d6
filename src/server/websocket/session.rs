//! One WebSocket connection after its 101: read frames, answer messages, push statuses,
//! ping, and close, all from one task that polls the socket's read and write sides, the
//! outbox of finished answers, the ping timer and the shutdown notice together.
//!
//! Bounds: at most `websocket.max_in_flight_per_connection` requests whose answers are
//! not yet written (the extra get 429 `overloaded`); past `OUTPUT_BYTES_MAX` of unwritten
//! output the session stops reading until the client reads again; a message is at most
//! `websocket.max_message_bytes` (tungstenite refuses larger with 1009); a connection
//! silent for two ping intervals is closed with 1001.

use super::super::core::Core;
use super::answers::{answer_now, spawn_request, Connection, Outbox, Ready, Received};
use crate::api::error::{ApiError, ErrorKind};
use crate::http::websocket::codec::{
    close_code, write_text_frame, write_text_frame_parts, Codec, Decoded,
};
use crate::http::websocket::message::{
    parse_message, write_answer_head, Fault, Refusal, ANSWER_TAIL,
};
use crate::http::ResponseHeader;
use crate::payment::MerchantIndex;
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
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

/// What woke the session.
enum Event {
    Wrote,
    Read(usize),
    /// End of stream, or a socket error: nothing more can be said.
    Gone,
    Ready,
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

struct Session<S> {
    connection: Connection,
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
    ready: Vec<Ready>,
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
    let mut session = Session::new(Rc::clone(&core), stream, merchant);
    if !leftover.is_empty() {
        session.on_input(&leftover);
    }
    session.run().await;
    session.connection.outbox.close();
    let mut metrics = core.api.metrics.borrow_mut();
    metrics.websocket.connections_open -= 1;
    if session.phase != Phase::Closing {
        metrics.websocket.record_close(None);
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    fn new(core: Rc<Core>, stream: S, merchant: MerchantIndex) -> Session<S> {
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
            stream,
            codec,
            phase: Phase::Open,
            close_code: None,
            read_buffer: vec![0; READ_BYTES],
            output: Vec::new(),
            written: 0,
            unflushed: false,
            answer_ends: VecDeque::new(),
            ready: Vec::new(),
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
            self.frame_ready();
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
                Event::Wrote | Event::Ready => {}
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
        self.connection.outbox.running() + self.answer_ends.len()
    }

    fn unwritten(&self) -> usize {
        self.output.len() - self.written
    }

    /// Polls everything the session waits on, writing first so a reading client always
    /// makes room; reads only while the unwritten output is within its bound.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Event> {
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
            return Poll::Ready(Event::Ready);
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

    /// Frames every answer and push that finished since the last look.
    fn frame_ready(&mut self) {
        let mut ready = std::mem::take(&mut self.ready);
        let outbox = Rc::clone(&self.connection.outbox);
        outbox.take_ready(&mut ready);
        let writing = self.phase != Phase::Closing;
        for item in ready.drain(..) {
            match item {
                Ready::Answer { id, response } => {
                    if writing {
                        let replayed = response
                            .headers
                            .contains(&Some(ResponseHeader::IdempotentReplayed));
                        self.answer_head.clear();
                        write_answer_head(
                            &mut self.answer_head,
                            id.as_ref(),
                            response.status,
                            replayed,
                        );
                        let parts = [&self.answer_head[..], &response.body, ANSWER_TAIL];
                        write_text_frame_parts(&mut self.output, &parts);
                        self.answer_ends.push_back(self.output.len());
                    }
                    outbox.recycle(response);
                }
                Ready::Push(text) if writing => write_text_frame(&mut self.output, &text),
                Ready::Push(_) => {}
            }
        }
        self.ready = ready;
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

    /// Answers a message at once (refused) or starts its request.
    fn on_message(&mut self, text: Utf8Bytes, received: Received) {
        self.scratch.clear();
        self.scratch.extend_from_slice(text.as_bytes());
        drop(text);
        let max_body_bytes = self.connection.core.api.config.limits.max_body_bytes;
        let buffer = self.connection.outbox.take_buffer();
        match parse_message(&mut self.scratch, max_body_bytes, buffer) {
            Err(Refusal { id, fault }) => {
                let error = envelope_error(fault);
                answer_now(&self.connection, id, None, &error, received);
            }
            Ok(request) => match self.admission() {
                Some(error) => {
                    let (id, method) = (Some(request.id), Some(request.method));
                    answer_now(&self.connection, id, method, &error, received);
                }
                None => spawn_request(&self.connection, request, received),
            },
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

    /// Writes what is left (the close frame last), for a bounded time, then closes.
    async fn finish(&mut self) {
        let flush = async {
            while self.written < self.output.len() {
                match self.stream.write(&self.output[self.written..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(count) => self.written += count,
                }
            }
            let _ = self.stream.flush().await;
            let _ = self.stream.close().await;
        };
        let timeout = Duration::from_millis(CLOSE_FLUSH_TIMEOUT_MS);
        let _ = glommio::timer::timeout(timeout, async {
            flush.await;
            Ok(())
        })
        .await;
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
