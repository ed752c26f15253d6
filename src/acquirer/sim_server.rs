//! `payd acquirer-sim`: the simulated acquirer of API.md section 4 as a standalone HTTP
//! server, for integration tests, demos and load tests of `acquirer.mode = "http"`.
//!
//! It answers `POST /v1/authorize` by the same token table as the in-process simulation
//! (`simulated::answer`), counting attempts per `Idempotency-Key` so `tok_flaky` fails
//! only the first attempt of a payment, after a base latency with uniform jitter, and
//! with an optional random failure rate (503). `GET /calls` reports the calls per key,
//! so tests can check that retries reuse the key. One glommio executor pinned to one
//! CPU serves every connection, each in its own task, so slow answers overlap.

use super::random;
use super::simulated::{answer, SimulatedReply};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

/// What the server prints to stderr, followed by the address, once it accepts.
pub const READY_PREFIX: &str = "payd acquirer-sim: listening on ";
/// A request (head and body) larger than this is refused and its connection closed.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;
pub const REQUEST_HEADERS_COUNT_MAX: usize = 32;
/// Idempotency keys longer than this are refused (payment ids are 24 characters).
pub const IDEMPOTENCY_KEY_LENGTH_MAX: usize = 128;
/// Keys whose calls are counted. When full the table starts afresh (said on stderr):
/// a long load test must not grow the simulator without bound, and only tests that
/// look at a handful of keys read the counts.
pub const CALLS_TRACKED_MAX: usize = 1 << 20;
/// Connections served at once; more are closed at accept.
pub const CONNECTIONS_MAX: usize = 16_384;
/// glommio's registered buffer: the simulator does no file I/O.
const IO_MEMORY_BYTES: usize = 256 << 10;
const READ_CHUNK_BYTES: usize = 4096;

#[derive(Clone, Debug, PartialEq)]
pub struct SimSettings {
    pub listen: SocketAddr,
    pub latency_ms: u64,
    pub jitter_ms: u64,
    /// Probability in 0..=1 that an authorisation answers 503 whatever its token.
    pub fail_rate: f64,
    /// The CPU to pin the executor to; the last available one when `None`.
    pub cpu: Option<usize>,
}

/// Runs the server until the process is killed. Errors only when it cannot start.
pub fn run(settings: SimSettings) -> Result<(), String> {
    assert!((0.0..=1.0).contains(&settings.fail_rate));
    let cpu = match settings.cpu {
        Some(cpu) => cpu,
        None => *crate::config::available_cpus()
            .last()
            .ok_or("no CPU is available to this process")?,
    };
    LocalExecutorBuilder::new(Placement::Fixed(cpu))
        .name("payd-acquirer-sim")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || serve(settings))
        .map_err(|e| format!("cannot start an executor on cpu {cpu}: {e}"))?
        .join()
        .map_err(|e| format!("the simulator's executor failed: {e}"))?
}

