//! Log format 1: records framed one by one, as logs were written before batch frames
//! (`frame`, format 2). payd still reads such segments, and never writes them; `Record` is
//! what both formats decode to.
//!
//! A format-1 record is
//!
//! ```text
//! length   u32 LE   bytes of kind + sequence + payload (so never below 9)
//! crc32c   u32 LE   CRC32C of kind + sequence + payload
//! kind     u8
//! sequence u64 LE
//! payload  length - 9 bytes
//! ```
//!
//! A length of zero can never start a real record, so zero bytes where a length should be
//! mean padding: the end of the data. Direct I/O pads the last block of every write with
//! zeros, and a later write overwrites them; recovery therefore meets zeroed tails often.
//! The decoder never panics and never reads past the slice it is given, whatever the bytes.

use std::fmt;

/// Bytes of the length and checksum fields in front of every record.
pub const RECORD_HEADER_BYTES: usize = 8;
/// Bytes of the kind and sequence fields that the length and checksum cover.
pub const RECORD_BODY_FIXED_BYTES: usize = 9;
/// Every byte a record costs besides its payload.
pub const RECORD_OVERHEAD_BYTES: usize = RECORD_HEADER_BYTES + RECORD_BODY_FIXED_BYTES;
/// The largest payload. A create with every field at its API.md maximum, in four-byte
/// UTF-8 characters, stays below 48 KiB; the rest is room for later kinds.
pub const RECORD_PAYLOAD_BYTES_MAX: usize = 64 * 1024;
/// The largest record, framing included.
pub const RECORD_BYTES_MAX: usize = RECORD_OVERHEAD_BYTES + RECORD_PAYLOAD_BYTES_MAX;

/// One record, borrowed from the buffer it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: u8,
    pub sequence: u64,
    pub payload: &'a [u8],
    /// Bytes the record takes in the buffer, framing included: where the next one starts.
    pub length_total: usize,
}

/// Why the bytes at some position are not a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CorruptReason {
    /// The length field is below the fixed part (kind and sequence), but not zero.
    LengthTooSmall(u32),
    /// The length field promises more than the largest record.
    LengthTooLarge(u32),
    /// The checksum does not match the bytes it covers.
    ChecksumMismatch,
}

impl fmt::Display for CorruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CorruptReason::LengthTooSmall(length) => {
                write!(f, "record length {length} is below the minimum of 9")
            }
            CorruptReason::LengthTooLarge(length) => write!(
                f,
                "record length {length} is above the maximum of {}",
                RECORD_BODY_FIXED_BYTES + RECORD_PAYLOAD_BYTES_MAX
            ),
            CorruptReason::ChecksumMismatch => write!(f, "record checksum mismatch"),
        }
    }
}

/// What the bytes at the start of a buffer amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeOutcome<'a> {
    Record(Record<'a>),
    /// The buffer ends inside a record (or is empty): more bytes are needed, or at the end
    /// of a file, the write was torn.
    Incomplete,
    /// The length field is zero: padding, the end of the data.
    ZeroTail,
    Corrupt(CorruptReason),
}

/// Appends one framed record to `out`. The caller has checked the payload size: a payload
/// above `RECORD_PAYLOAD_BYTES_MAX` here is a bug, not bad input.
pub fn encode_record(out: &mut Vec<u8>, kind: u8, sequence: u64, payload: &[u8]) {
    assert!(payload.len() <= RECORD_PAYLOAD_BYTES_MAX);
    let length = (RECORD_BODY_FIXED_BYTES + payload.len()) as u32;
    let mut fixed = [0u8; RECORD_BODY_FIXED_BYTES];
    fixed[0] = kind;
    fixed[1..].copy_from_slice(&sequence.to_le_bytes());
    let checksum = crc32c::crc32c_append(crc32c::crc32c(&fixed), payload);
    out.reserve(RECORD_OVERHEAD_BYTES + payload.len());
    out.extend_from_slice(&length.to_le_bytes());
    out.extend_from_slice(&checksum.to_le_bytes());
    out.extend_from_slice(&fixed);
    out.extend_from_slice(payload);
}

/// Decodes the record at the start of `buf`.
pub fn decode_record(buf: &[u8]) -> DecodeOutcome<'_> {
    if buf.len() < 4 {
        // A short run of zeros at the very end is padding too; anything else is cut short.
        return if !buf.is_empty() && buf.iter().all(|&b| b == 0) {
            DecodeOutcome::ZeroTail
        } else {
            DecodeOutcome::Incomplete
        };
    }
    let length = read_u32(buf, 0);
    if length == 0 {
        return DecodeOutcome::ZeroTail;
    }
    if (length as usize) < RECORD_BODY_FIXED_BYTES {
        return DecodeOutcome::Corrupt(CorruptReason::LengthTooSmall(length));
    }
    if length as usize > RECORD_BODY_FIXED_BYTES + RECORD_PAYLOAD_BYTES_MAX {
        return DecodeOutcome::Corrupt(CorruptReason::LengthTooLarge(length));
    }
    let length_total = RECORD_HEADER_BYTES + length as usize;
    if buf.len() < length_total {
        return DecodeOutcome::Incomplete;
    }
    let body = &buf[RECORD_HEADER_BYTES..length_total];
    if crc32c::crc32c(body) != read_u32(buf, 4) {
        return DecodeOutcome::Corrupt(CorruptReason::ChecksumMismatch);
    }
    DecodeOutcome::Record(Record {
        kind: body[0],
        sequence: read_u64(body, 1),
        payload: &body[RECORD_BODY_FIXED_BYTES..],
        length_total,
    })
}

