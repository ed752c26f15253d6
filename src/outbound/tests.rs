//! The client against canned servers on loopback: each test scripts what a server
//! thread answers on each connection, and checks what the pool did.

use super::*;
use crate::testing::on_executor;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// What the canned server does with one request.
#[derive(Clone)]
enum Act {
    Reply(Vec<u8>),
    /// Waits, then replies.
    Slow(u64, Vec<u8>),
    /// Closes the connection without a word.
    Close,
}

fn ok(body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// A server on 127.0.0.1 whose `script(connection, request)` decides each answer
/// (both count from 0). Returns the address and the count of accepted connections.
fn canned_server(
    script: impl Fn(usize, usize) -> Act + Send + Sync + 'static,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    let script = Arc::new(script);
    thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let index = counter.fetch_add(1, Ordering::SeqCst);
            let script = Arc::clone(&script);
            thread::spawn(move || serve_connection(stream, index, &*script));
        }
    });
    (address, accepted)
}

fn serve_connection(mut stream: TcpStream, index: usize, script: &dyn Fn(usize, usize) -> Act) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buffer = Vec::new();
    for request in 0.. {
        while request_length(&buffer).is_none() {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(count) => buffer.extend_from_slice(&chunk[..count]),
            }
        }
        let length = request_length(&buffer).unwrap();
        buffer.drain(..length);
        match script(index, request) {
            Act::Reply(bytes) => {
                let _ = stream.write_all(&bytes);
            }
            Act::Slow(delay_ms, bytes) => {
                thread::sleep(Duration::from_millis(delay_ms));
                let _ = stream.write_all(&bytes);
            }
            Act::Close => return,
        }
    }
}

/// Length of the first complete request in `buffer` (head plus Content-Length body).
fn request_length(buffer: &[u8]) -> Option<usize> {
    let head_end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buffer[..head_end]).to_ascii_lowercase();
    let body: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |value| value.trim().parse().unwrap());
    (buffer.len() >= head_end + body).then_some(head_end + body)
}

fn settings(pool_size: usize) -> ClientSettings {
    ClientSettings {
        pool_size,
        waiters_max: 64,
        connect_timeout_ms: 1_000,
        response_bytes_max: 4096,
        idle_ms_max: 30_000,
    }
}

fn client(address: SocketAddr, settings: ClientSettings) -> Client {
    let url = HttpUrl::parse(&format!("http://{address}")).unwrap();
    Client::new(url, settings, &no_roots())
}

/// A connector that trusts nothing: these tests call `http://` URLs only.
fn no_roots() -> crate::tls::TlsConnector {
    crate::tls::ClientTls::without_roots().core_connector()
}

const GET: Request<'static> = Request {
    method: "GET",
    path: "/",
    headers: &[],
    body: b"",
};

