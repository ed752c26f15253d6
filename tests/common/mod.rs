//! Integration test harness: starts the real payd binary on a free loopback port and talks
//! to it over raw TCP, so the tests see exactly the bytes a client would.
//!
//! Every wait here is bounded: a server that never gets ready, a response that never
//! comes or a process that never exits fails the test with what was received so far,
//! instead of hanging the test run.

// Each test binary uses a different subset of the harness.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How long `payd serve` may take to print its ready line.
pub const READY_TIMEOUT_MS: u64 = 20_000;
/// Socket read timeout: no single response in these tests should take longer.
pub const READ_TIMEOUT_MS: u64 = 5_000;
/// How long a `payd check-config` or a failing `payd serve` may run.
pub const COMMAND_TIMEOUT_MS: u64 = 10_000;
/// The line payd prints to stderr once every core is listening.
pub const READY_PREFIX: &str = "payd: ready, listening on ";
/// A response head larger than this is a server bug, not something to keep reading.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Polling interval for conditions that become true asynchronously.
pub const POLL_INTERVAL_MS: u64 = 20;

/// The knobs tests turn; everything else is the config file's defaults.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub cores: Vec<usize>,
    pub max_connections_per_core: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
    pub request_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub shutdown_timeout_ms: u64,
    pub access_log: bool,
    /// `storage.durability`: "fsync", the production acknowledgement path, unless a test
    /// is about "none".
    pub durability: &'static str,
    /// TOML appended verbatim (extra sections such as `[[merchants]]`).
    pub extra_toml: String,
}

impl Default for ServerOptions {
    fn default() -> ServerOptions {
        ServerOptions {
            cores: vec![0],
            max_connections_per_core: 1000,
            max_header_bytes: 8192,
            max_body_bytes: 16384,
            request_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            shutdown_timeout_ms: 5_000,
            access_log: true,
            durability: "fsync",
            extra_toml: String::new(),
        }
    }
}

/// A TOML basic string holding `text`.
pub fn toml_string(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

impl ServerOptions {
    /// The config file text for a server whose data and logs live under `dir`.
    pub fn config_text(&self, dir: &Path) -> String {
        let cores: Vec<String> = self.cores.iter().map(|c| c.to_string()).collect();
        format!(
            "[server]\n\
             listen = \"127.0.0.1:0\"\n\
             cores = [{cores}]\n\
             max_connections_per_core = {connections}\n\
             shutdown_timeout_ms = {shutdown}\n\
             \n\
             [limits]\n\
             max_header_bytes = {header}\n\
             max_body_bytes = {body}\n\
             request_timeout_ms = {request}\n\
             idle_timeout_ms = {idle}\n\
             \n\
             [storage]\n\
             data_dir = {data}\n\
             durability = \"{durability}\"\n\
             \n\
             [log]\n\
             access_log = {access_log}\n\
             dir = {logs}\n\
             {extra}\n",
            cores = cores.join(", "),
            connections = self.max_connections_per_core,
            shutdown = self.shutdown_timeout_ms,
            header = self.max_header_bytes,
            body = self.max_body_bytes,
            request = self.request_timeout_ms,
            idle = self.idle_timeout_ms,
            data = toml_string(&dir.join("data").display().to_string()),
            access_log = self.access_log,
            durability = self.durability,
            logs = toml_string(&dir.join("logs").display().to_string()),
            extra = self.extra_toml,
        )
    }
}

/// Lines a child process wrote to one of its pipes, collected by a reader thread.
#[derive(Clone, Default)]
pub struct CapturedLines {
    lines: Arc<Mutex<Vec<String>>>,
}

impl CapturedLines {
    /// Drains `pipe` on a thread; every line is kept and also sent to `sender` if given.
    fn capture(pipe: impl Read + Send + 'static, sender: Option<mpsc::Sender<String>>) -> Self {
        let captured = CapturedLines::default();
        let lines = captured.lines.clone();
        thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        lines.lock().unwrap().push(text.clone());
                        if let Some(sender) = &sender {
                            let _ = sender.send(text);
                        }
                    }
                }
            }
        });
        captured
    }

    pub fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

/// A running `payd serve`, killed with SIGKILL when dropped.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub stderr: CapturedLines,
    pub stdout: CapturedLines,
    exit_status: Option<ExitStatus>,
}

pub fn payd_binary() -> &'static str {
    env!("CARGO_BIN_EXE_payd")
}

impl Server {
    /// Starts payd on a fresh temporary directory (config, data and logs all inside).
    pub fn start(options: ServerOptions) -> Server {
        Server::start_in(tempfile::tempdir().expect("create tempdir"), options)
    }

