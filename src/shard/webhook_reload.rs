//! Reading owed webhook events back from a shard's log while it runs: the scan behind an
//! outbox reload (`webhooks::dispatch`), for events that a full backlog left on disk.
//!
//! The scan reads the segments that cover a range of record sequences, with blocking
//! file I/O (run it on the blocking pool), and keeps, per merchant, the first
//! `events_per_merchant_max` events still owed at the end of the range, with their last
//! failed attempt. A merchant's first owed event beyond that is reported as left on
//! disk: the outbox then keeps that merchant's later events on disk too, and a later
//! reload goes on from there. Memory stays bounded by merchants times that bound.
//!
//! Recovery tracks the owed events of the whole log with the same `OwedEvents`, so a
//! start-up holds no more of them in memory than a reload does.
//!
//! The last segment is being written: its readable records end where the writer got
//! to. When the range ends beyond them, the rest is reported as unread, and the caller
//! leaves every merchant's events from there on disk (nothing is lost; a later reload
//! reads them).

use crate::auth::MerchantKeys;
use crate::payment::{EventId, MerchantIndex};
use crate::wal::{
    list_segments, read_records, RecordKind, SegmentFile, WebhookAttempted, WebhookDeadLetter,
    WebhookDelivered, WebhookEvent, SEGMENT_BYTES_CEILING,
};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

/// An owed event the scan found.
pub struct ScannedEvent {
    pub position: u64,
    pub merchant: MerchantIndex,
    pub event: WebhookEvent,
    pub attempted: Option<WebhookAttempted>,
}

/// What a scan of `[from, end)` found.
#[derive(Default)]
pub struct Scan {
    /// Owed events, in log order.
    pub events: Vec<ScannedEvent>,
    /// Per merchant, the first owed event not kept (beyond the bound).
    pub left_on_disk: Vec<(MerchantIndex, u64)>,
    /// Records from here to the range's end could not be read yet.
    pub unread_from: Option<u64>,
}

/// What the scan is asked for.
pub struct ScanRequest<'a> {
    pub from: u64,
    pub end: u64,
    /// Per merchant, where its events wait on disk (`None`: it has none there).
    pub unloaded_from: Vec<Option<u64>>,
    pub events_per_merchant_max: usize,
    pub keys: &'a MerchantKeys,
}

/// Scans the log of `shard_dir` for owed events. Err only for damage in a closed
/// segment or a failed listing; both name the file.
pub fn scan(shard_dir: &Path, request: &ScanRequest<'_>) -> Result<Scan, String> {
    assert!(request.from <= request.end);
    let segments = list_segments(shard_dir)
        .map_err(|e| format!("cannot list segments of {}: {e}", shard_dir.display()))?;
    let mut state = ScanState {
        request,
        owed: OwedEvents::new(
            request.unloaded_from.clone(),
            request.events_per_merchant_max,
            request.keys,
        ),
        unread_from: None,
    };
    for (index, segment) in segments.iter().enumerate() {
        let next_first = segments.get(index + 1).map(|next| next.first_sequence);
        let covers_range = next_first.is_none_or(|next| next > request.from)
            && segment.first_sequence < request.end;
        if !covers_range {
            continue;
        }
        let is_last = next_first.is_none();
        let reached = read_segment(segment, next_first, &mut state)?;
        if is_last && reached < request.end {
            state.unread_from = Some(reached.max(request.from));
        }
    }
    let mut scan = state.owed.finish();
    scan.unread_from = state.unread_from;
    Ok(scan)
}

