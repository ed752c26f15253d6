//! Segment files: their names, their size limits, and listing them in a shard directory.
//!
//! A shard's log is a directory of segment files, each named by the sequence number of
//! its first record as 20 zero-padded hex digits and `.wal` (`00000000000000000001.wal`),
//! so the names sort in log order and a missing file shows as a gap in the numbers.

use crate::wal::record::RECORD_BYTES_MAX;
use std::io;
use std::path::{Path, PathBuf};

/// The sequence number of the first record a new shard writes.
pub const SEQUENCE_FIRST: u64 = 1;
/// A segment must hold a few of the largest records, so a roll-over always makes room.
pub const SEGMENT_BYTES_MIN: u64 = 4 * RECORD_BYTES_MAX as u64;
/// Recovery reads a whole segment into memory: this bounds what it will read.
pub const SEGMENT_BYTES_CEILING: u64 = 1 << 30;
/// Hex digits of the first sequence number in a segment's file name.
const SEGMENT_NAME_DIGITS: usize = 20;
const SEGMENT_SUFFIX: &str = ".wal";

/// A segment file found in a shard directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentFile {
    pub first_sequence: u64,
    pub path: PathBuf,
}

/// The file name of the segment whose first record has `first_sequence`.
pub fn segment_file_name(first_sequence: u64) -> String {
    format!(
        "{first_sequence:0width$x}{SEGMENT_SUFFIX}",
        width = SEGMENT_NAME_DIGITS
    )
}

/// The first sequence number a segment file name stands for; `None` if it is not one.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    let lowercase_hex = digits
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if digits.len() != SEGMENT_NAME_DIGITS || !lowercase_hex {
        return None;
    }
    u64::from_str_radix(digits, 16).ok()
}

/// The segment files of a shard directory, in log order. A missing directory holds none.
/// A `.wal` file whose name is not a segment name is an error: something wrote it that
/// should not have, and recovery must not guess.
pub fn list_segments(shard_dir: &Path) -> io::Result<Vec<SegmentFile>> {
    let entries = match std::fs::read_dir(shard_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if !name.ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        let first_sequence = parse_segment_file_name(name).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a segment file name", entry.path().display()),
            )
        })?;
        segments.push(SegmentFile {
            first_sequence,
            path: entry.path(),
        });
    }
    segments.sort_by_key(|segment| segment.first_sequence);
    Ok(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_in_log_order() {
        assert_eq!(segment_file_name(1), "00000000000000000001.wal");
        assert_eq!(segment_file_name(u64::MAX), "0000ffffffffffffffff.wal");
        for sequence in [0, 1, 0xabc, u64::MAX] {
            assert_eq!(
                parse_segment_file_name(&segment_file_name(sequence)),
                Some(sequence)
            );
        }
        assert!(segment_file_name(0xff) < segment_file_name(0x100));
    }

    #[test]
    fn other_names_are_not_segments() {
        for name in [
            "00000000000000000001",
            "0000000000000000001.wal",
            "000000000000000000001.wal",
            "0000000000000000000A.wal",
            "0000000000000000000g.wal",
            "00000000000000000001.wal.tmp",
            "100000000000000000000.wal",
        ] {
            assert_eq!(parse_segment_file_name(name), None, "{name}");
        }
        // 20 digits that overflow a u64.
        assert_eq!(parse_segment_file_name("10000000000000000000.wal"), None);
    }

    #[test]
    fn listing_sorts_ignores_other_files_and_rejects_odd_wal_names() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(list_segments(&dir.path().join("absent")).unwrap(), []);
        for sequence in [0x200, 0x1, 0x30] {
            std::fs::write(dir.path().join(segment_file_name(sequence)), b"").unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"").unwrap();
        let firsts: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .iter()
            .map(|segment| segment.first_sequence)
            .collect();
        assert_eq!(firsts, [0x1, 0x30, 0x200]);
        std::fs::write(dir.path().join("copy.wal"), b"").unwrap();
        assert!(list_segments(dir.path()).is_err());
    }
}
