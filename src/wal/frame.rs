//! Batch framing (log format 2): each commit's records are one checksummed frame on disk,
//! so recovery checks a whole write at once, whatever part of it a power cut kept.
//!
//! ```text
//! frame header, FRAME_HEADER_BYTES:
//!   magic           u32 LE   FRAME_MAGIC ("PYB2")
//!   entries_bytes   u32 LE   bytes of entries after the header
//!   first_sequence  u64 LE   sequence number of the first entry
//!   synced_through  u64 LE   every record up to this sequence was durable when the frame was
//!                            written (0: none yet)
//!   entry_count     u32 LE   entries in the frame, at least one
//!   checksum        u32 LE   CRC32C of the frame's offset in its segment (u64 LE), then of
//!                            header bytes 0..28, then of the entries
//! entries, entry_count times:
//!   payload_bytes   u32 LE
//!   kind            u8
//!   payload         payload_bytes bytes
//! ```
//!
//! Entries carry no sequence number and no checksum of their own: the i-th entry of a frame
//! has `first_sequence + i`, and the frame's checksum covers every byte of them.
//!
//! The checksum covers the frame's offset too, so a frame is valid only where it was
//! written. A payment's own bytes (a metadata value may hold any byte, NUL included) can
//! spell a whole frame; copied into a payload it lands at an offset it was not checksummed
//! for, so recovery never takes it for a frame the writer wrote.
//!
//! `synced_through` is what lets recovery tell a torn write from corruption. Damage followed
//! by a valid frame whose `synced_through` reaches into the damaged records means those
//! records had been synced, and so possibly acknowledged, before the later frame was
//! written: corruption. A later frame written before they were synced proves nothing was
//! acknowledged from the damage on: a torn write.
//!
//! The magic's value is above any length a format-1 record can start with, so the first
//! four bytes of a segment tell its format. Zero bytes where a magic should be are padding:
//! direct I/O pads every write with zeros and segments are preallocated with zeros.
//! The decoder never panics and never reads past the slice it is given, whatever the bytes.

use crate::wal::record::{Record, RECORD_PAYLOAD_BYTES_MAX};
use std::fmt;

/// "PYB2" read as a little-endian u32.
pub const FRAME_MAGIC: u32 = u32::from_le_bytes(*b"PYB2");
/// Bytes of a frame's header.
pub const FRAME_HEADER_BYTES: usize = 32;
/// Bytes in front of each entry's payload.
pub const ENTRY_HEADER_BYTES: usize = 5;
/// The most entry bytes one frame holds: one commit's batch at most.
pub const FRAME_ENTRIES_BYTES_MAX: usize = 1 << 20;
/// The largest entry.
pub const ENTRY_BYTES_MAX: usize = ENTRY_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX;
/// Where the checksum sits in the header; the bytes before it are checksummed.
const CHECKSUM_AT: usize = 28;

// A format-1 record's length field is at most this, so a segment's first four bytes tell
// its format apart.
const _: () = assert!(FRAME_MAGIC as usize > crate::wal::record::RECORD_BYTES_MAX);
const _: () = assert!(ENTRY_BYTES_MAX <= FRAME_ENTRIES_BYTES_MAX);

/// Why the bytes at some position are not a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameCorruption {
    /// Neither a frame's magic nor zero padding.
    Magic(u32),
    /// The entries' length is above `FRAME_ENTRIES_BYTES_MAX`.
    LengthTooLarge(u32),
    ChecksumMismatch,
    /// The checksum matches but the header or the entries contradict each other: a bug
    /// that wrote them, never a torn write.
    Inconsistent(&'static str),
}

impl fmt::Display for FrameCorruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameCorruption::Magic(found) => {
                write!(f, "no batch frame starts here ({found:#010x})")
            }
            FrameCorruption::LengthTooLarge(bytes) => write!(
                f,
                "batch frame of {bytes} bytes is above the maximum of {FRAME_ENTRIES_BYTES_MAX}"
            ),
            FrameCorruption::ChecksumMismatch => write!(f, "batch frame checksum mismatch"),
            FrameCorruption::Inconsistent(what) => write!(f, "inconsistent batch frame: {what}"),
        }
    }
}

/// A checked frame, borrowed from the bytes it was decoded from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    pub first_sequence: u64,
    pub synced_through: u64,
    pub entry_count: u32,
    entries: &'a [u8],
    /// Bytes the frame takes, header included: where the next one starts.
    pub length_total: usize,
}

