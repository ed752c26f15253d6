//! WebSocket intake (API.md section 9) against the real binary: the opening, messages
//! answered by id through the same API as HTTP, status pushes, every protocol rule, the
//! in-flight and output bounds, idle connections, shutdown, metrics and the access log.
//!
//! Two independent clients: the Python `websockets` package (tests/ws_client.py) for what
//! a well-behaved client does, and raw frames written here for what it cannot do (an
//! unmasked frame, a reserved opcode, a client that never reads). Messages are signed
//! by the harness's own implementation of API.md section 1.

mod common;

use common::{
    assert_error, create_body, get_request, merchants_toml, signature_hex, unix_now_secs, Client,
    PaymentJson, Response, Server, ServerOptions, MERCHANT_A, MERCHANT_A_SECRETS,
    MERCHANT_B_SECRET,
};
use simd_json::prelude::*;
use simd_json::OwnedValue;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WS_CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ws_client.py");
/// How long the Python client may run before the test gives up on it.
const CLIENT_TIMEOUT_MS: u64 = 60_000;
/// API.md section 4: tok_slow is approved after 3 s; allow the push that long and more.
const PUSH_WAIT_SECS: u64 = 10;
/// RFC 6455 section 1.3's example key and its accept value.
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const SAMPLE_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";
/// Opcodes with FIN set.
const TEXT: u8 = 0x81;
const BINARY: u8 = 0x82;
const CLOSE: u8 = 0x88;
const PING: u8 = 0x89;
const PONG: u8 = 0x8a;

fn start(extra_toml: &str) -> Server {
    Server::start(ServerOptions {
        extra_toml: format!("{}\n{extra_toml}\n", merchants_toml()),
        ..ServerOptions::default()
    })
}

/// A JSON string literal of `text` (quotes, backslashes and controls escaped).
fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A request message signed now with `secret`, exactly as the HTTP request would be.
/// `id` is the id's JSON (`"c-1"` or `7`).
fn message_signed(id: &str, method: &str, target: &str, body: &str, secret: &str) -> String {
    let timestamp = unix_now_secs();
    let signature = signature_hex(secret, timestamp, method, target, body.as_bytes());
    format!(
        "{{\"id\":{id},\"method\":\"{method}\",\"target\":{},\"timestamp\":\"{timestamp}\",\
         \"signature\":\"v1={signature}\",\"body\":{}}}",
        json_string(target),
        json_string(body)
    )
}

/// A message signed by merchant A's first secret.
fn message(id: &str, method: &str, target: &str, body: &str) -> String {
    message_signed(id, method, target, body, MERCHANT_A_SECRETS[0])
}

fn create_message(id: &str, order_id: &str, token: &str) -> String {
    let body = create_body(order_id, 1999, "CNY", token);
    message(id, "POST", "/v1/payments", &body)
}

fn parse_json(text: &str) -> OwnedValue {
    let mut bytes = text.as_bytes().to_vec();
    simd_json::to_owned_value(&mut bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// An answer message: `{"id", "status", "replayed", "body"}` and nothing else.
#[derive(Debug)]
struct Answer {
    id: OwnedValue,
    status: u64,
    replayed: bool,
    body_text: String,
}

impl Answer {
    fn parse(text: &str) -> Answer {
        let value = parse_json(text);
        let object = value.as_object().expect("an answer is an object");
        let mut keys: Vec<&str> = object.keys().map(|k| k.as_ref()).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["body", "id", "replayed", "status"], "{text}");
        let body = &object["body"];
        assert!(
            body.is_object(),
            "the body is a payment or an error object: {text}"
        );
        Answer {
            id: object["id"].clone(),
            status: object["status"].as_u64().expect("status is an integer"),
            replayed: object["replayed"].as_bool().expect("replayed is a boolean"),
            body_text: simd_json::to_string(body).unwrap(),
        }
    }

    fn id_text(&self) -> String {
        self.id.as_str().expect("a string id").to_string()
    }

    fn payment(&self) -> PaymentJson {
        let mut bytes = self.body_text.clone().into_bytes();
        let payment: PaymentJson = simd_json::serde::from_slice(&mut bytes)
            .unwrap_or_else(|e| panic!("not a payment ({e}): {}", self.body_text));
        common::assert_payment_invariants(&payment);
        payment
    }

    fn error_code(&self) -> String {
        common::parse_error_body(self.body_text.as_bytes())
            .unwrap_or_else(|problem| panic!("{problem}: {}", self.body_text))
            .code
    }
}

/// What the Python client saw.
struct Outcome {
    open_status: Option<u64>,
    open_body: String,
    /// Every message received: (connection, text).
    received: Vec<(usize, String)>,
    closed: Vec<Option<u64>>,
}

impl Outcome {
    fn answers(&self) -> Vec<(usize, Answer)> {
        self.received
            .iter()
            .filter(|(_, text)| !text.contains("\"event\""))
            .map(|(connection, text)| (*connection, Answer::parse(text)))
            .collect()
    }

    fn pushes(&self) -> Vec<OwnedValue> {
        self.received
            .iter()
            .map(|(_, text)| parse_json(text))
            .filter(|value| value.get("event").is_some())
            .collect()
    }
}

/// Runs the Python client: `connections` connections signed with `secret`, each
/// `(connection, text)` sent, until `expect` messages came back.
fn run_client(
    server: &Server,
    secret: &str,
    connections: usize,
    messages: &[(usize, String)],
    expect: usize,
    timeout_secs: u64,
) -> Outcome {
    let url = format!("ws://{}/v1/ws", server.addr);
    let shape = ClientShape {
        url: &url,
        ca: None,
        secret,
        connections,
        expect,
        timeout_secs,
    };
    run_client_as(&shape, messages)
}

/// What the Python client is asked to do.
struct ClientShape<'a> {
    url: &'a str,
    /// The certificate authority a `wss://` URL is verified against.
    ca: Option<&'a std::path::Path>,
    secret: &'a str,
    connections: usize,
    expect: usize,
    timeout_secs: u64,
}

