//! Request parsing: the head with httparse, then the body framing and every limit.
//!
//! Parsing works on the connection's read buffer and returns positions into it rather than
//! borrowed slices, so the connection loop can keep reading into the same buffer.

use std::ops::Range;

/// RFC 9110 does not bound the header count; API.md does (431 above it).
pub const HEADERS_COUNT_MAX: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

impl Method {
    /// The method's token as sent; `OTHER` for any method payd does not serve.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Other => "OTHER",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body, or `Content-Length: 0`.
    Empty,
    ContentLength(usize),
    Chunked,
}

/// A parsed request head. Ranges index the buffer given to `parse_request`.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    pub target: Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub version_minor: u8,
    /// Bytes of the request line and headers, including the blank line.
    pub head_length: usize,
    pub framing: BodyFraming,
    pub keep_alive: bool,
    pub expect_continue: bool,
    /// `Some(true)` for `application/json` (parameters allowed), `Some(false)` for
    /// another type, `None` when absent.
    pub content_type_json: Option<bool>,
    pub request_id: Option<Range<usize>>,
    pub merchant: Option<Range<usize>>,
    pub timestamp: Option<Range<usize>>,
    pub signature: Option<Range<usize>>,
    /// One of the three `X-Payd-*` authentication headers came more than once. Which one
    /// counts is then anyone's guess (a proxy may read the first, payd the last), so the
    /// request is not authenticated at all.
    pub auth_header_repeated: bool,
    /// What the head says about a WebSocket upgrade (RFC 6455 section 4.2.1).
    pub websocket: UpgradeHeaders,
}

/// The headers of a WebSocket opening handshake, as far as the request has them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpgradeHeaders {
    /// `Upgrade: websocket` and `Connection: Upgrade` were both sent.
    pub requested: bool,
    /// `Sec-WebSocket-Version` is exactly 13.
    pub version_13: bool,
    pub key: Option<Range<usize>>,
}

/// What the bytes so far amount to.
#[derive(Debug)]
pub enum ParseOutcome {
    /// More bytes are needed for a complete head.
    Partial,
    Head(RequestHead),
}

/// A protocol error: answered, and the connection closed (its framing is unknown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// Malformed request, CL+TE, differing Content-Length values: 400 `bad_request`.
    BadRequest,
    /// Head over `max_header_bytes` or more than `HEADERS_COUNT_MAX` headers: 431.
    HeadersTooLarge,
    /// Body over `max_body_bytes`: 413.
    BodyTooLarge,
    /// A Transfer-Encoding other than `chunked`: 501.
    NotImplemented,
}

/// Parses one request head from the start of `buffer`.
pub fn parse_request(
    buffer: &[u8],
    max_header_bytes: usize,
    max_body_bytes: usize,
) -> Result<ParseOutcome, ProtocolError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_MAX];
    let mut request = httparse::Request::new(&mut headers);
    // Only the first max_header_bytes can hold a head: what follows is never parsed, so
    // a head is judged the same however its bytes arrive, and a slow client cannot make
    // each read re-parse more than this.
    let window = &buffer[..buffer.len().min(max_header_bytes)];
    let status = match request.parse(window) {
        Ok(status) => status,
        Err(httparse::Error::TooManyHeaders) => return Err(ProtocolError::HeadersTooLarge),
        Err(_) => return Err(ProtocolError::BadRequest),
    };
    let head_length = match status {
        httparse::Status::Partial if buffer.len() > max_header_bytes => {
            return Err(ProtocolError::HeadersTooLarge)
        }
        httparse::Status::Partial => return Ok(ParseOutcome::Partial),
        httparse::Status::Complete(length) => length,
    };
    let base = buffer.as_ptr() as usize;
    let range_of = |slice: &[u8]| {
        let start = slice.as_ptr() as usize - base;
        start..start + slice.len()
    };
    let target = request.path.ok_or(ProtocolError::BadRequest)?;
    if !target.starts_with('/') {
        return Err(ProtocolError::BadRequest);
    }
    let version_minor = request.version.ok_or(ProtocolError::BadRequest)?;
    let method = match request.method.ok_or(ProtocolError::BadRequest)? {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        _ => Method::Other,
    };
    let mut head = RequestHead {
        method,
        target: range_of(target.as_bytes()),
        version_minor,
        head_length,
        framing: BodyFraming::Empty,
        keep_alive: version_minor == 1,
        expect_continue: false,
        content_type_json: None,
        request_id: None,
        merchant: None,
        timestamp: None,
        signature: None,
        auth_header_repeated: false,
        websocket: UpgradeHeaders::default(),
    };
    let mut upgrade_websocket = false;
    let mut connection_upgrade = false;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut host_seen = false;
    for header in request.headers.iter() {
        let name = header.name;
        let value = header.value;
        if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(value)?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(ProtocolError::BadRequest);
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if chunked || !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                // A second Transfer-Encoding, or any coding but a lone `chunked`, cannot be
                // framed safely: refuse rather than guess where the body ends.
                return Err(ProtocolError::NotImplemented);
            }
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            apply_connection_header(&mut head, value);
            connection_upgrade |= has_token(value, b"upgrade");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade_websocket |= has_token(value, b"websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            head.websocket.key = Some(range_of(value.trim_ascii()));
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            head.websocket.version_13 = value.trim_ascii() == b"13";
        } else if name.eq_ignore_ascii_case("host") {
            host_seen = true;
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type_json = Some(is_json_media_type(value));
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue =
                version_minor == 1 && value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("x-request-id") {
            head.request_id = Some(range_of(value));
        } else if name.eq_ignore_ascii_case("x-payd-merchant") {
            keep_auth_header(
                &mut head.merchant,
                &mut head.auth_header_repeated,
                range_of(value),
            );
        } else if name.eq_ignore_ascii_case("x-payd-timestamp") {
            keep_auth_header(
                &mut head.timestamp,
                &mut head.auth_header_repeated,
                range_of(value),
            );
        } else if name.eq_ignore_ascii_case("x-payd-signature") {
            keep_auth_header(
                &mut head.signature,
                &mut head.auth_header_repeated,
                range_of(value),
            );
        }
    }
    head.websocket.requested = upgrade_websocket && connection_upgrade;
    // RFC 9112 section 3.2: a 1.1 request without Host is answered 400.
    if version_minor == 1 && !host_seen {
        return Err(ProtocolError::BadRequest);
    }
    head.framing = match (content_length, chunked) {
        // Request smuggling defence: never pick one of two framings.
        (Some(_), true) => return Err(ProtocolError::BadRequest),
        (Some(length), false) if length > max_body_bytes => {
            return Err(ProtocolError::BodyTooLarge)
        }
        (Some(0), false) | (None, false) => BodyFraming::Empty,
        (Some(length), false) => BodyFraming::ContentLength(length),
        (None, true) => BodyFraming::Chunked,
    };
    Ok(ParseOutcome::Head(head))
}

