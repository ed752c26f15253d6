//! Retention: which old segments hold nothing live any more, and deleting them safely.
//!
//! Segments go oldest first and only as a prefix of the log: recovery lets the first
//! segment start anywhere but refuses a gap between two segments, so a dead segment
//! behind a live one stays until the live one goes. The last segment is never deleted:
//! it is the one being written.
//!
//! The shard decides what is live (pending payments, undelivered webhooks, anything
//! younger than `storage.retention_hours`). To free a segment that still holds a few live
//! records, the shard appends them again (carries them forward), waits until they are
//! durable, and only then asks which segments are dead: replay must therefore let a later
//! record of the same thing win.

use crate::wal::disk::Disk;
use crate::wal::segment::SegmentFile;
use std::ops::Range;
use std::path::Path;

/// The oldest segments of `segments` (in log order, as `list_segments` gives them) in
/// which `holds_live` finds nothing. `holds_live` is asked about the range of sequence
/// numbers each segment holds, oldest first, and not after the first live one.
pub fn dead_segment_prefix(
    segments: &[SegmentFile],
    mut holds_live: impl FnMut(Range<u64>) -> bool,
) -> &[SegmentFile] {
    let mut dead = 0;
    // Every segment but the last has a successor that bounds its range.
    for pair in segments.windows(2) {
        let sequences = pair[0].first_sequence..pair[1].first_sequence;
        if holds_live(sequences) {
            break;
        }
        dead += 1;
    }
    &segments[..dead]
}

/// Deletes dead segments oldest first, syncing the directory after each. A crash part
/// way leaves a shorter prefix deleted, which recovery accepts.
pub async fn delete_segments(shard_dir: &Path, dead: &[SegmentFile]) -> Result<(), String> {
    for pair in dead.windows(2) {
        assert!(pair[0].first_sequence < pair[1].first_sequence);
    }
    Disk::Os.delete_segments(shard_dir, dead).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::encode_record;
    use crate::wal::recovery::recover;
    use crate::wal::segment::{list_segments, segment_file_name};
    use std::path::PathBuf;

    fn segments(firsts: &[u64]) -> Vec<SegmentFile> {
        firsts
            .iter()
            .map(|&first_sequence| SegmentFile {
                first_sequence,
                path: PathBuf::from(segment_file_name(first_sequence)),
            })
            .collect()
    }

    #[test]
    fn the_dead_prefix_stops_at_the_first_live_segment() {
        let all = segments(&[1, 100, 200, 300]);
        let live = [150u64, 250];
        let mut asked = Vec::new();
        let dead = dead_segment_prefix(&all, |range| {
            asked.push(range.clone());
            live.iter().any(|s| range.contains(s))
        });
        assert_eq!(dead, &all[..1]);
        // Not asked beyond the first live segment.
        assert_eq!(asked, [1..100, 100..200]);
    }

    #[test]
    fn the_last_segment_is_never_dead() {
        let all = segments(&[1, 100, 200]);
        assert_eq!(dead_segment_prefix(&all, |_| false), &all[..2]);
        assert!(dead_segment_prefix(&all[2..], |_| false).is_empty());
        assert!(dead_segment_prefix(&[], |_| false).is_empty());
    }

    #[test]
    fn a_dead_segment_behind_a_live_one_stays() {
        let all = segments(&[1, 100, 200, 300]);
        // Only the first segment holds something live.
        let dead = dead_segment_prefix(&all, |range| range.start == 1);
        assert!(dead.is_empty());
    }

    #[test]
    fn deleted_segments_leave_a_log_that_recovers() {
        let dir = tempfile::tempdir().unwrap();
        for (first, count) in [(1u64, 3u64), (4, 3), (7, 2)] {
            let mut bytes = Vec::new();
            for sequence in first..first + count {
                encode_record(&mut bytes, 1, sequence, b"r");
            }
            std::fs::write(dir.path().join(segment_file_name(first)), bytes).unwrap();
        }
        let all = list_segments(dir.path()).unwrap();
        let dead = dead_segment_prefix(&all, |range| range.contains(&5)).to_vec();
        assert_eq!(dead.len(), 1);
        let path = dir.path().to_path_buf();
        crate::testing::run_here(async move { delete_segments(&path, &dead).await.unwrap() });
        let left: Vec<u64> = list_segments(dir.path())
            .unwrap()
            .iter()
            .map(|s| s.first_sequence)
            .collect();
        assert_eq!(left, [4, 7]);
        let recovery = recover(dir.path(), &mut |_| Ok(())).unwrap();
        assert_eq!((recovery.records, recovery.next_sequence), (5, 9));
    }
}
