//! Recovery: reads one shard's segments in log order, hands every record to the shard, and
//! decides where the log really ends, before the shard serves anything.
//!
//! Segments hold batch frames (format 2, `frame`), or, in logs written before frames
//! existed, bare records (format 1, `record`); the first bytes of a segment tell which.
//! Format-1 segments are read as they are and never written again: a log upgrades as
//! retention deletes its old segments.
//!
//! The rules, from DESIGN.md "Durability":
//!
//! - Damage in the last segment after which no later frame says the damaged records had
//!   been synced is a torn write, whatever its shape (a cut, a hole of zeros, garbage, a
//!   later block of the same write that did persist): it was never acknowledged, so it is
//!   cut off, with everything after it. So is a zeroed tail (direct I/O pads every write).
//! - Any other damage is corruption and recovery fails, naming the file and offset: damage
//!   in a segment that is not the last (a segment is synced before the next one is
//!   created), a frame out of sequence, a gap between segments (a missing file), or damage
//!   followed by a frame written after the damaged records were synced.
//! - What recovery keeps becomes durable before the shard serves: the last segment is
//!   synced (after a SIGKILL the page cache may hold records no fdatasync covered yet,
//!   and new frames would claim them as synced).
//!
//! A format-1 segment has no `synced_through` to go by: damage in its last segment counts
//! as a torn tail only when no record with a valid checksum and a later sequence follows.
//!
//! Recovery uses blocking calls: it runs at start-up, before the shard serves.

use crate::wal::disk::Disk;
use crate::wal::frame::{
    decode_frame, next_valid_frame, FrameCorruption, FrameOutcome, ENTRY_HEADER_BYTES, FRAME_MAGIC,
};
use crate::wal::record::{
    decode_record, peek_sequence, CorruptReason, DecodeOutcome, Record, RECORD_OVERHEAD_BYTES,
};
use crate::wal::segment::{SegmentFile, SEGMENT_BYTES_CEILING, SEQUENCE_FIRST};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// What recovery found in one segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSummary {
    pub path: PathBuf,
    pub first_sequence: u64,
    pub records: u64,
    /// Where the valid records end (the file may be longer: padding, a torn tail).
    pub records_end: u64,
    /// When the file was last written, in ms since the Unix epoch, read before recovery
    /// cut anything: every record in it had been appended by then. Retention bounds the
    /// age of records with it after a restart. `None` where the filesystem has no time.
    pub modified_ms: Option<u64>,
}

/// The end of the last segment that recovery cuts off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Truncation {
    pub path: PathBuf,
    /// The file's length after the cut: the end of the last valid record.
    pub offset: u64,
    pub bytes_removed: u64,
    /// Some byte cut was not zero: a torn write, not only the zeros that direct I/O
    /// pads writes with and preallocation grows segments with.
    pub torn: bool,
}

/// The outcome of a successful recovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recovery {
    /// In log order.
    pub segments: Vec<SegmentSummary>,
    pub records: u64,
    /// The sequence number the shard's next record takes.
    pub next_sequence: u64,
    /// The torn or zeroed tail of the last segment, if there was one.
    pub truncation: Option<Truncation>,
    /// Segments written in log format 1 (before batch frames), read as they are.
    pub legacy_segments: usize,
}

/// Why recovery refuses to start the shard.
#[derive(Debug)]
pub struct RecoveryError {
    pub path: PathBuf,
    pub offset: u64,
    pub problem: RecoveryProblem,
}

#[derive(Debug)]
pub enum RecoveryProblem {
    Io(io::Error),
    SegmentTooLarge {
        bytes: u64,
    },
    /// The previous segment ended at `expected`, this one starts elsewhere.
    MissingSegment {
        expected: u64,
        found: u64,
    },
    SequenceOutOfOrder {
        expected: u64,
        found: u64,
    },
    /// A format-1 record at the last sequence number there is: nothing could follow it,
    /// and payd never writes one.
    SequenceOverflow,
    Corrupt(CorruptReason),
    /// A batch frame that does not check out.
    FrameCorrupt(FrameCorruption),
    /// Damage in the last segment, followed at `frame_at` by a frame written after the
    /// damaged records had been synced, so they may have been acknowledged.
    DamageBeforeLaterFrame {
        frame_at: u64,
        synced_through: u64,
    },
    /// A segment that is not the last ends inside a record.
    CutShort,
    /// Non-zero bytes after zero padding in a segment that is not the last.
    BytesAfterPadding,
    /// Damage in the last segment with a valid later record at `valid_record_at`.
    DamageBeforeValidRecord {
        valid_record_at: u64,
    },
    /// The record is intact but the shard could not make sense of it.
    Rejected(String),
}

impl fmt::Display for RecoveryProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryProblem::Io(error) => write!(f, "i/o error: {error}"),
            RecoveryProblem::SegmentTooLarge { bytes } => write!(
                f,
                "segment of {bytes} bytes is above the {SEGMENT_BYTES_CEILING} bytes ceiling"
            ),
            RecoveryProblem::MissingSegment { expected, found } => write!(
                f,
                "a segment is missing: records from sequence {expected} on are absent, \
                 this segment starts at {found}"
            ),
            RecoveryProblem::SequenceOutOfOrder { expected, found } => write!(
                f,
                "record has sequence {found} where {expected} was expected"
            ),
            RecoveryProblem::SequenceOverflow => {
                write!(f, "record at the last sequence number, {}", u64::MAX)
            }
            RecoveryProblem::Corrupt(reason) => write!(f, "{reason}"),
            RecoveryProblem::FrameCorrupt(reason) => write!(f, "{reason}"),
            RecoveryProblem::DamageBeforeLaterFrame {
                frame_at,
                synced_through,
            } => write!(
                f,
                "damaged batch frame followed at offset {frame_at} by one written after \
                 sequence {synced_through} was synced: acknowledged records are damaged"
            ),
            RecoveryProblem::CutShort => write!(f, "segment ends inside a record"),
            RecoveryProblem::BytesAfterPadding => {
                write!(f, "non-zero bytes after the zero padding")
            }
            RecoveryProblem::DamageBeforeValidRecord { valid_record_at } => write!(
                f,
                "damaged record followed by a valid one at offset {valid_record_at}"
            ),
            RecoveryProblem::Rejected(reason) => write!(f, "record rejected: {reason}"),
        }
    }
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write-ahead log recovery failed in {} at offset {}: {}; refusing to start this shard",
            self.path.display(),
            self.offset,
            self.problem
        )
    }
}