/// What the bytes at the start of a buffer amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameOutcome<'a> {
    Frame(Frame<'a>),
    /// The buffer ends inside a frame (or is empty).
    Incomplete,
    /// Zero where the magic should be: padding, if everything after it is zero too.
    ZeroTail,
    Corrupt(FrameCorruption),
}

/// Appends one entry to a batch being built. The caller checked the payload's size.
pub fn encode_entry(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    assert!(payload.len() <= RECORD_PAYLOAD_BYTES_MAX);
    out.reserve(ENTRY_HEADER_BYTES + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.push(kind);
    out.extend_from_slice(payload);
}

/// The header of a frame around `entries` (encoded by `encode_entry`) that will start at
/// byte `position` of its segment, checksum included.
pub fn frame_header(
    position: u64,
    first_sequence: u64,
    synced_through: u64,
    entry_count: u32,
    entries: &[u8],
) -> [u8; FRAME_HEADER_BYTES] {
    assert!(entry_count > 0 && first_sequence > synced_through);
    assert!(entries.len() <= FRAME_ENTRIES_BYTES_MAX);
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
    header[4..8].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    header[8..16].copy_from_slice(&first_sequence.to_le_bytes());
    header[16..24].copy_from_slice(&synced_through.to_le_bytes());
    header[24..28].copy_from_slice(&entry_count.to_le_bytes());
    let checksum = frame_checksum(position, &header[..CHECKSUM_AT], entries);
    header[CHECKSUM_AT..].copy_from_slice(&checksum.to_le_bytes());
    header
}

/// Appends a whole frame of `records` (kind, payload) to `out`, which holds a segment from
/// its first byte: for tests and tools that write logs without a `ShardLog`.
pub fn encode_frame(
    out: &mut Vec<u8>,
    first_sequence: u64,
    synced_through: u64,
    records: &[(u8, &[u8])],
) {
    let mut entries = Vec::new();
    for &(kind, payload) in records {
        encode_entry(&mut entries, kind, payload);
    }
    let count = u32::try_from(records.len()).expect("a frame's entries fit a u32");
    out.extend_from_slice(&frame_header(
        out.len() as u64,
        first_sequence,
        synced_through,
        count,
        &entries,
    ));
    out.extend_from_slice(&entries);
}

/// CRC32C of a frame's position in its segment, its header up to the checksum and its
/// entries.
fn frame_checksum(position: u64, header: &[u8], entries: &[u8]) -> u32 {
    let seeded = crc32c::crc32c(&position.to_le_bytes());
    crc32c::crc32c_append(crc32c::crc32c_append(seeded, header), entries)
}

/// Decodes the frame at byte `at` of `segment`, checksum and entries included.
pub fn decode_frame(segment: &[u8], at: usize) -> FrameOutcome<'_> {
    let buf = segment.get(at..).unwrap_or_default();
    if buf.len() < 4 {
        return if !buf.is_empty() && buf.iter().all(|&b| b == 0) {
            FrameOutcome::ZeroTail
        } else {
            FrameOutcome::Incomplete
        };
    }
    let magic = read_u32(buf, 0);
    if magic == 0 {
        return FrameOutcome::ZeroTail;
    }
    if magic != FRAME_MAGIC {
        return FrameOutcome::Corrupt(FrameCorruption::Magic(magic));
    }
    if buf.len() < FRAME_HEADER_BYTES {
        return FrameOutcome::Incomplete;
    }
    let entries_bytes = read_u32(buf, 4);
    if entries_bytes as usize > FRAME_ENTRIES_BYTES_MAX {
        return FrameOutcome::Corrupt(FrameCorruption::LengthTooLarge(entries_bytes));
    }
    let length_total = FRAME_HEADER_BYTES + entries_bytes as usize;
    if buf.len() < length_total {
        return FrameOutcome::Incomplete;
    }
    let entries = &buf[FRAME_HEADER_BYTES..length_total];
    let checksum = frame_checksum(at as u64, &buf[..CHECKSUM_AT], entries);
    if checksum != read_u32(buf, CHECKSUM_AT) {
        return FrameOutcome::Corrupt(FrameCorruption::ChecksumMismatch);
    }
    let frame = Frame {
        first_sequence: read_u64(buf, 8),
        synced_through: read_u64(buf, 16),
        entry_count: read_u32(buf, 24),
        entries,
        length_total,
    };
    match check_frame(&frame) {
        Ok(()) => FrameOutcome::Frame(frame),
        Err(what) => FrameOutcome::Corrupt(FrameCorruption::Inconsistent(what)),
    }
}