#[test]
fn keep_alive_connections_are_reused() {
    let (address, accepted) = canned_server(|_, request| Act::Reply(ok(&format!("r{request}"))));
    let (bodies, stats) = on_executor(move || async move {
        let client = client(address, settings(4));
        let mut bodies = Vec::new();
        for _ in 0..3 {
            bodies.push(client.send(&GET).await.unwrap().body);
        }
        (bodies, client.stats())
    });
    assert_eq!(bodies, vec![b"r0".to_vec(), b"r1".to_vec(), b"r2".to_vec()]);
    assert_eq!(stats.connects_total, 1);
    assert_eq!(stats.open, 1);
    assert_eq!(stats.in_use, 0);
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[test]
fn chunked_bodies_and_connection_close() {
    let (address, _) = canned_server(|_, request| {
        match request {
        0 => Act::Reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
                .to_vec(),
        ),
        _ => Act::Reply(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n".to_vec()),
    }
    });
    let (first, second, third, stats) = on_executor(move || async move {
        let client = client(address, settings(4));
        let first = client.send(&GET).await.unwrap();
        let second = client.send(&GET).await.unwrap();
        // The server said close: the third request needs a new connection.
        let third = client.send(&GET).await.unwrap();
        (first, second, third, client.stats())
    });
    assert_eq!((first.status, first.body), (200, b"abcde".to_vec()));
    assert_eq!(second.status, 404);
    assert_eq!(third.status, 200);
    assert_eq!(stats.connects_total, 2);
}

#[test]
fn a_connection_closed_by_the_server_is_replaced_transparently() {
    // The first connection answers once, then closes on the next request unanswered,
    // as a server does when its idle timeout races the request.
    let (address, accepted) = canned_server(|connection, request| match (connection, request) {
        (0, 0) => Act::Reply(ok("first")),
        (0, _) => Act::Close,
        _ => Act::Reply(ok("fresh")),
    });
    let (first, second, stats) = on_executor(move || async move {
        let client = client(address, settings(4));
        let first = client.send(&GET).await.unwrap();
        let second = client.send(&GET).await.unwrap();
        (first.body, second.body, client.stats())
    });
    assert_eq!(first, b"first");
    assert_eq!(second, b"fresh");
    assert_eq!(stats.connects_total, 2);
    assert_eq!(stats.open, 1);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

#[test]
fn the_pool_bounds_connections_and_queues_the_rest() {
    let (address, accepted) = canned_server(|_, _| Act::Slow(30, ok("slow")));
    let (answers, stats) = on_executor(move || async move {
        let client = Rc::new(client(address, settings(3)));
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let client = Rc::clone(&client);
                glommio::spawn_local(async move { client.send(&GET).await })
            })
            .collect();
        let mut answers = 0;
        for task in tasks {
            answers += usize::from(task.await.unwrap().body == b"slow");
        }
        (answers, client.stats())
    });
    assert_eq!(answers, 12);
    assert_eq!(stats.in_use_max, 3, "every slot used, never more");
    assert_eq!(stats.open, 3);
    assert_eq!(stats.waiting, 0);
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[test]
fn a_full_waiting_queue_refuses_at_once() {
    let (address, _) = canned_server(|_, _| Act::Slow(100, ok("slow")));
    let outcomes = on_executor(move || async move {
        let client = Rc::new(client(
            address,
            ClientSettings {
                waiters_max: 1,
                ..settings(1)
            },
        ));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let client = Rc::clone(&client);
                glommio::spawn_local(async move { client.send(&GET).await.map(|r| r.status) })
            })
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.push(task.await);
        }
        outcomes
    });
    assert_eq!(
        outcomes,
        vec![Ok(200), Ok(200), Err(OutboundError::PoolBusy)]
    );
}

#[test]
fn refused_connections_and_oversized_responses_fail_and_leave_nothing_open() {
    let closed_port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let big = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n{}",
        "x".repeat(9000)
    );
    let (address, _) = canned_server(move |_, _| Act::Reply(big.clone().into_bytes()));
    let (refused, too_large, stats) = on_executor(move || async move {
        let refused = client(closed_port, settings(2)).send(&GET).await;
        let client = client(address, settings(2));
        let too_large = client.send(&GET).await;
        (
            refused.map(|r| r.status),
            too_large.map(|r| r.status),
            client.stats(),
        )
    });
    assert_eq!(refused, Err(OutboundError::Connect));
    assert_eq!(too_large, Err(OutboundError::TooLarge));
    assert_eq!(stats.open, 0, "a half-read connection is dropped");
    assert_eq!(stats.in_use, 0);
}

#[test]
fn surplus_bytes_or_a_dropped_request_end_the_connection() {
    let (address, accepted) = canned_server(|connection, request| match (connection, request) {
        (0, 0) => {
            let mut bytes = ok("one");
            bytes.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
            Act::Reply(bytes)
        }
        _ => Act::Slow(2_000, ok("late")),
    });
    let (first, timed_out, stats) = on_executor(move || async move {
        let client = client(address, settings(2));
        let first = client.send(&GET).await.unwrap().body;
        let timed_out = glommio::timer::timeout(Duration::from_millis(50), async {
            Ok(client.send(&GET).await)
        })
        .await
        .is_err();
        (first, timed_out, client.stats())
    });
    assert_eq!(first, b"one");
    assert!(timed_out);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "surplus bytes: not reused"
    );
    assert_eq!(
        stats.open, 0,
        "the timed-out request's connection is closed"
    );
    assert_eq!(stats.in_use, 0, "and its slot freed");
}

#[test]
fn names_resolve_off_the_executor() {
    let (address, _) = canned_server(|_, _| Act::Reply(ok("named")));
    let body = on_executor(move || async move {
        let url = HttpUrl::parse(&format!("http://localhost:{}", address.port())).unwrap();
        let client = Client::new(url, settings(1), &no_roots());
        // localhost may resolve to ::1 first; a failed connect moves on to the next
        // address, and the canned server listens on 127.0.0.1.
        let mut last = Err(OutboundError::Resolve);
        for _ in 0..RESOLVED_ADDRESSES_TRIED {
            last = client.send(&GET).await.map(|r| r.body);
            if last.is_ok() {
                break;
            }
        }
        last
    });
    assert_eq!(body, Ok(b"named".to_vec()));
}

const RESOLVED_ADDRESSES_TRIED: usize = 4;
