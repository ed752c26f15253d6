//! The bodies of the fuzz targets in `fuzz/`, one function per parser of outside bytes.
//!
//! They live in the library so that two callers run exactly the same code: the cargo-fuzz
//! targets (nightly, libFuzzer), and the corpus replay test (`tests/fuzz_corpus.rs`), which
//! feeds every file of `fuzz/corpus/<target>/` through them on stable, so `cargo test`
//! catches a regression on any input fuzzing ever kept. Each function takes arbitrary
//! bytes, must never panic on them, and asserts what must hold whatever they are.

use crate::http::{frame_request, BodyDecoder, FrameOutcome, FramingLimits, ProtocolError};

/// Limits the HTTP target picks from with its first byte: the defaults, and small ones
/// that short inputs can reach.
const FRAMING_LIMITS_CHOICES: [FramingLimits; 3] = [
    FramingLimits {
        max_header_bytes: 8192,
        max_body_bytes: 16384,
    },
    FramingLimits {
        max_header_bytes: 256,
        max_body_bytes: 64,
    },
    FramingLimits {
        max_header_bytes: 64,
        max_body_bytes: 8,
    },
];
/// Reads the HTTP target splits its input into at most, so one input costs little.
const HTTP_READS_MAX: usize = 64;

/// What framing made of one request of a stream, for comparing two readings of it.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Request { consumed: usize, body: Vec<u8> },
    Unfinished,
    Refused(ProtocolError),
}

/// HTTP request framing, chunked bodies included, as the connection loop does it: the
/// first byte picks the limits and how many bytes arrive per read, the rest is the
/// stream. Framed read by read, it must come to exactly what framing it whole does
/// (the chunked decoder resumes between reads), and an unfinished request must always
/// fit in `request_bytes_max` (the connection's buffer relies on it).
pub fn http_request(data: &[u8]) {
    let Some((&selector, stream)) = data.split_first() else {
        return;
    };
    let limits = FRAMING_LIMITS_CHOICES[usize::from(selector) % FRAMING_LIMITS_CHOICES.len()];
    let read_bytes = (usize::from(selector) / FRAMING_LIMITS_CHOICES.len() + 1)
        .max(stream.len() / HTTP_READS_MAX + 1);
    let whole = frame_stream(stream, &limits, stream.len().max(1));
    let by_reads = frame_stream(stream, &limits, read_bytes);
    assert_eq!(whole, by_reads, "reads of {read_bytes} bytes");
}

/// Frames every request of `stream`, receiving it `read_bytes` at a time.
fn frame_stream(stream: &[u8], limits: &FramingLimits, read_bytes: usize) -> Vec<Framing> {
    let mut decoder = BodyDecoder::default();
    let mut bodies = Vec::new();
    let mut framings = Vec::new();
    let mut start = 0;
    let mut filled = stream.len().min(read_bytes);
    loop {
        let buffered = &stream[start..filled];
        match frame_request(buffered, limits, &mut decoder, &mut bodies) {
            Ok(FrameOutcome::Complete { head, consumed }) => {
                assert!(consumed >= head.head_length && consumed <= buffered.len());
                assert!(head.head_length <= limits.max_header_bytes);
                assert!(bodies.len() <= limits.max_body_bytes);
                assert!(head.target.end <= head.head_length);
                let body = std::mem::take(&mut bodies);
                framings.push(Framing::Request { consumed, body });
                start += consumed;
                if !head.keep_alive || start == stream.len() {
                    return framings;
                }
            }
            Ok(FrameOutcome::Partial { .. }) => {
                assert!(buffered.len() < limits.request_bytes_max());
                if filled == stream.len() {
                    framings.push(Framing::Unfinished);
                    return framings;
                }
                filled = stream.len().min(filled + read_bytes);
            }
            Err(error) => {
                framings.push(Framing::Refused(error));
                return framings;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pipelined_stream_frames_the_same_at_any_read_size() {
        let mut data = vec![0u8];
        data.extend_from_slice(
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
              3\r\nabc\r\n1\r\nd\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nGET /",
        );
        for selector in 0..=255u8 {
            data[0] = selector;
            http_request(&data);
        }
    }
}