/// The sequence field of the record that would start `buf`, without checking anything:
/// a cheap filter before a checksum is computed.
pub(crate) fn peek_sequence(buf: &[u8]) -> Option<u64> {
    (buf.len() >= RECORD_OVERHEAD_BYTES).then(|| read_u64(buf, RECORD_HEADER_BYTES + 1))
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn read_u64(buf: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&buf[at..at + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(kind: u8, sequence: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_record(&mut out, kind, sequence, payload);
        out
    }

    #[test]
    fn record_round_trips_with_exact_layout() {
        let bytes = encoded(3, 0x0102_0304_0506_0708, b"abc");
        assert_eq!(bytes.len(), RECORD_OVERHEAD_BYTES + 3);
        assert_eq!(&bytes[0..4], &12u32.to_le_bytes());
        assert_eq!(&bytes[4..8], &crc32c::crc32c(&bytes[8..]).to_le_bytes());
        assert_eq!(bytes[8], 3);
        assert_eq!(&bytes[9..17], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(
            decode_record(&bytes),
            DecodeOutcome::Record(Record {
                kind: 3,
                sequence: 0x0102_0304_0506_0708,
                payload: b"abc",
                length_total: 20,
            })
        );
    }

    #[test]
    fn records_follow_each_other() {
        let mut bytes = encoded(1, 1, b"");
        encode_record(&mut bytes, 2, 2, &[7; 100]);
        let DecodeOutcome::Record(first) = decode_record(&bytes) else {
            panic!("first record")
        };
        assert_eq!((first.sequence, first.payload.len()), (1, 0));
        let DecodeOutcome::Record(second) = decode_record(&bytes[first.length_total..]) else {
            panic!("second record")
        };
        assert_eq!((second.kind, second.sequence), (2, 2));
        assert_eq!(second.payload, &[7; 100][..]);
        assert_eq!(first.length_total + second.length_total, bytes.len());
    }

    #[test]
    fn every_cut_short_record_is_incomplete() {
        let bytes = encoded(1, 9, b"payload");
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_record(&bytes[..cut]),
                DecodeOutcome::Incomplete,
                "{cut}"
            );
        }
    }

    #[test]
    fn zero_length_is_padding() {
        assert_eq!(decode_record(&[0; 4096]), DecodeOutcome::ZeroTail);
        assert_eq!(decode_record(&[0, 0, 0, 0, 5]), DecodeOutcome::ZeroTail);
        assert_eq!(decode_record(&[0, 0]), DecodeOutcome::ZeroTail);
        assert_eq!(decode_record(&[0, 1]), DecodeOutcome::Incomplete);
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = encoded(1, 42, b"some payload bytes");
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_record(&damaged), DecodeOutcome::Record(_)),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn length_bounds_are_enforced() {
        let mut bytes = encoded(1, 1, b"x");
        bytes[0..4].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(
            decode_record(&bytes),
            DecodeOutcome::Corrupt(CorruptReason::LengthTooSmall(8))
        );
        let too_large = (RECORD_BODY_FIXED_BYTES + RECORD_PAYLOAD_BYTES_MAX + 1) as u32;
        bytes[0..4].copy_from_slice(&too_large.to_le_bytes());
        assert_eq!(
            decode_record(&bytes),
            DecodeOutcome::Corrupt(CorruptReason::LengthTooLarge(too_large))
        );
    }

    #[test]
    fn largest_payload_round_trips() {
        let payload = vec![0xa5; RECORD_PAYLOAD_BYTES_MAX];
        let bytes = encoded(9, u64::MAX, &payload);
        assert_eq!(bytes.len(), RECORD_BYTES_MAX);
        let DecodeOutcome::Record(record) = decode_record(&bytes) else {
            panic!("largest record")
        };
        assert_eq!(record.payload.len(), RECORD_PAYLOAD_BYTES_MAX);
    }

    #[test]
    fn peeks_read_the_header_fields() {
        let bytes = encoded(1, 77, b"abc");
        assert_eq!(peek_sequence(&bytes), Some(77));
        assert_eq!(peek_sequence(&bytes[..RECORD_OVERHEAD_BYTES - 1]), None);
    }

    #[test]
    #[should_panic]
    fn oversized_payload_is_a_bug() {
        encoded(1, 1, &vec![0; RECORD_PAYLOAD_BYTES_MAX + 1]);
    }
}