impl std::error::Error for RecoveryError {}

/// Called with every intact record in log order. An `Err` (a payload the shard cannot
/// decode, say) fails recovery at that record's file and offset.
pub type RecordVisitor<'v> = dyn FnMut(Record<'_>) -> Result<(), String> + 'v;

/// Reads the shard's log and hands every record to `visit`, then cuts off the torn or
/// zeroed tail of the last segment and syncs it. A shard directory that does not exist
/// holds an empty log.
///
/// Records of the last segment reach `visit` before recovery knows whether damage
/// follows them: on an error, the caller throws away what it rebuilt.
pub fn recover(shard_dir: &Path, visit: &mut RecordVisitor<'_>) -> Result<Recovery, RecoveryError> {
    recover_on(&Disk::Os, shard_dir, visit)
}

/// `recover` on a given disk.
pub fn recover_on(
    disk: &Disk,
    shard_dir: &Path,
    visit: &mut RecordVisitor<'_>,
) -> Result<Recovery, RecoveryError> {
    let recovery = scan_on(disk, shard_dir, visit)?;
    let io_error = |path: &Path, offset, error| RecoveryError {
        path: path.to_path_buf(),
        offset,
        problem: RecoveryProblem::Io(error),
    };
    if let Some(truncation) = &recovery.truncation {
        disk.cut(&truncation.path, truncation.offset)
            .map_err(|error| io_error(&truncation.path, truncation.offset, error))?;
    } else if let Some(last) = recovery.segments.last() {
        // Keeps what was read: records a SIGKILL left unsynced in the page cache become
        // durable before new frames are written behind them.
        disk.cut(&last.path, last.records_end)
            .map_err(|error| io_error(&last.path, last.records_end, error))?;
    }
    Ok(recovery)
}

/// Like `recover`, but changes nothing on disk: `truncation` is what `recover` would cut.
pub fn scan(shard_dir: &Path, visit: &mut RecordVisitor<'_>) -> Result<Recovery, RecoveryError> {
    scan_on(&Disk::Os, shard_dir, visit)
}

pub(crate) fn scan_on(
    disk: &Disk,
    shard_dir: &Path,
    visit: &mut RecordVisitor<'_>,
) -> Result<Recovery, RecoveryError> {
    let segments = disk
        .list_segments(shard_dir)
        .map_err(|error| RecoveryError {
            path: shard_dir.to_path_buf(),
            offset: 0,
            problem: RecoveryProblem::Io(error),
        })?;
    let mut recovery = Recovery {
        segments: Vec::with_capacity(segments.len()),
        records: 0,
        next_sequence: segments
            .first()
            .map_or(SEQUENCE_FIRST, |s| s.first_sequence),
        truncation: None,
        legacy_segments: 0,
    };
    for (index, segment) in segments.iter().enumerate() {
        if segment.first_sequence != recovery.next_sequence {
            return Err(RecoveryError {
                path: segment.path.clone(),
                offset: 0,
                problem: RecoveryProblem::MissingSegment {
                    expected: recovery.next_sequence,
                    found: segment.first_sequence,
                },
            });
        }
        let (data, modified_ms) = read_segment(disk, &segment.path)?;
        let is_last = index + 1 == segments.len();
        if reads_as_legacy(&data, segment.first_sequence) {
            recovery.legacy_segments += 1;
        }
        let summary = SegmentSummary {
            modified_ms,
            ..scan_segment(segment, &data, is_last, visit)?
        };
        if is_last && summary.records_end < data.len() as u64 {
            let cut = &data[summary.records_end as usize..];
            recovery.truncation = Some(Truncation {
                path: segment.path.clone(),
                offset: summary.records_end,
                bytes_removed: cut.len() as u64,
                torn: cut.iter().any(|&byte| byte != 0),
            });
        }
        recovery.records += summary.records;
        recovery.next_sequence = segment.first_sequence + summary.records;
        recovery.segments.push(summary);
    }
    Ok(recovery)
}

/// Hands every record of one segment that is no longer written (not the last) to
/// `visit`, with the same checks as recovery: any damage in it is corruption. Retention
/// reads the segments it is about to delete with this.
pub fn replay_closed_segment(
    segment: &SegmentFile,
    visit: &mut RecordVisitor<'_>,
) -> Result<SegmentSummary, RecoveryError> {
    let (data, modified_ms) = read_segment(&Disk::Os, &segment.path)?;
    Ok(SegmentSummary {
        modified_ms,
        ..scan_segment(segment, &data, false, visit)?
    })
}

/// A segment's bytes, and when it was last written (ms since the Unix epoch). Nothing
/// writes a log while it is read (the data directory is locked, the shard not open), so
/// that time bounds every record read.
fn read_segment(disk: &Disk, path: &Path) -> Result<(Vec<u8>, Option<u64>), RecoveryError> {
    let error = |offset, problem| RecoveryError {
        path: path.to_path_buf(),
        offset,
        problem,
    };
    let bytes = disk
        .segment_bytes(path)
        .map_err(|e| error(0, RecoveryProblem::Io(e)))?;
    if bytes > SEGMENT_BYTES_CEILING {
        return Err(error(0, RecoveryProblem::SegmentTooLarge { bytes }));
    }
    disk.read_segment(path)
        .map_err(|e| error(0, RecoveryProblem::Io(e)))
}

/// How far `read_records` got in a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordsRead {
    /// The sequence after the last record handed over.
    pub next_sequence: u64,
    /// Where the first bytes that are not a valid record or frame start, if the walk
    /// stopped at such bytes rather than at `end_sequence` or at padding.
    pub unreadable_at: Option<usize>,
}