/// Keeps an authentication header's value; a second one marks the head as repeated.
fn keep_auth_header(slot: &mut Option<Range<usize>>, repeated: &mut bool, value: Range<usize>) {
    *repeated |= slot.is_some();
    *slot = Some(value);
}

fn parse_content_length(value: &[u8]) -> Result<usize, ProtocolError> {
    let digits = value.trim_ascii();
    // At most 10 digits keeps the arithmetic far from overflow; any real limit is smaller.
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(ProtocolError::BadRequest);
    }
    Ok(digits.iter().fold(0usize, |total, digit| {
        total * 10 + usize::from(digit - b'0')
    }))
}

fn apply_connection_header(head: &mut RequestHead, value: &[u8]) {
    for option in value.split(|&b| b == b',') {
        let option = option.trim_ascii();
        if option.eq_ignore_ascii_case(b"close") {
            head.keep_alive = false;
        } else if option.eq_ignore_ascii_case(b"keep-alive") && head.version_minor == 0 {
            head.keep_alive = true;
        }
    }
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|option| option.trim_ascii().eq_ignore_ascii_case(token))
}

/// `application/json`, case-insensitive, with optional parameters such as `; charset=utf-8`.
fn is_json_media_type(value: &[u8]) -> bool {
    let media_type = value.split(|&b| b == b';').next().unwrap_or_default();
    media_type
        .trim_ascii()
        .eq_ignore_ascii_case(b"application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<ParseOutcome, ProtocolError> {
        parse_request(text.as_bytes(), 8192, 16384)
    }

    fn complete(text: &str) -> RequestHead {
        match head(text) {
            Ok(ParseOutcome::Head(head)) => head,
            other => panic!("expected a head, got {other:?}"),
        }
    }

    #[test]
    fn simple_get_keeps_alive() {
        let request = complete("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(request.method, Method::Get);
        assert!(request.keep_alive);
        assert_eq!(request.framing, BodyFraming::Empty);
    }

    #[test]
    fn http10_closes_unless_asked() {
        assert!(!complete("GET / HTTP/1.0\r\n\r\n").keep_alive);
        assert!(complete("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    }

    #[test]
    fn smuggling_defences() {
        let both =
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(head(both).unwrap_err(), ProtocolError::BadRequest);
        let two = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(head(two).unwrap_err(), ProtocolError::BadRequest);
        let gzip = "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(head(gzip).unwrap_err(), ProtocolError::NotImplemented);
        let signed = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n";
        assert_eq!(head(signed).unwrap_err(), ProtocolError::BadRequest);
    }

    #[test]
    fn a_repeated_authentication_header_is_marked() {
        let once = "GET / HTTP/1.1\r\nHost: x\r\nX-Payd-Merchant: a\r\nX-Payd-Signature: b\r\n\r\n";
        assert!(!complete(once).auth_header_repeated);
        for name in ["X-Payd-Merchant", "x-payd-timestamp", "X-PAYD-SIGNATURE"] {
            let twice = format!(
                "GET / HTTP/1.1\r\nHost: x\r\n{name}: 1\r\nX-Other: 2\r\n{name}: 1\r\n\r\n"
            );
            assert!(complete(&twice).auth_header_repeated, "{name}");
        }
    }

    #[test]
    fn websocket_upgrade_headers_are_read() {
        let text = "GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\n\
                    Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                    Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
        let request = complete(text);
        assert!(request.websocket.requested && request.websocket.version_13);
        let key = request.websocket.key.clone().unwrap();
        assert_eq!(&text.as_bytes()[key], b"dGhlIHNhbXBsZSBub25jZQ==");
        let plain = complete("GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n");
        assert!(
            !plain.websocket.requested,
            "Connection: Upgrade is required too"
        );
        let old = complete("GET /v1/ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Version: 8\r\n\r\n");
        assert!(!old.websocket.version_13);
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
        assert_eq!(head(&long).unwrap_err(), ProtocolError::HeadersTooLarge);
        let partial_long = format!("GET /{}", "a".repeat(9000));
        assert_eq!(
            head(&partial_long).unwrap_err(),
            ProtocolError::HeadersTooLarge
        );
        let many: String = (0..65).map(|i| format!("X-{i}: y\r\n")).collect();
        let many = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(head(&many).unwrap_err(), ProtocolError::HeadersTooLarge);
        let big = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 16385\r\n\r\n";
        assert_eq!(head(big).unwrap_err(), ProtocolError::BodyTooLarge);
    }
}