async fn serve(settings: SimSettings) -> Result<(), String> {
    let listener = TcpListener::bind(settings.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("no local address: {e}"))?;
    eprintln!("{READY_PREFIX}{address}");
    let state = Rc::new(SimState {
        settings,
        calls: RefCell::new(HashMap::new()),
        calls_total: Cell::new(0),
        connections: Cell::new(0),
    });
    loop {
        match listener.accept().await {
            Ok(stream) if state.connections.get() < CONNECTIONS_MAX => {
                state.connections.set(state.connections.get() + 1);
                let state = Rc::clone(&state);
                glommio::spawn_local(async move {
                    serve_connection(&state, stream).await;
                    state.connections.set(state.connections.get() - 1);
                })
                .detach();
            }
            // Over the limit: dropping the stream closes it.
            Ok(_) => {}
            Err(error) => {
                eprintln!("payd acquirer-sim: accept failed: {error}");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

struct SimState {
    settings: SimSettings,
    calls: RefCell<HashMap<String, u32>>,
    calls_total: Cell<u64>,
    connections: Cell<usize>,
}

impl SimState {
    /// Counts a call for `key` and returns its attempt number, from 1.
    fn count_call(&self, key: &str) -> u32 {
        let mut calls = self.calls.borrow_mut();
        if calls.len() >= CALLS_TRACKED_MAX && !calls.contains_key(key) {
            eprintln!("payd acquirer-sim: {CALLS_TRACKED_MAX} keys tracked; counting afresh");
            calls.clear();
        }
        self.calls_total.set(self.calls_total.get() + 1);
        let count = calls.entry(key.to_string()).or_insert(0);
        *count += 1;
        *count
    }
}

/// A parsed request head, owning what the answer needs.
#[derive(Debug, PartialEq, Eq)]
struct SimRequest {
    method: String,
    path: String,
    idempotency_key: Option<String>,
    head_length: usize,
    body_length: usize,
    keep_alive: bool,
}

/// An answer: status and JSON body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

async fn serve_connection(state: &SimState, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut input: Vec<u8> = Vec::with_capacity(READ_CHUNK_BYTES);
    let mut output: Vec<u8> = Vec::with_capacity(512);
    loop {
        let request = match next_request(&mut stream, &mut input).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(status) => {
                output.clear();
                write_answer(
                    &mut output,
                    &error_answer(status, "malformed request"),
                    false,
                );
                let _ = stream.write_all(&output).await;
                return;
            }
        };
        let body_range = request.head_length..request.head_length + request.body_length;
        let mut body = input[body_range.clone()].to_vec();
        input.drain(..body_range.end);
        let answer = route(state, &request, &mut body).await;
        output.clear();
        write_answer(&mut output, &answer, request.keep_alive);
        if stream.write_all(&output).await.is_err() || !request.keep_alive {
            return;
        }
    }
}

/// Reads until one whole request is buffered. `Ok(None)` when the client closed;
/// `Err(status)` for a request the simulator will not read.
async fn next_request(
    stream: &mut TcpStream,
    input: &mut Vec<u8>,
) -> Result<Option<SimRequest>, u16> {
    loop {
        if let Some(request) = parse_request(input)? {
            if input.len() >= request.head_length + request.body_length {
                return Ok(Some(request));
            }
        }
        if input.len() > REQUEST_BYTES_MAX {
            return Err(413);
        }
        let filled = input.len();
        input.resize(filled + READ_CHUNK_BYTES, 0);
        let read = stream.read(&mut input[filled..]).await;
        input.truncate(filled + *read.as_ref().unwrap_or(&0));
        match read {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// The head at the start of `input`, or `None` while incomplete.
fn parse_request(input: &[u8]) -> Result<Option<SimRequest>, u16> {
    let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS_COUNT_MAX];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_length = match parsed.parse(input) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) if input.len() > REQUEST_BYTES_MAX => return Err(431),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(431),
        Err(_) => return Err(400),
    };
    let mut request = SimRequest {
        method: parsed.method.unwrap_or_default().to_string(),
        path: parsed.path.unwrap_or_default().to_string(),
        idempotency_key: None,
        head_length,
        body_length: 0,
        keep_alive: parsed.version == Some(1),
    };
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value)
            .map_err(|_| 400u16)?
            .trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            request.body_length = value.parse().map_err(|_| 400u16)?;
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // payd always sends Content-Length; the simulator need not decode more.
            return Err(501);
        } else if header.name.eq_ignore_ascii_case("idempotency-key") {
            request.idempotency_key = Some(value.to_string());
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            request.keep_alive = match request.keep_alive {
                true => !value.contains("close"),
                false => value.contains("keep-alive"),
            };
        }
    }
    if head_length + request.body_length > REQUEST_BYTES_MAX {
        return Err(413);
    }
    Ok(Some(request))
}

async fn route(state: &SimState, request: &SimRequest, body: &mut [u8]) -> Answer {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", "/v1/authorize") => authorize(state, request, body).await,
        ("GET", "/calls") => calls_report(state),
        (_, "/v1/authorize" | "/calls") => error_answer(405, "method not allowed"),
        _ => error_answer(404, "no such route"),
    }
}

/// The body payd sends (API.md section 4); unknown fields are refused so a change in
/// what payd sends shows up in the tests.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Every field is checked for presence and type, not all are used.
struct AuthorizeBody {
    payment_id: String,
    merchant_id: String,
    amount: u64,
    currency: String,
    payment_method: String,
}