/// Hands the records of one segment's bytes below `end_sequence` to `visit`, in either
/// format, and stops at the first bytes that are not a valid record or frame (a segment
/// being written ends so) without judging them: the caller knows whether that is the
/// writer's tail or damage. An `Err` from `visit` ends the walk with it.
pub fn read_records(
    data: &[u8],
    first_sequence: u64,
    end_sequence: u64,
    visit: &mut RecordVisitor<'_>,
) -> Result<RecordsRead, String> {
    let legacy = is_legacy(data);
    let mut offset = 0;
    let mut expected = first_sequence;
    // Bounded: every frame or record moves the offset forward by at least its framing.
    while offset < data.len() && expected < end_sequence {
        let length_total = if legacy {
            match decode_record(&data[offset..]) {
                DecodeOutcome::Record(record) if record.sequence == expected => {
                    let Some(next) = expected.checked_add(1) else {
                        return Ok(unreadable(expected, offset));
                    };
                    visit(record)?;
                    expected = next;
                    record.length_total
                }
                DecodeOutcome::ZeroTail if data[offset..].iter().all(|&b| b == 0) => break,
                _ => return Ok(unreadable(expected, offset)),
            }
        } else {
            match decode_frame(data, offset) {
                FrameOutcome::Frame(frame) if frame.first_sequence == expected => {
                    for record in frame.records() {
                        let record = record.expect("entries of a checked frame parse");
                        if record.sequence >= end_sequence {
                            break;
                        }
                        visit(record)?;
                        expected = record.sequence + 1;
                    }
                    frame.length_total
                }
                FrameOutcome::ZeroTail if data[offset..].iter().all(|&b| b == 0) => break,
                _ => return Ok(unreadable(expected, offset)),
            }
        };
        offset += length_total;
    }
    Ok(RecordsRead {
        next_sequence: expected,
        unreadable_at: None,
    })
}

fn unreadable(next_sequence: u64, offset: usize) -> RecordsRead {
    RecordsRead {
        next_sequence,
        unreadable_at: Some(offset),
    }
}

/// Whether a segment holds format-1 records: it starts with a valid one. Anything else
/// (frames, zeros, nothing, damage) is read as format 2.
pub(crate) fn is_legacy(data: &[u8]) -> bool {
    let starts_with_magic = data.len() >= 4 && data[..4] == FRAME_MAGIC.to_le_bytes();
    !starts_with_magic && matches!(decode_record(data), DecodeOutcome::Record(_))
}

/// Whether recovery reads a segment as format 1: it starts with a valid record, or its
/// first bytes are damaged and a valid record that belongs in it follows (the format-1
/// rules then judge the damage: corruption, since a later record was written after it).
/// A format-2 segment starts with a frame's magic, or with zeros where a torn first write
/// left none; read as format 2, a damaged format-1 segment would be cut whole.
fn reads_as_legacy(data: &[u8], first_sequence: u64) -> bool {
    let starts_with_magic = data.len() >= 4 && data[..4] == FRAME_MAGIC.to_le_bytes();
    is_legacy(data)
        || (!starts_with_magic
            && !data.is_empty()
            && valid_record_after(data, 0, first_sequence).is_some())
}

/// Walks one segment's records; returns where the valid ones end.
fn scan_segment(
    segment: &SegmentFile,
    data: &[u8],
    is_last: bool,
    visit: &mut RecordVisitor<'_>,
) -> Result<SegmentSummary, RecoveryError> {
    if reads_as_legacy(data, segment.first_sequence) {
        scan_legacy_segment(segment, data, is_last, visit)
    } else {
        scan_framed_segment(segment, data, is_last, visit)
    }
}

/// Walks the frames of a format-2 segment.
fn scan_framed_segment(
    segment: &SegmentFile,
    data: &[u8],
    is_last: bool,
    visit: &mut RecordVisitor<'_>,
) -> Result<SegmentSummary, RecoveryError> {
    let error = |offset: usize, problem| RecoveryError {
        path: segment.path.clone(),
        offset: offset as u64,
        problem,
    };
    let mut offset = 0;
    let mut expected = segment.first_sequence;
    // Bounded: every frame moves the offset forward by at least its header.
    while offset < data.len() {
        let damage = match decode_frame(data, offset) {
            FrameOutcome::Frame(frame) => {
                if frame.first_sequence != expected {
                    let found = frame.first_sequence;
                    let problem = RecoveryProblem::SequenceOutOfOrder { expected, found };
                    return Err(error(offset, problem));
                }
                for record in frame.records() {
                    // Invariant: decode_frame checked every entry.
                    let record = record.expect("entries of a checked frame parse");
                    visit(record)
                        .map_err(|reason| error(offset, RecoveryProblem::Rejected(reason)))?;
                }
                offset += frame.length_total;
                expected = frame.end_sequence();
                continue;
            }
            FrameOutcome::ZeroTail if data[offset..].iter().all(|&b| b == 0) => break,
            FrameOutcome::ZeroTail => RecoveryProblem::BytesAfterPadding,
            FrameOutcome::Incomplete => RecoveryProblem::CutShort,
            FrameOutcome::Corrupt(reason) => RecoveryProblem::FrameCorrupt(reason),
        };
        if !is_last {
            return Err(error(offset, damage));
        }
        if let Some(problem) = synced_frame_after(data, offset, expected) {
            return Err(error(offset, problem));
        }
        break;
    }
    Ok(SegmentSummary {
        path: segment.path.clone(),
        first_sequence: segment.first_sequence,
        records: expected - segment.first_sequence,
        records_end: offset as u64,
        modified_ms: None,
    })
}

/// A valid frame after damaged bytes that was written once the damaged records (from
/// sequence `expected` on) had been synced: proof that they may have been acknowledged.
/// Frames written before that sync prove nothing: the damage and they were one torn
/// stretch of unsynced writes. Nor does a frame whose first sequence the bytes between
/// could not have led to (each record takes at least an entry header): the writer never
/// wrote it there.
fn synced_frame_after(data: &[u8], damaged_at: usize, expected: u64) -> Option<RecoveryProblem> {
    let mut from = damaged_at + 1;
    // Bounded: `from` moves past each frame found.
    while let Some((at, frame)) = next_valid_frame(data, from) {
        let records_between_max = ((at - damaged_at) / ENTRY_HEADER_BYTES) as u64;
        let reachable = frame.first_sequence <= expected.saturating_add(records_between_max);
        if reachable && frame.first_sequence >= expected && frame.synced_through >= expected {
            return Some(RecoveryProblem::DamageBeforeLaterFrame {
                frame_at: at as u64,
                synced_through: frame.synced_through,
            });
        }
        from = at + 1;
    }
    None
}

