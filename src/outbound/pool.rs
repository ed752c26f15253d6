//! The client of one origin: a bounded pool of keep-alive connections, the waiting queue
//! in front of it, and one request/response exchange on a connection.
//!
//! Bounds: at most `pool_size` requests hold a slot (so at most `pool_size` connections
//! are open), at most `waiters_max` wait for one; a response over `response_bytes_max`
//! ends its connection. Every open connection is either idle in the pool or held by the
//! one request whose slot it serves.

use super::response::{parse_response, Progress, Response};
use super::{HttpUrl, OutboundError, Request};
use crate::tls::{Stream, TlsConnector};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::{Permit, Semaphore};
use rustls::pki_types::ServerName;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Bytes read from a socket at a time into a connection's buffer.
const READ_CHUNK_BYTES: usize = 4096;
/// A request head this large is a caller's bug (paths and headers are ours).
pub const REQUEST_HEAD_BYTES_MAX: usize = 8192;
/// Slots of one pool at most; the config bounds `acquirer.pool_size` the same way.
pub const POOL_SIZE_MAX: usize = 4096;
/// Addresses kept from one name resolution.
const RESOLVED_ADDRESSES_MAX: usize = 16;
/// A client logs a failed TLS handshake at most this often; the others are counted
/// into the next line. Every failure is also counted in the caller's metrics.
const TLS_FAILURE_LOG_INTERVAL_MS: u64 = 1_000;

/// The limits of one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientSettings {
    /// Connections (and so requests in flight) at most.
    pub pool_size: usize,
    /// Requests waiting for a slot at most; past that, `PoolBusy` at once.
    pub waiters_max: usize,
    pub connect_timeout_ms: u64,
    /// Heads and body of one response together.
    pub response_bytes_max: usize,
    /// An idle connection older than this is closed rather than reused: servers close
    /// idle connections on their own schedule, and a request on one they closed fails.
    pub idle_ms_max: u64,
}

/// A snapshot of a pool, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    pub size: usize,
    /// Slots held by requests right now.
    pub in_use: usize,
    /// The most slots ever held at once.
    pub in_use_max: usize,
    /// Connections open, idle or in use.
    pub open: usize,
    pub waiting: usize,
    pub connects_total: u64,
}

pub struct Client {
    url: HttpUrl,
    host_header: String,
    settings: ClientSettings,
    /// For `https://` URLs: the core's connector and the identity the server must prove.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    tls_failure_log: RefCell<FailureLog>,
    /// Resolved once, lazily; forgotten after a failed connect so a name can move.
    addresses: RefCell<Option<Vec<SocketAddr>>>,
    next_address: Cell<usize>,
    slots: Semaphore,
    /// Oldest first: taken from the front, returned to the back, so requests go round
    /// every connection rather than piling onto one.
    idle: RefCell<VecDeque<Connection>>,
    open: Rc<Cell<usize>>,
    waiting: Cell<usize>,
    in_use_max: Cell<usize>,
    connects_total: Cell<u64>,
}

