//! Responses out of a connection's bytes: the head with httparse, then the body by its
//! framing (Content-Length, chunked, or until the peer closes), within a size limit.
//!
//! Pure: it sees a buffer and whether the peer has closed, and says `Partial` until a
//! whole response is there. The caller reads more and asks again.

use super::OutboundError;
use crate::http::chunked::{decode_chunked, ChunkedError, ChunkedOutcome};

/// Header fields of one response beyond this are refused: no acquirer needs more.
pub const RESPONSE_HEADERS_COUNT_MAX: usize = 64;

/// One response: its status and its decoded body.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// `Retry-After` in its delta-seconds form; an HTTP date is ignored.
    pub retry_after_secs: Option<u64>,
}

/// A complete response at the start of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Parsed {
    pub response: Response,
    /// Bytes of the buffer it occupied, interim (1xx) responses included.
    pub consumed: usize,
    /// The peer keeps the connection open for another request.
    pub keep_alive: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    Partial,
    Complete(Parsed),
}

/// How the body of a response is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

/// What one head says about the response it starts.
struct Head {
    status: u16,
    length: usize,
    framing: Framing,
    keep_alive: bool,
    retry_after_secs: Option<u64>,
}

/// Parses the response at the start of `input`. `at_eof` says the peer closed, which
/// completes a body delimited by the close. Everything, heads and body, must fit in
/// `response_bytes_max`.
pub fn parse_response(
    input: &[u8],
    at_eof: bool,
    response_bytes_max: usize,
) -> Result<Progress, OutboundError> {
    let mut start = 0;
    loop {
        // Interim responses count against the limit too: a peer sending endless
        // `100 Continue` heads must not grow the reader's buffer without bound.
        let room = response_bytes_max.saturating_sub(start);
        let Some(head) = parse_head(&input[start..], room)? else {
            return Ok(Progress::Partial);
        };
        let body_start = start + head.length;
        // An interim response (100 Continue, 103 Early Hints) precedes the final one.
        if (100..200).contains(&head.status) {
            start = body_start;
            continue;
        }
        let Some((body, body_end)) =
            frame_body(input, body_start, head.framing, at_eof, response_bytes_max)?
        else {
            return Ok(Progress::Partial);
        };
        return Ok(Progress::Complete(Parsed {
            response: Response {
                status: head.status,
                body,
                retry_after_secs: head.retry_after_secs,
            },
            consumed: body_end,
            keep_alive: head.keep_alive && head.framing != Framing::UntilClose,
        }));
    }
}

/// The body from `start` by its framing, and where it ends; `None` while incomplete.
fn frame_body(
    input: &[u8],
    start: usize,
    framing: Framing,
    at_eof: bool,
    response_bytes_max: usize,
) -> Result<Option<(Vec<u8>, usize)>, OutboundError> {
    let available = &input[start..];
    let room = response_bytes_max.saturating_sub(start);
    match framing {
        Framing::Empty => Ok(Some((Vec::new(), start))),
        Framing::Length(length) if length > room => Err(OutboundError::TooLarge),
        Framing::Length(length) if available.len() >= length => {
            Ok(Some((available[..length].to_vec(), start + length)))
        }
        Framing::Length(_) => Ok(None),
        Framing::Chunked => {
            let mut body = Vec::new();
            match decode_chunked(available, &mut body, room) {
                Ok(ChunkedOutcome::Complete { consumed }) => Ok(Some((body, start + consumed))),
                Ok(ChunkedOutcome::Partial) if available.len() > room => {
                    Err(OutboundError::TooLarge)
                }
                Ok(ChunkedOutcome::Partial) => Ok(None),
                Err(ChunkedError::TooLarge) => Err(OutboundError::TooLarge),
                Err(ChunkedError::Malformed) => Err(OutboundError::Malformed),
            }
        }
        Framing::UntilClose if available.len() > room => Err(OutboundError::TooLarge),
        Framing::UntilClose if at_eof => Ok(Some((available.to_vec(), input.len()))),
        Framing::UntilClose => Ok(None),
    }
}