/// Walks the records of a format-1 segment.
fn scan_legacy_segment(
    segment: &SegmentFile,
    data: &[u8],
    is_last: bool,
    visit: &mut RecordVisitor<'_>,
) -> Result<SegmentSummary, RecoveryError> {
    let error = |offset: usize, problem| RecoveryError {
        path: segment.path.clone(),
        offset: offset as u64,
        problem,
    };
    let mut offset = 0;
    let mut expected = segment.first_sequence;
    // Bounded: every record moves the offset forward by at least RECORD_OVERHEAD_BYTES.
    while offset < data.len() {
        let damage = match decode_record(&data[offset..]) {
            DecodeOutcome::Record(record) => {
                if record.sequence != expected {
                    let found = record.sequence;
                    let problem = RecoveryProblem::SequenceOutOfOrder { expected, found };
                    return Err(error(offset, problem));
                }
                let Some(next) = expected.checked_add(1) else {
                    return Err(error(offset, RecoveryProblem::SequenceOverflow));
                };
                visit(record).map_err(|reason| error(offset, RecoveryProblem::Rejected(reason)))?;
                offset += record.length_total;
                expected = next;
                continue;
            }
            DecodeOutcome::ZeroTail if data[offset..].iter().all(|&b| b == 0) => break,
            DecodeOutcome::ZeroTail => RecoveryProblem::BytesAfterPadding,
            DecodeOutcome::Incomplete => RecoveryProblem::CutShort,
            DecodeOutcome::Corrupt(reason) => RecoveryProblem::Corrupt(reason),
        };
        if !is_last {
            return Err(error(offset, damage));
        }
        if let Some(valid_record_at) = valid_record_after(data, offset, expected) {
            let valid_record_at = valid_record_at as u64;
            let problem = RecoveryProblem::DamageBeforeValidRecord { valid_record_at };
            return Err(error(offset, problem));
        }
        break;
    }
    Ok(SegmentSummary {
        path: segment.path.clone(),
        first_sequence: segment.first_sequence,
        records: expected - segment.first_sequence,
        records_end: offset as u64,
        modified_ms: None,
    })
}

