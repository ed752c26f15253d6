//! The floor for payd's `/healthz`: a bare glommio accept, parse, respond loop.
//!
//! One executor pinned to one CPU, one `TcpListener`, and per connection a read buffer.
//! Every complete request in the buffer is parsed with httparse and answered with the same
//! fixed `200 OK`; all the answers to one read go out in one write, so pipelined requests
//! cost one syscall each way. It has no limits, no routing, no logging and no metrics on
//! purpose: whatever payd spends above this loop is the price of its features.

use clap::Parser;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use std::net::SocketAddr;

/// Registered io_uring buffer memory: small enough for an 8 MiB locked-memory limit.
const IO_MEMORY_BYTES: usize = 256 * 1024;
/// Read buffer per connection; a request that does not fit closes the connection.
const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Headers parsed per request; a request with more closes the connection.
const HEADERS_MAX: usize = 32;

/// The fixed answer, the same shape as payd's `/healthz` without its extra headers.
const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}";

#[derive(Parser, Debug)]
#[command(about = "Bare glommio accept/parse/respond loop: a baseline for /healthz")]
struct Arguments {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9300")]
    listen: SocketAddr,
    /// CPU to pin the single executor to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
}

fn main() {
    let arguments = Arguments::parse();
    let listen = arguments.listen;
    let handle = LocalExecutorBuilder::new(Placement::Fixed(arguments.cpu))
        .name("bare-loop")
        .io_memory(IO_MEMORY_BYTES)
        .spawn(move || serve(listen))
        .expect("the executor starts");
    handle.join().expect("the executor finishes");
}

async fn serve(listen: SocketAddr) {
    let listener = TcpListener::bind(listen).expect("the listen address is free");
    eprintln!(
        "bare-loop: ready, listening on {}",
        listener
            .local_addr()
            .expect("a bound listener has an address")
    );
    loop {
        match listener.accept().await {
            Ok(stream) => glommio::spawn_local(connection(stream)).detach(),
            // Running out of file descriptors or a reset before accept: keep serving.
            Err(_) => continue,
        };
    }
}

/// Serves one connection until the peer closes it or sends something unparseable.
async fn connection(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut input = vec![0u8; READ_BUFFER_BYTES];
    let mut input_length = 0;
    let mut output = Vec::with_capacity(READ_BUFFER_BYTES);
    loop {
        let read_bytes = match stream.read(&mut input[input_length..]).await {
            Ok(0) | Err(_) => return,
            Ok(read_bytes) => read_bytes,
        };
        input_length += read_bytes;
        let Some(consumed_bytes) = answer_all(&input[..input_length], &mut output) else {
            return;
        };
        if !output.is_empty() {
            if stream.write_all(&output).await.is_err() {
                return;
            }
            output.clear();
        }
        input.copy_within(consumed_bytes..input_length, 0);
        input_length -= consumed_bytes;
        if input_length == input.len() {
            return; // One request larger than the whole buffer.
        }
    }
}

/// Appends one response per complete request in `input` to `output` and returns the bytes
/// consumed, or `None` when the input is not HTTP.
fn answer_all(input: &[u8], output: &mut Vec<u8>) -> Option<usize> {
    let mut consumed_bytes = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; HEADERS_MAX];
        let mut request = httparse::Request::new(&mut headers);
        let head_bytes = match request.parse(&input[consumed_bytes..]) {
            Ok(httparse::Status::Complete(head_bytes)) => head_bytes,
            Ok(httparse::Status::Partial) => return Some(consumed_bytes),
            Err(_) => return None,
        };
        let body_bytes = content_length(request.headers)?;
        let request_bytes = head_bytes + body_bytes;
        if input.len() - consumed_bytes < request_bytes {
            return Some(consumed_bytes); // The body has not all arrived yet.
        }
        consumed_bytes += request_bytes;
        output.extend_from_slice(RESPONSE);
    }
}

/// The declared body length, zero when absent, `None` when unreadable.
fn content_length(headers: &[httparse::Header]) -> Option<usize> {
    match headers
        .iter()
        .find(|header| header.name.eq_ignore_ascii_case("content-length"))
    {
        None => Some(0),
        Some(header) => std::str::from_utf8(header.value).ok()?.trim().parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_every_pipelined_request_and_keeps_the_partial_one() {
        let input =
            b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /x HTTP/1.1\r\n\r\nGET /healthz HT";
        let mut output = Vec::new();
        let consumed_bytes = answer_all(input, &mut output).unwrap();
        assert_eq!(output.len(), 2 * RESPONSE.len());
        assert_eq!(&input[consumed_bytes..], b"GET /healthz HT");
    }

    #[test]
    fn skips_a_body_and_waits_for_the_rest_of_one() {
        let input = b"POST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nabcPOST / HTTP/1.1\r\ncontent-length: 3\r\n\r\nab";
        let mut output = Vec::new();
        let consumed_bytes = answer_all(input, &mut output).unwrap();
        assert_eq!(output, RESPONSE);
        assert!(input[consumed_bytes..].starts_with(b"POST"));
    }

    #[test]
    fn rejects_what_is_not_http() {
        assert_eq!(
            answer_all(b"\x00\x01 nonsense\r\n\r\n", &mut Vec::new()),
            None
        );
        let bad_length = b"POST / HTTP/1.1\r\ncontent-length: x\r\n\r\n";
        assert_eq!(answer_all(bad_length, &mut Vec::new()), None);
    }
}
