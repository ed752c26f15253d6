//! The connection loop: bytes in, requests framed by `http`, answered by `api`, and every
//! response of one batch of pipelined requests written out together.
//!
//! Each connection owns its buffers for its whole life: the read buffer, a body scratch
//! buffer (simd-json parses in place), the output buffer and one `Response`. Nothing is
//! allocated per request once they have grown to fit.

use super::core::Core;
use super::pipeline::{answer_batch, Batch, Framed, REQUEST_ID_BYTES_MAX};
use super::websocket;
use super::{LINGER_BYTES_MAX, LINGER_MS};
use crate::api;
use crate::api::error::{ApiError, ErrorKind};
use crate::config::Config;
use crate::http::{
    frame_request, ConnectionHeader, FrameOutcome, FramingLimits, Method, ProtocolError,
    RequestHead, Response,
};
use crate::metrics::Route;
use crate::payment::MerchantIndex;
use crate::server::access_log::{AccessRecord, Transport};
use crate::tls::Stream;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use std::io;
use std::net::Shutdown;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Read buffer size a connection starts with; it grows up to `input_bytes_max`.
pub const INPUT_BYTES_INITIAL: usize = 4096;
/// Requests answered from one read before reading more (their answers leave at least
/// every `OUTPUT_BYTES_FLUSH` bytes).
pub const PIPELINE_REQUESTS_MAX: usize = 256;
/// Buffers a connection keeps between requests are shrunk back once they are empty and
/// hold more than this: one large request or answer does not pin its memory for the
/// connection's life (times thousands of connections).
pub const BUFFER_BYTES_KEPT_MAX: usize = 64 * 1024;

const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What the buffered bytes allowed.
enum Progress {
    /// Every complete request was answered; more bytes are needed.
    NeedInput,
    /// The pipeline bound was hit with complete requests still buffered.
    MoreBuffered,
    /// Answer written (or to be written), then close.
    Close,
    /// A WebSocket opening was answered 101: the session takes the stream over.
    Upgraded,
}

/// Why framing a batch stopped.
enum BatchEnd {
    /// The buffer holds no further complete request; `send_continue` asks for a
    /// `100 Continue` for the partial one.
    NeedInput { send_continue: bool },
    /// The pipeline bound was hit with complete requests still buffered.
    MoreBuffered,
    /// The last request framed closes the connection: nothing after it is read.
    Closing,
    /// The request after the framed ones is malformed: answered after them, then closed.
    Error(ProtocolError),
    /// The next request opens a WebSocket; everything before it is answered.
    Opening(RequestHead),
}

enum ReadOutcome {
    Data,
    /// Peer closed, idle timeout, or shutdown while idle: close without a word.
    Finished,
    RequestTimeout,
}

pub struct Connection {
    core: Rc<Core>,
    /// Plain TCP, or TLS once the handshake is done.
    stream: Stream,
    /// `input[start..filled]` holds bytes not yet consumed by a request.
    input: Vec<u8>,
    start: usize,
    filled: usize,
    batch: Batch,
    output: Vec<u8>,
    /// For the answers written before routing (protocol errors, timeouts).
    response: Response,
    /// When the first byte of the request being received arrived.
    request_started: Option<Instant>,
    continue_sent: bool,
    /// Set by a 101: the merchant whose WebSocket session takes the stream over.
    websocket: Option<MerchantIndex>,
}

impl Connection {
    pub fn new(core: Rc<Core>, stream: Stream) -> Connection {
        Connection {
            core,
            stream,
            input: vec![0; INPUT_BYTES_INITIAL],
            start: 0,
            filled: 0,
            batch: Batch::default(),
            output: Vec::with_capacity(INPUT_BYTES_INITIAL),
            response: Response::new(),
            request_started: None,
            continue_sent: false,
            websocket: None,
        }
    }

    /// Serves the connection until the peer leaves, a timeout, an error, or shutdown.
    pub async fn run(mut self) {
        let config: &'static Config = self.core.api.config;
        let write_timeout = Duration::from_millis(config.limits.request_timeout_ms);
        let _ = self.stream.set_write_timeout(Some(write_timeout));
        let _ = self.stream.set_nodelay(true);
        let closing = self.serve().await.unwrap_or(false);
        if let Some(merchant) = self.websocket {
            // The session keeps time itself (pings, the idle rule); HTTP's timeouts
            // would drop a client that pauses reading, which it may.
            let _ = self.stream.set_read_timeout(None);
            let _ = self.stream.set_write_timeout(None);
            let leftover = self.input[self.start..self.filled].to_vec();
            return websocket::serve(self.core, self.stream, merchant, leftover).await;
        }
        if closing {
            self.linger_close().await;
        }
    }