impl Client {
    /// `connector` is the core's TLS connector, used when the URL is `https://`.
    pub fn new(url: HttpUrl, settings: ClientSettings, connector: &TlsConnector) -> Client {
        assert!((1..=POOL_SIZE_MAX).contains(&settings.pool_size));
        assert!(settings.connect_timeout_ms > 0);
        assert!(settings.response_bytes_max > 0);
        let tls = url.tls.then(|| {
            // Invariant: `HttpUrl::parse` refuses an https host that is not a valid name.
            let name = ServerName::try_from(url.host.clone()).expect("a valid TLS server name");
            (connector.clone(), name)
        });
        Client {
            host_header: url.host_header(),
            url,
            settings,
            tls,
            tls_failure_log: RefCell::new(FailureLog::default()),
            addresses: RefCell::new(None),
            next_address: Cell::new(0),
            slots: Semaphore::new(settings.pool_size as u64),
            idle: RefCell::new(VecDeque::with_capacity(settings.pool_size)),
            open: Rc::new(Cell::new(0)),
            waiting: Cell::new(0),
            in_use_max: Cell::new(0),
            connects_total: Cell::new(0),
        }
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            size: self.settings.pool_size,
            in_use: self.in_use(),
            in_use_max: self.in_use_max.get(),
            open: self.open.get(),
            waiting: self.waiting.get(),
            connects_total: self.connects_total.get(),
        }
    }

    /// Sends one request and reads its response. A connection that was idle may have
    /// been closed by the server meanwhile: when it fails before a single byte of
    /// response, the request goes once more on a fresh connection. Callers must only
    /// send requests that are safe to repeat (the acquirer's carry an idempotency key).
    pub async fn send(&self, request: &Request<'_>) -> Result<Response, OutboundError> {
        self.send_before(request, None, &Cell::new(false)).await
    }

    /// `send` for a caller with a deadline: a request whose connection comes only after
    /// `deadline` is not sent at all (`PoolBusy`: it waited in the pool's queue for its
    /// whole time). `sending` is set once the request goes out, so a caller whose
    /// timeout drops the future can tell a request that never left payd from one the
    /// server had and did not answer in time.
    pub async fn send_before(
        &self,
        request: &Request<'_>,
        deadline: Option<Instant>,
        sending: &Cell<bool>,
    ) -> Result<Response, OutboundError> {
        let _slot = self.take_slot().await?;
        let (mut connection, reused) = match self.take_idle() {
            Some(connection) => (connection, true),
            None => (self.connect().await?, false),
        };
        if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            // Give the connection back unused: nothing was sent on it.
            self.give_back(connection);
            return Err(OutboundError::PoolBusy);
        }
        sending.set(true);
        let (connection, result) = match self.exchange(&mut connection, request).await {
            Err(failure) if reused && failure.before_response => {
                drop(connection);
                // The others idle as long are likely closed too.
                self.idle.borrow_mut().clear();
                let mut fresh = self.connect().await?;
                let result = self.exchange(&mut fresh, request).await;
                (fresh, result)
            }
            result => (connection, result),
        };
        match result {
            Ok((response, reusable)) => {
                if reusable {
                    self.give_back(connection);
                }
                Ok(response)
            }
            Err(failure) => Err(failure.error),
        }
    }

    fn in_use(&self) -> usize {
        self.settings.pool_size - self.slots.available() as usize
    }

    async fn take_slot(&self) -> Result<Permit<'_>, OutboundError> {
        let permit = match self.slots.try_acquire_permit(1) {
            Ok(permit) => permit,
            Err(_) if self.waiting.get() >= self.settings.waiters_max => {
                return Err(OutboundError::PoolBusy)
            }
            Err(_) => {
                let _waiting = Waiting::enter(&self.waiting);
                // Invariant: the pool never closes its semaphore.
                self.slots
                    .acquire_permit(1)
                    .await
                    .expect("the pool semaphore stays open")
            }
        };
        self.in_use_max
            .set(self.in_use_max.get().max(self.in_use()));
        Ok(permit)
    }

    /// The oldest idle connection still fit for use, closing any found unfit.
    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.borrow_mut();
        let idle_max = Duration::from_millis(self.settings.idle_ms_max);
        while let Some(connection) = idle.pop_front() {
            if connection.idle_since.elapsed() <= idle_max && connection.is_quiet() {
                return Some(connection);
            }
        }
        None
    }

    fn give_back(&self, mut connection: Connection) {
        connection.idle_since = Instant::now();
        let mut idle = self.idle.borrow_mut();
        idle.push_back(connection);
        // Invariant: a connection is idle or held by a slot, and slots are bounded.
        assert!(self.open.get() <= self.settings.pool_size);
        assert!(idle.len() <= self.settings.pool_size);
    }

    async fn connect(&self) -> Result<Connection, OutboundError> {
        let address = self.address().await?;
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms);
        let stream = match TcpStream::connect_timeout(address, timeout).await {
            Ok(stream) => stream,
            Err(_) => {
                self.forget_address();
                return Err(OutboundError::Connect);
            }
        };
        // Requests are written whole in one write; waiting to coalesce only adds latency.
        let _ = stream.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(stream),
            Some((connector, name)) => self.handshake(connector, name, stream).await?,
        };
        self.connects_total.set(self.connects_total.get() + 1);
        self.open.set(self.open.get() + 1);
        // Invariant: this request holds a slot and found no idle connection.
        assert!(self.open.get() <= self.settings.pool_size);
        Ok(Connection {
            stream,
            input: Vec::with_capacity(READ_CHUNK_BYTES),
            output: Vec::with_capacity(512),
            idle_since: Instant::now(),
            open: Rc::clone(&self.open),
        })
    }

    /// The TLS handshake, bounded like the connect. The server's certificate is verified
    /// inside it, so a server that fails never sees a byte of the request.
    async fn handshake(
        &self,
        connector: &TlsConnector,
        name: &ServerName<'static>,
        stream: TcpStream,
    ) -> Result<Stream, OutboundError> {
        let timeout = Duration::from_millis(self.settings.connect_timeout_ms);
        let handshake = connector.connect(name.clone(), stream);
        let result = glommio::timer::timeout(timeout, async { Ok(handshake.await) }).await;
        match result {
            Ok(Ok(stream)) => Ok(Stream::Tls(Box::new(stream.into()))),
            // A handshake that fails on TLS grounds (a certificate that does not verify, no
            // common version or cipher) is the server's identity or setup at fault.
            Ok(Err(error)) if is_tls_error(&error) => {
                self.tls_failure_log
                    .borrow_mut()
                    .log(&self.host_header, &error);
                Err(OutboundError::Tls)
            }
            Ok(Err(_)) | Err(_) => Err(OutboundError::Connect),
        }
    }

    /// The address to connect to: resolved on first use, then each in turn.
    async fn address(&self) -> Result<SocketAddr, OutboundError> {
        let known = self.addresses.borrow().clone();
        let addresses = match known {
            Some(addresses) => addresses,
            None => {
                let addresses = resolve(&self.url.host, self.url.port).await?;
                *self.addresses.borrow_mut() = Some(addresses.clone());
                addresses
            }
        };
        let index = self.next_address.get() % addresses.len();
        Ok(addresses[index])
    }

    /// After a failed connect: try the next address, and resolve names afresh.
    fn forget_address(&self) {
        self.next_address
            .set(self.next_address.get().wrapping_add(1));
        if self.url.host.parse::<IpAddr>().is_err() {
            *self.addresses.borrow_mut() = None;
        }
    }

    async fn exchange(
        &self,
        connection: &mut Connection,
        request: &Request<'_>,
    ) -> Result<(Response, bool), Failure> {
        connection.output.clear();
        write_request(
            &mut connection.output,
            &self.host_header,
            &self.url.base_path,
            request,
        );
        connection.exchange(self.settings.response_bytes_max).await
    }
}