fn run_client_as(shape: &ClientShape<'_>, messages: &[(usize, String)]) -> Outcome {
    let ClientShape {
        url,
        ca,
        secret,
        connections,
        expect,
        timeout_secs,
    } = *shape;
    let check = Command::new("python3")
        .args(["-c", "import websockets"])
        .status();
    assert!(
        matches!(check, Ok(status) if status.success()),
        "these tests need python3 with websockets: pip install -r tests/requirements.txt"
    );
    let mut command = Command::new("python3");
    command.arg(WS_CLIENT);
    if let Some(ca) = ca {
        command.arg("--ca").arg(ca);
    }
    let mut child = command
        .args(["--url", url, "--merchant", MERCHANT_A, "--secret", secret])
        .args(["--connections", &connections.to_string()])
        .args(["--expect", &expect.to_string()])
        .args(["--timeout", &timeout_secs.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut input = String::new();
    for (connection, text) in messages {
        assert!(!text.contains('\n'));
        input.push_str(&format!("{connection}\t{text}\n"));
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(input.as_bytes());
    });
    // Both pipes are drained while the client runs: a full pipe would block it.
    let mut stdout_pipe = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout_pipe.read_to_string(&mut text);
        text
    });
    let mut stderr_pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + Duration::from_millis(CLIENT_TIMEOUT_MS);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
            panic!("the Python client ran over {CLIENT_TIMEOUT_MS} ms\n{stdout}\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    writer.join().unwrap();
    let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
    assert!(
        child.wait().unwrap().success(),
        "ws_client.py failed:\n{stderr}"
    );
    parse_outcome(&stdout, &stderr)
}

fn parse_outcome(stdout: &str, stderr: &str) -> Outcome {
    let mut outcome = Outcome {
        open_status: None,
        open_body: String::new(),
        received: Vec::new(),
        closed: Vec::new(),
    };
    for line in stdout.lines() {
        let value = parse_json(line);
        if let Some(status) = value.get("open_status") {
            outcome.open_status = status.as_u64();
            outcome.open_body = value["body"].as_str().unwrap_or_default().to_string();
        } else if let Some(text) = value.get("text") {
            let connection = value["connection"].as_u64().unwrap() as usize;
            outcome
                .received
                .push((connection, text.as_str().unwrap().to_string()));
        } else if let Some(codes) = value.get("closed") {
            let codes = codes.as_array().unwrap();
            outcome.closed = codes.iter().map(|code| code.as_u64()).collect();
        }
    }
    assert!(
        outcome.open_status.is_some() || !outcome.closed.is_empty(),
        "no result from ws_client.py:\n{stdout}\n{stderr}"
    );
    outcome
}

// ---- raw frames ----

/// The opening request, signed by `secret` for merchant A, with `extra` header lines.
fn opening(secret: &str, extra: &[&str]) -> String {
    let timestamp = unix_now_secs();
    let signature = signature_hex(secret, timestamp, "GET", "/v1/ws", b"");
    let mut request = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: localhost\r\nX-Payd-Merchant: {MERCHANT_A}\r\n\
         X-Payd-Timestamp: {timestamp}\r\nX-Payd-Signature: v1={signature}\r\n"
    );
    for line in extra {
        request.push_str(line);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    request
}