/// Finds a record after damaged bytes that must have been written after them: a valid
/// checksum and a sequence number from `expected` on. Only sequence numbers that could
/// fit in the remaining bytes are checksummed, which keeps the search cheap.
fn valid_record_after(data: &[u8], damaged_at: usize, expected: u64) -> Option<usize> {
    let records_room = ((data.len() - damaged_at) / RECORD_OVERHEAD_BYTES) as u64;
    let sequence_max = expected.saturating_add(records_room);
    (damaged_at + 1..data.len()).find(|&at| {
        let plausible =
            peek_sequence(&data[at..]).is_some_and(|s| (expected..=sequence_max).contains(&s));
        plausible && matches!(decode_record(&data[at..]), DecodeOutcome::Record(_))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::frame::FRAME_HEADER_BYTES;
    use crate::wal::record::encode_record;
    use crate::wal::segment::{list_segments, segment_file_name};

    /// Writes a segment holding records `first..first + count`, each with a payload that
    /// names its sequence; returns the offset where each record starts.
    fn write_segment(dir: &Path, first: u64, count: u64) -> Vec<usize> {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        for sequence in first..first + count {
            offsets.push(bytes.len());
            let payload = format!("record {sequence}");
            encode_record(&mut bytes, 1, sequence, payload.as_bytes());
        }
        std::fs::write(dir.join(segment_file_name(first)), bytes).unwrap();
        offsets
    }

    fn path_of(dir: &Path, first: u64) -> PathBuf {
        dir.join(segment_file_name(first))
    }

    fn append_bytes(path: &Path, bytes: &[u8]) {
        let mut data = std::fs::read(path).unwrap();
        data.extend_from_slice(bytes);
        std::fs::write(path, data).unwrap();
    }

    fn damage_byte(path: &Path, offset: usize) {
        let mut data = std::fs::read(path).unwrap();
        data[offset] ^= 0x40;
        std::fs::write(path, data).unwrap();
    }

    /// Recovers and returns the sequence numbers seen, checking each payload.
    fn recover_sequences(dir: &Path) -> Result<(Recovery, Vec<u64>), RecoveryError> {
        let mut seen = Vec::new();
        let recovery = recover(dir, &mut |record| {
            assert_eq!(
                record.payload,
                format!("record {}", record.sequence).as_bytes()
            );
            seen.push(record.sequence);
            Ok(())
        })?;
        Ok((recovery, seen))
    }

    #[test]
    fn absent_directory_is_an_empty_log() {
        let dir = tempfile::tempdir().unwrap();
        let (recovery, seen) = recover_sequences(&dir.path().join("shard-0000")).unwrap();
        assert_eq!(recovery.next_sequence, SEQUENCE_FIRST);
        assert!(seen.is_empty() && recovery.segments.is_empty());
    }

    #[test]
    fn clean_segments_are_replayed_in_order() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 5, 3);
        write_segment(dir.path(), 8, 4);
        let (recovery, seen) = recover_sequences(dir.path()).unwrap();
        assert_eq!(seen, (5..12).collect::<Vec<u64>>());
        assert_eq!(recovery.next_sequence, 12);
        assert_eq!(recovery.records, 7);
        assert_eq!(recovery.truncation, None);
        assert_eq!(recovery.segments[1].first_sequence, 8);
        assert_eq!(recovery.segments[1].records, 4);
    }

    #[test]
    fn each_segment_reports_when_it_was_last_written_before_the_cut() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        write_segment(dir.path(), 4, 2);
        // Zero padding at the tail of the last segment: recovery cuts it after reading.
        append_bytes(&path_of(dir.path(), 4), &[0; 64]);
        let epoch_ms = |ms| std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        for (first, modified_ms) in [(1, 1_700_000_000_123), (4, 1_700_000_050_456)] {
            let file = std::fs::File::options()
                .write(true)
                .open(path_of(dir.path(), first))
                .unwrap();
            file.set_modified(epoch_ms(modified_ms)).unwrap();
        }
        let (recovery, _) = recover_sequences(dir.path()).unwrap();
        assert!(recovery.truncation.is_some());
        let times: Vec<Option<u64>> = recovery.segments.iter().map(|s| s.modified_ms).collect();
        assert_eq!(times, [Some(1_700_000_000_123), Some(1_700_000_050_456)]);
        let segment = list_segments(dir.path()).unwrap().remove(0);
        let closed = replay_closed_segment(&segment, &mut |_| Ok(())).unwrap();
        assert_eq!(closed.modified_ms, Some(1_700_000_000_123));
    }

    #[test]
    fn torn_tail_of_the_last_segment_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 2);
        let offsets = write_segment(dir.path(), 3, 4);
        let path = path_of(dir.path(), 3);
        let full_length = std::fs::metadata(&path).unwrap().len();
        // The last record was being written when the power went.
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(full_length - 5)
            .unwrap();
        let (recovery, seen) = recover_sequences(dir.path()).unwrap();
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        assert_eq!(recovery.next_sequence, 6);
        let truncation = recovery.truncation.unwrap();
        assert_eq!(truncation.offset, offsets[3] as u64);
        assert_eq!(
            truncation.bytes_removed,
            full_length - 5 - offsets[3] as u64
        );
        assert!(truncation.torn, "a torn record is not padding");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), offsets[3] as u64);
        // A second recovery finds a clean log.
        let (again, _) = recover_sequences(dir.path()).unwrap();
        assert_eq!((again.next_sequence, again.truncation), (6, None));
    }

    #[test]
    fn torn_tail_with_a_damaged_checksum_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 3);
        damage_byte(&path_of(dir.path(), 1), offsets[2] + RECORD_OVERHEAD_BYTES);
        let (recovery, seen) = recover_sequences(dir.path()).unwrap();
        assert_eq!(seen, [1, 2]);
        assert_eq!(recovery.truncation.unwrap().offset, offsets[2] as u64);
    }

    #[test]
    fn zero_padded_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        let path = path_of(dir.path(), 1);
        let records_end = std::fs::metadata(&path).unwrap().len();
        append_bytes(&path, &vec![0; 4096 - records_end as usize % 4096]);
        let (recovery, seen) = recover_sequences(dir.path()).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        let truncation = recovery.truncation.unwrap();
        assert_eq!(truncation.offset, records_end);
        assert!(!truncation.torn);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), records_end);
    }

    #[test]
    fn zero_padding_ends_a_segment_that_is_not_the_last() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        append_bytes(&path_of(dir.path(), 1), &[0; 1000]);
        write_segment(dir.path(), 4, 1);
        let (recovery, seen) = recover_sequences(dir.path()).unwrap();
        assert_eq!(seen, [1, 2, 3, 4]);
        assert_eq!(recovery.truncation, None);
    }

    #[test]
    fn corrupt_middle_of_the_last_segment_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 5);
        let path = path_of(dir.path(), 1);
        damage_byte(&path, offsets[1] + RECORD_OVERHEAD_BYTES + 2);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(
            (error.path.as_path(), error.offset),
            (path.as_path(), offsets[1] as u64)
        );
        assert!(matches!(
            error.problem,
            RecoveryProblem::DamageBeforeValidRecord { valid_record_at } if valid_record_at == offsets[2] as u64
        ));
        let message = error.to_string();
        assert!(message.contains(&segment_file_name(1)), "{message}");
        assert!(
            message.contains(&format!("offset {}", offsets[1])),
            "{message}"
        );
        // Nothing was cut.
        assert_eq!(
            std::fs::metadata(&path).unwrap().len() as usize,
            offsets[4] + 25
        );
    }

    #[test]
    fn corrupt_length_in_the_middle_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 4);
        damage_byte(&path_of(dir.path(), 1), offsets[2] + 1);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(error.offset, offsets[2] as u64);
    }

    #[test]
    fn any_damage_in_a_segment_that_is_not_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 3);
        write_segment(dir.path(), 4, 2);
        let first = path_of(dir.path(), 1);
        // Even at its tail: segments are synced before the next one is created.
        damage_byte(&first, offsets[2] + RECORD_OVERHEAD_BYTES);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(
            (error.path.as_path(), error.offset),
            (first.as_path(), offsets[2] as u64)
        );
        assert!(matches!(
            error.problem,
            RecoveryProblem::Corrupt(CorruptReason::ChecksumMismatch)
        ));
    }

    #[test]
    fn cut_short_segment_that_is_not_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 3);
        write_segment(dir.path(), 4, 2);
        let first = path_of(dir.path(), 1);
        let length = std::fs::metadata(&first).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&first)
            .unwrap();
        file.set_len(length - 1).unwrap();
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(error.offset, offsets[2] as u64);
        assert!(matches!(error.problem, RecoveryProblem::CutShort));
    }

    #[test]
    fn bytes_after_padding_in_a_segment_that_is_not_the_last_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 2);
        let first = path_of(dir.path(), 1);
        let records_end = std::fs::metadata(&first).unwrap().len();
        append_bytes(&first, &[0, 0, 0, 0, 0, 0, 9, 0]);
        write_segment(dir.path(), 3, 1);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(error.offset, records_end);
        assert!(matches!(error.problem, RecoveryProblem::BytesAfterPadding));
    }

    #[test]
    fn empty_last_segment_sets_the_next_sequence() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        write_segment(dir.path(), 4, 0);
        let (recovery, seen) = recover_sequences(dir.path()).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!(recovery.next_sequence, 4);
        assert_eq!(recovery.segments.len(), 2);
        assert_eq!(recovery.truncation, None);
    }

    #[test]
    fn lone_empty_segment_is_an_empty_log_that_starts_at_its_name() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 0x40, 0);
        let (recovery, seen) = recover_sequences(dir.path()).unwrap();
        assert!(seen.is_empty());
        assert_eq!(recovery.next_sequence, 0x40);
    }

    #[test]
    fn empty_segment_that_is_not_the_last_leaves_a_gap() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 2);
        write_segment(dir.path(), 3, 0);
        write_segment(dir.path(), 5, 1);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(error.path, path_of(dir.path(), 5));
        assert!(matches!(
            error.problem,
            RecoveryProblem::MissingSegment {
                expected: 3,
                found: 5
            }
        ));
    }

    #[test]
    fn missing_segment_is_refused_naming_the_file_after_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        write_segment(dir.path(), 4, 3);
        write_segment(dir.path(), 7, 3);
        std::fs::remove_file(path_of(dir.path(), 4)).unwrap();
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!((&error.path, error.offset), (&path_of(dir.path(), 7), 0));
        assert!(matches!(
            error.problem,
            RecoveryProblem::MissingSegment {
                expected: 4,
                found: 7
            }
        ));
        assert!(error.to_string().contains("missing"));
    }

    #[test]
    fn overlapping_segments_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        write_segment(dir.path(), 3, 2);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(error.path, path_of(dir.path(), 3));
    }

    #[test]
    fn record_with_the_wrong_sequence_is_refused_even_at_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 2);
        let path = path_of(dir.path(), 1);
        let mut stray = Vec::new();
        encode_record(&mut stray, 1, 9, b"record 9");
        append_bytes(&path, &stray);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!(error.offset, (offsets[1] + 25) as u64);
        assert!(matches!(
            error.problem,
            RecoveryProblem::SequenceOutOfOrder {
                expected: 3,
                found: 9
            }
        ));
    }

    #[test]
    fn rejected_record_fails_at_its_offset() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_segment(dir.path(), 1, 3);
        let error = recover(dir.path(), &mut |record| {
            if record.sequence == 2 {
                Err("unknown kind".to_string())
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(error.offset, offsets[1] as u64);
        assert!(error.to_string().contains("unknown kind"));
    }

    #[test]
    fn scan_changes_nothing_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 2);
        let path = path_of(dir.path(), 1);
        append_bytes(&path, &[0; 100]);
        let length = std::fs::metadata(&path).unwrap().len();
        let recovery = scan(dir.path(), &mut |_| Ok(())).unwrap();
        assert_eq!(recovery.truncation.unwrap().offset, length - 100);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), length);
    }

    /// Writes a format-2 segment starting at `first`: one frame per `(records,
    /// synced_through)`, records with payloads that name their sequence (padded to
    /// `payload_bytes`). Returns where each frame starts.
    fn write_framed_segment(
        dir: &Path,
        first: u64,
        frames: &[(u64, u64)],
        payload_bytes: usize,
    ) -> Vec<usize> {
        let mut bytes = Vec::new();
        let mut offsets = Vec::new();
        let mut sequence = first;
        for &(count, synced_through) in frames {
            offsets.push(bytes.len());
            let payloads: Vec<Vec<u8>> = (sequence..sequence + count)
                .map(|s| padded_payload(s, payload_bytes))
                .collect();
            let records: Vec<(u8, &[u8])> = payloads.iter().map(|p| (1, p.as_slice())).collect();
            crate::wal::frame::encode_frame(&mut bytes, sequence, synced_through, &records);
            sequence += count;
        }
        std::fs::write(dir.join(segment_file_name(first)), bytes).unwrap();
        offsets
    }

    fn padded_payload(sequence: u64, bytes: usize) -> Vec<u8> {
        let mut payload = format!("record {sequence}").into_bytes();
        payload.resize(bytes.max(payload.len()), b'.');
        payload
    }

    /// Recovers and returns the sequences seen, checking each padded payload.
    fn recover_framed(dir: &Path) -> Result<(Recovery, Vec<u64>), RecoveryError> {
        let mut seen = Vec::new();
        let recovery = recover(dir, &mut |record| {
            let name = format!("record {}", record.sequence);
            assert!(record.payload.starts_with(name.as_bytes()));
            seen.push(record.sequence);
            Ok(())
        })?;
        Ok((recovery, seen))
    }

    fn zero_range(path: &Path, range: std::ops::Range<usize>) {
        let mut data = std::fs::read(path).unwrap();
        data[range].fill(0);
        std::fs::write(path, data).unwrap();
    }

    #[test]
    fn framed_segments_are_replayed_in_order_after_legacy_ones() {
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        write_framed_segment(dir.path(), 4, &[(2, 3), (5, 5)], 10);
        let (recovery, seen) = recover_framed(dir.path()).unwrap();
        assert_eq!(seen, (1..=10).collect::<Vec<u64>>());
        assert_eq!((recovery.next_sequence, recovery.legacy_segments), (11, 1));
        assert_eq!(recovery.truncation, None);
    }

    #[test]
    fn a_torn_write_whose_later_block_persisted_is_cut_and_the_shard_starts() {
        // The last write held two frames of several blocks each, neither synced; the
        // power cut kept a later block and lost an earlier one.
        // Blocks 0 to 2 of the write hold the second frame (9 062 bytes).
        for hole_block in 0..3 {
            let dir = tempfile::tempdir().unwrap();
            let offsets = write_framed_segment(dir.path(), 1, &[(2, 0), (6, 2), (6, 2)], 1500);
            let path = path_of(dir.path(), 1);
            let hole = offsets[1] + hole_block * 4096;
            zero_range(&path, hole..hole + 4096);
            let (recovery, seen) = recover_framed(dir.path())
                .unwrap_or_else(|e| panic!("hole at block {hole_block}: {e}"));
            assert_eq!(seen, [1, 2], "hole at block {hole_block}");
            let truncation = recovery.truncation.unwrap();
            assert_eq!(truncation.offset, offsets[1] as u64);
            assert_eq!(std::fs::metadata(&path).unwrap().len(), offsets[1] as u64);
        }
    }

    #[test]
    fn every_shape_of_damage_in_the_unsynced_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_framed_segment(dir.path(), 1, &[(3, 0), (4, 3)], 700);
        let path = path_of(dir.path(), 1);
        let pristine = std::fs::read(&path).unwrap();
        let tail = offsets[1];
        let shapes: Vec<(&str, Vec<u8>)> = vec![
            ("cut short", pristine[..tail + 100].to_vec()),
            (
                "header only",
                pristine[..tail + FRAME_HEADER_BYTES].to_vec(),
            ),
            ("zeros", {
                let mut bytes = pristine.clone();
                bytes[tail + 40..].fill(0);
                bytes
            }),
            ("garbage", {
                let mut bytes = pristine.clone();
                bytes[tail + 200] ^= 0xff;
                bytes
            }),
            ("hole then data", {
                let mut bytes = pristine.clone();
                bytes[tail..tail + 64].fill(0);
                bytes
            }),
        ];
        for (shape, bytes) in shapes {
            std::fs::write(&path, &bytes).unwrap();
            let (recovery, seen) =
                recover_framed(dir.path()).unwrap_or_else(|e| panic!("{shape}: {e}"));
            assert_eq!(seen, [1, 2, 3], "{shape}");
            assert_eq!(recovery.next_sequence, 4, "{shape}");
            assert_eq!(
                std::fs::metadata(&path).unwrap().len(),
                tail as u64,
                "{shape}"
            );
        }
    }

    #[test]
    fn damage_followed_by_a_frame_written_after_its_sync_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The third frame was written once the second was synced (synced_through 6).
        let offsets = write_framed_segment(dir.path(), 1, &[(3, 0), (3, 3), (2, 6)], 50);
        let path = path_of(dir.path(), 1);
        damage_byte(&path, offsets[1] + FRAME_HEADER_BYTES + 7);
        let error = recover_framed(dir.path()).unwrap_err();
        assert_eq!(
            (error.path.as_path(), error.offset),
            (path.as_path(), offsets[1] as u64)
        );
        assert!(matches!(
            error.problem,
            RecoveryProblem::DamageBeforeLaterFrame { frame_at, synced_through: 6 }
                if frame_at == offsets[2] as u64
        ));
        assert!(error.to_string().contains("acknowledged"), "{error}");
        // Nothing was cut.
        let length = std::fs::metadata(&path).unwrap().len();
        assert!(length > offsets[2] as u64);
    }

    #[test]
    fn damage_in_a_framed_segment_that_is_not_the_last_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_framed_segment(dir.path(), 1, &[(3, 0), (3, 3)], 50);
        write_framed_segment(dir.path(), 7, &[(1, 6)], 50);
        let first = path_of(dir.path(), 1);
        damage_byte(&first, offsets[1] + FRAME_HEADER_BYTES + 1);
        let error = recover_framed(dir.path()).unwrap_err();
        assert_eq!(
            (error.path.as_path(), error.offset),
            (first.as_path(), offsets[1] as u64)
        );
        assert!(matches!(
            error.problem,
            RecoveryProblem::FrameCorrupt(FrameCorruption::ChecksumMismatch)
        ));
    }

    #[test]
    fn a_frame_out_of_sequence_is_refused_even_at_the_tail() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_framed_segment(dir.path(), 1, &[(2, 0)], 10);
        let path = path_of(dir.path(), 1);
        append_bytes(
            &path,
            &frame_at(offsets[0] + 32 + 2 * 15, 9, 2, &[(1, b"record 9")]),
        );
        let error = recover_framed(dir.path()).unwrap_err();
        assert_eq!(error.offset, offsets[0] as u64 + 32 + 2 * 15);
        assert!(matches!(
            error.problem,
            RecoveryProblem::SequenceOutOfOrder {
                expected: 3,
                found: 9
            }
        ));
    }

    #[test]
    fn read_records_stops_at_the_writers_tail_without_judging_it() {
        let dir = tempfile::tempdir().unwrap();
        let offsets = write_framed_segment(dir.path(), 5, &[(2, 4), (3, 6)], 10);
        let path = path_of(dir.path(), 5);
        let mut data = std::fs::read(&path).unwrap();
        data.truncate(offsets[1] + 10);
        let mut seen = Vec::new();
        let read = read_records(&data, 5, u64::MAX, &mut |record| {
            seen.push(record.sequence);
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, [5, 6]);
        assert_eq!(read.next_sequence, 7);
        assert_eq!(read.unreadable_at, Some(offsets[1]));
        // Stopping at a sequence inside a frame hands over only what comes before it.
        let data = std::fs::read(&path).unwrap();
        seen.clear();
        let read = read_records(&data, 5, 9, &mut |record| {
            seen.push(record.sequence);
            Ok(())
        })
        .unwrap();
        assert_eq!(
            (seen, read.next_sequence, read.unreadable_at),
            (vec![5, 6, 7, 8], 9, None)
        );
    }

    #[test]
    fn a_legacy_last_segment_damaged_at_its_start_with_valid_records_after_is_refused() {
        // A log written before frames: the last segment's first record was synced and
        // acknowledged (records after it prove it), then damaged. Read as format 2, its
        // first bytes are no frame and no frame follows: the whole segment would be cut.
        let dir = tempfile::tempdir().unwrap();
        write_segment(dir.path(), 1, 3);
        let offsets = write_segment(dir.path(), 4, 4);
        let last = path_of(dir.path(), 4);
        damage_byte(&last, RECORD_OVERHEAD_BYTES + 1);
        let length = std::fs::metadata(&last).unwrap().len();
        let error = recover_sequences(dir.path()).unwrap_err();
        assert_eq!((error.path.as_path(), error.offset), (last.as_path(), 0));
        assert!(matches!(
            error.problem,
            RecoveryProblem::DamageBeforeValidRecord { valid_record_at }
                if valid_record_at == offsets[1] as u64
        ));
        assert_eq!(
            std::fs::metadata(&last).unwrap().len(),
            length,
            "nothing cut"
        );
        // A closed one is refused too, as the record checksum it is.
        write_segment(dir.path(), 8, 1);
        let error = recover_sequences(dir.path()).unwrap_err();
        assert!(matches!(
            error.problem,
            RecoveryProblem::Corrupt(CorruptReason::ChecksumMismatch)
        ));
    }

    #[test]
    fn a_framed_segment_whose_first_block_was_lost_is_still_cut_as_torn() {
        // The first write of a fresh segment, never synced: its first block is lost and
        // later ones persisted. No format-1 record hides in the frames' bytes.
        let dir = tempfile::tempdir().unwrap();
        write_framed_segment(dir.path(), 1, &[(3, 0)], 50);
        write_framed_segment(dir.path(), 4, &[(4, 3), (5, 3), (6, 3)], 900);
        let last = path_of(dir.path(), 4);
        zero_range(&last, 0..4096);
        let (recovery, seen) = recover_framed(dir.path()).unwrap();
        assert_eq!(seen, [1, 2, 3]);
        assert_eq!((recovery.next_sequence, recovery.legacy_segments), (4, 0));
        assert!(recovery.truncation.unwrap().torn);
        assert_eq!(std::fs::metadata(&last).unwrap().len(), 0);
    }

    /// A frame encoded to be written at byte `position` of its segment.
    fn frame_at(position: usize, first: u64, synced: u64, records: &[(u8, &[u8])]) -> Vec<u8> {
        let mut bytes = vec![0; position];
        crate::wal::frame::encode_frame(&mut bytes, first, synced, records);
        bytes.split_off(position)
    }

    #[test]
    fn a_frame_forged_inside_a_payload_does_not_vouch_for_a_torn_write() {
        // A client's metadata value may hold any bytes, NUL included (JSON \u0000): here
        // a whole valid frame whose sequence numbers are above any the log will reach.
        let mut forged = Vec::new();
        let huge = 0x7f7f_7f7f_7f7f_7f7f;
        crate::wal::frame::encode_frame(&mut forged, huge, huge - 1, &[(1, b"x")]);
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        crate::wal::frame::encode_frame(&mut bytes, 1, 0, &[(1, b"record 1")]);
        let torn_at = bytes.len();
        // The last write, never synced: the client's payment sits in its second block.
        let filler = padded_payload(2, 5000);
        let mut payment = b"record 3 ".to_vec();
        payment.extend_from_slice(&forged);
        crate::wal::frame::encode_frame(&mut bytes, 2, 1, &[(1, &filler), (1, &payment)]);
        let path = path_of(dir.path(), 1);
        std::fs::write(&path, &bytes).unwrap();
        // The power cut kept the block with the payment and lost the one before it.
        zero_range(&path, torn_at..4096);
        let (recovery, seen) = recover_framed(dir.path()).unwrap();
        assert_eq!((seen, recovery.next_sequence), (vec![1], 2));
    }

    #[test]
    fn a_frame_whose_sequence_the_damage_could_not_lead_to_does_not_vouch() {
        // Even a client that guessed the very offset its forged frame lands at (so that
        // its checksum holds there) must also name a sequence that the records between
        // the damage and it could reach: a few kilobytes hold at most a few hundred.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        crate::wal::frame::encode_frame(&mut bytes, 1, 0, &[(1, b"record 1")]);
        let torn_at = bytes.len();
        let filler = padded_payload(2, 5000);
        let forged_at = torn_at + 32 + 2 * 5 + filler.len() + b"record 3 ".len();
        let huge = 0x7f7f_7f7f_7f7f_7f7f;
        let mut payment = b"record 3 ".to_vec();
        payment.extend_from_slice(&frame_at(forged_at, huge, huge - 1, &[(1, b"x")]));
        crate::wal::frame::encode_frame(&mut bytes, 2, 1, &[(1, &filler), (1, &payment)]);
        assert!(matches!(
            crate::wal::frame::decode_frame(&bytes, forged_at),
            FrameOutcome::Frame(_)
        ));
        let path = path_of(dir.path(), 1);
        std::fs::write(&path, &bytes).unwrap();
        zero_range(&path, torn_at..4096);
        let (recovery, seen) = recover_framed(dir.path()).unwrap();
        assert_eq!((seen, recovery.next_sequence), (vec![1], 2));
        // One that names a sequence the gap could reach is taken for the writer's: the
        // shard refuses to start rather than risk cutting acknowledged payments.
        let mut bytes = bytes[..torn_at].to_vec();
        let mut payment = b"record 3 ".to_vec();
        payment.extend_from_slice(&frame_at(forged_at, 4, 3, &[(1, b"x")]));
        crate::wal::frame::encode_frame(&mut bytes, 2, 1, &[(1, &filler), (1, &payment)]);
        std::fs::write(&path, &bytes).unwrap();
        zero_range(&path, torn_at..4096);
        assert!(recover_framed(dir.path()).is_err());
    }

    #[test]
    fn sequence_numbers_at_the_end_of_their_range_never_panic() {
        // Disk bytes may name any sequence: a record (or frame) at u64::MAX has no
        // successor. Recovery and read_records refuse or stop; they never overflow.
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        encode_record(&mut bytes, 1, u64::MAX, b"the last one");
        std::fs::write(path_of(dir.path(), u64::MAX), &bytes).unwrap();
        assert!(recover(dir.path(), &mut |_| Ok(())).is_err());
        let read = read_records(&bytes, u64::MAX, u64::MAX, &mut |_| Ok(()));
        assert_eq!(read.map(|r| r.next_sequence), Ok(u64::MAX));
        let mut framed = Vec::new();
        crate::wal::frame::encode_frame(&mut framed, u64::MAX, 0, &[(1, b"x")]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path_of(dir.path(), u64::MAX), &framed).unwrap();
        let _ = recover(dir.path(), &mut |_| Ok(()));
        let _ = read_records(&framed, u64::MAX, u64::MAX, &mut |_| Ok(()));
    }

    #[test]
    fn recovery_and_read_records_never_panic_on_random_segments() {
        use crate::wal::disk::SimDisk;
        use crate::wal::fuzz::{mutate, Prng};
        let names = [0, 1, 2, 3, 7, u64::MAX - 2, u64::MAX - 1, u64::MAX];
        let mut prng = Prng(0x0dd_5e9);
        let shard_dir = Path::new("/sim/shard-0000");
        for round in 0..20_000u64 {
            let sim = std::rc::Rc::new(SimDisk::new(round));
            let disk = Disk::Simulated(sim.clone());
            for _ in 0..1 + prng.below(3) {
                let first = names[prng.below(names.len())];
                let mut valid = Vec::new();
                let mut sequence = first;
                for _ in 0..prng.below(4) {
                    let count = 1 + prng.below(3) as u64;
                    let payload = vec![prng.next() as u8; prng.below(40)];
                    let records: Vec<(u8, &[u8])> = (0..count).map(|_| (1, &payload[..])).collect();
                    if sequence == 0 || prng.below(3) == 0 {
                        encode_record(&mut valid, 1, sequence, &payload);
                        sequence = sequence.wrapping_add(1);
                    } else {
                        let synced = sequence.saturating_sub(prng.below(3) as u64 + 1);
                        crate::wal::frame::encode_frame(&mut valid, sequence, synced, &records);
                        sequence = sequence.wrapping_add(count);
                    }
                }
                if prng.below(2) == 0 {
                    valid.resize(valid.len() + prng.below(64), 0);
                }
                let bytes = if valid.is_empty() {
                    valid
                } else {
                    mutate(&mut prng, &valid)
                };
                let path = shard_dir.join(segment_file_name(first));
                sim.create(&path);
                sim.write_at(&path, 0, &bytes).unwrap();
                let end = first.wrapping_add(prng.below(12) as u64);
                let _ = read_records(&bytes, first, end, &mut |_| Ok(()));
            }
            let _ = recover_on(&disk, shard_dir, &mut |_| Ok(()));
        }
    }
}