/// Why an exchange failed, and whether it failed before any byte of response came
/// (the sign of a connection the server had already closed).
#[derive(Debug)]
struct Failure {
    error: OutboundError,
    before_response: bool,
}

/// Counts a request waiting for a slot while it waits, even if it is dropped.
struct Waiting<'a>(&'a Cell<usize>);

impl<'a> Waiting<'a> {
    fn enter(count: &'a Cell<usize>) -> Waiting<'a> {
        count.set(count.get() + 1);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Whether a failed handshake's error came from TLS itself (rustls' error inside), not
/// from the socket.
fn is_tls_error(error: &std::io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<rustls::Error>())
}

/// Logs failed handshakes of one client, at most one line per
/// `TLS_FAILURE_LOG_INTERVAL_MS`, with the count of those not logged in between.
#[derive(Default)]
struct FailureLog {
    logged_at: Option<Instant>,
    unlogged: u64,
}

impl FailureLog {
    fn log(&mut self, host: &str, error: &std::io::Error) {
        if let Some(line) = self.line(Instant::now(), host, error) {
            eprintln!("{line}");
        }
    }

    /// The line to log for a failure at `now`, or `None` within the interval.
    fn line(&mut self, now: Instant, host: &str, error: &dyn std::fmt::Display) -> Option<String> {
        let interval = Duration::from_millis(TLS_FAILURE_LOG_INTERVAL_MS);
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < interval)
        {
            self.unlogged += 1;
            return None;
        }
        let unlogged = match self.unlogged {
            0 => String::new(),
            count => format!(" ({count} more since the last line)"),
        };
        self.logged_at = Some(now);
        self.unlogged = 0;
        // rustls' message names the failure (an unknown issuer, a name that does not
        // match); it carries nothing secret.
        Some(format!(
            "payd: TLS handshake with {host} failed, the attempt counts as failed: {error}{unlogged}"
        ))
    }
}

/// One connection with its buffers. Dropping it closes it and counts it out.
struct Connection {
    stream: Stream,
    input: Vec<u8>,
    output: Vec<u8>,
    idle_since: Instant,
    open: Rc<Cell<usize>>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.open.set(self.open.get() - 1);
    }
}

impl Connection {
    /// Writes `output` and reads one response. The second value says whether the
    /// connection may carry another request: kept alive, and nothing after the response.
    async fn exchange(&mut self, response_bytes_max: usize) -> Result<(Response, bool), Failure> {
        self.input.clear();
        let written = match self.stream.write_all(&self.output).await {
            Ok(()) => self.stream.flush().await,
            Err(error) => Err(error),
        };
        if written.is_err() {
            return Err(Failure {
                error: OutboundError::Broken,
                before_response: true,
            });
        }
        let mut at_eof = false;
        loop {
            let progress = parse_response(&self.input, at_eof, response_bytes_max);
            match progress {
                Ok(Progress::Complete(parsed)) => {
                    let clean = parsed.keep_alive && parsed.consumed == self.input.len();
                    return Ok((parsed.response, clean));
                }
                Ok(Progress::Partial) if !at_eof => {}
                Ok(Progress::Partial) => return Err(self.broken()),
                Err(error) => {
                    return Err(Failure {
                        error,
                        before_response: false,
                    })
                }
            }
            match self.fill().await {
                Ok(count) => at_eof = count == 0,
                Err(_) => return Err(self.broken()),
            }
        }
    }