const UPGRADE_HEADERS: [&str; 4] = [
    "Upgrade: websocket",
    "Connection: Upgrade",
    "Sec-WebSocket-Version: 13",
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
];

/// A raw connection past its 101.
fn open_raw(server: &Server) -> Client {
    let mut client = server.connect();
    let response = client.request(opening(MERCHANT_A_SECRETS[0], &UPGRADE_HEADERS).as_bytes());
    assert_eq!(response.status, 101, "{response:?}");
    client
}

/// A client frame: `first` is FIN, RSV and opcode; masked unless `masked` is false.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask_bit = if masked { 0x80 } else { 0 };
    let mut out = vec![first];
    match payload.len() {
        length @ 0..=125 => out.push(mask_bit | length as u8),
        length @ 126..=65535 => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(length as u16).to_be_bytes());
        }
        length => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(length as u64).to_be_bytes());
        }
    }
    if masked {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Reads one server frame: its first byte and payload. Server frames are never masked.
fn read_frame(client: &mut Client) -> (u8, Vec<u8>) {
    let head = client.read_bytes(2);
    assert_eq!(head[1] & 0x80, 0, "a server frame is masked");
    let length = match head[1] & 0x7f {
        126 => u16::from_be_bytes(client.read_bytes(2).try_into().unwrap()) as usize,
        127 => u64::from_be_bytes(client.read_bytes(8).try_into().unwrap()) as usize,
        length => length as usize,
    };
    (head[0], client.read_bytes(length))
}

/// Reads frames until a text frame (answering nothing, skipping pings) and parses it.
fn read_answer(client: &mut Client) -> Answer {
    loop {
        let (first, payload) = read_frame(client);
        match first {
            TEXT => return Answer::parse(std::str::from_utf8(&payload).unwrap()),
            PING => continue,
            other => panic!("expected a text frame, got {other:#x} {payload:?}"),
        }
    }
}

/// Reads frames until a close frame; returns its code. Then the server ends the stream.
fn read_close(client: &mut Client) -> u16 {
    loop {
        let (first, payload) = read_frame(client);
        if first == CLOSE {
            assert!(payload.len() >= 2, "a close frame without a code");
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            client.expect_closed();
            return code;
        }
    }
}

fn send_text(client: &mut Client, text: &str) {
    client.send(&frame(TEXT, text.as_bytes(), true));
}

// ---- the opening ----

#[test]
fn the_opening_is_signed_like_a_get_and_answered_with_the_accept_key() {
    let server = start("");
    let mut client = server.connect();
    let response = client.request(opening(MERCHANT_A_SECRETS[0], &UPGRADE_HEADERS).as_bytes());
    assert_eq!(response.status_line, "HTTP/1.1 101 Switching Protocols");
    assert_eq!(response.header("Sec-WebSocket-Accept"), Some(SAMPLE_ACCEPT));
    assert_eq!(
        response.header("Upgrade").map(str::to_lowercase),
        Some("websocket".into())
    );
    assert!(response.header("X-Request-Id").is_some());
    let _ = SAMPLE_KEY;
    // The connection now speaks WebSocket: a read by order answers 404 by id.
    send_text(
        &mut client,
        &message("7", "GET", "/v1/orders/none-such", ""),
    );
    let answer = read_answer(&mut client);
    assert_eq!(
        answer.id.as_u64(),
        Some(7),
        "an integer id is echoed as one"
    );
    assert_eq!((answer.status, answer.replayed), (404, false));
    assert_eq!(answer.error_code(), "payment_not_found");
}

#[test]
fn a_bad_or_missing_signature_gets_the_http_401_and_no_upgrade() {
    let server = start("");
    let mut client = server.connect();
    let unsigned = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: localhost\r\n{}\r\n\r\n",
        UPGRADE_HEADERS.join("\r\n")
    );
    let response = client.request(unsigned.as_bytes());
    assert_error(
        &response,
        "HTTP/1.1 401 Unauthorized",
        "authentication_required",
    );
    let forged = opening(MERCHANT_B_SECRET, &UPGRADE_HEADERS);
    let response = client.request(forged.as_bytes());
    assert_error(&response, "HTTP/1.1 401 Unauthorized", "invalid_signature");
    // Still HTTP on the same connection.
    assert_eq!(client.get("/healthz", "after-401").status, 200);
    // Signed but no upgrade, an old version, a bad key: 400, still no upgrade.
    for headers in [
        &UPGRADE_HEADERS[..0],
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 8",
            UPGRADE_HEADERS[3],
        ][..],
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: short",
        ][..],
    ] {
        let response = client.request(opening(MERCHANT_A_SECRETS[0], headers).as_bytes());
        assert_error(&response, "HTTP/1.1 400 Bad Request", "invalid_request");
    }
    let post = common::request_bytes("POST", "/v1/ws", &[], b"", false);
    let response = client.request(&post);
    assert_error(
        &response,
        "HTTP/1.1 405 Method Not Allowed",
        "method_not_allowed",
    );
    assert_eq!(response.header("Allow"), Some("GET"));
    // The Python client sees the refusal as the HTTP answer it is.
    let outcome = run_client(&server, MERCHANT_B_SECRET, 1, &[], 0, 5);
    assert_eq!(outcome.open_status, Some(401));
    assert!(
        outcome.open_body.contains("invalid_signature"),
        "{}",
        outcome.open_body
    );
}

