//! Where one request ends in a connection's bytes: its head, then its body by its
//! framing, within every limit. Pure, so the connection loop and the fuzz target frame
//! with the same code.
//!
//! The limits also bound the bytes one unfinished request can hold in a read buffer
//! (`FramingLimits::request_bytes_max`): a request that would need more is refused
//! before it gets there, whatever its shape (a huge head, a huge body, or a small body
//! sent as thousands of one-byte chunks).

use super::chunked::{ChunkedError, ChunkedOutcome, ChunkedProgress};
use super::request::{parse_request, BodyFraming, ParseOutcome, ProtocolError, RequestHead};

/// Chunk framing a chunked body may take besides twice its decoded size: size lines,
/// extensions and trailers of an ordinary client fit many times over.
pub const CHUNKED_FRAMING_BYTES_EXTRA: usize = 4096;

/// The request limits of the config (`limits.max_header_bytes`, `limits.max_body_bytes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramingLimits {
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

impl FramingLimits {
    /// The most bytes a chunked body may take on the wire, framing included. A client
    /// that needs more to send at most `max_body_bytes` is answered 413.
    pub fn chunked_wire_bytes_max(&self) -> usize {
        2 * self.max_body_bytes + CHUNKED_FRAMING_BYTES_EXTRA
    }

    /// Every unfinished request fits in fewer bytes than this: a head is refused past
    /// `max_header_bytes`, a body past its `Content-Length` limit or its chunked bound.
    pub fn request_bytes_max(&self) -> usize {
        self.max_header_bytes + self.chunked_wire_bytes_max()
    }
}

/// What the bytes at the start of a buffer amount to.
#[derive(Debug)]
pub enum FrameOutcome {
    /// More bytes are needed. `expect_continue`: the head is complete and asked for a
    /// `100 Continue` before its body.
    Partial { expect_continue: bool },
    /// A whole request, taking `consumed` bytes; its body was appended to the caller's
    /// buffer.
    Complete { head: RequestHead, consumed: usize },
}

/// The body of the request being framed, while its chunks arrive.
#[derive(Debug, Default)]
pub struct BodyDecoder {
    progress: ChunkedProgress,
    decoded: Vec<u8>,
}

impl BodyDecoder {
    /// Forgets a body in progress (its request was refused, or the buffer changed).
    pub fn reset(&mut self) {
        self.progress.reset();
        self.decoded.clear();
    }
}

/// Frames the request at the start of `buffered`. A complete request's body is appended
/// to `bodies`. `decoder` carries a chunked body over from the last call, which must
/// have seen the same request (a prefix of these bytes); it is reset once the request
/// is complete or refused.
pub fn frame_request(
    buffered: &[u8],
    limits: &FramingLimits,
    decoder: &mut BodyDecoder,
    bodies: &mut Vec<u8>,
) -> Result<FrameOutcome, ProtocolError> {
    let head = match parse_request(buffered, limits.max_header_bytes, limits.max_body_bytes) {
        Ok(ParseOutcome::Head(head)) => head,
        Ok(ParseOutcome::Partial) => {
            return Ok(FrameOutcome::Partial {
                expect_continue: false,
            })
        }
        Err(error) => {
            decoder.reset();
            return Err(error);
        }
    };
    let after_head = &buffered[head.head_length..];
    let body_bytes = match head.framing {
        BodyFraming::Empty => Some(0),
        BodyFraming::ContentLength(length) if after_head.len() >= length => {
            bodies.extend_from_slice(&after_head[..length]);
            Some(length)
        }
        BodyFraming::ContentLength(_) => None,
        BodyFraming::Chunked => frame_chunked(after_head, limits, decoder, bodies)?,
    };
    Ok(match body_bytes {
        Some(body_bytes) => FrameOutcome::Complete {
            consumed: head.head_length + body_bytes,
            head,
        },
        None => FrameOutcome::Partial {
            expect_continue: head.expect_continue,
        },
    })
}