    fn wait_ready(&mut self, receiver: &mpsc::Receiver<String>) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_millis(READY_TIMEOUT_MS);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receiver.recv_timeout(left) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix(READY_PREFIX) {
                        return addr.trim().parse().unwrap_or_else(|_| {
                            panic!("ready line has no socket address: {line:?}")
                        });
                    }
                }
                Err(_) => {
                    let status = self.wait_exit(Duration::from_millis(200));
                    panic!(
                        "payd never printed {READY_PREFIX:?} within {READY_TIMEOUT_MS} ms \
                         (exit status: {status:?})\nstderr:\n{}\nstdout:\n{}",
                        self.stderr.text(),
                        self.stdout.text()
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid; the child is not reaped until we wait.
        let result = unsafe { libc::kill(self.pid(), signal) };
        assert_eq!(result, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exit_status.is_some() {
            return self.exit_status;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit_status = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    pub fn connect(&self) -> Client {
        Client::connect(self.addr)
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// GET /metrics on a fresh connection, parsed and checked for format errors.
    pub fn metrics(&self) -> Metrics {
        let mut client = self.connect();
        client.metrics()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit_status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs payd with `args` in `dir` to completion, killing it after `COMMAND_TIMEOUT_MS`.
pub fn run_payd(args: &[&str], dir: &Path) -> CommandOutput {
    run_payd_with_env(args, dir, &[])
}

/// `run_payd` with extra environment variables (secrets given as `env:NAME`).
pub fn run_payd_with_env(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> CommandOutput {
    let mut child = Command::new(payd_binary())
        .args(args)
        .envs(env.iter().copied())
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn payd");
    let stdout = CapturedLines::capture(child.stdout.take().unwrap(), None);
    let stderr = CapturedLines::capture(child.stderr.take().unwrap(), None);
    let deadline = Instant::now() + Duration::from_millis(COMMAND_TIMEOUT_MS);
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "payd {args:?} still running after {COMMAND_TIMEOUT_MS} ms\nstderr:\n{}\nstdout:\n{}",
                stderr.text(),
                stdout.text()
            );
        }
        thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    };
    // The reader threads finish at end of file; give them a moment to take the last lines.
    thread::sleep(Duration::from_millis(50));
    CommandOutput {
        status,
        stdout: stdout.text(),
        stderr: stderr.text(),
    }
}

#[derive(Debug)]
pub struct CommandOutput {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// One parsed HTTP response.
#[derive(Clone, Debug)]
pub struct Response {
    /// The status line without its CRLF, e.g. `HTTP/1.1 200 OK`.
    pub status_line: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The value of the header `name` (case-insensitive); panics if it appears twice.
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut values = self
            .headers
            .iter()
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str());
        let first = values.next();
        assert!(
            values.next().is_none(),
            "header {name} sent twice in {self:?}"
        );
        first
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).to_string()
    }

    /// True when the server announced it closes the connection after this response.
    pub fn closes(&self) -> bool {
        self.header("Connection")
            .map(|value| value.eq_ignore_ascii_case("close"))
            .unwrap_or(false)
    }

    pub fn request_id(&self) -> &str {
        self.header("X-Request-Id")
            .unwrap_or_else(|| panic!("no X-Request-Id in {self:?}"))
    }

    /// The `error.code` of an error body, checking the body has exactly the contract's shape.
    pub fn error_code(&self) -> String {
        let error = parse_error_body(&self.body).unwrap_or_else(|problem| {
            panic!("{problem} in {self:?} (body {:?})", self.body_text())
        });
        error.code
    }
}

/// The `error` object of an error body.
#[derive(Debug)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
}

/// Parses `{"error":{"code":"...","message":"..."[,"param":"..."]}}` and nothing else.
pub fn parse_error_body(body: &[u8]) -> Result<ErrorBody, String> {
    use simd_json::prelude::*;
    let mut bytes = body.to_vec();
    let value = simd_json::to_owned_value(&mut bytes).map_err(|e| format!("not JSON: {e}"))?;
    let top = value.as_object().ok_or("body is not a JSON object")?;
    if top.len() != 1 {
        return Err(format!(
            "body has {} top-level keys, want only error",
            top.len()
        ));
    }
    let error = top
        .get("error")
        .and_then(|e| e.as_object())
        .ok_or("no error object")?;
    for key in error.keys() {
        if !["code", "message", "param"].contains(&key.as_ref()) {
            return Err(format!("unexpected key {key:?} in error"));
        }
    }
    let text = |key: &str| error.get(key).and_then(|v| v.as_str()).map(str::to_string);
    Ok(ErrorBody {
        code: text("code").ok_or("error.code is not a string")?,
        message: text("message").ok_or("error.message is not a string")?,
        param: match error.get("param") {
            None => None,
            Some(param) => Some(
                param
                    .as_str()
                    .ok_or("error.param not a string")?
                    .to_string(),
            ),
        },
    })
}

/// Asserts the exact status line, the error code, JSON content type and framing headers.
pub fn assert_error(response: &Response, status_line: &str, code: &str) {
    assert_eq!(
        response.status_line, status_line,
        "status line of {response:?}"
    );
    assert_eq!(response.error_code(), code, "error code of {response:?}");
    let content_type = response.header("Content-Type").unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "Content-Type of an error is {content_type:?}"
    );
    // Every response, errors included, carries these (Content-Length is checked by framing).
    for name in ["Date", "X-Request-Id"] {
        assert!(response.header(name).is_some(), "no {name} in {response:?}");
    }
}

/// What a read on a connection came to when it did not yield a full response.
#[derive(Debug)]
pub enum ReadFailure {
    /// The peer closed (EOF or reset); the bytes received before are kept.
    Closed {
        received: Vec<u8>,
        reset: bool,
    },
    TimedOut {
        received: Vec<u8>,
    },
}

