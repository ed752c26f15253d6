//! HTTP/1.1 protocol rules of API.md section 2 against the real binary, over a raw socket:
//! exact status lines and error codes, which errors close the connection, every limit.

mod common;

use common::{assert_error, get_request, Client, ReadFailure, Server, ServerOptions};
use std::thread;
use std::time::{Duration, Instant};

const HEALTHZ_BODY: &str = r#"{"status":"ok"}"#;

fn start_default() -> Server {
    Server::start(ServerOptions::default())
}

/// A request whose answer is a protocol error: asserts the status line, the code, the
/// `Connection: close` header and that the server really closes.
fn assert_protocol_error(server: &Server, request: &[u8], status_line: &str, code: &str) {
    let mut client = server.connect();
    client.send(request);
    let response = client.read_response();
    assert_error(&response, status_line, code);
    assert!(
        response.closes(),
        "a protocol error must say Connection: close: {response:?} for {:?}",
        String::from_utf8_lossy(request)
    );
    client.expect_closed();
}

fn assert_healthz_ok(client: &mut Client, request_id: &str) {
    let response = client.get("/healthz", request_id);
    assert_eq!(response.status_line, "HTTP/1.1 200 OK", "{response:?}");
    assert_eq!(response.body_text(), HEALTHZ_BODY);
}