fn parse_head(input: &[u8], response_bytes_max: usize) -> Result<Option<Head>, OutboundError> {
    let mut headers = [httparse::EMPTY_HEADER; RESPONSE_HEADERS_COUNT_MAX];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(input) {
        Ok(httparse::Status::Complete(length)) if length <= response_bytes_max => length,
        Ok(httparse::Status::Complete(_)) => return Err(OutboundError::TooLarge),
        Ok(httparse::Status::Partial) if input.len() > response_bytes_max => {
            return Err(OutboundError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(OutboundError::TooLarge),
        Err(_) => return Err(OutboundError::Malformed),
    };
    let status = response.code.ok_or(OutboundError::Malformed)?;
    // We never ask to switch protocols, so a 101 is not an answer we can read.
    if status == 101 {
        return Err(OutboundError::Malformed);
    }
    let version_minor = response.version.ok_or(OutboundError::Malformed)?;
    let fields = HeadFields::of(response.headers)?;
    let keep_alive = match (version_minor, fields.connection) {
        (_, Some(ConnectionToken::Close)) => false,
        (0, Some(ConnectionToken::KeepAlive)) => true,
        (0, _) => false,
        _ => true,
    };
    let framing = match (status, fields.chunked, fields.content_length) {
        (100..=199 | 204 | 304, _, _) => Framing::Empty,
        // Both framings at once is how responses get smuggled; trust neither.
        (_, true, Some(_)) => return Err(OutboundError::Malformed),
        (_, true, None) => Framing::Chunked,
        (_, false, Some(length)) => Framing::Length(length),
        (_, false, None) => Framing::UntilClose,
    };
    Ok(Some(Head {
        status,
        length,
        framing,
        keep_alive,
        retry_after_secs: fields.retry_after_secs,
    }))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionToken {
    Close,
    KeepAlive,
}

/// The header fields the client acts on.
#[derive(Default)]
struct HeadFields {
    content_length: Option<usize>,
    chunked: bool,
    connection: Option<ConnectionToken>,
    retry_after_secs: Option<u64>,
}

impl HeadFields {
    fn of(headers: &[httparse::Header<'_>]) -> Result<HeadFields, OutboundError> {
        let mut fields = HeadFields::default();
        for header in headers {
            let value = header.value.trim_ascii();
            let name = header.name;
            if name.eq_ignore_ascii_case("content-length") {
                let length = parse_decimal(value).ok_or(OutboundError::Malformed)?;
                let length = usize::try_from(length).map_err(|_| OutboundError::TooLarge)?;
                if fields.content_length.is_some_and(|known| known != length) {
                    return Err(OutboundError::Malformed);
                }
                fields.content_length = Some(length);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Only `chunked` alone is understood; gzip or a list would need decoding.
                if !value.eq_ignore_ascii_case(b"chunked") || fields.chunked {
                    return Err(OutboundError::Malformed);
                }
                fields.chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                fields.connection = connection_token(value).or(fields.connection);
            } else if name.eq_ignore_ascii_case("retry-after") {
                fields.retry_after_secs = parse_decimal(value);
            }
        }
        Ok(fields)
    }
}

/// `close` wins over `keep-alive` in a list, as either side may close.
fn connection_token(value: &[u8]) -> Option<ConnectionToken> {
    let mut token = None;
    for part in value.split(|&b| b == b',') {
        let part = part.trim_ascii();
        if part.eq_ignore_ascii_case(b"close") {
            return Some(ConnectionToken::Close);
        }
        if part.eq_ignore_ascii_case(b"keep-alive") {
            token = Some(ConnectionToken::KeepAlive);
        }
    }
    token
}

/// A non-empty run of ASCII digits that fits a u64; nothing else (no sign, no spaces).
fn parse_decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    fn complete(input: &[u8], at_eof: bool) -> Parsed {
        match parse_response(input, at_eof, MAX) {
            Ok(Progress::Complete(parsed)) => parsed,
            other => panic!("expected a complete response, got {other:?}"),
        }
    }

    #[test]
    fn content_length_body_and_keep_alive() {
        let input = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        let parsed = complete(input, false);
        assert_eq!(parsed.response.status, 200);
        assert_eq!(parsed.response.body, b"hello");
        assert_eq!(parsed.consumed, input.len() - 5);
        assert!(parsed.keep_alive);
    }

    #[test]
    fn every_prefix_is_partial() {
        let input = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n";
        for end in 0..input.len() {
            assert_eq!(
                parse_response(&input[..end], false, MAX),
                Ok(Progress::Partial),
                "prefix of {end} bytes"
            );
        }
        let parsed = complete(input, false);
        assert_eq!(parsed.response.body, b"abcd");
        assert_eq!(parsed.consumed, input.len());
    }

    #[test]
    fn a_body_until_close_completes_only_at_eof_and_is_never_reused() {
        let input = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\nbusy";
        assert_eq!(parse_response(input, false, MAX), Ok(Progress::Partial));
        let parsed = complete(input, true);
        assert_eq!(parsed.response.status, 503);
        assert_eq!(parsed.response.body, b"busy");
        assert_eq!(parsed.response.retry_after_secs, Some(7));
        assert!(!parsed.keep_alive);
    }

    #[test]
    fn connection_close_and_http_1_0_are_not_kept() {
        let close =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n";
        assert!(!complete(close, false).keep_alive);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!complete(old, false).keep_alive);
        let old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert!(complete(old_kept, false).keep_alive);
    }

    #[test]
    fn interim_responses_are_skipped_and_bodiless_statuses_have_no_body() {
        let input = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        let parsed = complete(input, false);
        assert_eq!(parsed.response.status, 204);
        assert!(parsed.response.body.is_empty());
        assert_eq!(parsed.consumed, input.len());
        assert_eq!(
            parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false, MAX),
            Ok(Progress::Partial)
        );
    }

    #[test]
    fn malformed_and_ambiguous_framing_is_refused() {
        for input in [
            &b"HTTP/1.1 2000 OK\r\n\r\n"[..],
            b"SMTP ready\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        ] {
            assert_eq!(
                parse_response(input, false, MAX),
                Err(OutboundError::Malformed),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
        let same_twice = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok";
        assert_eq!(complete(same_twice, false).response.body, b"ok");
    }

    #[test]
    fn the_size_limit_holds_for_heads_and_every_framing() {
        // Found by fuzzing: interim heads used to count each on its own, so endless
        // `100 Continue`s grew the reader's buffer without bound.
        let interim = "HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX / 25 + 1);
        assert_eq!(
            parse_response(interim.as_bytes(), false, MAX),
            Err(OutboundError::TooLarge)
        );
        let big_head = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX));
        assert_eq!(
            parse_response(big_head.as_bytes(), false, MAX),
            Err(OutboundError::TooLarge)
        );
        let big_length = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n";
        assert_eq!(
            parse_response(big_length, false, MAX),
            Err(OutboundError::TooLarge)
        );
        let huge_length = b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n";
        assert_eq!(
            parse_response(huge_length, false, MAX),
            Err(OutboundError::Malformed)
        );
        let mut chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        chunked.extend_from_slice(b"3e8\r\n");
        assert_eq!(
            parse_response(&chunked, false, MAX),
            Err(OutboundError::TooLarge)
        );
        let mut until_close = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        until_close.extend(vec![b'x'; MAX]);
        assert_eq!(
            parse_response(&until_close, false, MAX),
            Err(OutboundError::TooLarge)
        );
        let many: String = (0..=RESPONSE_HEADERS_COUNT_MAX)
            .map(|i| format!("X-{i}: y\r\n"))
            .collect();
        let many = format!("HTTP/1.1 200 OK\r\n{many}\r\n");
        assert_eq!(
            parse_response(many.as_bytes(), false, 1 << 20),
            Err(OutboundError::TooLarge)
        );
    }
}