// ---- one create path, two transports ----

#[test]
fn a_create_and_its_replay_on_two_connections_make_exactly_one_payment() {
    let server = start("");
    let create = create_message("\"c-1\"", "ord-ws-replay", "tok_visa");
    // The very same signed message again, on another connection: a replay.
    let replay = create.replacen("\"c-1\"", "\"c-2\"", 1);
    let first = run_client(&server, MERCHANT_A_SECRETS[0], 1, &[(0, create)], 1, 20);
    let first = first.answers();
    assert_eq!(first.len(), 1);
    let created = &first[0].1;
    assert_eq!(
        (created.id_text().as_str(), created.status, created.replayed),
        ("c-1", 201, false)
    );
    let payment = created.payment();
    assert_eq!(
        (payment.status.as_str(), payment.order_id.as_str()),
        ("succeeded", "ord-ws-replay")
    );
    let read = message("\"r\"", "GET", &format!("/v1/payments/{}", payment.id), "");
    let second = run_client(
        &server,
        MERCHANT_A_SECRETS[0],
        1,
        &[(0, replay), (0, read)],
        2,
        20,
    );
    let mut answers = second.answers();
    answers.sort_by_key(|(_, answer)| answer.id_text());
    let (replayed, read) = (&answers[0].1, &answers[1].1);
    assert_eq!(
        (
            replayed.id_text().as_str(),
            replayed.status,
            replayed.replayed
        ),
        ("c-2", 200, true)
    );
    assert_eq!(
        replayed.payment(),
        payment,
        "the replay is the same payment"
    );
    assert_eq!((read.status, read.replayed), (200, false));
    assert_eq!(read.payment(), payment);
    // HTTP sees the same single payment.
    let mut http = server.connect();
    let signed = common::Signed::new("GET", "/v1/orders/ord-ws-replay", b"");
    let response = http.request(&signed.bytes());
    assert_eq!(response.payment(), payment);
    let metrics = server.metrics();
    let created_total = metrics.value(
        "payd_websocket_messages_total",
        &[("method", "POST"), ("status", "201")],
    );
    let replayed_total = metrics.value(
        "payd_websocket_messages_total",
        &[("method", "POST"), ("status", "200")],
    );
    assert_eq!((created_total, replayed_total), (1.0, 1.0));
    assert_eq!(
        metrics.value("payd_websocket_connections_total", &[("core", "0")]),
        2.0
    );
    assert_eq!(
        metrics.value("payd_websocket_closes_total", &[("code", "1000")]),
        2.0
    );
    assert_eq!(
        metrics.value(
            "payd_requests_total",
            &[("route", "websocket"), ("status", "101")]
        ),
        2.0
    );
}

#[test]
fn a_message_signed_for_another_merchant_gets_401_and_the_connection_stays_open() {
    let server = start("");
    let body = create_body("ord-ws-b", 100, "CNY", "tok_visa");
    let foreign = message_signed("\"b\"", "POST", "/v1/payments", &body, MERCHANT_B_SECRET);
    let own = create_message("\"a\"", "ord-ws-a", "tok_visa");
    let outcome = run_client(
        &server,
        MERCHANT_A_SECRETS[0],
        1,
        &[(0, foreign), (0, own)],
        2,
        20,
    );
    let mut answers = outcome.answers();
    answers.sort_by_key(|(_, answer)| answer.id_text());
    assert_eq!(answers[0].1.status, 201, "{:?}", answers[0].1);
    assert_eq!(
        (answers[1].1.status, answers[1].1.error_code().as_str()),
        (401, "invalid_signature")
    );
}