async fn authorize(state: &SimState, request: &SimRequest, body: &mut [u8]) -> Answer {
    let Some(key) = request
        .idempotency_key
        .as_deref()
        .filter(|key| valid_key(key))
    else {
        return error_answer(400, "Idempotency-Key is required");
    };
    let Ok(authorization) = simd_json::serde::from_slice::<AuthorizeBody>(body) else {
        return error_answer(400, "the body is not the authorize JSON");
    };
    if authorization.payment_id != key {
        return error_answer(400, "Idempotency-Key differs from payment_id");
    }
    let attempt_number = state.count_call(key);
    let simulated = answer(&authorization.payment_method, attempt_number);
    let settings = &state.settings;
    let jitter_ms = random::next_u64() % settings.jitter_ms.saturating_add(1);
    let delay_ms = settings.latency_ms + jitter_ms + simulated.delay_ms;
    if delay_ms > 0 {
        glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
    }
    if unit_random() < settings.fail_rate {
        return error_answer(503, "simulated failure");
    }
    match simulated.reply {
        SimulatedReply::Approved => json_answer(200, br#"{"approved":true}"#.to_vec()),
        SimulatedReply::Declined(code) => json_answer(
            200,
            format!(r#"{{"approved":false,"code":"{code}"}}"#).into_bytes(),
        ),
        SimulatedReply::HttpStatus(status) => error_answer(status, "simulated error"),
    }
}

/// Printable ASCII of a sensible length: the key is echoed in `/calls`.
fn valid_key(key: &str) -> bool {
    (1..=IDEMPOTENCY_KEY_LENGTH_MAX).contains(&key.len())
        && key.bytes().all(|b| b.is_ascii_graphic())
}

/// A uniform value in [0, 1) from the top 53 bits of the core's random sequence.
fn unit_random() -> f64 {
    (random::next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

#[derive(Serialize)]
struct CallsReport<'a> {
    total: u64,
    by_key: &'a HashMap<String, u32>,
}

fn calls_report(state: &SimState) -> Answer {
    let calls = state.calls.borrow();
    let report = CallsReport {
        total: state.calls_total.get(),
        by_key: &calls,
    };
    // Invariant: a map of strings to integers always serialises.
    json_answer(
        200,
        simd_json::to_vec(&report).expect("the report serialises"),
    )
}

fn json_answer(status: u16, body: Vec<u8>) -> Answer {
    Answer { status, body }
}

fn error_answer(status: u16, message: &str) -> Answer {
    json_answer(status, format!(r#"{{"error":"{message}"}}"#).into_bytes())
}

fn write_answer(out: &mut Vec<u8>, answer: &Answer, keep_alive: bool) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n",
        answer.status,
        reason(answer.status),
        answer.body.len(),
        if keep_alive {
            ""
        } else {
            "Connection: close\r\n"
        }
    );
    out.extend_from_slice(&answer.body);
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads_are_parsed_with_key_length_and_keep_alive() {
        let text = b"POST /v1/authorize HTTP/1.1\r\nHost: x\r\nIdempotency-Key: pay_1\r\nContent-Length: 2\r\n\r\n{}";
        let request = parse_request(text).unwrap().unwrap();
        assert_eq!(
            request,
            SimRequest {
                method: "POST".into(),
                path: "/v1/authorize".into(),
                idempotency_key: Some("pay_1".into()),
                head_length: text.len() - 2,
                body_length: 2,
                keep_alive: true,
            }
        );
        let close = parse_request(b"GET /calls HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!close.unwrap().unwrap().keep_alive);
        let old = parse_request(b"GET /calls HTTP/1.0\r\n\r\n");
        assert!(!old.unwrap().unwrap().keep_alive);
        assert_eq!(parse_request(b"GET /calls HTTP/1.1\r\n"), Ok(None));
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(501)
        );
        assert_eq!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n"),
            Err(413)
        );
        assert_eq!(parse_request(b"\x01\x02 nonsense\r\n\r\n"), Err(400));
    }

    #[test]
    fn keys_must_be_printable_and_short() {
        assert!(valid_key("pay_00000000000000000001"));
        assert!(!valid_key(""));
        assert!(!valid_key("a b"));
        assert!(!valid_key(&"k".repeat(IDEMPOTENCY_KEY_LENGTH_MAX + 1)));
    }

    #[test]
    fn answers_are_framed_with_length_and_close() {
        let mut out = Vec::new();
        write_answer(&mut out, &json_answer(200, b"{}".to_vec()), false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
        );
    }

    #[test]
    fn unit_random_stays_in_range() {
        for _ in 0..1000 {
            let value = unit_random();
            assert!((0.0..1.0).contains(&value));
        }
    }
}
