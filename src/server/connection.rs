//! The connection loop: bytes in, requests framed by `http`, answered by `api`, and every
//! response of one batch of pipelined requests written out together.
//!
//! Each connection owns its buffers for its whole life: the read buffer, a body scratch
//! buffer (simd-json parses in place), the output buffer and one `Response`. Nothing is
//! allocated per request once they have grown to fit.

use super::core::Core;
use super::stamps::Clock;
use super::{LINGER_BYTES_MAX, LINGER_MS};
use crate::api::error::{ApiError, ErrorKind};
use crate::api::{self, Request};
use crate::config::Config;
use crate::http::request::{decode_chunked, ChunkedOutcome};
use crate::http::{
    parse_request, BodyFraming, ConnectionHeader, Method, ParseOutcome, ProtocolError, RequestHead,
    Response,
};
use crate::metrics::Route;
use crate::server::access_log::AccessRecord;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Read buffer size a connection starts with; it grows up to `input_bytes_max`.
pub const INPUT_BYTES_INITIAL: usize = 4096;
/// Requests answered from one read before their responses are written: bounds the
/// output buffer of a deep pipeline.
pub const PIPELINE_REQUESTS_MAX: usize = 256;
/// A client's `X-Request-Id` is echoed only if it is this short and visible ASCII.
pub const REQUEST_ID_BYTES_MAX: usize = 64;

const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the buffered bytes allowed.
enum Progress {
    /// Every complete request was answered; more bytes are needed.
    NeedInput,
    /// The pipeline bound was hit with complete requests still buffered.
    MoreBuffered,
    /// Answer written (or to be written), then close.
    Close,
}

enum ReadOutcome {
    Data,
    /// Peer closed, idle timeout, or shutdown while idle: close without a word.
    Finished,
    RequestTimeout,
}

pub struct Connection {
    core: Rc<Core>,
    stream: TcpStream,
    /// `input[start..filled]` holds bytes not yet consumed by a request.
    input: Vec<u8>,
    start: usize,
    filled: usize,
    body: Vec<u8>,
    output: Vec<u8>,
    response: Response,
    /// When the first byte of the request being received arrived.
    request_started: Option<Instant>,
    continue_sent: bool,
}

impl Connection {
    pub fn new(core: Rc<Core>, stream: TcpStream) -> Connection {
        Connection {
            core,
            stream,
            input: vec![0; INPUT_BYTES_INITIAL],
            start: 0,
            filled: 0,
            body: Vec::new(),
            output: Vec::with_capacity(INPUT_BYTES_INITIAL),
            response: Response::new(),
            request_started: None,
            continue_sent: false,
        }
    }

    /// Serves the connection until the peer leaves, a timeout, an error, or shutdown.
    pub async fn run(mut self) {
        let config: &'static Config = self.core.api.config;
        let write_timeout = Duration::from_millis(config.limits.request_timeout_ms);
        let _ = self.stream.set_write_timeout(Some(write_timeout));
        let _ = self.stream.set_nodelay(true);
        let closing = self.serve().await.unwrap_or(false);
        if closing {
            self.linger_close().await;
        }
    }