#[test]
fn envelope_and_route_errors_answer_like_http_and_keep_the_connection() {
    let server = start("");
    let mut client = open_raw(&server);
    let cases: Vec<(String, serde_json_like::Id, u64, &str)> = vec![
        (
            "not json".to_string(),
            serde_json_like::Id::Null,
            400,
            "invalid_request",
        ),
        (
            r#"{"id":[1],"method":"GET"}"#.to_string(),
            serde_json_like::Id::Null,
            400,
            "invalid_request",
        ),
        (
            r#"{"id":"e1","target":"/v1/payments"}"#.to_string(),
            serde_json_like::Id::Text("e1"),
            400,
            "invalid_request",
        ),
        (
            message("\"e2\"", "GET", "/healthz", ""),
            serde_json_like::Id::Text("e2"),
            404,
            "not_found",
        ),
        (
            message("\"e3\"", "DELETE", "/v1/payments", ""),
            serde_json_like::Id::Text("e3"),
            405,
            "method_not_allowed",
        ),
        (
            r#"{"id":"e4","method":"GET","target":"/v1/orders/x"}"#.to_string(),
            serde_json_like::Id::Text("e4"),
            401,
            "authentication_required",
        ),
        (
            message("\"e5\"", "POST", "/v1/payments", "{\"amount\":1}"),
            serde_json_like::Id::Text("e5"),
            400,
            "invalid_request",
        ),
        (
            message("\"e6\"", "POST", "/v1/payments", "not json"),
            serde_json_like::Id::Text("e6"),
            400,
            "invalid_json",
        ),
    ];
    for (text, id, status, code) in &cases {
        send_text(&mut client, text);
        let answer = read_answer(&mut client);
        match id {
            serde_json_like::Id::Null => assert!(answer.id.is_null(), "{answer:?}"),
            serde_json_like::Id::Text(id) => assert_eq!(answer.id_text(), *id),
        }
        assert_eq!(
            (answer.status, answer.error_code().as_str()),
            (*status, *code),
            "{text}"
        );
        assert!(!answer.replayed);
    }
    // The same connection still creates.
    send_text(
        &mut client,
        &create_message("\"ok\"", "ord-ws-env", "tok_visa"),
    );
    assert_eq!(read_answer(&mut client).status, 201);
}

/// The ids a test expects back.
mod serde_json_like {
    pub enum Id {
        Null,
        Text(&'static str),
    }
}

// ---- protocol rules ----

/// Sends `bytes` on a fresh connection and returns the close code payd answers with.
fn close_code_for(server: &Server, bytes: &[u8]) -> u16 {
    let mut client = open_raw(server);
    client.send(bytes);
    read_close(&mut client)
}

#[test]
fn every_protocol_rule_closes_with_its_code() {
    let server = start("[websocket]\nmax_message_bytes = 2048\n");
    let read = message("1", "GET", "/v1/orders/x", "");
    let mut reserved_bit = frame(TEXT, read.as_bytes(), true);
    reserved_bit[0] |= 0x40;
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", frame(TEXT, read.as_bytes(), false), 1002),
        ("control over 125", frame(PING, &[b'p'; 126], true), 1002),
        ("reserved bit", reserved_bit, 1002),
        ("reserved opcode", frame(0x83, b"{}", true), 1002),
        ("reserved control opcode", frame(0x8b, b"", true), 1002),
        ("continuation without start", frame(0x80, b"{}", true), 1002),
        ("binary", frame(BINARY, b"{}", true), 1003),
        (
            "invalid UTF-8",
            frame(TEXT, &[b'{', 0xff, 0xfe, b'}'], true),
            1007,
        ),
        (
            "over max_message_bytes",
            frame(TEXT, &vec![b' '; 2049], true),
            1009,
        ),
    ];
    for (name, bytes, code) in cases {
        assert_eq!(close_code_for(&server, &bytes), code, "{name}");
    }
    // Fragments over the limit together, each under it.
    let mut fragments = frame(0x01, &vec![b' '; 1100], true);
    fragments.extend(frame(0x80, &vec![b' '; 1100], true));
    assert_eq!(
        close_code_for(&server, &fragments),
        1009,
        "fragments over the limit"
    );
    let metrics = server.metrics();
    assert_eq!(
        metrics.value("payd_websocket_closes_total", &[("code", "1002")]),
        6.0
    );
    for code in ["1003", "1007"] {
        assert_eq!(
            metrics.value("payd_websocket_closes_total", &[("code", code)]),
            1.0
        );
    }
    assert_eq!(
        metrics.value("payd_websocket_closes_total", &[("code", "1009")]),
        2.0
    );
}