/// Reads one segment into the scan; returns the sequence after its last readable record.
/// `next_first` is the next segment's first sequence (`None`: this one is the last).
fn read_segment(
    segment: &SegmentFile,
    next_first: Option<u64>,
    state: &mut ScanState<'_, '_>,
) -> Result<u64, String> {
    let is_last = next_first.is_none();
    // A closed segment ends at the next one's first record: what follows its last record
    // is padding (direct I/O pads every write to a block and a rolled segment is not
    // truncated), as recovery also accepts. Reading on would take it for damage.
    let records_end = next_first.map_or(state.request.end, |next| next.min(state.request.end));
    let where_ = |offset: usize| format!("{} at offset {offset}", segment.path.display());
    let data = match read_bounded(&segment.path) {
        Ok(Some(data)) => data,
        // The size is disk input: recovery checked it at start, not since.
        Ok(None) => {
            let file = segment.path.display();
            return Err(format!(
                "{file} is above the {SEGMENT_BYTES_CEILING} bytes ceiling of a segment"
            ));
        }
        // Retention deleted it after the listing: what it held that was owed was
        // carried forward first, and the dispatcher was told where the copies wait
        // (`Dispatcher::note_carried`), so the rest is not owed.
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(segment.first_sequence)
        }
        Err(error) => return Err(format!("cannot read {}: {error}", segment.path.display())),
    };
    let from = state.request.from;
    let owed = &mut state.owed;
    let mut visit = |record: crate::wal::Record<'_>| -> Result<(), String> {
        if record.sequence < from {
            return Ok(());
        }
        owed.visit(record.kind, record.sequence, record.payload)
            .map_err(|e| format!("{e} in {}", segment.path.display()))
    };
    let read = read_records(&data, segment.first_sequence, records_end, &mut visit)?;
    if let Some(offset) = read.unreadable_at {
        // The writer's tail in the last segment: padding, or a write not finished yet.
        if !is_last {
            return Err(format!("unreadable record in {}", where_(offset)));
        }
    }
    let expected = read.next_sequence;
    if !is_last && expected < records_end {
        let file = segment.path.display();
        return Err(format!(
            "unreadable record in {file}: it ends before sequence {expected}"
        ));
    }
    Ok(expected)
}

/// A segment's bytes; `None` if it holds more than a segment may, and then no more than
/// one byte past that was read.
fn read_bounded(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    if file.metadata()?.len() > SEGMENT_BYTES_CEILING {
        return Ok(None);
    }
    let mut data = Vec::new();
    // Bounded: a file that grew since its size was read is cut one byte past the ceiling.
    file.take(SEGMENT_BYTES_CEILING + 1)
        .read_to_end(&mut data)?;
    Ok((data.len() as u64 <= SEGMENT_BYTES_CEILING).then_some(data))
}

struct ScanState<'r, 'k> {
    request: &'r ScanRequest<'k>,
    owed: OwedEvents<'k>,
    unread_from: Option<u64>,
}

/// The owed webhook events of a run of records read in log order, bounded per merchant.
pub struct OwedEvents<'k> {
    /// Per merchant, where the events worth keeping start (`None`: keep none).
    unloaded_from: Vec<Option<u64>>,
    events_per_merchant_max: usize,
    keys: &'k MerchantKeys,
    /// Kept owed events by position, and each one's position by id.
    kept: BTreeMap<u64, ScannedEvent>,
    positions: HashMap<EventId, u64>,
    kept_per_merchant: Vec<usize>,
    left: Vec<Option<u64>>,
}

impl<'k> OwedEvents<'k> {
    pub fn new(
        unloaded_from: Vec<Option<u64>>,
        events_per_merchant_max: usize,
        keys: &'k MerchantKeys,
    ) -> Self {
        assert_eq!(unloaded_from.len(), keys.len());
        assert!(events_per_merchant_max > 0);
        let merchants = unloaded_from.len();
        OwedEvents {
            unloaded_from,
            events_per_merchant_max,
            keys,
            kept: BTreeMap::new(),
            positions: HashMap::new(),
            kept_per_merchant: vec![0; merchants],
            left: vec![None; merchants],
        }
    }

    /// Takes one record into account; records of other kinds are ignored. Err when a
    /// webhook record does not decode.
    pub fn visit(&mut self, kind: u8, position: u64, payload: &[u8]) -> Result<(), String> {
        match RecordKind::from_u8(kind) {
            Some(RecordKind::WebhookEvent) => {
                let event = WebhookEvent::decode(payload).map_err(|e| e.to_string())?;
                self.event(position, event);
            }
            Some(RecordKind::WebhookAttempted) => {
                let attempted = WebhookAttempted::decode(payload).map_err(|e| e.to_string())?;
                let kept = self.positions.get(&attempted.event).copied();
                if let Some(entry) = kept.and_then(|position| self.kept.get_mut(&position)) {
                    let known = entry.attempted.map_or(0, |known| known.attempts);
                    if attempted.attempts >= known {
                        entry.attempted = Some(attempted);
                    }
                }
            }
            Some(RecordKind::WebhookDelivered) => {
                let delivered = WebhookDelivered::decode(payload).map_err(|e| e.to_string())?;
                self.settle(delivered.event);
            }
            Some(RecordKind::WebhookDeadLetter) => {
                let dead = WebhookDeadLetter::decode(payload).map_err(|e| e.to_string())?;
                self.settle(dead.event.event);
            }
            Some(RecordKind::Created | RecordKind::Finalized | RecordKind::Checkpoint) => {}
            None => return Err(format!("unknown record kind {kind}")),
        }
        Ok(())
    }