    fn broken(&self) -> Failure {
        Failure {
            error: OutboundError::Broken,
            before_response: self.input.is_empty(),
        }
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        let filled = self.input.len();
        self.input.resize(filled + READ_CHUNK_BYTES, 0);
        let result = self.stream.read(&mut self.input[filled..]).await;
        self.input.truncate(filled + *result.as_ref().unwrap_or(&0));
        result
    }

    /// True when nothing is waiting to be read: no close, no unsolicited bytes (some
    /// servers send a 408 before closing an idle connection; it must not be taken for
    /// the answer to the next request), neither in the socket nor already decrypted.
    fn is_quiet(&self) -> bool {
        if self.stream.holds_input() {
            return false;
        }
        let mut byte = 0u8;
        // SAFETY: a valid open descriptor and a one-byte buffer that outlives the call;
        // MSG_PEEK leaves the socket's data as it was and MSG_DONTWAIT never blocks.
        let peeked = unsafe {
            libc::recv(
                self.stream.tcp().as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        peeked < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::WouldBlock
    }
}

/// The request in HTTP/1.1 wire form, appended to `out`.
fn write_request(out: &mut Vec<u8>, host_header: &str, base_path: &str, request: &Request<'_>) {
    assert!(request.path.starts_with('/'));
    let head_start = out.len();
    let _ = write!(
        out,
        "{} {base_path}{} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: payd/{}\r\n",
        request.method,
        request.path,
        env!("CARGO_PKG_VERSION")
    );
    for (name, value) in request.headers {
        // Invariant: callers pass names and values of their own making, never raw input
        // that could split the head.
        assert!(!name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':'));
        assert!(value.bytes().all(|b| b != b'\r' && b != b'\n'));
        let _ = write!(out, "{name}: {value}\r\n");
    }
    let _ = write!(out, "Content-Length: {}\r\n\r\n", request.body.len());
    assert!(out.len() - head_start <= REQUEST_HEAD_BYTES_MAX);
    out.extend_from_slice(request.body);
}

/// Resolves `host` off the executor: an IP literal at once, a name on glommio's
/// blocking pool (getaddrinfo may wait seconds on a slow resolver).
async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, OutboundError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let host = host.to_string();
    let resolved = glommio::executor()
        .spawn_blocking(move || {
            (host.as_str(), port).to_socket_addrs().map(|addresses| {
                addresses
                    .take(RESOLVED_ADDRESSES_MAX)
                    .collect::<Vec<SocketAddr>>()
            })
        })
        .await;
    match resolved {
        Ok(addresses) if !addresses.is_empty() => Ok(addresses),
        _ => Err(OutboundError::Resolve),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_written_whole_with_length_and_host() {
        let mut out = Vec::new();
        let request = Request {
            method: "POST",
            path: "/v1/authorize",
            headers: &[
                ("Idempotency-Key", "pay_1"),
                ("Content-Type", "application/json"),
            ],
            body: b"{}",
        };
        write_request(&mut out, "127.0.0.1:9100", "/base", &request);
        let expected = format!(
            "POST /base/v1/authorize HTTP/1.1\r\nHost: 127.0.0.1:9100\r\nUser-Agent: payd/{}\r\n\
             Idempotency-Key: pay_1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn tls_failures_are_logged_at_most_once_an_interval_with_a_count() {
        let mut log = FailureLog::default();
        let start = Instant::now();
        let interval = Duration::from_millis(TLS_FAILURE_LOG_INTERVAL_MS);
        let first = log.line(start, "h:443", &"UnknownIssuer").unwrap();
        assert_eq!(
            first,
            "payd: TLS handshake with h:443 failed, the attempt counts as failed: UnknownIssuer"
        );
        assert_eq!(
            log.line(start + interval / 2, "h:443", &"UnknownIssuer"),
            None
        );
        assert_eq!(
            log.line(start + interval / 2, "h:443", &"UnknownIssuer"),
            None
        );
        let next = log
            .line(start + interval, "h:443", &"UnknownIssuer")
            .unwrap();
        assert!(
            next.ends_with("UnknownIssuer (2 more since the last line)"),
            "{next}"
        );
    }

    #[test]
    #[should_panic]
    fn a_header_value_cannot_split_the_head() {
        let request = Request {
            method: "GET",
            path: "/",
            headers: &[("X", "a\r\nInjected: 1")],
            body: b"",
        };
        write_request(&mut Vec::new(), "h", "", &request);
    }
}