#[test]
fn pings_are_answered_fragments_reassembled_and_a_close_echoed() {
    let server = start("");
    let mut client = open_raw(&server);
    client.send(&frame(PING, b"are you there", true));
    assert_eq!(read_frame(&mut client), (PONG, b"are you there".to_vec()));
    let text = create_message("\"frag\"", "ord-ws-frag", "tok_visa");
    let (head, tail) = text.as_bytes().split_at(30);
    let (middle, tail) = tail.split_at(40);
    client.send(&frame(0x01, head, true));
    client.send(&frame(PING, b"", true)); // a control frame between fragments is allowed
    client.send(&frame(0x00, middle, true));
    client.send(&frame(0x80, tail, true));
    assert_eq!(read_frame(&mut client), (PONG, Vec::new()));
    let answer = read_answer(&mut client);
    assert_eq!((answer.id_text().as_str(), answer.status), ("frag", 201));
    client.send(&frame(CLOSE, &1000u16.to_be_bytes(), true));
    assert_eq!(read_close(&mut client), 1000);
}

#[test]
fn a_silent_connection_is_pinged_then_closed_after_two_intervals() {
    let server = start("[websocket]\nping_interval_ms = 300\n");
    let mut client = open_raw(&server);
    let started = Instant::now();
    let (first, payload) = read_frame(&mut client);
    assert_eq!((first, payload.len()), (PING, 0));
    assert_eq!(read_close(&mut client), 1001);
    let silent = started.elapsed();
    assert!(
        silent >= Duration::from_millis(550),
        "closed after {silent:?}"
    );
    // A connection that keeps talking (here, answering pings) stays open meanwhile.
    let mut talker = open_raw(&server);
    let until = Instant::now() + Duration::from_millis(1_500);
    while Instant::now() < until {
        let (first, payload) = read_frame(&mut talker);
        assert_eq!(first, PING, "closed while talking");
        talker.send(&frame(PONG, &payload, true));
    }
}

// ---- bounds ----

#[test]
fn requests_over_the_in_flight_limit_get_429_overloaded() {
    let server =
        start("[websocket]\nmax_in_flight_per_connection = 4\n\n[acquirer]\nlatency_ms = 500\n");
    let mut client = open_raw(&server);
    let mut burst = Vec::new();
    for index in 0..10 {
        let text = create_message(
            &format!("\"b{index}\""),
            &format!("ord-ws-burst-{index}"),
            "tok_visa",
        );
        burst.extend(frame(TEXT, text.as_bytes(), true));
    }
    client.send(&burst);
    let mut statuses = std::collections::BTreeMap::new();
    for _ in 0..10 {
        let answer = read_answer(&mut client);
        if answer.status == 429 {
            assert_eq!(answer.error_code(), "overloaded");
        }
        *statuses.entry(answer.status).or_insert(0) += 1;
    }
    assert_eq!(statuses, [(201, 4), (429, 6)].into_iter().collect());
    // Once answered, the connection takes requests again.
    send_text(
        &mut client,
        &create_message("\"after\"", "ord-ws-after", "tok_visa"),
    );
    assert_eq!(read_answer(&mut client).status, 201);
}

fn resident_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_client_that_never_reads_is_not_buffered_without_bound() {
    /// Bytes the client may send before payd must have stopped reading: payd's output
    /// bound plus every socket buffer between them, several times over.
    const SENT_BYTES_MAX: usize = 256 << 20;
    const RESIDENT_GROWTH_KIB_MAX: u64 = 16 << 10;
    let server = start("");
    let mut client = open_raw(&server);
    let before = resident_kib(server.pid());
    let text = message("1", "GET", "/v1/orders/none-such", "");
    let one = frame(TEXT, text.as_bytes(), true);
    let batch: Vec<u8> = one.repeat(256);
    client
        .stream
        .set_write_timeout(Some(Duration::from_millis(2_000)))
        .unwrap();
    let mut sent = 0;
    let blocked = loop {
        match client.stream.write(&batch) {
            Ok(count) => sent += count,
            Err(_) => break true,
        }
        if sent > SENT_BYTES_MAX {
            break false;
        }
    };
    assert!(
        blocked,
        "payd read {sent} bytes from a client that never reads"
    );
    let grown = resident_kib(server.pid()).saturating_sub(before);
    assert!(
        grown < RESIDENT_GROWTH_KIB_MAX,
        "resident memory grew {grown} KiB"
    );
    // Reading again, the client gets answers (404s, and 429s past the in-flight limit).
    let answer = read_answer(&mut client);
    assert!(matches!(answer.status, 404 | 429), "{answer:?}");
    eprintln!("sent {sent} bytes before payd stopped reading; resident grew {grown} KiB");
}

// ---- 1,000 creates over 16 connections against a slow acquirer ----

