//! Chunked transfer coding (RFC 9112 section 7.1), decoded from a buffer: a leaf module,
//! shared by the request parser of this layer and the outbound client's responses.
//!
//! It imports nothing from payd, so a lower layer may use it without reaching up into
//! the server's request handling.

/// A chunk-size line longer than this is malformed (hex digits plus extensions).
pub const CHUNK_LINE_BYTES_MAX: usize = 256;
/// Trailer fields after the last chunk are read and discarded, up to this many bytes.
pub const CHUNK_TRAILER_BYTES_MAX: usize = 1024;

/// Result of decoding a chunked body that starts at the beginning of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum ChunkedOutcome {
    Partial,
    /// The whole body was decoded into the output; `consumed` bytes of input were used.
    Complete {
        consumed: usize,
    },
}

/// Why a chunked body cannot be decoded. Either way the framing of the stream is lost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkedError {
    Malformed,
    /// The decoded body would be over the caller's limit.
    TooLarge,
}

/// Where decoding of one chunked body stands between calls: every complete chunk before
/// `position` is already in the caller's body buffer, so bytes that arrive later are
/// decoded once, not again from the start at every read (a client trickling one-byte
/// chunks would otherwise cost the square of its body).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkedProgress {
    /// Input bytes taken by the chunks decoded so far.
    position: usize,
}

impl ChunkedProgress {
    /// Forgets the body decoded so far: the next call starts a new one.
    pub fn reset(&mut self) {
        self.position = 0;
    }

    /// Decodes the chunked body that starts `input` into `body`, resuming where the last
    /// call left off. `input` must start with the same bytes at every call (more of them
    /// each time) and `body` must hold what earlier calls decoded; both start empty.
    ///
    /// Two bounds apply: the decoded body at most `max_body_bytes`, and its encoding,
    /// chunk framing and trailers included, at most `wire_bytes_max`. A body that has
    /// not ended within `wire_bytes_max` bytes is `TooLarge`, so `Partial` always means
    /// fewer than `wire_bytes_max` bytes of `input`.
    pub fn decode(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body_bytes: usize,
        wire_bytes_max: usize,
    ) -> Result<ChunkedOutcome, ChunkedError> {
        let outcome = self.decode_chunks(input, body, max_body_bytes)?;
        match outcome {
            ChunkedOutcome::Complete { consumed } if consumed > wire_bytes_max => {
                Err(ChunkedError::TooLarge)
            }
            ChunkedOutcome::Partial if input.len() >= wire_bytes_max => Err(ChunkedError::TooLarge),
            outcome => Ok(outcome),
        }
    }

    fn decode_chunks(
        &mut self,
        input: &[u8],
        body: &mut Vec<u8>,
        max_body_bytes: usize,
    ) -> Result<ChunkedOutcome, ChunkedError> {
        loop {
            let position = self.position;
            // A chunk's size line is parsed again until its data has arrived too.
            let (data_start, size) = match httparse::parse_chunk_size(&input[position..]) {
                // A line over the bound is refused whole, as it is while it arrives.
                Ok(httparse::Status::Complete((used, _))) if used > CHUNK_LINE_BYTES_MAX => {
                    return Err(ChunkedError::Malformed)
                }
                Ok(httparse::Status::Complete((used, size))) => (position + used, size),
                Ok(httparse::Status::Partial) if input.len() - position > CHUNK_LINE_BYTES_MAX => {
                    return Err(ChunkedError::Malformed)
                }
                Ok(httparse::Status::Partial) => return Ok(ChunkedOutcome::Partial),
                Err(_) => return Err(ChunkedError::Malformed),
            };
            if size == 0 {
                return decode_trailer(input, data_start);
            }
            let size = usize::try_from(size).map_err(|_| ChunkedError::TooLarge)?;
            if size > max_body_bytes || body.len() + size > max_body_bytes {
                return Err(ChunkedError::TooLarge);
            }
            let available = input.len() - data_start;
            if available < size + 2 {
                return Ok(ChunkedOutcome::Partial);
            }
            let data_end = data_start + size;
            if &input[data_end..data_end + 2] != b"\r\n" {
                return Err(ChunkedError::Malformed);
            }
            body.extend_from_slice(&input[data_start..data_end]);
            self.position = data_end + 2;
        }
    }
}

/// Decodes a complete chunked body from `input` into `body` (cleared first). Returns
/// `Partial` until the last chunk and the trailer section have arrived.
pub fn decode_chunked(
    input: &[u8],
    body: &mut Vec<u8>,
    max_body_bytes: usize,
) -> Result<ChunkedOutcome, ChunkedError> {
    body.clear();
    ChunkedProgress::default().decode(input, body, max_body_bytes, usize::MAX)
}

