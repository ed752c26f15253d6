//! Pipelined requests on one connection are answered concurrently, in request order:
//! against an acquirer that takes a while, N pipelined creates take about one acquirer
//! round trip, not N. Behaviour tests with generous bounds, not timed benchmarks.

mod common;

use common::{create_body, merchants_toml, Client, PaymentJson, Server, ServerOptions, Signed};
use std::time::{Duration, Instant};

/// The simulated acquirer's answer time in these tests.
const ACQUIRER_LATENCY_MS: u64 = 300;
const PIPELINED_CREATES_COUNT: u64 = 8;

fn start_with_acquirer_latency() -> Server {
    Server::start(ServerOptions {
        cores: vec![0],
        extra_toml: format!(
            "{}\n[acquirer]\nlatency_ms = {ACQUIRER_LATENCY_MS}\n",
            merchants_toml()
        ),
        ..ServerOptions::default()
    })
}

fn create_request(order_id: &str, amount: u64) -> Vec<u8> {
    let body = create_body(order_id, amount, "CNY", "tok_visa");
    Signed::new("POST", "/v1/payments", body.as_bytes()).bytes()
}

fn read_created(client: &mut Client) -> PaymentJson {
    let response = client.read_response();
    assert_eq!(
        response.status_line,
        "HTTP/1.1 201 Created",
        "{}",
        response.body_text()
    );
    response.payment()
}

#[test]
fn pipelined_creates_take_about_one_acquirer_round_trip() {
    let server = start_with_acquirer_latency();
    let mut client = server.connect();
    client.set_read_timeout(Duration::from_secs(30));
    // One create alone first: it shows what a round trip costs on this machine now.
    let started = Instant::now();
    client.send(&create_request("ord-alone", 1));
    read_created(&mut client);
    let round_trip = started.elapsed();
    assert!(round_trip >= Duration::from_millis(ACQUIRER_LATENCY_MS));

    let mut pipeline = Vec::new();
    for index in 0..PIPELINED_CREATES_COUNT {
        pipeline.extend(create_request(&format!("ord-pipe-{index}"), 100 + index));
    }
    let started = Instant::now();
    client.send(&pipeline);
    for index in 0..PIPELINED_CREATES_COUNT {
        let payment = read_created(&mut client);
        assert_eq!(payment.order_id, format!("ord-pipe-{index}"), "in order");
        assert_eq!(payment.amount, 100 + index);
        assert_eq!(payment.status, "succeeded");
    }
    let elapsed = started.elapsed();
    // One after another they would take PIPELINED_CREATES_COUNT round trips.
    let sequential_half = round_trip.max(Duration::from_millis(ACQUIRER_LATENCY_MS))
        * (PIPELINED_CREATES_COUNT as u32)
        / 2;
    assert!(
        elapsed < sequential_half,
        "{PIPELINED_CREATES_COUNT} pipelined creates took {elapsed:?}; one took {round_trip:?}"
    );
}

#[test]
fn a_pipelined_read_sees_the_create_before_it() {
    let server = start_with_acquirer_latency();
    let mut client = server.connect();
    client.set_read_timeout(Duration::from_secs(30));
    let mut pipeline = create_request("ord-then-read", 7);
    pipeline.extend(Signed::new("GET", "/v1/orders/ord-then-read", b"").bytes());
    pipeline.extend(create_request("ord-after-read", 8));
    client.send(&pipeline);
    let created = read_created(&mut client);
    let read = client.read_response();
    assert_eq!(read.status_line, "HTTP/1.1 200 OK", "{}", read.body_text());
    // Not a pending copy: the read started once the create before it was answered.
    assert_eq!(read.payment(), created);
    assert_eq!(read_created(&mut client).order_id, "ord-after-read");
}

#[test]
fn a_close_in_the_pipeline_ends_it_after_earlier_answers() {
    let server = start_with_acquirer_latency();
    let mut client = server.connect();
    client.set_read_timeout(Duration::from_secs(30));
    let mut pipeline = create_request("ord-before-close", 9);
    let closing = Signed::new("GET", "/v1/orders/ord-before-close", b"")
        .header("Connection: close")
        .bytes();
    pipeline.extend(closing);
    pipeline.extend(create_request("ord-never", 10));
    client.send(&pipeline);
    read_created(&mut client);
    let read = client.read_response_then_close();
    assert_eq!(read.status_line, "HTTP/1.1 200 OK", "{}", read.body_text());
    assert_eq!(read.header("Connection"), Some("close"));
    // The create after the close was never started.
    let mut other = server.connect();
    let never = other.request(&Signed::new("GET", "/v1/orders/ord-never", b"").bytes());
    assert_eq!(never.status_line, "HTTP/1.1 404 Not Found");
}

#[test]
fn a_later_create_that_finishes_first_still_waits_for_its_turn() {
    // tok_slow takes 3 s; the client's wait is cut at 500 ms with a 202 pending.
    let server = Server::start(ServerOptions {
        cores: vec![0],
        extra_toml: format!(
            "{}\n[acquirer]\nresponse_timeout_ms = 500\n",
            merchants_toml()
        ),
        ..ServerOptions::default()
    });
    let mut client = server.connect();
    client.set_read_timeout(Duration::from_secs(30));
    let slow = create_body("ord-slow-first", 11, "CNY", "tok_slow");
    let mut pipeline = Signed::new("POST", "/v1/payments", slow.as_bytes()).bytes();
    pipeline.extend(create_request("ord-fast-second", 12));
    client.send(&pipeline);
    let first = client.read_response();
    assert_eq!(
        first.status_line,
        "HTTP/1.1 202 Accepted",
        "{}",
        first.body_text()
    );
    assert_eq!(first.payment().order_id, "ord-slow-first");
    assert_eq!(first.payment().status, "pending");
    let second = read_created(&mut client);
    assert_eq!(second.order_id, "ord-fast-second");
    assert_eq!(second.status, "succeeded");
}