/// A raw TCP connection with a buffer, so pipelined responses can be read one by one.
pub struct Client {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_millis(READ_TIMEOUT_MS))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        Client::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Client {
        stream
            .set_read_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(READ_TIMEOUT_MS)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buffer: Vec::new(),
        }
    }

    pub fn set_read_timeout(&mut self, timeout: Duration) {
        self.stream.set_read_timeout(Some(timeout)).unwrap();
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .unwrap_or_else(|e| panic!("write {} bytes: {e}", bytes.len()));
    }

    /// Sends, returning false instead of panicking if the server has closed.
    pub fn try_send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }

    /// Sends `bytes` and reads one response.
    pub fn request(&mut self, bytes: &[u8]) -> Response {
        self.send(bytes);
        self.read_response()
    }

    /// GET `path` with keep-alive and the given request id.
    pub fn get(&mut self, path: &str, request_id: &str) -> Response {
        self.request(get_request(path, request_id).as_bytes())
    }

    pub fn metrics(&mut self) -> Metrics {
        let response = self.get("/metrics", "metrics-scrape");
        assert_eq!(response.status_line, "HTTP/1.1 200 OK", "{response:?}");
        assert_eq!(
            response.header("Content-Type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        Metrics::parse(&response.body_text()).unwrap_or_else(|problem| {
            panic!("malformed /metrics: {problem}\n{}", response.body_text())
        })
    }

    /// Reads more bytes into the buffer; Ok(0) at end of stream.
    fn fill(&mut self) -> Result<usize, ReadFailure> {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(count) => {
                self.buffer.extend_from_slice(&chunk[..count]);
                Ok(count)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err(ReadFailure::TimedOut {
                    received: std::mem::take(&mut self.buffer),
                })
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(self.fill()?),
            Err(_) => Err(ReadFailure::Closed {
                received: std::mem::take(&mut self.buffer),
                reset: true,
            }),
        }
    }

    /// Reads one response; `head_only` is for answers to HEAD, which carry no body.
    pub fn try_read_response(&mut self, head_only: bool) -> Result<Response, ReadFailure> {
        let head_length = loop {
            if let Some(end) = find(&self.buffer, b"\r\n\r\n") {
                break end + 4;
            }
            assert!(
                self.buffer.len() <= RESPONSE_HEAD_BYTES_MAX,
                "response head over {RESPONSE_HEAD_BYTES_MAX} bytes: {:?}",
                String::from_utf8_lossy(&self.buffer)
            );
            if self.fill()? == 0 {
                return Err(ReadFailure::Closed {
                    received: std::mem::take(&mut self.buffer),
                    reset: false,
                });
            }
        };
        let mut response = parse_head(&self.buffer[..head_length]);
        let body_length = body_length(&response, head_only);
        while self.buffer.len() < head_length + body_length {
            if self.fill()? == 0 {
                return Err(ReadFailure::Closed {
                    received: std::mem::take(&mut self.buffer),
                    reset: false,
                });
            }
        }
        response.body = self.buffer[head_length..head_length + body_length].to_vec();
        self.buffer.drain(..head_length + body_length);
        Ok(response)
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response(false)
            .unwrap_or_else(|failure| panic!("no complete response: {}", describe(&failure)))
    }

    pub fn read_head_response(&mut self) -> Response {
        self.try_read_response(true)
            .unwrap_or_else(|failure| panic!("no complete response: {}", describe(&failure)))
    }

    /// Reads one response, then asserts the server closes the connection right after it.
    pub fn read_response_then_close(&mut self) -> Response {
        let response = self.read_response();
        self.expect_closed();
        response
    }

    /// Asserts the next read sees the end of the stream (or a reset) with no more bytes.
    pub fn expect_closed(&mut self) {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => continue,
                Err(ReadFailure::Closed { .. }) => {
                    self.buffer.clear();
                    return;
                }
                Err(ReadFailure::TimedOut { received }) => panic!(
                    "connection still open after {READ_TIMEOUT_MS} ms; received {:?}",
                    String::from_utf8_lossy(&received)
                ),
            }
        }
        assert!(
            self.buffer.is_empty(),
            "bytes after the last response before close: {:?}",
            String::from_utf8_lossy(&self.buffer)
        );
    }

    /// Reads everything until the peer closes; panics on a read timeout.
    pub fn read_until_close(&mut self) -> Vec<u8> {
        loop {
            match self.fill() {
                Ok(0) => return std::mem::take(&mut self.buffer),
                Ok(_) => continue,
                Err(ReadFailure::Closed { received, .. }) => return received,
                Err(failure) => panic!("peer did not close: {}", describe(&failure)),
            }
        }
    }

    /// Reads exactly `count` bytes (for interim answers such as 100 Continue).
    pub fn read_bytes(&mut self, count: usize) -> Vec<u8> {
        while self.buffer.len() < count {
            match self.fill() {
                Ok(0) => panic!(
                    "closed after {:?}, wanted {count} bytes",
                    String::from_utf8_lossy(&self.buffer)
                ),
                Ok(_) => continue,
                Err(failure) => panic!("reading {count} bytes: {}", describe(&failure)),
            }
        }
        self.buffer.drain(..count).collect()
    }

    /// Half-closes our side: the server sees end of stream on its reads.
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }
}

pub fn describe(failure: &ReadFailure) -> String {
    match failure {
        ReadFailure::Closed { received, reset } => format!(
            "connection {} after {:?}",
            if *reset { "reset" } else { "closed" },
            String::from_utf8_lossy(received)
        ),
        ReadFailure::TimedOut { received } => format!(
            "read timed out ({READ_TIMEOUT_MS} ms) after {:?}",
            String::from_utf8_lossy(received)
        ),
    }
}

pub fn get_request(path: &str, request_id: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: {request_id}\r\n\r\n")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Parses a response head strictly: CRLF line ends, `Name: value` headers.
fn parse_head(head: &[u8]) -> Response {
    let text = std::str::from_utf8(head)
        .unwrap_or_else(|_| panic!("response head is not UTF-8: {head:?}"));
    let mut lines = text[..text.len() - 4].split("\r\n");
    let status_line = lines.next().unwrap().to_string();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or("");
    assert_eq!(version, "HTTP/1.1", "status line {status_line:?}");
    let status: u16 = parts
        .next()
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status code in {status_line:?}"));
    let headers = lines
        .map(|line| {
            let (name, value) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("header line without colon: {line:?} in {text:?}"));
            assert!(
                !name.is_empty() && !name.contains(' '),
                "bad header name {line:?}"
            );
            (name.to_string(), value.trim().to_string())
        })
        .collect();
    Response {
        status_line,
        status,
        headers,
        body: Vec::new(),
    }
}