    /// Returns whether the connection should be closed gracefully (after an answer that
    /// closes it) rather than simply dropped.
    async fn serve(&mut self) -> io::Result<bool> {
        loop {
            let progress = self.answer_buffered().await;
            if !self.output.is_empty() {
                self.stream.write_all(&self.output).await?;
                self.output.clear();
            }
            match progress {
                Progress::Close => return Ok(true),
                Progress::MoreBuffered => continue,
                Progress::NeedInput => {}
            }
            if self.core.stop.is_triggered() && self.start == self.filled {
                return Ok(false);
            }
            match self.read_more().await? {
                ReadOutcome::Data => {}
                ReadOutcome::Finished => return Ok(false),
                ReadOutcome::RequestTimeout => {
                    self.answer_error(&ApiError::new(ErrorKind::RequestTimeout));
                    self.stream.write_all(&self.output).await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Answers every complete request in the buffer, up to `PIPELINE_REQUESTS_MAX`.
    async fn answer_buffered(&mut self) -> Progress {
        let config: &'static Config = self.core.api.config;
        let limits = &config.limits;
        // One wall-clock read per batch, one monotonic read per request: the end of one
        // request is the start of the next.
        let mut clock = self.core.stamps.clock();
        for _ in 0..PIPELINE_REQUESTS_MAX {
            if self.start == self.filled {
                self.start = 0;
                self.filled = 0;
                self.request_started = None;
                return Progress::NeedInput;
            }
            if self.request_started.is_none() {
                self.request_started = Some(clock.instant);
            }
            let buffered = &self.input[self.start..self.filled];
            let head = match parse_request(buffered, limits.max_header_bytes, limits.max_body_bytes)
            {
                Ok(ParseOutcome::Head(head)) => head,
                Ok(ParseOutcome::Partial) => return Progress::NeedInput,
                Err(error) => return self.answer_protocol_error(error),
            };
            let consumed = match self.frame_body(&head) {
                Ok(Some(consumed)) => consumed,
                Ok(None) => {
                    if head.expect_continue && !self.continue_sent {
                        self.output.extend_from_slice(CONTINUE_RESPONSE);
                        self.continue_sent = true;
                    }
                    return Progress::NeedInput;
                }
                Err(error) => return self.answer_protocol_error(error),
            };
            let close = self.answer_request(&head, &mut clock).await;
            self.start += consumed;
            self.request_started = None;
            self.continue_sent = false;
            if close {
                return Progress::Close;
            }
        }
        Progress::MoreBuffered
    }

    /// Copies the body of a complete request into `self.body`. Returns the bytes the
    /// request occupies in the input, or `None` while its body is incomplete.
    fn frame_body(&mut self, head: &RequestHead) -> Result<Option<usize>, ProtocolError> {
        let buffered = &self.input[self.start..self.filled];
        let after_head = &buffered[head.head_length..];
        self.body.clear();
        match head.framing {
            BodyFraming::Empty => Ok(Some(head.head_length)),
            BodyFraming::ContentLength(length) if after_head.len() >= length => {
                self.body.extend_from_slice(&after_head[..length]);
                Ok(Some(head.head_length + length))
            }
            BodyFraming::ContentLength(_) => Ok(None),
            BodyFraming::Chunked => {
                let max_body_bytes = self.core.api.config.limits.max_body_bytes;
                match decode_chunked(after_head, &mut self.body, max_body_bytes)? {
                    ChunkedOutcome::Complete { consumed } => Ok(Some(head.head_length + consumed)),
                    ChunkedOutcome::Partial => Ok(None),
                }
            }
        }
    }

    /// Answers one complete request into the output buffer; returns whether to close.
    async fn answer_request(&mut self, head: &RequestHead, clock: &mut Clock) -> bool {
        let started = clock.instant;
        let buffered = &self.input[self.start..self.filled];
        let field = |range: &Option<std::ops::Range<usize>>| range.clone().map(|r| &buffered[r]);
        let request = Request {
            method: head.method,
            target: &buffered[head.target.clone()],
            content_type_json: head.content_type_json,
            merchant: field(&head.merchant),
            timestamp: field(&head.timestamp),
            signature: field(&head.signature),
            body: &mut self.body,
        };
        self.response.reset();
        let route = api::handle(&self.core.api, request, &mut self.response).await;
        let close = !head.keep_alive || self.response.close || self.core.stop.is_triggered();
        let connection = match (close, head.version_minor) {
            (true, _) => ConnectionHeader::Close,
            (false, 0) => ConnectionHeader::KeepAlive,
            (false, _) => ConnectionHeader::Omitted,
        };
        let mut generated = [0u8; REQUEST_ID_BYTES_MAX];
        let request_id = match field(&head.request_id).filter(|id| is_valid_request_id(id)) {
            Some(id) => id,
            None => self.core.stamps.generate_request_id(&mut generated),
        };
        let body_omitted = head.method == Method::Head;
        self.response.write_to(
            &mut self.output,
            request_id,
            &clock.date,
            connection,
            body_omitted,
        );
        let finished = Instant::now();
        let latency_us = finished.duration_since(started).as_micros() as u64;
        clock.instant = finished;
        self.core
            .api
            .metrics
            .borrow_mut()
            .record_request(route, self.response.status, latency_us);
        self.core.access_log.record(&AccessRecord {
            unix_ms: clock.unix_ms,
            method: head.method,
            route,
            status: self.response.status,
            latency_us,
            request_id,
            merchant: field(&head.merchant),
        });
        close
    }

    fn answer_protocol_error(&mut self, error: ProtocolError) -> Progress {
        let kind = match error {
            ProtocolError::BadRequest => ErrorKind::BadRequest,
            ProtocolError::HeadersTooLarge => ErrorKind::HeadersTooLarge,
            ProtocolError::BodyTooLarge => ErrorKind::BodyTooLarge,
            ProtocolError::NotImplemented => ErrorKind::NotImplemented,
        };
        self.answer_error(&ApiError::new(kind));
        Progress::Close
    }

    /// Writes an error answered before routing, which always closes the connection:
    /// after a framing error nobody knows where the next request would start.
    fn answer_error(&mut self, error: &ApiError) {
        self.response.reset();
        api::write_error(&mut self.response, error);
        let mut generated = [0u8; REQUEST_ID_BYTES_MAX];
        let request_id = self.core.stamps.generate_request_id(&mut generated);
        let clock = self.core.stamps.clock();
        self.response.write_to(
            &mut self.output,
            request_id,
            &clock.date,
            ConnectionHeader::Close,
            false,
        );
        let status = self.response.status;
        self.core
            .api
            .metrics
            .borrow_mut()
            .record_request(Route::Unrouted, status, 0);
        self.core.access_log.record(&AccessRecord {
            unix_ms: clock.unix_ms,
            method: Method::Other,
            route: Route::Unrouted,
            status,
            latency_us: 0,
            request_id,
            merchant: None,
        });
    }

    /// Reads more bytes, waiting at most until the current deadline: the request timeout
    /// while a request is partly received, the idle timeout between requests.
    async fn read_more(&mut self) -> io::Result<ReadOutcome> {
        self.make_room();
        let config: &'static Config = self.core.api.config;
        let limits = &config.limits;
        let idle = self.start == self.filled;
        let timeout = match self.request_started {
            Some(started) if !idle => {
                let budget = Duration::from_millis(limits.request_timeout_ms);
                match budget.checked_sub(started.elapsed()) {
                    Some(remaining) if !remaining.is_zero() => remaining,
                    _ => return Ok(ReadOutcome::RequestTimeout),
                }
            }
            _ => Duration::from_millis(limits.idle_timeout_ms),
        };
        self.stream.set_read_timeout(Some(timeout))?;
        let read = self.stream.read(&mut self.input[self.filled..]);
        let result = if idle {
            let stop = self.core.stop.clone();
            let stopped = async move {
                stop.wait().await;
                Err(io::Error::from(io::ErrorKind::Interrupted))
            };
            futures_lite::future::or(read, stopped).await
        } else {
            read.await
        };
        match result {
            Ok(0) => Ok(ReadOutcome::Finished),
            Ok(count) => {
                self.filled += count;
                Ok(ReadOutcome::Data)
            }
            Err(error) if error.kind() == io::ErrorKind::TimedOut && !idle => {
                Ok(ReadOutcome::RequestTimeout)
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(ReadOutcome::Finished)
            }
            Err(error) => Err(error),
        }
    }

    /// Moves unread bytes to the front, and grows the buffer when a request needs more.
    fn make_room(&mut self) {
        if self.start > 0 {
            self.input.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        if self.filled == self.input.len() {
            // The parser refuses heads and bodies over the limits, so the buffer never needs
            // to exceed one maximal request (chunk framing included).
            let limits = &self.core.api.config.limits;
            let ceiling = limits.max_header_bytes + 2 * limits.max_body_bytes + 4096;
            let grown = (self.input.len() * 2).min(ceiling);
            assert!(
                grown > self.input.len(),
                "a request outgrew the limits the parser enforces"
            );
            self.input.resize(grown, 0);
        }
    }

    /// Closes after a final answer without losing it: stop writing, then read and discard
    /// what the client still sends for a short while, so the kernel does not answer its
    /// unread bytes with a reset that could destroy the response in flight.
    async fn linger_close(self) {
        linger_close(self.stream).await;
    }
}

pub async fn linger_close(stream: TcpStream) {
    if stream.shutdown(Shutdown::Write).await.is_err() {
        return;
    }
    let _ = stream.set_read_timeout(Some(Duration::from_millis(LINGER_MS)));
    let mut discard = [0u8; 4096];
    let mut stream = stream;
    let mut discarded = 0;
    while discarded < LINGER_BYTES_MAX {
        match stream.read(&mut discard).await {
            Ok(0) | Err(_) => break,
            Ok(count) => discarded += count,
        }
    }
}

/// 1 to 64 visible ASCII characters (API.md section 2).
fn is_valid_request_id(id: &[u8]) -> bool {
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