/// What the checksum cannot vouch for: that the writer kept the format's rules.
fn check_frame(frame: &Frame<'_>) -> Result<(), &'static str> {
    if frame.entry_count == 0 {
        return Err("no entries");
    }
    if frame.first_sequence == 0 || frame.synced_through >= frame.first_sequence {
        return Err("sequence numbers");
    }
    if frame
        .first_sequence
        .checked_add(u64::from(frame.entry_count))
        .is_none()
    {
        return Err("sequence numbers overflow");
    }
    let mut entries = frame.records();
    let mut count = 0u32;
    // Bounded: every entry takes at least ENTRY_HEADER_BYTES of the frame.
    for record in entries.by_ref() {
        if record.is_none() {
            return Err("entry lengths");
        }
        count += 1;
    }
    if count != frame.entry_count {
        return Err("entry count");
    }
    Ok(())
}

impl<'a> Frame<'a> {
    /// The frame's records with their sequence numbers. After `decode_frame` every item is
    /// `Some`; `None` marks entry bytes that do not parse (only seen before the check).
    pub fn records(&self) -> FrameRecords<'a> {
        FrameRecords {
            entries: self.entries,
            sequence: self.first_sequence,
        }
    }

    /// The sequence number after the frame's last record.
    pub fn end_sequence(&self) -> u64 {
        self.first_sequence + u64::from(self.entry_count)
    }
}

/// The records of one frame, in order.
pub struct FrameRecords<'a> {
    entries: &'a [u8],
    sequence: u64,
}

impl<'a> Iterator for FrameRecords<'a> {
    type Item = Option<Record<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.entries.is_empty() {
            return None;
        }
        let entry = self.entries;
        let parsed = (entry.len() >= ENTRY_HEADER_BYTES)
            .then(|| ENTRY_HEADER_BYTES + read_u32(entry, 0) as usize)
            .filter(|&length| length <= entry.len() && length <= ENTRY_BYTES_MAX);
        let Some(length_total) = parsed else {
            self.entries = &[];
            return Some(None);
        };
        let record = Record {
            kind: entry[4],
            sequence: self.sequence,
            payload: &entry[ENTRY_HEADER_BYTES..length_total],
            length_total,
        };
        self.entries = &entry[length_total..];
        self.sequence += 1;
        Some(Some(record))
    }
}