    fn event(&mut self, position: u64, event: WebhookEvent) {
        let merchant_id = event.payment.merchant_id.as_bytes();
        let Some(merchant) = self.keys.index_of(merchant_id) else {
            return;
        };
        let index = merchant as usize;
        // Only events at or after where the merchant's wait on disk are the reload's.
        let wanted = self.unloaded_from[index].is_some_and(|from| from <= position);
        if !wanted || self.left[index].is_some() {
            return;
        }
        // A carried-forward copy replaces the older one (and keeps its attempts).
        let mut attempted = None;
        if let Some(older) = self.positions.remove(&event.event) {
            attempted = self.kept.remove(&older).and_then(|older| older.attempted);
            self.kept_per_merchant[index] -= 1;
        }
        if self.kept_per_merchant[index] >= self.events_per_merchant_max {
            self.left[index] = Some(position);
            return;
        }
        self.kept_per_merchant[index] += 1;
        self.positions.insert(event.event, position);
        self.kept.insert(
            position,
            ScannedEvent {
                position,
                merchant,
                event,
                attempted,
            },
        );
    }

    fn settle(&mut self, event: EventId) {
        if let Some(position) = self.positions.remove(&event) {
            let settled = self.kept.remove(&position).expect("a kept position");
            self.kept_per_merchant[settled.merchant as usize] -= 1;
        }
    }

    /// The owed events kept, in log order, and where each merchant's others start.
    pub fn finish(self) -> Scan {
        Scan {
            events: self.kept.into_values().collect(),
            left_on_disk: self
                .left
                .iter()
                .enumerate()
                .filter_map(|(merchant, at)| at.map(|at| (merchant as MerchantIndex, at)))
                .collect(),
            unread_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::PaymentId;
    use crate::payment_object::sample_snapshot;
    use crate::wal::{encode_record, segment_file_name, WebhookOutcome};

    fn keys() -> MerchantKeys {
        MerchantKeys::new(vec![
            ("m0".to_string(), vec![b"s".to_vec()]),
            ("m1".to_string(), vec![b"s".to_vec()]),
        ])
    }

    fn event_payload(merchant: &str, sequence: u64) -> (EventId, Vec<u8>) {
        let mut payment = sample_snapshot();
        payment.id = PaymentId { shard: 0, sequence };
        payment.merchant_id = merchant.to_string();
        let event = WebhookEvent {
            event: EventId::of_final_status(payment.id),
            created_at_ms: 1,
            payment,
        };
        let mut payload = Vec::new();
        event.encode(&mut payload);
        (event.event, payload)
    }

    fn delivered(event: EventId) -> Vec<u8> {
        let mut out = Vec::new();
        WebhookDelivered {
            event,
            attempts: 1,
            outcome: WebhookOutcome::Delivered,
            finished_at_ms: 2,
        }
        .encode(&mut out);
        out
    }

    fn attempted(event: EventId, attempts: u16) -> Vec<u8> {
        let mut out = Vec::new();
        WebhookAttempted {
            event,
            attempts,
            last_status: Some(500),
            attempted_at_ms: 3,
            next_attempt_at_ms: 4,
        }
        .encode(&mut out);
        out
    }

    /// Two segments: [1, 6) closed and [6, ..) being written, with a torn tail.
    fn write_log(dir: &Path) {
        let (e1, p1) = event_payload("m0", 1);
        let (e2, p2) = event_payload("m0", 2);
        let (_, p3) = event_payload("m1", 3);
        let (_, p4) = event_payload("m0", 4);
        let (_, p6) = event_payload("m0", 6);
        let event = RecordKind::WebhookEvent.as_u8();
        let mut first = Vec::new();
        encode_record(&mut first, event, 1, &p1);
        encode_record(&mut first, event, 2, &p2);
        encode_record(&mut first, event, 3, &p3);
        encode_record(
            &mut first,
            RecordKind::WebhookDelivered.as_u8(),
            4,
            &delivered(e1),
        );
        encode_record(
            &mut first,
            RecordKind::WebhookAttempted.as_u8(),
            5,
            &attempted(e2, 3),
        );
        let mut second = Vec::new();
        encode_record(&mut second, event, 6, &p4);
        encode_record(&mut second, event, 7, &p6);
        second.extend_from_slice(&[9, 9, 9]);
        std::fs::write(dir.join(segment_file_name(1)), first).unwrap();
        std::fs::write(dir.join(segment_file_name(6)), second).unwrap();
    }

    /// Scans all of `write_log`'s records for both merchants, with room for every event.
    fn scan_whole_log(dir: &Path) -> Result<Scan, String> {
        let keys = keys();
        let request = ScanRequest {
            from: 1,
            end: 8,
            unloaded_from: vec![Some(1), Some(1)],
            events_per_merchant_max: 10,
            keys: &keys,
        };
        scan(dir, &request)
    }

    #[test]
    fn the_scan_keeps_owed_events_with_attempts_and_bounds_each_merchant() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path());
        let keys = keys();
        let request = ScanRequest {
            from: 1,
            end: 8,
            unloaded_from: vec![Some(1), Some(1)],
            events_per_merchant_max: 2,
            keys: &keys,
        };
        let scan = scan(dir.path(), &request).unwrap();
        let found: Vec<(u64, MerchantIndex, Option<u16>)> = scan
            .events
            .iter()
            .map(|e| (e.position, e.merchant, e.attempted.map(|a| a.attempts)))
            .collect();
        // Event 1 was delivered; event 2 failed 3 times; m0 keeps 2, the third waits.
        assert_eq!(found, [(2, 0, Some(3)), (3, 1, None), (6, 0, None)]);
        assert_eq!(scan.left_on_disk, [(0, 7)]);
        assert_eq!(scan.unread_from, None);
    }

