//! One generator connection: write a batch of requests, read their responses, record them.
//!
//! Closed loop: a connection sends its next batch as soon as the last one is answered, so
//! N connections keep N batches in flight. Open loop: each connection sends on a fixed
//! schedule and a request's latency counts from when it was due, not from when it could
//! be sent, so a stalled server is charged for the requests it held up (the correction
//! wrk2 makes for coordinated omission). A broken connection is reopened until the end.

use crate::stats::{Failure, Stats};
use crate::workload::{Kind, Transport, Workload};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The largest response head plus body the generator accepts.
pub const RESPONSE_BYTES_MAX: usize = 64 * 1024;
/// Response headers parsed; payd sends far fewer.
const RESPONSE_HEADERS_MAX: usize = 32;
/// Pause after a failed connect, so a server that is down is not hammered.
const CONNECT_RETRY_DELAY_MS: u64 = 10;

/// When and how every connection of the run sends; shared read-only.
#[derive(Debug)]
pub struct Plan {
    pub address: SocketAddr,
    /// TLS: the connector and the name the certificate must prove.
    pub tls: Option<crate::tls::Tls>,
    /// A connection is closed after this many requests (0: never).
    pub requests_per_connection: u64,
    pub pipeline_depth: usize,
    /// A connect, a write, or the wait for any byte of a response, longer than this fails.
    pub request_timeout: Duration,
    /// Requests due before this instant are warm-up: sent, but not recorded.
    pub measure_from: Instant,
    pub end: Instant,
    /// Open loop: the interval between one connection's batches. `None`: closed loop.
    pub batch_interval: Option<Duration>,
}

/// Runs one connection, reconnecting as needed, until the plan's end.
pub async fn run_connection(
    plan: &'static Plan,
    mut workload: Workload<'static>,
    stats: Rc<RefCell<Stats>>,
    first_due: Instant,
) {
    let mut exchange = Exchange {
        plan,
        stats,
        output: Vec::with_capacity(plan.pipeline_depth * 1024),
        kinds: Vec::with_capacity(plan.pipeline_depth),
        reader: ResponseReader::new(),
        next_due: first_due,
    };
    let transport = workload.config().transport;
    while Instant::now() < plan.end {
        match connect(plan).await {
            Ok(Connected::Plain(stream)) if transport == Transport::WebSocket => {
                exchange.run_websocket(stream, &mut workload).await
            }
            Ok(Connected::Tls(stream)) if transport == Transport::WebSocket => {
                exchange.run_websocket(*stream, &mut workload).await
            }
            Ok(Connected::Plain(stream)) => exchange.run(stream, &mut workload).await,
            Ok(Connected::Tls(stream)) => exchange.run(*stream, &mut workload).await,
            Err(failure) => {
                exchange.record_failure(Instant::now(), failure, 1);
                glommio::timer::sleep(Duration::from_millis(CONNECT_RETRY_DELAY_MS)).await;
            }
        }
    }
}

/// A new connection, plain or after its TLS handshake.
enum Connected {
    Plain(TcpStream),
    Tls(Box<futures_rustls::client::TlsStream<TcpStream>>),
}

async fn connect(plan: &Plan) -> Result<Connected, Failure> {
    let stream = TcpStream::connect_timeout(plan.address, plan.request_timeout)
        .await
        .map_err(|_| Failure::Connect)?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(Some(plan.request_timeout))
        .and_then(|_| stream.set_write_timeout(Some(plan.request_timeout)))
        .map_err(|_| Failure::Connect)?;
    match &plan.tls {
        None => Ok(Connected::Plain(stream)),
        Some(tls) => {
            let stream = tls
                .connector
                .connect(tls.name.clone(), stream)
                .await
                .map_err(|_| Failure::Connect)?;
            Ok(Connected::Tls(Box::new(stream)))
        }
    }
}