#[test]
fn a_thousand_creates_in_flight_over_sixteen_connections_are_each_answered_by_id() {
    const CONNECTIONS: usize = 16;
    const CREATES: usize = 1_000;
    let server = start("[acquirer]\nlatency_ms = 200\njitter_ms = 100\n");
    let messages: Vec<(usize, String)> = (0..CREATES)
        .map(|index| {
            let text = create_message(
                &format!("\"k{index}\""),
                &format!("ord-ws-k{index}"),
                "tok_visa",
            );
            (index % CONNECTIONS, text)
        })
        .collect();
    let outcome = run_client(
        &server,
        MERCHANT_A_SECRETS[0],
        CONNECTIONS,
        &messages,
        CREATES,
        20,
    );
    let answers = outcome.answers();
    assert_eq!(answers.len(), CREATES, "answers received");
    let mut ids = std::collections::HashSet::new();
    let mut payments = std::collections::HashSet::new();
    for (connection, answer) in &answers {
        let id = answer.id_text();
        let index: usize = id[1..].parse().unwrap();
        assert_eq!(
            *connection,
            index % CONNECTIONS,
            "{id} answered on another connection"
        );
        assert_eq!(answer.status, 201, "{answer:?}");
        let payment = answer.payment();
        assert_eq!(
            payment.order_id,
            format!("ord-ws-k{index}"),
            "{id} answered with another payment"
        );
        assert!(ids.insert(id));
        assert!(payments.insert(payment.id));
    }
    assert_eq!(outcome.closed, vec![Some(1000); CONNECTIONS]);
}

// ---- status push ----

#[test]
fn pending_creates_are_pushed_once_when_final_from_either_core() {
    const CREATES: usize = 6;
    let server = Server::start(ServerOptions {
        cores: vec![0, 1],
        extra_toml: merchants_toml(),
        ..ServerOptions::default()
    });
    let messages: Vec<(usize, String)> = (0..CREATES)
        .map(|index| {
            let id = format!("\"slow-{index}\"");
            (
                0,
                create_message(&id, &format!("ord-ws-slow-{index}"), "tok_slow"),
            )
        })
        .collect();
    let outcome = run_client(
        &server,
        MERCHANT_A_SECRETS[0],
        1,
        &messages,
        2 * CREATES,
        PUSH_WAIT_SECS,
    );
    let mut pending = std::collections::BTreeMap::new();
    for (_, answer) in outcome.answers() {
        let payment = answer.payment();
        assert_eq!((answer.status, payment.status.as_str()), (202, "pending"));
        pending.insert(payment.id.clone(), payment);
    }
    assert_eq!(pending.len(), CREATES);
    // Both shards (one per core) hold some of them: pushes cross the mesh too.
    let shards: std::collections::BTreeSet<&str> = pending.keys().map(|id| &id[4..8]).collect();
    assert_eq!(shards.len(), 2, "all on one shard: {shards:?}");
    let mut pushed = std::collections::BTreeMap::new();
    for push in outcome.pushes() {
        assert_eq!(push["event"].as_str(), Some("payment.updated"));
        assert_eq!(push.as_object().unwrap().len(), 2, "{push:?}");
        let mut bytes = simd_json::to_string(&push["data"]).unwrap().into_bytes();
        let payment: PaymentJson = simd_json::serde::from_slice(&mut bytes).unwrap();
        assert_eq!(payment.status, "succeeded");
        assert!(
            pushed.insert(payment.id.clone(), payment).is_none(),
            "pushed twice"
        );
    }
    assert_eq!(
        pushed.keys().collect::<Vec<_>>(),
        pending.keys().collect::<Vec<_>>()
    );
    // Each payment's answer came before its push.
    for id in pending.keys() {
        let position = |event: bool| {
            outcome
                .received
                .iter()
                .position(|(_, text)| {
                    text.contains(id.as_str()) && text.contains("\"event\"") == event
                })
                .unwrap()
        };
        assert!(position(false) < position(true), "{id}");
    }
}

// ---- wss:// ----

#[test]
fn wss_serves_the_same_messages_over_tls() {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let dir = tempfile::tempdir().unwrap();
    let mut authority = CertificateParams::new(Vec::<String>::new()).unwrap();
    authority.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    authority
        .distinguished_name
        .push(DnType::CommonName, "payd websocket test CA");
    authority.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let issuer = CertifiedIssuer::self_signed(authority, KeyPair::generate().unwrap()).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, issuer.pem()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_file, key_file) = (dir.path().join("leaf.crt"), dir.path().join("leaf.key"));
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let server = start(&format!(
        "[server.tls]\ncert_file = {}\nkey_file = {}\n",
        common::toml_string(&cert_file.display().to_string()),
        common::toml_string(&key_file.display().to_string())
    ));
    let create = create_message("\"tls-1\"", "ord-wss", "tok_visa");
    let replay = create.replacen("\"tls-1\"", "\"tls-2\"", 1);
    let url = format!("wss://{}/v1/ws", server.addr);
    let shape = ClientShape {
        url: &url,
        ca: Some(&ca),
        secret: MERCHANT_A_SECRETS[0],
        connections: 1,
        expect: 1,
        timeout_secs: 20,
    };
    // Two connections, one after the other: the replay is answered from the shard.
    let first = run_client_as(&shape, &[(0, create)]).answers();
    let second = run_client_as(&shape, &[(0, replay)]).answers();
    let (created, replayed) = (&first[0].1, &second[0].1);
    assert_eq!(
        (created.status, created.replayed),
        (201, false),
        "{created:?}"
    );
    assert_eq!(
        (replayed.status, replayed.replayed),
        (200, true),
        "{replayed:?}"
    );
    assert_eq!(created.payment(), replayed.payment());
}