    #[test]
    fn the_writers_tail_is_reported_unread_and_unwanted_merchants_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path());
        let keys = keys();
        let request = ScanRequest {
            from: 3,
            end: 20,
            unloaded_from: vec![None, Some(3)],
            events_per_merchant_max: 10,
            keys: &keys,
        };
        let scan = scan(dir.path(), &request).unwrap();
        let positions: Vec<u64> = scan.events.iter().map(|e| e.position).collect();
        assert_eq!(positions, [3]);
        assert!(scan.left_on_disk.is_empty());
        assert_eq!(scan.unread_from, Some(8));
    }

    #[test]
    fn a_closed_segment_padded_with_zeros_is_read_to_its_last_record() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path());
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let padded_bytes = bytes.len().div_ceil(4096) * 4096;
        assert!(padded_bytes > bytes.len());
        bytes.resize(padded_bytes, 0);
        std::fs::write(&path, bytes).unwrap();
        let scan = scan_whole_log(dir.path()).unwrap();
        let positions: Vec<u64> = scan.events.iter().map(|e| e.position).collect();
        assert_eq!(positions, [2, 3, 6, 7]);
        assert_eq!(scan.unread_from, None);
    }

    #[test]
    fn a_closed_segment_missing_records_before_the_next_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path());
        // The next segment starts at 7: record 6 is missing from the closed one.
        let from = dir.path().join(segment_file_name(6));
        std::fs::rename(from, dir.path().join(segment_file_name(7))).unwrap();
        let error = scan_whole_log(dir.path()).err().unwrap();
        assert!(error.contains("unreadable record"), "{error}");
    }

    #[test]
    fn damage_in_a_closed_segment_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path());
        let path = dir.path().join(segment_file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[30] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let error = scan_whole_log(dir.path()).err().unwrap();
        assert!(error.contains("unreadable record"), "{error}");
    }

    #[test]
    fn a_segment_above_the_ceiling_is_an_error_and_is_not_read() {
        // The file's size is disk input: recovery checked it at start, not since.
        let dir = tempfile::tempdir().unwrap();
        write_log(dir.path());
        let path = dir.path().join(segment_file_name(6));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_len(SEGMENT_BYTES_CEILING + 1).unwrap();
        let error = scan_whole_log(dir.path()).err().unwrap();
        assert!(error.contains("ceiling"), "{error}");
    }
}