/// The wire bytes of a complete chunked body (appended to `bodies`), or `None` while
/// it is still arriving.
fn frame_chunked(
    after_head: &[u8],
    limits: &FramingLimits,
    decoder: &mut BodyDecoder,
    bodies: &mut Vec<u8>,
) -> Result<Option<usize>, ProtocolError> {
    let BodyDecoder { progress, decoded } = decoder;
    let outcome = progress.decode(
        after_head,
        decoded,
        limits.max_body_bytes,
        limits.chunked_wire_bytes_max(),
    );
    match outcome {
        Ok(ChunkedOutcome::Partial) => Ok(None),
        Ok(ChunkedOutcome::Complete { consumed }) => {
            bodies.extend_from_slice(decoded);
            decoder.reset();
            Ok(Some(consumed))
        }
        Err(error) => {
            decoder.reset();
            Err(match error {
                ChunkedError::Malformed => ProtocolError::BadRequest,
                ChunkedError::TooLarge => ProtocolError::BodyTooLarge,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: FramingLimits = FramingLimits {
        max_header_bytes: 8192,
        max_body_bytes: 100,
    };

    fn frame(input: &[u8]) -> (Result<FrameOutcome, ProtocolError>, Vec<u8>) {
        let mut bodies = Vec::new();
        let framed = frame_request(input, &LIMITS, &mut BodyDecoder::default(), &mut bodies);
        (framed, bodies)
    }

    #[test]
    fn chunked_bodies_decode_and_leave_the_next_request() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut input = head.to_vec();
        input.extend_from_slice(b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\nGET");
        let (framed, bodies) = frame(&input);
        let Ok(FrameOutcome::Complete { consumed, .. }) = framed else {
            panic!("{framed:?}")
        };
        assert_eq!(consumed, input.len() - 3);
        assert_eq!(bodies, b"abcde");
    }

    #[test]
    fn a_body_sent_in_tiny_chunks_is_bounded_by_its_encoding() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let chunked = |chunk: &str, count: usize| {
            let mut input = head.to_vec();
            input.extend_from_slice(chunk.repeat(count).as_bytes());
            input.extend_from_slice(b"0\r\n\r\n");
            input
        };
        // 99 bytes in one-byte chunks: 600 bytes of encoding, well within the bound.
        assert!(matches!(
            frame(&chunked("1\r\na\r\n", 99)).0,
            Ok(FrameOutcome::Complete { .. })
        ));
        // 99 bytes again, each chunk with a long extension: the encoding passes the bound
        // (2 * 100 + 4096 bytes) though the body does not.
        let extension = format!("1;{}\r\na\r\n", "e".repeat(100));
        let input = chunked(&extension, 99);
        assert!(input.len() - head.len() > LIMITS.chunked_wire_bytes_max());
        assert_eq!(frame(&input).0.unwrap_err(), ProtocolError::BodyTooLarge);
    }

    #[test]
    fn an_unfinished_request_stays_under_the_buffer_bound() {
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let limits = FramingLimits {
            max_header_bytes: 8192,
            max_body_bytes: 16384,
        };
        // Chunk extensions carry no body at all: only the wire bound stops them.
        let mut input = head.to_vec();
        while input.len() < limits.request_bytes_max() {
            input.extend_from_slice(b"1;ext=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\na\r\n");
        }
        let mut decoder = BodyDecoder::default();
        let mut refused = false;
        for end in head.len()..input.len() {
            let mut bodies = Vec::new();
            match frame_request(&input[..end], &limits, &mut decoder, &mut bodies) {
                Ok(FrameOutcome::Partial { .. }) => assert!(end < limits.request_bytes_max()),
                Err(ProtocolError::BodyTooLarge) => {
                    refused = true;
                    break;
                }
                other => panic!("{end}: {other:?}"),
            }
        }
        assert!(refused);
    }

    #[test]
    fn expect_continue_is_reported_once_the_head_is_complete() {
        let input =
            b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nab";
        let (framed, _) = frame(input);
        assert!(matches!(
            framed,
            Ok(FrameOutcome::Partial {
                expect_continue: true
            })
        ));
        let (framed, _) = frame(&input[..20]);
        assert!(matches!(
            framed,
            Ok(FrameOutcome::Partial {
                expect_continue: false
            })
        ));
    }
}