// ---- shutdown ----

#[test]
fn shutdown_answers_what_is_in_flight_refuses_new_requests_then_closes_1001() {
    let mut server = Server::start(ServerOptions {
        shutdown_timeout_ms: 5_000,
        extra_toml: format!("{}\n[acquirer]\nlatency_ms = 800\n", merchants_toml()),
        ..ServerOptions::default()
    });
    let mut client = open_raw(&server);
    let mut burst = Vec::new();
    for index in 0..3 {
        let text = create_message(
            &format!("\"s{index}\""),
            &format!("ord-ws-stop-{index}"),
            "tok_visa",
        );
        burst.extend(frame(TEXT, text.as_bytes(), true));
    }
    client.send(&burst);
    std::thread::sleep(Duration::from_millis(200));
    server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    send_text(
        &mut client,
        &create_message("\"late\"", "ord-ws-late", "tok_visa"),
    );
    let mut answers: Vec<Answer> = (0..4).map(|_| read_answer(&mut client)).collect();
    answers.sort_by_key(|answer| answer.id_text());
    let seen: Vec<(String, u64)> = answers.iter().map(|a| (a.id_text(), a.status)).collect();
    assert_eq!(
        seen,
        vec![
            ("late".into(), 503),
            ("s0".into(), 201),
            ("s1".into(), 201),
            ("s2".into(), 201)
        ]
    );
    assert_eq!(answers[0].error_code(), "not_ready");
    assert_eq!(read_close(&mut client), 1001);
    let status = server
        .wait_exit(Duration::from_millis(8_000))
        .expect("payd exits");
    assert!(status.success(), "{status:?}");
}

// ---- access log ----

#[test]
fn each_message_has_an_access_log_line_with_its_transport() {
    let server = start("");
    let mut client = open_raw(&server);
    send_text(
        &mut client,
        &message("\"log-probe-ws\"", "GET", "/v1/orders/none", ""),
    );
    assert_eq!(read_answer(&mut client).status, 404);
    let mut http = server.connect();
    http.send(get_request("/healthz", "log-probe-http").as_bytes());
    assert_eq!(http.read_response().status, 200);
    let path = server.log_dir().join("access-core0.log");
    let mut text = String::new();
    let written = common::eventually(Duration::from_millis(5_000), || {
        text = std::fs::read_to_string(&path).unwrap_or_default();
        text.contains("log-probe-ws") && text.contains("log-probe-http")
    });
    assert!(written, "{text}");
    let line = |probe: &str| {
        text.lines()
            .find(|line| line.contains(probe))
            .unwrap()
            .to_string()
    };
    let ws: Vec<String> = line("log-probe-ws")
        .split(' ')
        .map(str::to_string)
        .collect();
    assert_eq!(&ws[2..5], ["GET", "get_order", "404"], "{ws:?}");
    assert_eq!(&ws[6..], ["log-probe-ws", MERCHANT_A, "ws"], "{ws:?}");
    assert!(line("log-probe-http").ends_with(" - http"), "{text}");
    let opening = text
        .lines()
        .find(|l| l.contains(" websocket 101 "))
        .expect("the 101 is logged");
    assert!(
        opening.ends_with(&format!(" {MERCHANT_A} http")),
        "{opening}"
    );
    let _: Option<Response> = None;
}

#[test]
fn many_messages_in_one_write_are_all_answered() {
    const MESSAGES: usize = 60;
    let server = start("");
    let mut client = open_raw(&server);
    let mut burst = Vec::new();
    for index in 0..MESSAGES {
        let text = message(
            &index.to_string(),
            "GET",
            &format!("/v1/orders/many-{index}"),
            "",
        );
        burst.extend(frame(TEXT, text.as_bytes(), true));
    }
    client.send(&burst);
    let mut ids: Vec<u64> = (0..MESSAGES)
        .map(|_| {
            let answer = read_answer(&mut client);
            assert_eq!(answer.status, 404);
            answer.id.as_u64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..MESSAGES as u64).collect::<Vec<_>>());
}