/// Skips the trailer section after the last chunk, up to its empty line.
fn decode_trailer(input: &[u8], start: usize) -> Result<ChunkedOutcome, ChunkedError> {
    let mut position = start;
    loop {
        let rest = &input[position..];
        match rest.windows(2).position(|pair| pair == b"\r\n") {
            Some(0) => {
                return Ok(ChunkedOutcome::Complete {
                    consumed: position + 2,
                })
            }
            Some(line_end) => position += line_end + 2,
            None if rest.len() > CHUNK_TRAILER_BYTES_MAX => return Err(ChunkedError::Malformed),
            None => return Ok(ChunkedOutcome::Partial),
        }
        if position - start > CHUNK_TRAILER_BYTES_MAX {
            return Err(ChunkedError::Malformed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_chunks_extensions_and_trailers() {
        let mut body = Vec::new();
        let input = b"3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let outcome = decode_chunked(input, &mut body, 100).unwrap();
        assert_eq!(
            outcome,
            ChunkedOutcome::Complete {
                consumed: input.len() - 4
            }
        );
        assert_eq!(body, b"abcde");
    }

    #[test]
    fn every_prefix_of_a_body_is_partial() {
        let input = b"3\r\nabc\r\n0\r\n\r\n";
        let mut body = Vec::new();
        for end in 0..input.len() {
            assert_eq!(
                decode_chunked(&input[..end], &mut body, 100),
                Ok(ChunkedOutcome::Partial),
                "prefix of {end} bytes"
            );
        }
    }

    #[test]
    fn decoding_resumes_where_the_last_call_stopped() {
        let input = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut progress = ChunkedProgress::default();
        let mut body = Vec::new();
        for end in 0..input.len() {
            assert_eq!(
                progress.decode(&input[..end], &mut body, 100, 100),
                Ok(ChunkedOutcome::Partial),
                "prefix of {end} bytes"
            );
        }
        assert_eq!(
            progress.decode(input, &mut body, 100, 100),
            Ok(ChunkedOutcome::Complete {
                consumed: input.len()
            })
        );
        assert_eq!(body, b"abcde");
    }

    #[test]
    fn the_encoding_is_bounded_as_well_as_the_body() {
        // One-byte chunks take six bytes of encoding per byte of body.
        let input = format!("{}0\r\n\r\n", "1\r\na\r\n".repeat(10));
        let input = input.as_bytes();
        assert_eq!(input.len(), 65);
        let decode = |input: &[u8], wire_bytes_max| {
            let mut body = Vec::new();
            ChunkedProgress::default().decode(input, &mut body, 100, wire_bytes_max)
        };
        assert_eq!(
            decode(input, 65),
            Ok(ChunkedOutcome::Complete { consumed: 65 })
        );
        assert_eq!(decode(input, 64), Err(ChunkedError::TooLarge));
        // Unfinished: partial below the bound, refused once the bound is reached.
        assert_eq!(decode(&input[..63], 64), Ok(ChunkedOutcome::Partial));
        assert_eq!(decode(&input[..64], 64), Err(ChunkedError::TooLarge));
    }

    #[test]
    fn limits_and_malformed_input() {
        let mut body = Vec::new();
        assert_eq!(
            decode_chunked(b"3\r\nabcXY", &mut body, 100),
            Err(ChunkedError::Malformed)
        );
        assert_eq!(
            decode_chunked(b"65\r\n", &mut body, 100),
            Err(ChunkedError::TooLarge)
        );
        // Two chunks each within the limit, over it together.
        assert_eq!(
            decode_chunked(b"3\r\nabc\r\n3\r\ndef\r\n", &mut body, 5),
            Err(ChunkedError::TooLarge)
        );
        assert_eq!(
            decode_chunked(b"zz\r\n", &mut body, 100),
            Err(ChunkedError::Malformed)
        );
        // Found by fuzzing: a long chunk-size line was refused while partial but taken
        // once complete, so the answer depended on how the bytes arrived.
        let mut complete_long_line = format!("3;{}\r\nabc\r\n", "e".repeat(CHUNK_LINE_BYTES_MAX));
        complete_long_line.push_str("0\r\n\r\n");
        assert_eq!(
            decode_chunked(complete_long_line.as_bytes(), &mut body, 100),
            Err(ChunkedError::Malformed)
        );
        let long_line = vec![b'1'; CHUNK_LINE_BYTES_MAX + 1];
        assert_eq!(
            decode_chunked(&long_line, &mut body, usize::MAX),
            Err(ChunkedError::Malformed)
        );
        let mut long_trailer = b"0\r\n".to_vec();
        long_trailer.extend(vec![b'x'; CHUNK_TRAILER_BYTES_MAX + 1]);
        assert_eq!(
            decode_chunked(&long_trailer, &mut body, 100),
            Err(ChunkedError::Malformed)
        );
    }
}