#[test]
fn healthz_has_every_common_header_and_keeps_the_connection() {
    let server = start_default();
    let mut client = server.connect();
    let response = client.request(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
    assert_eq!(response.body_text(), HEALTHZ_BODY);
    assert_eq!(response.header("Content-Type"), Some("application/json"));
    assert_eq!(
        response.header("Content-Length"),
        Some(HEALTHZ_BODY.len().to_string().as_str())
    );
    let date = response.header("Date").expect("Date header");
    // IMF-fixdate, e.g. "Sun, 06 Nov 1994 08:49:37 GMT".
    assert!(
        date.len() == 29 && date.ends_with(" GMT") && date.as_bytes()[3] == b',',
        "Date is not an IMF-fixdate: {date:?}"
    );
    let generated = response.request_id().to_string();
    assert!(
        !generated.is_empty()
            && generated.len() <= 64
            && generated.bytes().all(|b| b.is_ascii_graphic()),
        "generated X-Request-Id {generated:?}"
    );
    assert!(!response.closes(), "keep-alive response says close");
    let second = client.request(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(second.status_line, "HTTP/1.1 200 OK");
    assert_ne!(
        second.request_id(),
        generated,
        "two requests got the same generated request id"
    );
}

#[test]
fn readyz_answers_ready_once_up() {
    let server = start_default();
    let mut client = server.connect();
    let response = client.get("/readyz", "ready-1");
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
    assert_eq!(response.body_text(), r#"{"status":"ready"}"#);
    assert_eq!(response.request_id(), "ready-1");
}

#[test]
fn request_id_is_echoed_only_when_valid() {
    let server = start_default();
    let mut client = server.connect();
    let longest = "a".repeat(64);
    for valid in ["r-1", longest.as_str(), "!~{}[]:;,./?<>@#$%^&*()_+=|\\'\"`"] {
        let response = client.get("/healthz", valid);
        assert_eq!(response.request_id(), valid, "valid id not echoed");
    }
    let too_long = "b".repeat(65);
    let not_ascii = "caf\u{e9}";
    let with_space = "two words";
    for invalid in [too_long.as_str(), not_ascii, with_space, ""] {
        let response = client.get("/healthz", invalid);
        assert_eq!(
            response.status_line, "HTTP/1.1 200 OK",
            "for id {invalid:?}"
        );
        let generated = response.request_id();
        assert_ne!(generated, invalid, "invalid id echoed");
        assert!(
            !generated.is_empty() && generated.len() <= 64,
            "generated id {generated:?} for invalid {invalid:?}"
        );
    }
}

#[test]
fn unknown_route_is_not_found_and_keeps_the_connection() {
    let server = start_default();
    let mut client = server.connect();
    let response = client.get("/nope", "nf-1");
    assert_error(&response, "HTTP/1.1 404 Not Found", "not_found");
    assert_eq!(response.request_id(), "nf-1");
    assert!(
        !response.closes(),
        "404 must keep the connection: {response:?}"
    );
    assert_healthz_ok(&mut client, "after-404");
}

#[test]
fn wrong_method_is_405_with_allow_and_keeps_the_connection() {
    let server = start_default();
    let mut client = server.connect();
    for path in ["/healthz", "/readyz", "/metrics"] {
        let request = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
        let response = client.request(request.as_bytes());
        assert_error(
            &response,
            "HTTP/1.1 405 Method Not Allowed",
            "method_not_allowed",
        );
        let allow = response.header("Allow").expect("405 without Allow");
        let methods: Vec<&str> = allow.split(',').map(str::trim).collect();
        assert!(
            methods.contains(&"GET") && !methods.contains(&"POST"),
            "Allow for {path} is {allow:?}"
        );
        assert!(!response.closes(), "405 must keep the connection");
    }
    let response = client.request(b"DELETE /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_error(
        &response,
        "HTTP/1.1 405 Method Not Allowed",
        "method_not_allowed",
    );
    assert_healthz_ok(&mut client, "after-405");
}

#[test]
fn head_is_answered_like_get_without_a_body() {
    let server = start_default();
    let mut client = server.connect();
    // HEAD and GET in one write: if HEAD's answer carried a body, GET's would be misread.
    client.send(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: h-1\r\n\r\n");
    client.send(get_request("/healthz", "h-2").as_bytes());
    let head = client.read_head_response();
    assert_eq!(head.status_line, "HTTP/1.1 200 OK");
    assert_eq!(head.request_id(), "h-1");
    assert_eq!(
        head.header("Content-Length"),
        Some(HEALTHZ_BODY.len().to_string().as_str()),
        "HEAD must carry GET's Content-Length"
    );
    let get = client.read_response();
    assert_eq!(get.request_id(), "h-2", "HEAD answer had a body: {get:?}");
    assert_eq!(get.body_text(), HEALTHZ_BODY);
    // An error answer to HEAD has no body either.
    client.send(b"HEAD /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: h-3\r\n\r\n");
    client.send(get_request("/healthz", "h-4").as_bytes());
    let head_error = client.read_head_response();
    assert_eq!(head_error.status_line, "HTTP/1.1 404 Not Found");
    assert!(head_error.header("Content-Length").is_some());
    let get = client.read_response();
    assert_eq!(get.request_id(), "h-4", "HEAD 404 had a body: {get:?}");
}

#[test]
fn malformed_request_lines_are_400_and_close() {
    let server = start_default();
    let malformed: [&[u8]; 4] = [
        b"\x01\x02 garbage\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET /healthz\r\nHost: x\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header Line\r\n\r\n",
    ];
    for request in malformed {
        assert_protocol_error(&server, request, "HTTP/1.1 400 Bad Request", "bad_request");
    }
}

#[test]
fn malformed_headers_are_400_and_close() {
    let server = start_default();
    let malformed: [&[u8]; 5] = [
        // obs-fold: RFC 9112 lets a server reject it, and a proxy may read it differently.
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    ];
    for request in malformed {
        assert_protocol_error(&server, request, "HTTP/1.1 400 Bad Request", "bad_request");
    }
}

#[test]
fn http11_without_host_is_400_and_closes() {
    let server = start_default();
    assert_protocol_error(
        &server,
        b"GET /healthz HTTP/1.1\r\nX-Request-Id: nohost\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "bad_request",
    );
}

#[test]
fn content_length_with_transfer_encoding_is_400_and_closes() {
    let server = start_default();
    assert_protocol_error(
        &server,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "bad_request",
    );
}

#[test]
fn two_different_content_lengths_are_400_and_close() {
    let server = start_default();
    assert_protocol_error(
        &server,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\
          Content-Length: 6\r\n\r\nhello!",
        "HTTP/1.1 400 Bad Request",
        "bad_request",
    );
}

#[test]
fn transfer_encoding_other_than_chunked_is_501_and_closes() {
    let server = start_default();
    for encoding in ["gzip", "gzip, chunked"] {
        let request = format!(
            "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {encoding}\r\n\r\n\
             5\r\nhello\r\n0\r\n\r\n"
        );
        assert_protocol_error(
            &server,
            request.as_bytes(),
            "HTTP/1.1 501 Not Implemented",
            "not_implemented",
        );
    }
}

const SMALL_HEADER_BYTES_MAX: usize = 1024;

#[test]
fn head_over_max_header_bytes_is_431_and_closes() {
    let server = Server::start(ServerOptions {
        max_header_bytes: SMALL_HEADER_BYTES_MAX,
        ..ServerOptions::default()
    });
    // Well under the limit: served.
    let mut client = server.connect();
    let filler = "v".repeat(SMALL_HEADER_BYTES_MAX / 2);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
    assert_eq!(
        client.request(request.as_bytes()).status_line,
        "HTTP/1.1 200 OK"
    );
    // Over the limit, complete head.
    let filler = "v".repeat(SMALL_HEADER_BYTES_MAX * 2);
    let request = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}\r\n\r\n");
    assert_protocol_error(
        &server,
        request.as_bytes(),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "headers_too_large",
    );
    // Over the limit and never finished: answered at once, not after a timeout.
    let unfinished = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Filler: {filler}");
    assert_protocol_error(
        &server,
        unfinished.as_bytes(),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "headers_too_large",
    );
}

fn request_with_headers(count: usize) -> String {
    let mut request = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for index in 1..count {
        request.push_str(&format!("X-H{index}: {index}\r\n"));
    }
    request.push_str("\r\n");
    request
}

#[test]
fn more_than_64_headers_is_431_and_closes() {
    let server = start_default();
    let mut client = server.connect();
    let response = client.request(request_with_headers(64).as_bytes());
    assert_eq!(
        response.status_line, "HTTP/1.1 200 OK",
        "64 headers are allowed"
    );
    assert_protocol_error(
        &server,
        request_with_headers(65).as_bytes(),
        "HTTP/1.1 431 Request Header Fields Too Large",
        "headers_too_large",
    );
}

const SMALL_BODY_BYTES_MAX: usize = 1024;

#[test]
fn body_over_max_body_bytes_is_413_and_closes() {
    let server = Server::start(ServerOptions {
        max_body_bytes: SMALL_BODY_BYTES_MAX,
        ..ServerOptions::default()
    });
    // At the limit: read in full and routed (405 on a GET-only route), connection kept.
    let mut client = server.connect();
    let body = "x".repeat(SMALL_BODY_BYTES_MAX);
    let request = format!(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let response = client.request(request.as_bytes());
    assert_error(
        &response,
        "HTTP/1.1 405 Method Not Allowed",
        "method_not_allowed",
    );
    assert_healthz_ok(&mut client, "after-limit-body");
    // Announced over the limit: answered before the body is sent.
    let head = format!(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        SMALL_BODY_BYTES_MAX + 1
    );
    assert_protocol_error(
        &server,
        head.as_bytes(),
        "HTTP/1.1 413 Content Too Large",
        "body_too_large",
    );
}

#[test]
fn chunked_body_growing_over_max_body_bytes_is_413_and_closes() {
    let server = Server::start(ServerOptions {
        max_body_bytes: SMALL_BODY_BYTES_MAX,
        ..ServerOptions::default()
    });
    let chunk = "y".repeat(512);
    let mut request =
        String::from("POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n");
    for _ in 0..3 {
        request.push_str(&format!("200\r\n{chunk}\r\n"));
    }
    request.push_str("0\r\n\r\n");
    assert_protocol_error(
        &server,
        request.as_bytes(),
        "HTTP/1.1 413 Content Too Large",
        "body_too_large",
    );
}

#[test]
fn chunked_bodies_are_read_and_the_connection_stays_usable() {
    let server = start_default();
    let mut client = server.connect();
    let mut pipeline = String::new();
    pipeline.push_str(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: c-1\r\n\
         Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    );
    // Chunk extensions, upper-case hex and a trailer field are all valid chunked syntax.
    pipeline.push_str(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: c-2\r\n\
         Transfer-Encoding: chunked\r\n\r\nA;name=value\r\n0123456789\r\n0\r\n\
         X-Trailer: t\r\n\r\n",
    );
    pipeline.push_str(&get_request("/healthz", "c-3"));
    client.send(pipeline.as_bytes());
    for request_id in ["c-1", "c-2"] {
        let response = client.read_response();
        assert_error(
            &response,
            "HTTP/1.1 405 Method Not Allowed",
            "method_not_allowed",
        );
        assert_eq!(response.request_id(), request_id);
        assert!(!response.closes(), "{response:?}");
    }
    let last = client.read_response();
    assert_eq!(last.status_line, "HTTP/1.1 200 OK");
    assert_eq!(last.request_id(), "c-3");
}

#[test]
fn huge_chunk_size_is_refused_and_the_server_survives() {
    let server = Server::start(ServerOptions {
        max_body_bytes: SMALL_BODY_BYTES_MAX,
        ..ServerOptions::default()
    });
    // A chunk size that overflows 64 bits must not wrap around into a small one.
    for size in ["ffffffffffffffffffff", "10000000000000001"] {
        let request = format!(
            "POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             {size}\r\nhello\r\n0\r\n\r\n"
        );
        let mut client = server.connect();
        client.send(request.as_bytes());
        let response = client.read_response();
        let code = response.error_code();
        assert!(
            (response.status_line == "HTTP/1.1 413 Content Too Large" && code == "body_too_large")
                || (response.status_line == "HTTP/1.1 400 Bad Request" && code == "bad_request"),
            "chunk size {size}: {response:?}"
        );
        client.expect_closed();
    }
    assert_healthz_ok(&mut server.connect(), "still-alive");
}

#[test]
fn malformed_chunked_body_is_400_and_closes() {
    let server = start_default();
    assert_protocol_error(
        &server,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
          zz\r\nhello\r\n0\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "bad_request",
    );
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = start_default();
    let mut client = server.connect();
    client.send(
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: e-1\r\n\
          Content-Length: 5\r\nExpect: 100-continue\r\n\r\n",
    );
    let interim = client.read_bytes(b"HTTP/1.1 100 Continue\r\n\r\n".len());
    assert_eq!(
        String::from_utf8_lossy(&interim),
        "HTTP/1.1 100 Continue\r\n\r\n"
    );
    client.send(b"hello");
    let response = client.read_response();
    assert_error(
        &response,
        "HTTP/1.1 405 Method Not Allowed",
        "method_not_allowed",
    );
    assert_eq!(response.request_id(), "e-1");
    assert_healthz_ok(&mut client, "after-continue");
}

#[test]
fn expect_100_continue_over_the_body_limit_gets_413_instead() {
    let server = Server::start(ServerOptions {
        max_body_bytes: SMALL_BODY_BYTES_MAX,
        ..ServerOptions::default()
    });
    let mut client = server.connect();
    let head = format!(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Expect: 100-continue\r\n\r\n",
        SMALL_BODY_BYTES_MAX + 1
    );
    client.send(head.as_bytes());
    // The point of Expect: the client learns of the refusal before sending the body.
    let response = client.read_response();
    assert_error(
        &response,
        "HTTP/1.1 413 Content Too Large",
        "body_too_large",
    );
    client.expect_closed();
}

#[test]
fn http10_is_answered_and_closed() {
    let server = start_default();
    let mut client = server.connect();
    client.send(b"GET /healthz HTTP/1.0\r\nX-Request-Id: old-1\r\n\r\n");
    let response = client.read_response();
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
    assert_eq!(response.body_text(), HEALTHZ_BODY);
    assert!(
        response.closes(),
        "HTTP/1.0 answer must say close: {response:?}"
    );
    client.expect_closed();
}

#[test]
fn http10_with_keep_alive_stays_open() {
    let server = start_default();
    let mut client = server.connect();
    for request_id in ["ka-1", "ka-2"] {
        let request = format!(
            "GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\nX-Request-Id: {request_id}\r\n\r\n"
        );
        let response = client.request(request.as_bytes());
        assert_eq!(response.status_line, "HTTP/1.1 200 OK");
        assert_eq!(response.request_id(), request_id);
        assert!(!response.closes(), "{response:?}");
    }
}

#[test]
fn connection_close_from_the_client_is_honoured() {
    let server = start_default();
    let mut client = server.connect();
    let response = client.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
    assert!(response.closes(), "{response:?}");
    client.expect_closed();
}

#[test]
fn half_closed_client_still_gets_its_answer() {
    let server = start_default();
    let mut client = server.connect();
    client.send(get_request("/healthz", "half-close").as_bytes());
    client.shutdown_write();
    let response = client.read_response();
    assert_eq!(response.status_line, "HTTP/1.1 200 OK");
    assert_eq!(response.request_id(), "half-close");
    client.expect_closed();
}

/// Bytes sent per write when a pipeline is trickled in small pieces.
const TRICKLE_PIECE_BYTES: usize = 5;

#[test]
fn requests_split_at_any_byte_are_reassembled() {
    let server = start_default();
    let mut client = server.connect();
    let mut pipeline = get_request("/healthz", "split-1");
    pipeline.push_str(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: split-2\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    pipeline.push_str(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: split-3\r\n\
         Content-Length: 7\r\n\r\nabcdefg",
    );
    pipeline.push_str(&get_request("/readyz", "split-4"));
    for piece in pipeline.as_bytes().chunks(TRICKLE_PIECE_BYTES) {
        client.send(piece);
        thread::sleep(Duration::from_millis(2));
    }
    let statuses: Vec<(u16, String)> = (0..4)
        .map(|_| {
            let response = client.read_response();
            (response.status, response.request_id().to_string())
        })
        .collect();
    let want: Vec<(u16, String)> = [
        (200, "split-1"),
        (405, "split-2"),
        (405, "split-3"),
        (200, "split-4"),
    ]
    .iter()
    .map(|(status, id)| (*status, id.to_string()))
    .collect();
    assert_eq!(statuses, want);
}

/// Enough pipelined requests to overflow any single read and socket buffer.
const LONG_PIPELINE_REQUESTS_COUNT: usize = 5_000;

#[test]
fn long_pipeline_read_while_writing_is_answered_in_order() {
    let server = start_default();
    let mut client = server.connect();
    let mut writer = client.stream.try_clone().unwrap();
    let mut pipeline = String::new();
    for index in 0..LONG_PIPELINE_REQUESTS_COUNT {
        pipeline.push_str(&get_request("/healthz", &format!("long-{index}")));
    }
    let sender = thread::spawn(move || {
        use std::io::Write;
        writer.write_all(pipeline.as_bytes())
    });
    for index in 0..LONG_PIPELINE_REQUESTS_COUNT {
        let response = client.read_response();
        assert_eq!(
            response.request_id(),
            format!("long-{index}"),
            "out of order"
        );
        // A bounded pipeline may shed load, but only with the contract's answer.
        if response.status != 200 {
            assert_error(&response, "HTTP/1.1 503 Service Unavailable", "overloaded");
        }
    }
    sender.join().unwrap().expect("writing the pipeline");
}

const PIPELINED_REQUESTS_COUNT: usize = 100;

#[test]
fn hundred_pipelined_requests_in_one_write_are_answered_in_order() {
    let server = start_default();
    let mut client = server.connect();
    let mut pipeline = String::new();
    for index in 0..PIPELINED_REQUESTS_COUNT {
        pipeline.push_str(&get_request("/healthz", &format!("r-{index}")));
    }
    client.send(pipeline.as_bytes());
    for index in 0..PIPELINED_REQUESTS_COUNT {
        let response = client.read_response();
        assert_eq!(response.status_line, "HTTP/1.1 200 OK", "response {index}");
        assert_eq!(response.request_id(), format!("r-{index}"), "out of order");
        assert_eq!(response.body_text(), HEALTHZ_BODY);
    }
    assert_healthz_ok(&mut client, "after-pipeline");
}

#[test]
fn pipelined_protocol_error_answers_earlier_requests_first() {
    let server = start_default();
    let mut client = server.connect();
    let mut pipeline = get_request("/healthz", "p-1");
    pipeline.push_str(&get_request("/nope", "p-2"));
    pipeline.push_str(
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    );
    pipeline.push_str(&get_request("/healthz", "p-never"));
    client.send(pipeline.as_bytes());
    assert_eq!(client.read_response().request_id(), "p-1");
    let not_found = client.read_response();
    assert_error(&not_found, "HTTP/1.1 404 Not Found", "not_found");
    let bad = client.read_response();
    assert_error(&bad, "HTTP/1.1 400 Bad Request", "bad_request");
    client.expect_closed();
}

const CONNECTIONS_PER_CORE_MAX: usize = 2;

#[test]
fn connection_over_the_per_core_limit_gets_503_and_is_closed() {
    let server = Server::start(ServerOptions {
        max_connections_per_core: CONNECTIONS_PER_CORE_MAX,
        ..ServerOptions::default()
    });
    let mut first = server.connect();
    let mut second = server.connect();
    assert_healthz_ok(&mut first, "limit-1");
    assert_healthz_ok(&mut second, "limit-2");
    let mut third = server.connect();
    // The server may answer at accept time, before any request: wait a little for that
    // first, so a request sent into an already closed socket cannot reset the answer.
    third.set_read_timeout(Duration::from_millis(1000));
    let response = match third.try_read_response(false) {
        Ok(response) => response,
        Err(ReadFailure::TimedOut { .. }) => {
            third.set_read_timeout(Duration::from_millis(common::READ_TIMEOUT_MS));
            third.send(get_request("/healthz", "limit-3").as_bytes());
            third.read_response()
        }
        Err(failure) => panic!("third connection: {}", common::describe(&failure)),
    };
    assert_error(&response, "HTTP/1.1 503 Service Unavailable", "overloaded");
    let retry_after = response
        .header("Retry-After")
        .expect("503 without Retry-After");
    assert!(
        retry_after.parse::<u32>().is_ok(),
        "Retry-After {retry_after:?}"
    );
    assert!(response.closes(), "{response:?}");
    third.expect_closed();
    // Closing a connection frees its slot.
    drop(first);
    let freed = common::eventually(Duration::from_secs(3), || {
        let mut client = server.connect();
        let _ = client.try_send(get_request("/healthz", "limit-4").as_bytes());
        matches!(client.try_read_response(false), Ok(r) if r.status == 200)
    });
    assert!(freed, "a slot was not freed after a client closed");
    assert_healthz_ok(&mut second, "limit-2-again");
}

const SHORT_REQUEST_TIMEOUT_MS: u64 = 300;
const SHORT_IDLE_TIMEOUT_MS: u64 = 800;

fn start_with_short_timeouts() -> Server {
    Server::start(ServerOptions {
        request_timeout_ms: SHORT_REQUEST_TIMEOUT_MS,
        idle_timeout_ms: SHORT_IDLE_TIMEOUT_MS,
        ..ServerOptions::default()
    })
}

/// Sends `partial`, then asserts a 408 arrives after about the request timeout.
fn assert_request_timeout(server: &Server, partial: &[u8]) {
    let mut client = server.connect();
    let started = Instant::now();
    client.send(partial);
    let response = client.read_response();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert_error(&response, "HTTP/1.1 408 Request Timeout", "request_timeout");
    assert!(response.closes(), "{response:?}");
    client.expect_closed();
    assert!(
        elapsed_ms >= SHORT_REQUEST_TIMEOUT_MS * 2 / 3,
        "408 after only {elapsed_ms} ms (limit {SHORT_REQUEST_TIMEOUT_MS} ms)"
    );
}

#[test]
fn unfinished_head_gets_408_and_close() {
    let server = start_with_short_timeouts();
    assert_request_timeout(&server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
}

#[test]
fn unfinished_body_gets_408_and_close() {
    let server = start_with_short_timeouts();
    assert_request_timeout(
        &server,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello",
    );
}

#[test]
fn slow_trickle_of_a_head_gets_408_without_waiting_for_the_end() {
    let server = start_with_short_timeouts();
    let mut client = server.connect();
    let request = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Request-Id: slow\r\n\r\n";
    let started = Instant::now();
    // One byte every 50 ms: each read resets nothing, the head as a whole is late.
    for byte in request.iter() {
        if !client.try_send(&[*byte]) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
        if started.elapsed() > Duration::from_millis(SHORT_REQUEST_TIMEOUT_MS * 5) {
            break;
        }
    }
    match client.try_read_response(false) {
        Ok(response) => assert_error(&response, "HTTP/1.1 408 Request Timeout", "request_timeout"),
        Err(ReadFailure::Closed { received, .. }) => {
            let text = String::from_utf8_lossy(&received);
            assert!(
                text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
                "slowloris head: no 408, got {text:?}"
            );
        }
        Err(failure) => panic!("slowloris head: {}", common::describe(&failure)),
    }
}

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    let server = start_with_short_timeouts();
    let mut client = server.connect();
    assert_healthz_ok(&mut client, "idle-1");
    let started = Instant::now();
    let leftover = client.read_until_close();
    let elapsed_ms = started.elapsed().as_millis() as u64;
    assert!(
        leftover.is_empty(),
        "idle close must be silent, got {:?}",
        String::from_utf8_lossy(&leftover)
    );
    assert!(
        elapsed_ms >= SHORT_IDLE_TIMEOUT_MS * 2 / 3,
        "idle connection closed after {elapsed_ms} ms, idle timeout is {SHORT_IDLE_TIMEOUT_MS} ms"
    );
}

#[test]
fn activity_keeps_a_keep_alive_connection_open() {
    let server = start_with_short_timeouts();
    let mut client = server.connect();
    let pause = Duration::from_millis(SHORT_IDLE_TIMEOUT_MS / 2);
    for index in 0..5 {
        assert_healthz_ok(&mut client, &format!("busy-{index}"));
        thread::sleep(pause);
    }
    assert_healthz_ok(&mut client, "busy-last");
}
