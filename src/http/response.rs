//! Response writing: a status line, the headers payd sends, and a body, appended to the
//! connection's output buffer so pipelined responses leave in one write.

use std::io::Write;

/// Extra headers a response may carry beyond the ones every response has.
pub const EXTRA_HEADERS_MAX: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseHeader {
    Allow(&'static str),
    RetryAfterSecs(u32),
    IdempotentReplayed,
    /// Prometheus text exposition instead of JSON.
    ContentTypePrometheus,
}

/// The `Connection` header a response carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionHeader {
    /// HTTP/1.1 keep-alive: the default, no header needed.
    Omitted,
    /// HTTP/1.0 client that asked for keep-alive.
    KeepAlive,
    /// The server closes the connection after this response.
    Close,
}

/// A response under construction. One per connection, reused for every request.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: [Option<ResponseHeader>; EXTRA_HEADERS_MAX],
    pub body: Vec<u8>,
    /// Close the connection after this response (protocol errors).
    pub close: bool,
}

impl Default for Response {
    fn default() -> Response {
        Response::new()
    }
}

impl Response {
    pub fn new() -> Response {
        Response {
            status: 200,
            headers: [None; EXTRA_HEADERS_MAX],
            body: Vec::with_capacity(512),
            close: false,
        }
    }

    pub fn reset(&mut self) {
        self.status = 200;
        self.headers = [None; EXTRA_HEADERS_MAX];
        self.body.clear();
        self.close = false;
    }

    pub fn add_header(&mut self, header: ResponseHeader) {
        let slot = self.headers.iter_mut().find(|slot| slot.is_none());
        // Invariant: handlers add at most EXTRA_HEADERS_MAX headers.
        *slot.expect("too many extra response headers") = Some(header);
    }

    /// Appends the whole response to `out`. `body_omitted` is for HEAD.
    pub fn write_to(
        &self,
        out: &mut Vec<u8>,
        request_id: &[u8],
        date: &[u8],
        connection: ConnectionHeader,
        body_omitted: bool,
    ) {
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status_line(self.status));
        out.extend_from_slice(b"\r\nDate: ");
        out.extend_from_slice(date);
        let content_type: &[u8] = if self
            .headers
            .contains(&Some(ResponseHeader::ContentTypePrometheus))
        {
            b"text/plain; version=0.0.4; charset=utf-8"
        } else {
            b"application/json"
        };
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type);
        out.extend_from_slice(b"\r\nContent-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(self.body.len()).as_bytes());
        out.extend_from_slice(b"\r\nX-Request-Id: ");
        out.extend_from_slice(request_id);
        for header in self.headers.iter().flatten() {
            match header {
                ResponseHeader::Allow(methods) => {
                    out.extend_from_slice(b"\r\nAllow: ");
                    out.extend_from_slice(methods.as_bytes());
                }
                ResponseHeader::RetryAfterSecs(secs) => {
                    let _ = write!(out, "\r\nRetry-After: {secs}");
                }
                ResponseHeader::IdempotentReplayed => {
                    out.extend_from_slice(b"\r\nIdempotent-Replayed: true");
                }
                ResponseHeader::ContentTypePrometheus => {}
            }
        }
        match connection {
            ConnectionHeader::Omitted => {}
            ConnectionHeader::KeepAlive => out.extend_from_slice(b"\r\nConnection: keep-alive"),
            ConnectionHeader::Close => out.extend_from_slice(b"\r\nConnection: close"),
        }
        out.extend_from_slice(b"\r\n\r\n");
        if !body_omitted {
            out.extend_from_slice(&self.body);
        }
    }
}

fn status_line(status: u16) -> &'static [u8] {
    match status {
        200 => b"200 OK",
        201 => b"201 Created",
        202 => b"202 Accepted",
        400 => b"400 Bad Request",
        401 => b"401 Unauthorized",
        404 => b"404 Not Found",
        405 => b"405 Method Not Allowed",
        408 => b"408 Request Timeout",
        409 => b"409 Conflict",
        413 => b"413 Content Too Large",
        415 => b"415 Unsupported Media Type",
        429 => b"429 Too Many Requests",
        431 => b"431 Request Header Fields Too Large",
        501 => b"501 Not Implemented",
        503 => b"503 Service Unavailable",
        _ => b"500 Internal Server Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_status_headers_and_body() {
        let mut response = Response::new();
        response.status = 405;
        response.add_header(ResponseHeader::Allow("GET"));
        response.body.extend_from_slice(b"{}");
        let mut out = Vec::new();
        response.write_to(
            &mut out,
            b"r-1",
            b"Mon, 23 Nov 2026 07:00:00 GMT",
            ConnectionHeader::Close,
            false,
        );
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "HTTP/1.1 405 Method Not Allowed\r\nDate: Mon, 23 Nov 2026 07:00:00 GMT\r\n\
             Content-Type: application/json\r\nContent-Length: 2\r\nX-Request-Id: r-1\r\n\
             Allow: GET\r\nConnection: close\r\n\r\n{}"
        );
    }
}