/// One connection's batch state; `websocket` runs the same loop with messages.
pub(crate) struct Exchange {
    pub(crate) plan: &'static Plan,
    pub(crate) stats: Rc<RefCell<Stats>>,
    pub(crate) output: Vec<u8>,
    pub(crate) kinds: Vec<Kind>,
    reader: ResponseReader,
    next_due: Instant,
}

impl Exchange {
    /// Sends batches on one open connection until the end, a failure, `Connection: close`
    /// or the plan's requests per connection.
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        mut stream: S,
        workload: &mut Workload<'static>,
    ) {
        self.reader.clear();
        let mut sent: u64 = 0;
        loop {
            let limit = self.plan.requests_per_connection;
            if limit > 0 && sent >= limit {
                return;
            }
            let Some(due) = self.wait_until_due().await else {
                return;
            };
            self.output.clear();
            self.kinds.clear();
            let timestamp_secs = unix_secs();
            for _ in 0..self.plan.pipeline_depth {
                self.kinds
                    .push(workload.next_request(timestamp_secs, &mut self.output));
            }
            sent += self.kinds.len() as u64;
            // TLS keeps what it encrypted until flushed; for plain TCP a flush is free.
            let written = match stream.write_all(&self.output).await {
                Ok(()) => stream.flush().await,
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                self.record_failure(due, failure_of(&error), self.kinds.len());
                return;
            }
            if !self.read_responses(&mut stream, due).await {
                return;
            }
        }
    }

    /// Returns when the next batch is due (now, in a closed loop), or `None` at the end.
    pub(crate) async fn wait_until_due(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let Some(interval) = self.plan.batch_interval else {
            return (now < self.plan.end).then_some(now);
        };
        let due = self.next_due;
        if due >= self.plan.end {
            return None;
        }
        self.next_due += interval;
        if due > now {
            glommio::timer::sleep(due - now).await;
        }
        if due >= self.plan.measure_from {
            let lag_us = due.elapsed().as_micros() as u64;
            self.stats.borrow_mut().record_send_lag(lag_us);
        }
        Some(due)
    }

    /// Reads one response per request of the batch; false when the connection is done.
    async fn read_responses<S: AsyncRead + Unpin>(&mut self, stream: &mut S, due: Instant) -> bool {
        for index in 0..self.kinds.len() {
            match self.reader.read_response(stream).await {
                Ok(response) => {
                    if due >= self.plan.measure_from {
                        let latency_us = due.elapsed().as_micros() as u64;
                        let code = response.code.as_deref().unwrap_or("");
                        let kind = self.kinds[index];
                        self.stats.borrow_mut().record_response(
                            kind,
                            response.status,
                            code,
                            latency_us,
                        );
                    }
                    if response.close {
                        let unanswered = self.kinds.len() - index - 1;
                        self.record_failure(due, Failure::Io, unanswered);
                        return false;
                    }
                }
                Err(failure) => {
                    self.record_failure(due, failure, self.kinds.len() - index);
                    return false;
                }
            }
        }
        true
    }

    pub(crate) fn record_failure(&self, due: Instant, failure: Failure, requests: usize) {
        if due >= self.plan.measure_from && Instant::now() < self.plan.end {
            let mut stats = self.stats.borrow_mut();
            for _ in 0..requests {
                stats.record_failure(failure);
            }
        }
    }
}

pub(crate) fn failure_of(error: &io::Error) -> Failure {
    match error.kind() {
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => Failure::Timeout,
        _ => Failure::Io,
    }
}

pub(crate) fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs()
}

/// What the generator needs from one response.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The `error.code` of an error body (status 400 and up).
    pub code: Option<String>,
    /// The server will close the connection after this response.
    pub close: bool,
}

/// Buffers a connection's input; responses may arrive split or several in one read.
pub struct ResponseReader {
    buffer: Vec<u8>,
    start: usize,
    filled: usize,
}

impl ResponseReader {
    pub fn new() -> ResponseReader {
        ResponseReader {
            buffer: vec![0; RESPONSE_BYTES_MAX],
            start: 0,
            filled: 0,
        }
    }

    fn clear(&mut self) {
        self.start = 0;
        self.filled = 0;
    }