/// Body length from the framing payd uses: Content-Length on every final response.
fn body_length(response: &Response, head_only: bool) -> usize {
    if (100..200).contains(&response.status) || head_only {
        return 0;
    }
    assert!(
        response.header("Transfer-Encoding").is_none(),
        "payd answers with Content-Length, not chunked: {response:?}"
    );
    response
        .header("Content-Length")
        .unwrap_or_else(|| panic!("response without Content-Length: {response:?}"))
        .parse()
        .unwrap_or_else(|_| panic!("bad Content-Length in {response:?}"))
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` page.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub samples: Vec<Sample>,
}

impl Metrics {
    /// Parses the text format, rejecting what Prometheus itself would reject: malformed
    /// lines, a family's TYPE twice or after its samples, a family split in two groups,
    /// and the same series twice (a naive merge of per-core pages does all of these).
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut samples = Vec::new();
        let mut types: HashMap<String, String> = HashMap::new();
        let mut finished_families: Vec<String> = Vec::new();
        let mut current_family: Option<String> = None;
        let mut series_seen = std::collections::HashSet::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                let name = words.next().ok_or(format!("bad TYPE line {line:?}"))?;
                let kind = words.next().ok_or(format!("bad TYPE line {line:?}"))?;
                if types.insert(name.to_string(), kind.to_string()).is_some() {
                    return Err(format!("TYPE of {name} given twice"));
                }
                if finished_families.iter().any(|f| f == name)
                    || current_family.as_deref() == Some(name)
                {
                    return Err(format!("TYPE of {name} after its samples"));
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample = parse_sample(line)?;
            let family = family_of(&sample.name, &types);
            if current_family.as_deref() != Some(family.as_str()) {
                if finished_families.contains(&family) {
                    return Err(format!("samples of {family} are not in one group"));
                }
                if let Some(previous) = current_family.take() {
                    finished_families.push(previous);
                }
                current_family = Some(family);
            }
            let mut key_labels = sample.labels.clone();
            key_labels.sort();
            if !series_seen.insert((sample.name.clone(), key_labels)) {
                return Err(format!("series given twice: {line:?}"));
            }
            samples.push(sample);
        }
        Ok(Metrics { samples })
    }

    /// The value of the series with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|sample| {
                sample.name == name
                    && sample.labels.len() == labels.len()
                    && labels.iter().all(|(key, value)| {
                        sample.labels.iter().any(|(k, v)| k == key && v == value)
                    })
            })
            .map(|sample| sample.value)
    }

    /// Like `get`, panicking with the whole family when the series is missing.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| {
            let family: Vec<String> = self
                .samples
                .iter()
                .filter(|s| s.name == name)
                .map(|s| format!("{:?} {}", s.labels, s.value))
                .collect();
            panic!("no series {name}{labels:?} in /metrics; {name} has {family:#?}")
        })
    }

    /// The sum over all series of `name` (any labels).
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|sample| sample.name == name)
            .map(|sample| sample.value)
            .sum()
    }
}

/// The family a sample belongs to: summaries and histograms own their suffixed series.
fn family_of(name: &str, types: &HashMap<String, String>) -> String {
    for suffix in ["_sum", "_count", "_bucket"] {
        if let Some(base) = name.strip_suffix(suffix) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("summary" | "histogram")
            ) {
                return base.to_string();
            }
        }
    }
    name.to_string()
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or(format!("no value in {line:?}"))?;
    let name = &line[..name_end];
    let name_ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if !name_ok {
        return Err(format!("bad metric name in {line:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        let (parsed, after) = parse_labels(&rest[1..]).map_err(|e| format!("{e} in {line:?}"))?;
        labels = parsed;
        rest = after;
    }
    let mut words = rest.split_whitespace();
    let value_text = words.next().ok_or(format!("no value in {line:?}"))?;
    let value: f64 = value_text
        .parse()
        .map_err(|_| format!("bad value in {line:?}"))?;
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

type Labels = Vec<(String, String)>;

/// Parses `k="v",k2="v2"}` and returns the labels and the text after `}`.
fn parse_labels(mut text: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        text = text.trim_start_matches([',', ' ']);
        if let Some(after) = text.strip_prefix('}') {
            return Ok((labels, after));
        }
        let equals = text.find('=').ok_or("label without =")?;
        let key = text[..equals].trim().to_string();
        let quoted = text[equals + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = quoted.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err("unterminated label value".to_string()),
                Some((index, '"')) => break index,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, escaped)) => value.push(escaped),
                    None => return Err("dangling escape".to_string()),
                },
                Some((_, c)) => value.push(c),
            }
        };
        labels.push((key, value));
        text = &quoted[end + 1..];
    }
}

/// Polls `condition` every `POLL_INTERVAL_MS` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
    }
}

// ---------------------------------------------------------------------------------------
// Payments (issue 3): signed requests, the payment object, and servers on a kept directory.
// Signing is an independent implementation of API.md section 1, not payd's own.
// ---------------------------------------------------------------------------------------

/// Two merchants: `m_a` with two active secrets (rotation) and `m_b` with one.
pub const MERCHANT_A: &str = "m_a";
pub const MERCHANT_A_SECRETS: [&str; 2] = [
    "secret-a-1-test-only-0123456789abcdef",
    "secret-a-2-test-only-0123456789abcdef",
];
pub const MERCHANT_B: &str = "m_b";
pub const MERCHANT_B_SECRET: &str = "secret-b-1-test-only-0123456789abcdef";
/// The default `security.timestamp_tolerance_secs` of API.md section 1.
pub const TIMESTAMP_TOLERANCE_SECS: u64 = 300;

/// The `[[merchants]]` sections for `MERCHANT_A` and `MERCHANT_B`.
pub fn merchants_toml() -> String {
    format!(
        "\n[[merchants]]\nid = {}\nsecrets = [{}, {}]\n\n[[merchants]]\nid = {}\nsecrets = [{}]\n",
        toml_string(MERCHANT_A),
        toml_string(MERCHANT_A_SECRETS[0]),
        toml_string(MERCHANT_A_SECRETS[1]),
        toml_string(MERCHANT_B),
        toml_string(MERCHANT_B_SECRET),
    )
}

pub fn unix_now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A keep-alive request signed now by `merchant` with `secret`; a body makes it JSON.
pub fn signed_request_as(
    merchant: &str,
    secret: &str,
    method: &str,
    target: &str,
    body: &str,
) -> String {
    let timestamp = unix_now_secs();
    let signature = signature_hex(secret, timestamp, method, target, body.as_bytes());
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\n\
         X-Payd-Merchant: {merchant}\r\nX-Payd-Timestamp: {timestamp}\r\n\
         X-Payd-Signature: v1={signature}\r\n"
    );
    if !body.is_empty() {
        request.push_str("Content-Type: application/json\r\n");
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    request
}

/// Lowercase hex of HMAC-SHA256(secret, timestamp \n METHOD \n target \n body): API.md
/// section 1 written from the contract, independent of payd's own signing.
pub fn signature_hex(
    secret: &str,
    timestamp: u64,
    method: &str,
    target: &str,
    body: &[u8],
) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    let mut message = format!("{timestamp}\n{method}\n{target}\n").into_bytes();
    message.extend_from_slice(body);
    mac.update(&message);
    let digest = mac.finalize().into_bytes();
    digest.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The parts of a signed request a test may want to get wrong on purpose.
#[derive(Clone, Debug)]
pub struct Signed<'a> {
    pub merchant: &'a str,
    pub secret: &'a str,
    pub method: &'a str,
    pub target: &'a str,
    pub body: &'a [u8],
    pub timestamp: u64,
    /// Extra header lines, each without CRLF (e.g. `Content-Type: text/plain`).
    pub headers: Vec<String>,
    /// Sends no Content-Type at all when false (API: missing is accepted as JSON).
    pub content_type_json: bool,
}

impl<'a> Signed<'a> {
    /// A request by `MERCHANT_A` with its first secret, signed now.
    pub fn new(method: &'a str, target: &'a str, body: &'a [u8]) -> Signed<'a> {
        Signed {
            merchant: MERCHANT_A,
            secret: MERCHANT_A_SECRETS[0],
            method,
            target,
            body,
            timestamp: unix_now_secs(),
            headers: Vec::new(),
            content_type_json: method == "POST",
        }
    }

    pub fn by(mut self, merchant: &'a str, secret: &'a str) -> Signed<'a> {
        self.merchant = merchant;
        self.secret = secret;
        self
    }

    pub fn header(mut self, line: impl Into<String>) -> Signed<'a> {
        self.headers.push(line.into());
        self
    }

    /// The three authentication header lines of API.md section 1.
    pub fn auth_headers(&self) -> [String; 3] {
        let signature = signature_hex(
            self.secret,
            self.timestamp,
            self.method,
            self.target,
            self.body,
        );
        [
            format!("X-Payd-Merchant: {}", self.merchant),
            format!("X-Payd-Timestamp: {}", self.timestamp),
            format!("X-Payd-Signature: v1={signature}"),
        ]
    }

    /// The raw request bytes with the three authentication headers.
    pub fn bytes(&self) -> Vec<u8> {
        let auth = self.auth_headers();
        let mut lines: Vec<String> = auth.to_vec();
        lines.extend(self.headers.iter().cloned());
        request_bytes(
            self.method,
            self.target,
            &lines,
            self.body,
            self.content_type_json,
        )
    }
}

/// A request with exactly the given header lines (plus Host, Content-Length for a body,
/// and a JSON Content-Type when asked).
pub fn request_bytes(
    method: &str,
    target: &str,
    header_lines: &[String],
    body: &[u8],
    content_type_json: bool,
) -> Vec<u8> {
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    for line in header_lines {
        head.push_str(line);
        head.push_str("\r\n");
    }
    if content_type_json {
        head.push_str("Content-Type: application/json\r\n");
    }
    if !body.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// A create body with the four required fields.
pub fn create_body(order_id: &str, amount: u64, currency: &str, payment_method: &str) -> String {
    format!(
        "{{\"order_id\":\"{order_id}\",\"amount\":{amount},\"currency\":\"{currency}\",\"payment_method\":\"{payment_method}\"}}"
    )
}

/// A body with the required fields and `field` set to the raw JSON `value` (added if
/// it is not one of the four).
pub fn body_with(field: &str, value: &str, order_id: &str) -> String {
    let mut fields = vec![
        ("order_id", format!("\"{order_id}\"")),
        ("amount", "1999".to_string()),
        ("currency", "\"CNY\"".to_string()),
        ("payment_method", "\"tok_visa\"".to_string()),
    ];
    match fields.iter_mut().find(|(name, _)| *name == field) {
        Some(entry) => entry.1 = value.to_string(),
        None => fields.push((field, value.to_string())),
    }
    let members: Vec<String> = fields
        .iter()
        .map(|(name, value)| format!("\"{name}\":{value}"))
        .collect();
    format!("{{{}}}", members.join(","))
}

/// The payment object of API.md section 3, read strictly: every field must be present
/// (`decline_code` and `description` as null when empty), nothing else may be (so the
/// payment method is not echoed), and metadata keeps the order it was sent in.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentJson {
    pub id: String,
    pub object: String,
    pub merchant_id: String,
    pub order_id: String,
    pub amount: u64,
    pub currency: String,
    pub status: String,
    #[serde(deserialize_with = "required_nullable")]
    pub decline_code: Option<String>,
    #[serde(deserialize_with = "required_nullable")]
    pub description: Option<String>,
    #[serde(deserialize_with = "ordered_string_map")]
    pub metadata: Vec<(String, String)>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// `Option<String>` that must be present (null allowed): serde treats a missing plain
/// `Option` field as None, which would let a server leave `decline_code` out.
fn required_nullable<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    <Option<String> as serde::Deserialize>::deserialize(deserializer)
}

/// A JSON object of strings, in document order.
fn ordered_string_map<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<(String, String)>, D::Error> {
    struct OrderedVisitor;
    impl<'de> serde::de::Visitor<'de> for OrderedVisitor {
        type Value = Vec<(String, String)>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(
            self,
            mut map: A,
        ) -> Result<Self::Value, A::Error> {
            let mut entries = Vec::new();
            while let Some(entry) = map.next_entry::<String, String>()? {
                entries.push(entry);
            }
            Ok(entries)
        }
    }
    deserializer.deserialize_map(OrderedVisitor)
}

impl Response {
    /// The payment in the body, checked against the contract's shape; panics otherwise.
    pub fn payment(&self) -> PaymentJson {
        let content_type = self.header("Content-Type").unwrap_or("");
        assert!(
            content_type.starts_with("application/json"),
            "Content-Type of a payment is {content_type:?}"
        );
        let mut bytes = self.body.clone();
        let payment: PaymentJson = simd_json::serde::from_slice(&mut bytes)
            .unwrap_or_else(|e| panic!("not a payment object ({e}): {:?}", self.body_text()));
        assert_payment_invariants(&payment);
        payment
    }

    /// The error's `param`, after checking the body's shape.
    pub fn error_param(&self) -> Option<String> {
        parse_error_body(&self.body)
            .unwrap_or_else(|problem| panic!("{problem} in {self:?}"))
            .param
    }
}

/// What holds for every payment object, whatever its state.
pub fn assert_payment_invariants(payment: &PaymentJson) {
    assert!(payment.id.starts_with("pay_"), "id {:?}", payment.id);
    assert!(payment.id.len() <= 40, "id over 40 chars: {:?}", payment.id);
    assert!(
        payment
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "id not URL-safe: {:?}",
        payment.id
    );
    assert_eq!(payment.object, "payment");
    assert!(
        ["pending", "succeeded", "declined", "failed"].contains(&payment.status.as_str()),
        "status {:?}",
        payment.status
    );
    let has_code = matches!(payment.status.as_str(), "declined" | "failed");
    assert_eq!(
        payment.decline_code.is_some(),
        has_code,
        "decline_code {:?} with status {:?}",
        payment.decline_code,
        payment.status
    );
    // Milliseconds since 2020 and before 2100: catches seconds or microseconds.
    for stamp in [payment.created_at, payment.updated_at] {
        assert!(
            (1_577_836_800_000..4_102_444_800_000).contains(&stamp),
            "timestamp {stamp} is not Unix milliseconds"
        );
    }
    assert!(payment.updated_at >= payment.created_at, "{payment:?}");
}

impl Server {
    /// Starts payd on a directory that may hold the data of an earlier server, with
    /// `options` written as a fresh config file there.
    pub fn start_in(dir: tempfile::TempDir, options: ServerOptions) -> Server {
        let config_text = options.config_text(dir.path());
        Server::start_with_config(dir, &config_text)
    }

    /// Starts payd on `dir` with exactly `config_text` as its config file.
    pub fn start_with_config(dir: tempfile::TempDir, config_text: &str) -> Server {
        Server::start_with_env(dir, config_text, &[])
    }

    /// Like `start_with_config`, with extra environment variables for the process.
    pub fn start_with_env(
        dir: tempfile::TempDir,
        config_text: &str,
        env: &[(&str, &str)],
    ) -> Server {
        let config_path = dir.path().join("payd.toml");
        std::fs::write(&config_path, config_text).expect("write config");
        let mut child = Command::new(payd_binary())
            .envs(env.iter().copied())
            .arg("serve")
            .arg("--config")
            .arg(&config_path)
            // Relative defaults (./payd-data) must land in the tempdir, never in the repo.
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn payd");
        let (sender, receiver) = mpsc::channel();
        let stderr = CapturedLines::capture(child.stderr.take().unwrap(), Some(sender));
        let stdout = CapturedLines::capture(child.stdout.take().unwrap(), None);
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            stderr,
            stdout,
            exit_status: None,
        };
        server.addr = server.wait_ready(&receiver);
        server
    }

    /// Stops the server (SIGTERM, or SIGKILL when `crash`), waits for it to exit, and
    /// hands back its directory so another server can start on the same data.
    pub fn stop_keeping_dir(mut self, crash: bool) -> (tempfile::TempDir, ExitStatus) {
        self.signal(if crash { libc::SIGKILL } else { libc::SIGTERM });
        let status = self
            .wait_exit(Duration::from_millis(COMMAND_TIMEOUT_MS))
            .unwrap_or_else(|| {
                panic!(
                    "payd still running {COMMAND_TIMEOUT_MS} ms after the signal\nstderr:\n{}",
                    self.stderr.text()
                )
            });
        let placeholder = tempfile::tempdir().expect("create tempdir");
        (std::mem::replace(&mut self.dir, placeholder), status)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }
}

/// Every file under `dir`, recursively, with its bytes (for "never stored or logged").
pub fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(next) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&next) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                pending.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    files
}

/// True when `needle` occurs in `haystack`.
pub fn contains_bytes(haystack: &[u8], needle: &[u8]) -> bool {
    find(haystack, needle).is_some()
}

// ---------------------------------------------------------------------------------------
// Block of tests/crash.rs (issue 4, the durable log): signed payment requests, servers
// started on a data directory that outlives them, and a reader of the log's framing.
// Kept in its own module so another helper's block cannot clash with its names.
// ---------------------------------------------------------------------------------------

/// Helpers for tests that restart payd on the same data directory and look at its log.
pub mod durable {
    use super::{CapturedLines, Client, Response, Server, ServerOptions};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    pub const MERCHANT_ID: &str = "m_crash";
    /// A test-only secret; nothing card-like, nothing real.
    pub const MERCHANT_SECRET: &str = "crash-test-secret-1-test-only-0123456789abcdef";
    /// A clean SIGTERM stop of an idle server must not take longer than this.
    pub const CLEAN_STOP_TIMEOUT_MS: u64 = 10_000;

    /// The `[[merchants]]` section of the test merchant.
    pub fn merchant_toml() -> String {
        format!("\n[[merchants]]\nid = \"{MERCHANT_ID}\"\nsecrets = [\"{MERCHANT_SECRET}\"]\n")
    }

    /// The harness's config with data in `base/data`, logs in `base/logs`, and the given
    /// `storage.durability`.
    pub fn config_text(options: &ServerOptions, base: &Path, durability: &'static str) -> String {
        let options = ServerOptions {
            durability,
            ..options.clone()
        };
        options.config_text(base)
    }

    /// Writes the config file `name` into `base` and returns its path.
    pub fn write_config(base: &Path, name: &str, text: &str) -> PathBuf {
        let path = base.join(name);
        std::fs::write(&path, text).expect("write config");
        path
    }

    pub fn data_dir(base: &Path) -> PathBuf {
        base.join("data")
    }

    pub fn shard_dir(base: &Path, shard: u16) -> PathBuf {
        data_dir(base).join(format!("shard-{shard:04}"))
    }

    /// Starts `payd serve` on a config whose data directory outlives the process; the
    /// returned server's own tempdir is only its working directory.
    pub fn start_server(config_path: &Path) -> Server {
        let dir = tempfile::tempdir().expect("create tempdir");
        let mut child = Command::new(super::payd_binary())
            .arg("serve")
            .arg("--config")
            .arg(config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn payd");
        let (sender, receiver) = mpsc::channel();
        let stderr = CapturedLines::capture(child.stderr.take().unwrap(), Some(sender));
        let stdout = CapturedLines::capture(child.stdout.take().unwrap(), None);
        let mut server = Server {
            child,
            addr: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            dir,
            stderr,
            stdout,
            exit_status: None,
        };
        server.addr = server.wait_ready(&receiver);
        server
    }

    /// SIGTERM, then asserts a successful exit within `CLEAN_STOP_TIMEOUT_MS`.
    pub fn stop_cleanly(server: &mut Server) {
        server.signal(libc::SIGTERM);
        let status = server.wait_exit(Duration::from_millis(CLEAN_STOP_TIMEOUT_MS));
        assert!(
            status.is_some_and(|s| s.success()),
            "payd did not stop cleanly on SIGTERM (status {status:?})\nstderr:\n{}",
            server.stderr.text()
        );
    }

    /// API.md section 1: the harness's one independent signing, for a text body.
    pub fn signature_hex(
        secret: &str,
        timestamp: u64,
        method: &str,
        target: &str,
        body: &str,
    ) -> String {
        super::signature_hex(secret, timestamp, method, target, body.as_bytes())
    }

    /// A keep-alive request signed by the test merchant; a body makes it JSON.
    pub fn signed_request(method: &str, target: &str, body: &str) -> String {
        super::signed_request_as(MERCHANT_ID, MERCHANT_SECRET, method, target, body)
    }

    pub fn create_body(order_id: &str, amount: u64, token: &str) -> String {
        format!(
            "{{\"order_id\":\"{order_id}\",\"amount\":{amount},\"currency\":\"CNY\",\
             \"payment_method\":\"{token}\"}}"
        )
    }

    pub fn create(client: &mut Client, order_id: &str, amount: u64, token: &str) -> Response {
        let body = create_body(order_id, amount, token);
        client.request(signed_request("POST", "/v1/payments", &body).as_bytes())
    }

    pub fn get_payment(client: &mut Client, id: &str) -> Response {
        client.request(signed_request("GET", &format!("/v1/payments/{id}"), "").as_bytes())
    }

    pub fn get_order(client: &mut Client, order_id: &str) -> Response {
        client.request(signed_request("GET", &format!("/v1/orders/{order_id}"), "").as_bytes())
    }

    /// The fields of a payment object these tests compare across restarts.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Payment {
        pub id: String,
        pub merchant_id: String,
        pub order_id: String,
        pub amount: u64,
        pub currency: String,
        pub status: String,
        pub created_at: u64,
    }

    /// Parses a payment object; `Err` says what is wrong with the body.
    pub fn parse_payment(body: &[u8]) -> Result<Payment, String> {
        use simd_json::prelude::*;
        let mut bytes = body.to_vec();
        let value = simd_json::to_owned_value(&mut bytes).map_err(|e| format!("not JSON: {e}"))?;
        let text = |key: &str| {
            value
                .get(key)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or(format!("{key} is not a string"))
        };
        let number = |key: &str| {
            value
                .get(key)
                .and_then(|v| v.as_u64())
                .ok_or(format!("{key} is not an unsigned integer"))
        };
        if text("object")? != "payment" {
            return Err("object is not \"payment\"".to_string());
        }
        Ok(Payment {
            id: text("id")?,
            merchant_id: text("merchant_id")?,
            order_id: text("order_id")?,
            amount: number("amount")?,
            currency: text("currency")?,
            status: text("status")?,
            created_at: number("created_at")?,
        })
    }

    /// The segment files of a shard directory, in log order (their names sort so).
    pub fn segment_paths(shard_dir: &Path) -> Vec<PathBuf> {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(shard_dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", shard_dir.display()))
            .map(|entry| entry.expect("directory entry").path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
            .collect();
        paths.sort();
        paths
    }

    /// One batch frame found by walking a segment (log format 2).
    #[derive(Clone, Debug)]
    pub struct FrameSpan {
        pub offset: usize,
        pub length_total: usize,
        pub first_sequence: u64,
        pub synced_through: u64,
        /// The kind of each record in the frame, in order.
        pub kinds: Vec<u8>,
    }

    /// Walks the frames of a segment with the library's decoder, stopping at padding or
    /// at the first bytes that are not a whole, valid frame.
    pub fn frame_spans(bytes: &[u8]) -> Vec<FrameSpan> {
        let mut spans = Vec::new();
        let mut offset = 0;
        while let payd::wal::FrameOutcome::Frame(frame) = payd::wal::decode_frame(bytes, offset) {
            spans.push(FrameSpan {
                offset,
                length_total: frame.length_total,
                first_sequence: frame.first_sequence,
                synced_through: frame.synced_through,
                kinds: frame
                    .records()
                    .map(|r| r.expect("a checked frame").kind)
                    .collect(),
            });
            offset += frame.length_total;
        }
        spans
    }

    /// Records of `kind` in every segment of a shard directory.
    pub fn count_records(shard_dir: &Path, kind: u8) -> usize {
        segment_paths(shard_dir)
            .iter()
            .map(|path| {
                let bytes = std::fs::read(path).expect("read segment");
                frame_spans(&bytes)
                    .iter()
                    .map(|span| span.kinds.iter().filter(|&&k| k == kind).count())
                    .sum::<usize>()
            })
            .sum()
    }

    /// A small seeded generator (SplitMix64): a failing run can be replayed by its seed.
    pub struct SplitMix64 {
        state: u64,
    }

    impl SplitMix64 {
        pub fn new(seed: u64) -> SplitMix64 {
            SplitMix64 { state: seed }
        }

        pub fn next_u64(&mut self) -> u64 {
            self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// A number in `low..=high`.
        pub fn between(&mut self, low: u64, high: u64) -> u64 {
            assert!(low <= high);
            low + self.next_u64() % (high - low + 1)
        }
    }

    /// The seed from `PAYD_TEST_SEED`, or a fresh one from the clock.
    pub fn seed() -> u64 {
        if let Ok(text) = std::env::var("PAYD_TEST_SEED") {
            return text.parse().expect("PAYD_TEST_SEED is a u64");
        }
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_nanos() as u64
    }
}

// ---- Block of issue 5 (acquirer over HTTP): the standalone simulator and signed creates.
pub mod acq {
    use super::{CapturedLines, Client, Response, ServerOptions, POLL_INTERVAL_MS};
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::process::{Child, Command, Stdio};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    pub const MERCHANT_ID: &str = "m_acq";
    /// A test secret, nothing like a real one.
    pub const MERCHANT_SECRET: &str = "acquirer-test-secret-test-only-0123456789abcdef";
    /// What `payd acquirer-sim` prints once it accepts connections.
    pub const SIM_READY_PREFIX: &str = "payd acquirer-sim: listening on ";
    pub const SIM_READY_TIMEOUT_MS: u64 = 10_000;

    /// A running `payd acquirer-sim`, killed with SIGKILL when dropped.
    pub struct AcquirerSim {
        child: Option<Child>,
        pub addr: SocketAddr,
        pub stderr: CapturedLines,
    }

    impl AcquirerSim {
        /// Starts the simulator on `listen` (port 0 for any) with extra arguments
        /// such as `--latency-ms 20`, and waits for its ready line.
        pub fn start(listen: &str, args: &[&str]) -> AcquirerSim {
            let mut child = Command::new(super::payd_binary())
                .args(["acquirer-sim", "--listen", listen])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn payd acquirer-sim");
            let (sender, receiver) = mpsc::channel();
            let stderr = CapturedLines::capture(child.stderr.take().unwrap(), Some(sender));
            let deadline = Instant::now() + Duration::from_millis(SIM_READY_TIMEOUT_MS);
            let addr = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match receiver.recv_timeout(left) {
                    Ok(line) => {
                        if let Some(addr) = line.strip_prefix(SIM_READY_PREFIX) {
                            break addr.trim().parse().expect("a socket address");
                        }
                    }
                    Err(_) => {
                        let _ = child.kill();
                        let _ = child.wait();
                        panic!(
                            "acquirer-sim never became ready; stderr:\n{}",
                            stderr.text()
                        );
                    }
                }
            };
            AcquirerSim {
                child: Some(child),
                addr,
                stderr,
            }
        }

        /// SIGKILL, as a crash would: no goodbye on any connection.
        pub fn kill(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        pub fn url(&self) -> String {
            format!("http://{}", self.addr)
        }

        /// `GET /calls`: the total and the calls per Idempotency-Key.
        pub fn calls(&self) -> (u64, HashMap<String, u64>) {
            use simd_json::prelude::*;
            let mut client = Client::connect(self.addr);
            let response = client.get("/calls", "calls");
            assert_eq!(response.status, 200, "{response:?}");
            let mut body = response.body.clone();
            let value = simd_json::to_owned_value(&mut body).expect("/calls is JSON");
            let total = value["total"].as_u64().expect("total");
            let by_key = value["by_key"]
                .as_object()
                .expect("by_key")
                .iter()
                .map(|(key, count)| (key.to_string(), count.as_u64().expect("a count")))
                .collect();
            (total, by_key)
        }
    }

    impl Drop for AcquirerSim {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Server options for payd calling the acquirer at `url` over HTTP, with the test
    /// merchant and `acquirer_toml` lines added to the `[acquirer]` section.
    pub fn options_with_http_acquirer(url: &str, acquirer_toml: &str) -> ServerOptions {
        ServerOptions {
            extra_toml: format!(
                "[acquirer]\nmode = \"http\"\nurl = \"{url}\"\n{acquirer_toml}\n\n\
                 [[merchants]]\nid = \"{MERCHANT_ID}\"\nsecrets = [\"{MERCHANT_SECRET}\"]\n"
            ),
            ..ServerOptions::default()
        }
    }

    /// API.md section 1, signed with the test merchant's secret.
    pub fn signature_hex(timestamp: u64, method: &str, target: &str, body: &str) -> String {
        super::signature_hex(MERCHANT_SECRET, timestamp, method, target, body.as_bytes())
    }

    /// A keep-alive request signed by the test merchant; a body makes it JSON.
    pub fn signed_request(method: &str, target: &str, body: &str) -> String {
        super::signed_request_as(MERCHANT_ID, MERCHANT_SECRET, method, target, body)
    }

    pub fn create_request(order_id: &str, token: &str) -> String {
        let body = format!(
            "{{\"order_id\":\"{order_id}\",\"amount\":1999,\"currency\":\"CNY\",\"payment_method\":\"{token}\"}}"
        );
        signed_request("POST", "/v1/payments", &body)
    }

    /// The fields of a payment body the acquirer tests look at.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct PaymentView {
        pub id: String,
        pub status: String,
        pub decline_code: Option<String>,
    }

    pub fn payment_view(response: &Response) -> PaymentView {
        use simd_json::prelude::*;
        let mut body = response.body.clone();
        let value = simd_json::to_owned_value(&mut body)
            .unwrap_or_else(|_| panic!("payment body is not JSON: {response:?}"));
        PaymentView {
            id: value["id"].as_str().expect("id").to_string(),
            status: value["status"].as_str().expect("status").to_string(),
            decline_code: value["decline_code"].as_str().map(str::to_string),
        }
    }

    /// Creates one payment on a fresh connection: the status code and the payment.
    pub fn create(server_addr: SocketAddr, order_id: &str, token: &str) -> (u16, PaymentView) {
        let mut client = Client::connect(server_addr);
        let response = client.request(create_request(order_id, token).as_bytes());
        assert!(
            matches!(response.status, 201 | 202),
            "create {order_id} with {token}: {response:?} {}",
            response.body_text()
        );
        (response.status, payment_view(&response))
    }

    /// Polls `GET /v1/payments/{id}` until the payment is final, at most `timeout`.
    pub fn wait_final(server_addr: SocketAddr, id: &str, timeout: Duration) -> PaymentView {
        let deadline = Instant::now() + timeout;
        let mut client = Client::connect(server_addr);
        loop {
            let target = format!("/v1/payments/{id}");
            let response = client.request(signed_request("GET", &target, "").as_bytes());
            assert_eq!(response.status, 200, "{response:?}");
            let view = payment_view(&response);
            if view.status != "pending" {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "payment {id} still pending after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
    }

    /// A loopback port that was free a moment ago (to restart a process on it).
    pub fn free_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    }
}

// ---- Retention helpers (tests/retention.rs) ----

/// Payments big enough that a minimum-size segment rolls over every couple of hundred.
pub mod retention {
    use super::durable::signed_request;
    use super::{Client, Response};

    /// A create with a long description and metadata: about 1.3 KB in the log.
    pub fn create_padded(client: &mut Client, order_id: &str, token: &str) -> Response {
        let description = "d".repeat(200);
        let value = "v".repeat(500);
        let body = format!(
            "{{\"order_id\":\"{order_id}\",\"amount\":100,\"currency\":\"CNY\",\
             \"payment_method\":\"{token}\",\"description\":\"{description}\",\
             \"metadata\":{{\"a\":\"{value}\",\"b\":\"{value}\"}}}}"
        );
        client.request(signed_request("POST", "/v1/payments", &body).as_bytes())
    }
}

/// The reference Standard Webhooks implementation, driven by a script: it verifies
/// signatures, or serves as a webhook receiver that checks every delivery.
pub const WEBHOOK_VERIFIER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/webhook_verify.py");

/// `python3 tests/webhook_verify.py`, after checking that the reference package is there.
pub fn webhook_verifier() -> std::process::Command {
    let check = std::process::Command::new("python3")
        .args(["-c", "import standardwebhooks"])
        .status();
    assert!(
        matches!(check, Ok(status) if status.success()),
        "these tests need python3 with standardwebhooks: pip install standardwebhooks"
    );
    let mut command = std::process::Command::new("python3");
    command.arg(WEBHOOK_VERIFIER);
    command
}

/// Starts the verifier as a receiver for `secret` (plus `extra` arguments): the process,
/// its port, and its output after the line that names the port.
pub fn start_webhook_receiver(
    secret: &str,
    extra: &[&str],
) -> (
    std::process::Child,
    u16,
    BufReader<std::process::ChildStdout>,
) {
    let mut child = webhook_verifier()
        .args(["serve", "--secret", secret])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut lines = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    lines.read_line(&mut first).unwrap();
    let port = first
        .trim()
        .strip_prefix("listening ")
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("receiver did not start: {first:?}"));
    (child, port, lines)
}