    /// Returns whether the connection should be closed gracefully (after an answer that
    /// closes it) rather than simply dropped.
    async fn serve(&mut self) -> io::Result<bool> {
        loop {
            let progress = self.answer_buffered().await?;
            if !self.output.is_empty() {
                self.stream.write_all(&self.output).await?;
                self.stream.flush().await?;
                self.output.clear();
                if self.output.capacity() > BUFFER_BYTES_KEPT_MAX {
                    self.output = Vec::with_capacity(INPUT_BYTES_INITIAL);
                }
            }
            match progress {
                Progress::Close => return Ok(true),
                Progress::Upgraded => return Ok(false),
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
                    self.stream.flush().await?;
                    return Ok(true);
                }
            }
        }
    }

    /// Answers every complete request in the buffer, up to `PIPELINE_REQUESTS_MAX`, all
    /// at once (see `pipeline`).
    async fn answer_buffered(&mut self) -> io::Result<Progress> {
        // One wall-clock read per batch: every request of it is stamped with it.
        let clock = self.core.stamps.clock();
        if self.request_started.is_none() && self.start < self.filled {
            self.request_started = Some(clock.instant);
        }
        let end = self.frame_batch();
        if !self.batch.framed.is_empty() {
            let input = &self.input[..self.filled];
            let batch = &mut self.batch;
            let close = answer_batch(
                &self.core,
                input,
                batch,
                &clock,
                &mut self.output,
                &mut self.stream,
            )
            .await?;
            if close {
                return Ok(Progress::Close);
            }
            // What is left is a request whose bytes are still arriving.
            self.request_started = (self.start < self.filled).then_some(clock.instant);
        }
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
            self.request_started = None;
            self.shrink_idle_buffers();
        }
        Ok(match end {
            BatchEnd::NeedInput { send_continue } => {
                if send_continue {
                    self.output.extend_from_slice(CONTINUE_RESPONSE);
                    self.continue_sent = true;
                }
                Progress::NeedInput
            }
            BatchEnd::MoreBuffered => Progress::MoreBuffered,
            BatchEnd::Closing => Progress::Close,
            BatchEnd::Error(error) => self.answer_protocol_error(error),
            BatchEnd::Opening(head) => self.answer_opening(&head),
        })
    }

    /// Answers a WebSocket opening, the first request in the buffer: a 101 hands the
    /// connection to the WebSocket session, a refusal goes on as HTTP.
    fn answer_opening(&mut self, head: &RequestHead) -> Progress {
        let request = &self.input[self.start..self.filled];
        let opened = websocket::open(
            &self.core,
            request,
            head,
            &mut self.response,
            &mut self.output,
        );
        self.start += head.head_length;
        self.request_started = None;
        match opened {
            Some(merchant) => {
                self.websocket = Some(merchant);
                Progress::Upgraded
            }
            None if !head.keep_alive => Progress::Close,
            None if self.start < self.filled => Progress::MoreBuffered,
            None => Progress::NeedInput,
        }
    }

    /// Frames the complete requests in the buffer into `self.batch`, consuming them, up to
    /// `PIPELINE_REQUESTS_MAX` or a request after which the connection closes.
    fn frame_batch(&mut self) -> BatchEnd {
        self.batch.clear();
        let limits = self.framing_limits();
        while self.batch.framed.len() < PIPELINE_REQUESTS_MAX {
            if self.start == self.filled {
                return BatchEnd::NeedInput {
                    send_continue: false,
                };
            }
            let buffered = &self.input[self.start..self.filled];
            let batch = &mut self.batch;
            let body_start = batch.bodies.len();
            let (head, consumed) =
                match frame_request(buffered, &limits, &mut batch.chunked, &mut batch.bodies) {
                    Ok(FrameOutcome::Complete { head, consumed }) => (head, consumed),
                    Ok(FrameOutcome::Partial { expect_continue }) => {
                        let send_continue = expect_continue && !self.continue_sent;
                        return BatchEnd::NeedInput { send_continue };
                    }
                    Err(error) => return BatchEnd::Error(error),
                };
            if websocket::is_opening(&head, buffered) {
                // Answered alone, once everything before it is: a 101 ends HTTP here. Its
                // bytes stay in the buffer for the upgrade to read; a body it had is not
                // the batch's.
                self.batch.bodies.truncate(body_start);
                if self.batch.framed.is_empty() {
                    return BatchEnd::Opening(head);
                }
                return BatchEnd::MoreBuffered;
            }
            let keep_alive = head.keep_alive;
            self.batch.framed.push(Framed {
                head,
                base: self.start,
                body: body_start..self.batch.bodies.len(),
            });
            self.start += consumed;
            self.continue_sent = false;
            if !keep_alive {
                return BatchEnd::Closing;
            }
        }
        if self.start == self.filled {
            BatchEnd::NeedInput {
                send_continue: false,
            }
        } else {
            BatchEnd::MoreBuffered
        }
    }

    fn framing_limits(&self) -> FramingLimits {
        let limits = &self.core.api.config.limits;
        FramingLimits {
            max_header_bytes: limits.max_header_bytes,
            max_body_bytes: limits.max_body_bytes,
        }
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
            transport: Transport::Http,
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

    /// With nothing buffered, gives back what one large request made the read buffer and
    /// the body arena grow to (`BUFFER_BYTES_KEPT_MAX`).
    fn shrink_idle_buffers(&mut self) {
        if self.input.len() > BUFFER_BYTES_KEPT_MAX {
            self.input = vec![0; INPUT_BYTES_INITIAL];
        }
        if self.batch.bodies.capacity() > BUFFER_BYTES_KEPT_MAX {
            self.batch.bodies = Vec::new();
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
            // Invariant: framing refuses a request before it fills `request_bytes_max`
            // (heads, bodies and chunk framing alike), and only an unfinished request is
            // left in a full buffer, so there is always room to grow.
            let ceiling = self.framing_limits().request_bytes_max();
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
        linger_close(self.stream.into_tcp().await).await;
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