    async fn read_response<S: AsyncRead + Unpin>(
        &mut self,
        stream: &mut S,
    ) -> Result<Response, Failure> {
        loop {
            if let Some((response, length)) = parse_response(&self.buffer[self.start..self.filled])?
            {
                self.start += length;
                return Ok(response);
            }
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.filled, 0);
                self.filled -= self.start;
                self.start = 0;
            }
            if self.filled == self.buffer.len() {
                return Err(Failure::BadResponse);
            }
            match stream.read(&mut self.buffer[self.filled..]).await {
                Ok(0) => return Err(Failure::Io),
                Ok(count) => self.filled += count,
                Err(error) => return Err(failure_of(&error)),
            }
        }
    }
}

impl Default for ResponseReader {
    fn default() -> Self {
        ResponseReader::new()
    }
}

/// Parses one response at the start of `bytes`: `None` until it is complete, then the
/// response and its length. Only `Content-Length` framing is accepted: payd uses no other.
pub fn parse_response(bytes: &[u8]) -> Result<Option<(Response, usize)>, Failure> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let head_length = match response.parse(bytes) {
        Ok(httparse::Status::Complete(head_length)) => head_length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Failure::BadResponse),
    };
    let status = response.code.ok_or(Failure::BadResponse)?;
    let mut body_length = None;
    let mut close = response.version == Some(0);
    for header in response.headers.iter() {
        if header.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value).map_err(|_| Failure::BadResponse)?;
            body_length = Some(
                text.trim()
                    .parse::<usize>()
                    .map_err(|_| Failure::BadResponse)?,
            );
        } else if header.name.eq_ignore_ascii_case("connection") {
            close = header.value.eq_ignore_ascii_case(b"close");
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Failure::BadResponse);
        }
    }
    let body_length = match (body_length, status) {
        (Some(length), _) => length,
        (None, 204 | 304) => 0,
        (None, _) => return Err(Failure::BadResponse),
    };
    let length = head_length + body_length;
    if bytes.len() < length {
        return Ok(None);
    }
    let code = (status >= 400).then(|| error_code(&bytes[head_length..length]));
    Ok(Some((
        Response {
            status,
            code,
            close,
        },
        length,
    )))
}

/// The `error.code` of an API.md error body; a body without one is itself worth counting.
fn error_code(body: &[u8]) -> String {
    let value: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    value
        .as_ref()
        .and_then(|value| value.get("error")?.get("code")?.as_str())
        .unwrap_or("no_error_code")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_success_without_reading_its_body() {
        let bytes = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}HTTP/1.1";
        let (response, length) = parse_response(bytes).unwrap().unwrap();
        assert_eq!(
            response,
            Response {
                status: 201,
                code: None,
                close: false
            }
        );
        assert_eq!(&bytes[length..], b"HTTP/1.1");
    }

    #[test]
    fn takes_the_error_code_and_the_close_from_an_error() {
        let body = br#"{"error":{"code":"bad_request","message":"x"}}"#;
        let mut bytes = format!(
            "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(body);
        let (response, length) = parse_response(&bytes).unwrap().unwrap();
        assert_eq!(response.status, 400);
        assert_eq!(response.code.as_deref(), Some("bad_request"));
        assert!(response.close);
        assert_eq!(length, bytes.len());
        let unexplained = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno";
        let (response, _) = parse_response(unexplained).unwrap().unwrap();
        assert_eq!(response.code.as_deref(), Some("no_error_code"));
    }

    #[test]
    fn waits_for_the_rest_of_a_head_or_a_body() {
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Len").unwrap(),
            None
        );
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab").unwrap(),
            None
        );
    }

    #[test]
    fn rejects_framing_payd_never_sends() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_response(chunked), Err(Failure::BadResponse));
        let unframed = b"HTTP/1.1 200 OK\r\n\r\n";
        assert_eq!(parse_response(unframed), Err(Failure::BadResponse));
        assert_eq!(
            parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"),
            Err(Failure::BadResponse)
        );
    }
}