/// Offsets after `from` in `data` where a valid frame starts, first one first: the search
/// behind telling a torn tail from damage in acknowledged records. Only positions holding
/// the magic are checksummed, which keeps it cheap.
pub fn next_valid_frame(data: &[u8], from: usize) -> Option<(usize, Frame<'_>)> {
    let magic = FRAME_MAGIC.to_le_bytes();
    let mut at = from;
    // Bounded: `at` moves forward by at least one byte each pass.
    while at + FRAME_HEADER_BYTES <= data.len() {
        let found = data[at..].windows(4).position(|window| window == magic)?;
        at += found;
        if let FrameOutcome::Frame(frame) = decode_frame(data, at) {
            return Some((at, frame));
        }
        at += 1;
    }
    None
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
    use crate::wal::fuzz::{mutate, Prng};

    fn framed(first: u64, synced: u64, records: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_frame(&mut out, first, synced, records);
        out
    }

    fn decoded(bytes: &[u8]) -> Frame<'_> {
        match decode_frame(bytes, 0) {
            FrameOutcome::Frame(frame) => frame,
            other => panic!("not a frame: {other:?}"),
        }
    }

    #[test]
    fn a_frame_round_trips_with_exact_layout() {
        let bytes = framed(7, 5, &[(1, b"abc"), (2, b""), (3, &[9; 300])]);
        assert_eq!(
            bytes.len(),
            FRAME_HEADER_BYTES + 3 * ENTRY_HEADER_BYTES + 303
        );
        assert_eq!(&bytes[0..4], b"PYB2");
        assert_eq!(&bytes[4..8], &(15u32 + 303).to_le_bytes());
        assert_eq!(&bytes[8..16], &7u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &5u64.to_le_bytes());
        assert_eq!(&bytes[24..28], &3u32.to_le_bytes());
        let frame = decoded(&bytes);
        assert_eq!(
            (
                frame.first_sequence,
                frame.synced_through,
                frame.entry_count
            ),
            (7, 5, 3)
        );
        assert_eq!(frame.length_total, bytes.len());
        assert_eq!(frame.end_sequence(), 10);
        let records: Vec<_> = frame.records().map(Option::unwrap).collect();
        let seen: Vec<(u8, u64, usize)> = records
            .iter()
            .map(|r| (r.kind, r.sequence, r.payload.len()))
            .collect();
        assert_eq!(seen, [(1, 7, 3), (2, 8, 0), (3, 9, 300)]);
        assert_eq!(records[0].payload, b"abc");
    }

    #[test]
    fn every_flipped_bit_is_detected() {
        let bytes = framed(1, 0, &[(1, b"some payload"), (4, b"more")]);
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(
                !matches!(decode_frame(&damaged, 0), FrameOutcome::Frame(_)),
                "bit {bit} flipped went unnoticed"
            );
        }
    }

    #[test]
    fn every_cut_short_frame_is_incomplete() {
        let bytes = framed(3, 2, &[(1, b"payload")]);
        for cut in 0..bytes.len() {
            assert_eq!(
                decode_frame(&bytes[..cut], 0),
                FrameOutcome::Incomplete,
                "{cut}"
            );
        }
    }

    #[test]
    fn a_block_of_zeros_inside_a_frame_is_detected() {
        let payload = vec![0x5a; 10_000];
        let bytes = framed(1, 0, &[(1, &payload), (2, &payload)]);
        for hole in [0, 4096, 8192, 16_384] {
            let mut damaged = bytes.clone();
            let end = (hole + 4096).min(damaged.len());
            damaged[hole..end].fill(0);
            assert!(
                !matches!(decode_frame(&damaged, 0), FrameOutcome::Frame(_)),
                "a hole at {hole} went unnoticed"
            );
        }
    }

    #[test]
    fn zeros_are_padding_and_other_bytes_are_no_frame() {
        assert_eq!(decode_frame(&[0; 4096], 0), FrameOutcome::ZeroTail);
        assert_eq!(decode_frame(&[0, 0], 0), FrameOutcome::ZeroTail);
        assert_eq!(decode_frame(&[], 0), FrameOutcome::Incomplete);
        assert_eq!(
            decode_frame(&[1, 0, 0, 0, 9], 0),
            FrameOutcome::Corrupt(FrameCorruption::Magic(1))
        );
    }

    #[test]
    fn a_checksummed_but_inconsistent_frame_is_corrupt() {
        // Entries that claim more bytes than the frame holds, with a valid checksum.
        let mut entries = Vec::new();
        encode_entry(&mut entries, 1, b"abcdef");
        entries[0] = 200;
        let mut bytes = frame_header(0, 1, 0, 1, &entries).to_vec();
        bytes.extend_from_slice(&entries);
        assert_eq!(
            decode_frame(&bytes, 0),
            FrameOutcome::Corrupt(FrameCorruption::Inconsistent("entry lengths"))
        );
        // A count that disagrees with the entries.
        let mut entries = Vec::new();
        encode_entry(&mut entries, 1, b"abc");
        let mut bytes = frame_header(0, 1, 0, 2, &entries).to_vec();
        bytes.extend_from_slice(&entries);
        assert_eq!(
            decode_frame(&bytes, 0),
            FrameOutcome::Corrupt(FrameCorruption::Inconsistent("entry count"))
        );
    }

    #[test]
    fn the_next_valid_frame_is_found_past_damage() {
        let mut bytes = framed(1, 0, &[(1, b"first")]);
        let second_at = bytes.len();
        encode_frame(&mut bytes, 2, 1, &[(1, b"second")]);
        // The same frame checksummed for another offset is no frame here.
        let elsewhere = framed(3, 2, &[(1, b"third")]);
        bytes.extend_from_slice(&elsewhere);
        assert!(matches!(
            decode_frame(&elsewhere, 0),
            FrameOutcome::Frame(_)
        ));
        bytes[10] ^= 1;
        let (at, frame) = next_valid_frame(&bytes, 1).unwrap();
        assert_eq!((at, frame.first_sequence), (second_at, 2));
        assert!(next_valid_frame(&bytes, second_at + 1).is_none());
    }

    #[test]
    fn random_damage_never_panics_and_never_passes_as_the_original() {
        let original = framed(40, 39, &[(1, b"alpha"), (2, &[7; 64]), (3, b"")]);
        let mut prng = Prng(0x5eed_f4a3);
        for _ in 0..20_000 {
            let bytes = mutate(&mut prng, &original);
            if let FrameOutcome::Frame(frame) = decode_frame(&bytes, 0) {
                // Only an unchanged frame (mutations that rewrote a byte with itself).
                assert_eq!(&bytes[..frame.length_total], &original[..]);
            }
            let _ = next_valid_frame(&bytes, 0);
        }
    }
}
