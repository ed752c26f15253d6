//! Graceful shutdown: SIGTERM and SIGINT stop accepting, let in-flight requests finish
//! within `server.shutdown_timeout_ms`, and exit 0.

mod common;

use common::{assert_error, get_request, Client, ReadFailure, Server, ServerOptions};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const SHUTDOWN_TIMEOUT_MS: u64 = 5_000;
/// Slack over the configured timeout for process exit and our polling.
const EXIT_SLACK_MS: u64 = 2_000;
/// Time for a signal to reach the server and for it to start draining.
const SIGNAL_SETTLE_MS: u64 = 200;

fn start() -> Server {
    Server::start(ServerOptions {
        shutdown_timeout_ms: SHUTDOWN_TIMEOUT_MS,
        ..ServerOptions::default()
    })
}

fn assert_exits_zero_within(server: &mut Server, timeout_ms: u64) {
    let started = Instant::now();
    let status = server.wait_exit(Duration::from_millis(timeout_ms));
    let status = status.unwrap_or_else(|| {
        panic!(
            "payd still running {timeout_ms} ms after the signal\nstderr:\n{}",
            server.stderr.text()
        )
    });
    assert!(
        status.success(),
        "payd exited with {status:?} after {} ms\nstderr:\n{}",
        started.elapsed().as_millis(),
        server.stderr.text()
    );
}

/// A connection attempt after the drain started must not be served normally.
fn assert_not_served(server: &Server) {
    let Ok(stream) = TcpStream::connect_timeout(&server.addr, Duration::from_millis(1000)) else {
        return; // refused: the listener is closed
    };
    let mut client = Client::from_stream(stream);
    if !client.try_send(get_request("/healthz", "late").as_bytes()) {
        return;
    }
    match client.try_read_response(false) {
        Err(ReadFailure::Closed { .. }) => {}
        Ok(response) => assert_eq!(
            response.status, 503,
            "a connection made during shutdown was served: {response:?}"
        ),
        Err(failure) => panic!(
            "new connection during shutdown: {}",
            common::describe(&failure)
        ),
    }
}

#[test]
fn sigterm_lets_an_in_flight_request_finish_and_exits_zero() {
    let mut server = start();
    let mut observer = server.connect();
    assert_eq!(observer.get("/healthz", "observer").status, 200);
    let mut in_flight = server.connect();
    in_flight.send(
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: in-flight\r\n\
          Content-Length: 10\r\n\r\nhello",
    );
    thread::sleep(Duration::from_millis(100));
    let signalled = Instant::now();
    server.signal(libc::SIGTERM);
    thread::sleep(Duration::from_millis(SIGNAL_SETTLE_MS / 2));
    // Optional in the contract: an open keep-alive connection may see /readyz go 503, or
    // be closed; it must not be told the server is ready.
    if observer.try_send(get_request("/readyz", "drain-ready").as_bytes()) {
        if let Ok(response) = observer.try_read_response(false) {
            assert_error(&response, "HTTP/1.1 503 Service Unavailable", "not_ready");
        }
    }
    thread::sleep(Duration::from_millis(SIGNAL_SETTLE_MS / 2));
    in_flight.send(b"world");
    let response = in_flight.read_response();
    assert_error(
        &response,
        "HTTP/1.1 405 Method Not Allowed",
        "method_not_allowed",
    );
    assert_eq!(response.request_id(), "in-flight");
    if server.wait_exit(Duration::ZERO).is_none() {
        assert_not_served(&server);
    }
    let budget_ms = SHUTDOWN_TIMEOUT_MS + EXIT_SLACK_MS;
    let left_ms = budget_ms.saturating_sub(signalled.elapsed().as_millis() as u64);
    assert_exits_zero_within(&mut server, left_ms);
    assert!(
        TcpStream::connect_timeout(&server.addr, Duration::from_millis(500)).is_err(),
        "connections still accepted after exit"
    );
}

#[test]
fn sigterm_with_only_idle_connections_exits_promptly() {
    let mut server = Server::start(ServerOptions {
        shutdown_timeout_ms: 20_000,
        ..ServerOptions::default()
    });
    let mut idle = server.connect();
    assert_eq!(idle.get("/healthz", "idle").status, 200);
    server.signal(libc::SIGTERM);
    // An idle keep-alive connection has nothing in flight: it must not hold the process
    // until the 20 s shutdown timeout.
    assert_exits_zero_within(&mut server, 5_000);
    let leftover = idle.read_until_close();
    assert!(
        leftover.is_empty() || leftover.starts_with(b"HTTP/1.1 "),
        "garbage on an idle connection at shutdown: {:?}",
        String::from_utf8_lossy(&leftover)
    );
}

#[test]
fn stuck_request_does_not_hold_shutdown_beyond_the_timeout() {
    let shutdown_timeout_ms = 1_000;
    let mut server = Server::start(ServerOptions {
        shutdown_timeout_ms,
        request_timeout_ms: 60_000,
        ..ServerOptions::default()
    });
    let mut stuck = server.connect();
    stuck.send(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhel");
    thread::sleep(Duration::from_millis(100));
    server.signal(libc::SIGTERM);
    assert_exits_zero_within(&mut server, shutdown_timeout_ms + EXIT_SLACK_MS);
}

#[test]
fn sigint_exits_zero() {
    let mut server = start();
    let mut client = server.connect();
    assert_eq!(client.get("/healthz", "before-int").status, 200);
    drop(client);
    server.signal(libc::SIGINT);
    assert_exits_zero_within(&mut server, SHUTDOWN_TIMEOUT_MS + EXIT_SLACK_MS);
}
