//! Retention of one shard: old payments leave memory, and old segments leave the disk.
//!
//! A task on the shard's core wakes every `storage.retention_check_interval_ms` and:
//!
//! 1. expires from memory the final payments (and their order ids) untouched for
//!    `storage.retention_hours` (`ShardState::expire`);
//! 2. finds the oldest closed segments whose every record was appended more than the
//!    retention ago (`AppendMarks` remembers when each record sequence was reached);
//! 3. reads them and carries forward every payment they mention that is still in memory
//!    (pending ones, and final ones not yet expired): its `Created` record and, if final,
//!    its `Finalized` record are appended again, followed by a `Checkpoint` that keeps the
//!    payment sequence, and all of it is made durable;
//! 4. only then deletes those segments (never the one being written).
//!
//! A crash anywhere in between is safe: before the deletion the old records are still
//! there and recovery accepts the repeated ones; after it, the carried ones are durable.
//!
//! After a restart the marks start from the recovered segment files' modification times
//! (`AppendMarks::seeded`): a log older than the retention goes on the first passes,
//! not one retention later. Each pass publishes its counters and gauges
//! (`RetentionMetrics`) into the core's metrics for `/metrics`.

use super::runtime::Shard;
use crate::metrics::{CoreMetrics, RetentionMetrics};
use crate::payment::{EventId, MerchantIndex, PaymentId};
use crate::wal::{
    self, dead_segment_prefix, delete_segments, Checkpoint, Created, Finalized, RecordKind,
    SegmentFile, SegmentSummary, WebhookAttempted, WebhookDeadLetter, WebhookDelivered,
    WebhookEvent,
};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// The most append marks kept per shard (16 bytes each). Marks are spaced at least
/// `retention / (APPEND_MARKS_MAX / 2)` apart, so they span twice the retention: the
/// oldest are always old enough to free segments, which frees marks in turn.
pub const APPEND_MARKS_MAX: usize = 4096;
/// The most marks seeded at recovery: half the bound, so that appends after a restart
/// still find room for theirs.
pub const APPEND_MARKS_SEEDED_MAX: usize = APPEND_MARKS_MAX / 2;
/// The most segments one pass frees. A restart after a long stop can find a whole log
/// past the retention: it goes over several passes, each reading a bounded amount while
/// the shard serves.
pub const SEGMENTS_FREED_PER_PASS_MAX: usize = 16;

/// When the log reached a record sequence: every record below `next_sequence` had been
/// appended by `at_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AppendMark {
    next_sequence: u64,
    at_ms: u64,
}

/// A bounded, coarse map from record sequences to the times they were appended. Coarse
/// in the safe direction only: a record is never taken for older than it is.
#[derive(Debug, Default)]
pub struct AppendMarks {
    marks: VecDeque<AppendMark>,
}

impl AppendMarks {
    pub fn new() -> AppendMarks {
        AppendMarks {
            marks: VecDeque::with_capacity(APPEND_MARKS_MAX),
        }
    }

    /// Marks for a recovered log, so that retention after a restart frees old segments at
    /// once rather than one retention later. A segment's modification time bounds when
    /// its records were appended, and every earlier record was appended before them: one
    /// mark per segment, `(its last sequence + 1, its time)`. Each time is raised to the
    /// latest before it (a clock step back or a late padding write never makes a record
    /// look older). Segments without a time and empty ones give no mark, and above
    /// `APPEND_MARKS_SEEDED_MAX` marks are dropped evenly: their records fall to a later
    /// mark, so they only look younger.
    pub fn seeded(segments: &[SegmentSummary]) -> AppendMarks {
        let mut found = Vec::with_capacity(segments.len());
        let mut at_ms_latest = 0;
        for segment in segments {
            let Some(modified_ms) = segment.modified_ms else {
                continue;
            };
            at_ms_latest = modified_ms.max(at_ms_latest);
            let next_sequence = segment.first_sequence + segment.records;
            let advances = found
                .last()
                .is_none_or(|last: &AppendMark| next_sequence > last.next_sequence);
            if advances {
                found.push(AppendMark {
                    next_sequence,
                    at_ms: at_ms_latest,
                });
            }
        }
        let mut marks = AppendMarks::new();
        marks.marks.extend(thinned(found, APPEND_MARKS_SEEDED_MAX));
        assert!(marks.len() <= APPEND_MARKS_SEEDED_MAX);
        marks
    }

    pub fn len(&self) -> usize {
        self.marks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.marks.is_empty()
    }

    /// Notes that every record below `next_sequence` was appended by `now_ms`. Skipped
    /// when nothing was appended since the last mark (that mark is the tighter bound), when
    /// the last mark is too recent, or when the marks are full: the records meanwhile
    /// are then bounded by a later mark, which only makes them look younger.
    pub fn record(&mut self, next_sequence: u64, now_ms: u64, retention_ms: u64) {
        let spacing_ms = retention_ms / (APPEND_MARKS_MAX as u64 / 2);
        if let Some(last) = self.marks.back() {
            assert!(next_sequence >= last.next_sequence, "the log only grows");
            let too_soon = now_ms < last.at_ms.saturating_add(spacing_ms);
            if next_sequence == last.next_sequence || too_soon {
                return;
            }
        }
        if self.marks.len() >= APPEND_MARKS_MAX {
            return;
        }
        // The wall clock may step back; a mark never claims an earlier time than the last.
        let at_ms = self
            .marks
            .back()
            .map_or(now_ms, |last| now_ms.max(last.at_ms));
        self.marks.push_back(AppendMark {
            next_sequence,
            at_ms,
        });
    }

    /// Every record below the returned sequence was appended at least `retention_ms`
    /// before `now_ms` (0 when no record is known to be that old).
    pub fn horizon(&self, now_ms: u64, retention_ms: u64) -> u64 {
        self.marks
            .iter()
            .take_while(|mark| mark.at_ms.saturating_add(retention_ms) <= now_ms)
            .last()
            .map_or(0, |mark| mark.next_sequence)
    }

    /// Drops the marks that bound only records of deleted segments.
    pub fn forget_below(&mut self, first_sequence: u64) {
        while self
            .marks
            .front()
            .is_some_and(|mark| mark.next_sequence <= first_sequence)
        {
            self.marks.pop_front();
        }
    }
}

/// At most `count_max` of `marks`: the last, and every `stride`-th one before it.
fn thinned(marks: Vec<AppendMark>, count_max: usize) -> impl Iterator<Item = AppendMark> {
    assert!(count_max > 0);
    let stride = marks.len().div_ceil(count_max).max(1);
    let last = marks.len().saturating_sub(1);
    marks
        .into_iter()
        .enumerate()
        .filter(move |(index, _)| (last - index).is_multiple_of(stride))
        .map(|(_, mark)| mark)
}

/// The oldest closed segments all of whose records are below `horizon`: the ones
/// retention may free, at most `SEGMENTS_FREED_PER_PASS_MAX`. The last segment (being
/// written) is never among them.
pub fn segments_past_horizon(segments: &[SegmentFile], horizon: u64) -> &[SegmentFile] {
    let dead = dead_segment_prefix(segments, |sequences| sequences.end > horizon);
    &dead[..dead.len().min(SEGMENTS_FREED_PER_PASS_MAX)]
}

/// Starts the retention task of `shard` on the current executor, with the marks recovery
/// seeded and the core's metrics to publish into. It holds the shard weakly and stops
/// once the shard is gone.
pub fn spawn(
    shard: &Rc<Shard>,
    shard_dir: PathBuf,
    marks: AppendMarks,
    metrics: Rc<RefCell<CoreMetrics>>,
) {
    let interval = Duration::from_millis(shard.config().storage.retention_check_interval_ms);
    let mut task = Retention {
        shard: Rc::downgrade(shard),
        shard_dir,
        marks,
        metrics,
        published: RetentionMetrics {
            shard: shard.id(),
            ..RetentionMetrics::default()
        },
    };
    glommio::spawn_local(async move {
        loop {
            if !task.check().await {
                break;
            }
            glommio::timer::sleep(interval).await;
        }
    })
    .detach();
}

/// What one shard's retention task keeps between passes.
struct Retention {
    shard: Weak<Shard>,
    shard_dir: PathBuf,
    marks: AppendMarks,
    metrics: Rc<RefCell<CoreMetrics>>,
    /// Counters since start and gauges of the last pass, copied into the core's metrics.
    published: RetentionMetrics,
}

/// The segments of a shard's log in log order, with the bytes of each.
struct Listing {
    segments: Vec<SegmentFile>,
    bytes: Vec<u64>,
}

impl Retention {
    /// One retention pass. False when the task should stop: the shard is gone, or its log
    /// failed (the shard answers 503 and says why; deleting anything now would be unsafe).
    async fn check(&mut self) -> bool {
        let Some(shard) = self.shard.upgrade() else {
            return false;
        };
        if shard.log().failure().is_some() {
            return false;
        }
        let started = Instant::now();
        let keep_going = self.pass(&shard).await;
        self.published.passes += 1;
        self.published.payments_retained = shard.payments_in_memory() as u64;
        self.published.last_pass_duration_us =
            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.metrics.borrow_mut().set_retention(self.published);
        keep_going
    }

    async fn pass(&mut self, shard: &Rc<Shard>) -> bool {
        let now_ms = super::runtime::now_ms();
        let retention_ms = shard.config().retention_ms();
        self.published.payments_expired += shard.expire(now_ms, retention_ms) as u64;
        shard.webhooks().expire_dead_letters(now_ms, retention_ms);
        self.marks
            .record(shard.log().next_sequence(), now_ms, retention_ms);
        let horizon = self.marks.horizon(now_ms, retention_ms);
        let shard_dir = self.shard_dir.clone();
        let listing = match glommio::executor()
            .spawn_blocking(move || list_with_bytes(&shard_dir))
            .await
        {
            Ok(listing) => listing,
            Err(error) => {
                eprintln!("payd: shard {}: retention: {error}", shard.id());
                return true;
            }
        };
        self.published.log_segments = listing.segments.len() as u64;
        self.published.log_bytes = listing.bytes.iter().sum();
        let expired = segments_past_horizon(&listing.segments, horizon).to_vec();
        if expired.is_empty() {
            return true;
        }
        self.free(shard, &listing, &expired).await
    }

    /// Frees `expired`, the oldest segments of `listing`, and counts what went.
    async fn free(
        &mut self,
        shard: &Rc<Shard>,
        listing: &Listing,
        expired: &[SegmentFile],
    ) -> bool {
        match free_segments(shard, &self.shard_dir, expired).await {
            Ok(carried) => {
                let first_left = listing.segments[expired.len()].first_sequence;
                self.marks.forget_below(first_left);
                let bytes_deleted: u64 = listing.bytes[..expired.len()].iter().sum();
                let published = &mut self.published;
                published.payments_carried += carried as u64;
                published.segments_deleted += expired.len() as u64;
                published.bytes_deleted += bytes_deleted;
                published.log_segments -= expired.len() as u64;
                published.log_bytes -= bytes_deleted;
                eprintln!(
                    "payd: shard {}: retention deleted {} segments, carried {carried} payments forward",
                    shard.id(),
                    expired.len()
                );
                true
            }
            Err(error) => {
                eprintln!("payd: shard {}: retention: {error}", shard.id());
                shard.log().failure().is_none()
            }
        }
    }
}

/// Lists the shard's segments and their sizes (blocking: run it on the blocking pool).
fn list_with_bytes(shard_dir: &Path) -> Result<Listing, String> {
    let segments =
        wal::list_segments(shard_dir).map_err(|error| format!("cannot list segments: {error}"))?;
    let bytes = segments
        .iter()
        .map(|segment| {
            std::fs::metadata(&segment.path)
                .map(|metadata| metadata.len())
                .map_err(|error| format!("cannot read {}: {error}", segment.path.display()))
        })
        .collect::<Result<Vec<u64>, String>>()?;
    Ok(Listing { segments, bytes })
}

/// Carries forward what is live in `expired`, then deletes them. Returns how many
/// payments were carried.
async fn free_segments(
    shard: &Rc<Shard>,
    shard_dir: &Path,
    expired: &[SegmentFile],
) -> Result<usize, String> {
    let to_read = expired.to_vec();
    let mentioned = glommio::executor()
        .spawn_blocking(move || payments_mentioned(&to_read))
        .await?;
    let (webhook_records, on_disk) = webhook_records_to_carry(shard, mentioned.owed_webhooks);
    // The copies take sequences from here on.
    let copies_from = shard.log().next_sequence();
    let (carried, last_position) = shard
        .carry_forward(&mentioned.payments, &webhook_records)
        .await
        .map_err(|error| format!("carrying payments forward failed: {}", error.0))?;
    // Before the originals go: a reload must find the copies of the events waiting on
    // disk, or it would take the vanished originals for delivered and orphan the copies.
    shard
        .webhooks()
        .note_carried(&on_disk, copies_from, last_position);
    delete_segments(shard_dir, expired).await?;
    Ok(carried)
}

/// Every payment id that `segments` have a record of, sorted, each once.
/// What the segments retention frees still say that must outlive them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Mentioned {
    /// Every payment with a record there, once each, in order.
    payments: Vec<PaymentId>,
    /// Webhook events there with no delivery outcome after them there.
    owed_webhooks: Vec<OwedRecords>,
}

/// A webhook event met in segments being freed with no end of delivery after it there:
/// its record, and its last failed attempt's (so a restart after the carry still
/// resumes the schedule where it was).
#[derive(Debug, PartialEq, Eq)]
struct OwedRecords {
    event: WebhookEvent,
    position: u64,
    payload: Vec<u8>,
    attempted: Option<Vec<u8>>,
}

/// An owed event not loaded: its merchant and id.
type WaitingEvent = (MerchantIndex, EventId);

/// The records to append again for the events still owed, and those of them that wait
/// on disk (not loaded: only a reload finds their copies). Its end of delivery may lie
/// in a segment that stays; the dispatcher knows an event that has finished, and such
/// an event is not carried (a carried copy would be sent again after a restart).
fn webhook_records_to_carry(
    shard: &Shard,
    owed: Vec<OwedRecords>,
) -> (Vec<(RecordKind, Vec<u8>)>, Vec<WaitingEvent>) {
    let mut records = Vec::with_capacity(owed.len());
    let mut on_disk = Vec::new();
    for owed in owed {
        if !shard.webhooks().may_be_owed(&owed.event, owed.position) {
            continue;
        }
        on_disk.extend(shard.webhooks().waiting_on_disk(&owed.event));
        records.push((RecordKind::WebhookEvent, owed.payload));
        if let Some(attempted) = owed.attempted {
            records.push((RecordKind::WebhookAttempted, attempted));
        }
    }
    (records, on_disk)
}

fn payments_mentioned(segments: &[SegmentFile]) -> Result<Mentioned, String> {
    let mut ids = Vec::new();
    let mut owed: Vec<OwedRecords> = Vec::new();
    for segment in segments {
        let mut visit = |record: wal::Record<'_>| -> Result<(), String> {
            let id = match RecordKind::from_u8(record.kind) {
                Some(RecordKind::Created) => Created::decode(record.payload).map(|c| c.id),
                Some(RecordKind::Finalized) => Finalized::decode(record.payload).map(|f| f.id),
                Some(RecordKind::Checkpoint) => {
                    Checkpoint::decode(record.payload).map_err(|e| e.to_string())?;
                    return Ok(());
                }
                Some(RecordKind::WebhookEvent) => {
                    let event = WebhookEvent::decode(record.payload).map_err(|e| e.to_string())?;
                    let attempted = owed
                        .iter()
                        .position(|owed| owed.event.event == event.event)
                        .and_then(|index| owed.remove(index).attempted);
                    owed.push(OwedRecords {
                        event,
                        position: record.sequence,
                        payload: record.payload.to_vec(),
                        attempted,
                    });
                    return Ok(());
                }
                Some(RecordKind::WebhookAttempted) => {
                    let attempted =
                        WebhookAttempted::decode(record.payload).map_err(|e| e.to_string())?;
                    if let Some(owed) = owed
                        .iter_mut()
                        .find(|owed| owed.event.event == attempted.event)
                    {
                        owed.attempted = Some(record.payload.to_vec());
                    }
                    return Ok(());
                }
                Some(RecordKind::WebhookDelivered) => {
                    let delivered =
                        WebhookDelivered::decode(record.payload).map_err(|e| e.to_string())?;
                    owed.retain(|owed| owed.event.event != delivered.event);
                    return Ok(());
                }
                // A dead letter ends a delivery; its own record stays for the retention
                // after it, like any record, and is not carried.
                Some(RecordKind::WebhookDeadLetter) => {
                    let dead =
                        WebhookDeadLetter::decode(record.payload).map_err(|e| e.to_string())?;
                    owed.retain(|owed| owed.event.event != dead.event.event);
                    return Ok(());
                }
                // No other kind is written by this version; refuse to delete what we
                // cannot read rather than lose it.
                None => return Err(format!("record kind {} is not understood", record.kind)),
            };
            ids.push(id.map_err(|e| e.to_string())?);
            Ok(())
        };
        wal::replay_closed_segment(segment, &mut visit).map_err(|e| e.to_string())?;
    }
    ids.sort_unstable();
    ids.dedup();
    Ok(Mentioned {
        payments: ids,
        owed_webhooks: owed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::EventId;
    use crate::wal::segment_file_name;

    const RETENTION_MS: u64 = 1_000;

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
    fn the_horizon_is_the_newest_mark_older_than_the_retention() {
        let mut marks = AppendMarks::new();
        assert_eq!(marks.horizon(10_000, RETENTION_MS), 0);
        marks.record(10, 1_000, RETENTION_MS);
        marks.record(50, 1_500, RETENTION_MS);
        marks.record(90, 2_200, RETENTION_MS);
        assert_eq!(marks.horizon(1_999, RETENTION_MS), 0);
        assert_eq!(marks.horizon(2_000, RETENTION_MS), 10);
        assert_eq!(marks.horizon(2_600, RETENTION_MS), 50);
        assert_eq!(marks.horizon(9_000, RETENTION_MS), 90);
    }

    #[test]
    fn marks_are_skipped_when_idle_or_too_close_and_a_clock_step_back_is_ignored() {
        let mut marks = AppendMarks::new();
        marks.record(10, 1_000, RETENTION_MS);
        // Nothing appended since: the older mark stays the bound.
        marks.record(10, 5_000, RETENTION_MS);
        assert_eq!(marks.len(), 1);
        assert_eq!(marks.horizon(2_000, RETENTION_MS), 10);
        // A long retention spaces marks: one a second later is too close.
        let long_ms = 3_600_000;
        let mut hourly = AppendMarks::new();
        hourly.record(10, 0, long_ms);
        hourly.record(20, 1_000, long_ms);
        assert_eq!(hourly.len(), 1);
        hourly.record(20, long_ms, long_ms);
        assert_eq!(hourly.len(), 2);
        // The clock stepped back: no mark claims a time before the last one.
        marks.record(20, 500, RETENTION_MS);
        assert_eq!(marks.horizon(2_000, RETENTION_MS), 10);
        marks.record(20, 1_200, RETENTION_MS);
        assert_eq!(marks.horizon(2_199, RETENTION_MS), 10);
        assert_eq!(marks.horizon(2_200, RETENTION_MS), 20);
    }

    #[test]
    fn marks_stay_within_their_bound_and_are_forgotten_with_their_segments() {
        let mut marks = AppendMarks::new();
        for step in 0..(APPEND_MARKS_MAX as u64 + 100) {
            marks.record(step + 1, step * 1_000, RETENTION_MS);
        }
        assert_eq!(marks.len(), APPEND_MARKS_MAX);
        // Full: later records are bounded by no mark yet, so they never look old.
        assert_eq!(
            marks.horizon(u64::MAX / 2, RETENTION_MS),
            APPEND_MARKS_MAX as u64
        );
        marks.forget_below(100);
        assert_eq!(marks.len(), APPEND_MARKS_MAX - 100);
        marks.record(APPEND_MARKS_MAX as u64 + 500, u64::MAX / 4, RETENTION_MS);
        assert_eq!(marks.len(), APPEND_MARKS_MAX - 99);
    }

    fn summary(first_sequence: u64, records: u64, modified_ms: Option<u64>) -> SegmentSummary {
        SegmentSummary {
            path: PathBuf::from(segment_file_name(first_sequence)),
            first_sequence,
            records,
            records_end: records * 100,
            modified_ms,
        }
    }

    #[test]
    fn seeded_marks_free_recovered_segments_once_their_files_are_old() {
        let recovered = [
            summary(1, 9, Some(1_000)),
            summary(10, 10, Some(2_000)),
            // Empty: it moves no sequence, so it adds no mark.
            summary(20, 0, Some(2_500)),
            summary(20, 5, Some(3_000)),
        ];
        let marks = AppendMarks::seeded(&recovered);
        assert_eq!(marks.len(), 3);
        // After the restart the log writes a new segment from sequence 25.
        let on_disk = segments(&[1, 10, 20, 25]);
        let freed = |now_ms| segments_past_horizon(&on_disk, marks.horizon(now_ms, RETENTION_MS));
        assert!(freed(1_999).is_empty());
        assert_eq!(freed(2_000), &on_disk[..1]);
        assert_eq!(freed(3_999), &on_disk[..2]);
        assert_eq!(freed(4_000), &on_disk[..3]);
    }

    #[test]
    fn seeded_marks_never_make_a_record_look_older_than_its_segment_says() {
        let recovered = [
            summary(1, 10, Some(5_000)),
            // Written before its predecessor by the clock: it takes the later time.
            summary(11, 10, Some(4_000)),
            // No time at all: its records fall to the next mark.
            summary(21, 10, None),
            summary(31, 10, Some(6_000)),
        ];
        let marks = AppendMarks::seeded(&recovered);
        assert_eq!(marks.len(), 3);
        assert_eq!(marks.horizon(5_999, RETENTION_MS), 0);
        assert_eq!(marks.horizon(6_000, RETENTION_MS), 21);
        assert_eq!(marks.horizon(6_999, RETENTION_MS), 21);
        assert_eq!(marks.horizon(7_000, RETENTION_MS), 41);
        assert!(AppendMarks::seeded(&[summary(1, 4, None)]).is_empty());
        assert!(AppendMarks::seeded(&[]).is_empty());
    }

    #[test]
    fn seeded_marks_are_thinned_to_their_bound_and_leave_room_for_appends() {
        let count = APPEND_MARKS_SEEDED_MAX * 3 + 7;
        let recovered: Vec<SegmentSummary> = (0..count as u64)
            .map(|index| summary(1 + index * 10, 10, Some(index * 100)))
            .collect();
        let marks = AppendMarks::seeded(&recovered);
        assert!(marks.len() <= APPEND_MARKS_SEEDED_MAX);
        assert!(marks.len() >= APPEND_MARKS_SEEDED_MAX / 2);
        let unthinned = {
            let mut all = AppendMarks::new();
            all.marks.extend(recovered.iter().map(|segment| AppendMark {
                next_sequence: segment.first_sequence + segment.records,
                at_ms: segment.modified_ms.unwrap(),
            }));
            all
        };
        // Thinning only ever holds records back, and the newest mark is kept exactly.
        for now_ms in (0..count as u64 * 100 + 2 * RETENTION_MS).step_by(37) {
            let thinned = marks.horizon(now_ms, RETENTION_MS);
            assert!(
                thinned <= unthinned.horizon(now_ms, RETENTION_MS),
                "{now_ms}"
            );
        }
        let end = 1 + count as u64 * 10;
        assert_eq!(marks.horizon(u64::MAX / 2, RETENTION_MS), end);
        // Appends after the restart still get marks.
        let mut marks = marks;
        let before = marks.len();
        marks.record(end + 5, count as u64 * 100 + 5_000, RETENTION_MS);
        assert_eq!(marks.len(), before + 1);
    }

    #[test]
    fn only_closed_segments_wholly_below_the_horizon_are_freed() {
        let all = segments(&[1, 100, 200, 300]);
        assert!(segments_past_horizon(&all, 0).is_empty());
        assert!(segments_past_horizon(&all, 99).is_empty());
        assert_eq!(segments_past_horizon(&all, 100), &all[..1]);
        assert_eq!(segments_past_horizon(&all, 250), &all[..2]);
        // The segment being written is never freed, however old.
        assert_eq!(segments_past_horizon(&all, u64::MAX), &all[..3]);
        // A long log past the retention goes a bounded number of segments per pass.
        let firsts: Vec<u64> = (0..40).map(|index| 1 + index * 100).collect();
        let long = segments(&firsts);
        let freed = segments_past_horizon(&long, u64::MAX);
        assert_eq!(freed, &long[..SEGMENTS_FREED_PER_PASS_MAX]);
    }

    #[test]
    fn payments_mentioned_lists_each_id_once_and_refuses_unknown_kinds() {
        let dir = tempfile::tempdir().unwrap();
        let id = |sequence| PaymentId { shard: 1, sequence };
        let mut bytes = Vec::new();
        let mut finalized = Vec::new();
        Finalized {
            id: id(7),
            status: crate::payment::PaymentStatus::Succeeded,
            decline_code: None,
            updated_at_ms: 5,
        }
        .encode(&mut finalized);
        let mut checkpoint = Vec::new();
        Checkpoint {
            next_payment_sequence: 9,
        }
        .encode(&mut checkpoint);
        wal::encode_record(&mut bytes, RecordKind::Finalized.as_u8(), 1, &finalized);
        wal::encode_record(&mut bytes, RecordKind::Checkpoint.as_u8(), 2, &checkpoint);
        wal::encode_record(&mut bytes, RecordKind::Finalized.as_u8(), 3, &finalized);
        let path = dir.path().join(segment_file_name(1));
        std::fs::write(&path, &bytes).unwrap();
        let segment = SegmentFile {
            first_sequence: 1,
            path: path.clone(),
        };
        assert_eq!(
            payments_mentioned(std::slice::from_ref(&segment)).map(|m| m.payments),
            Ok(vec![id(7)])
        );
        wal::encode_record(&mut bytes, 200, 4, b"?");
        std::fs::write(&path, &bytes).unwrap();
        assert!(payments_mentioned(&[segment]).is_err());
    }
    #[test]
    fn owed_webhook_events_are_carried_and_delivered_ones_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let event = |sequence| {
            let mut payment = crate::payment_object::sample_snapshot();
            payment.id = PaymentId { shard: 1, sequence };
            let event = WebhookEvent {
                event: EventId::of_final_status(payment.id),
                created_at_ms: 5,
                payment,
            };
            let mut payload = Vec::new();
            event.encode(&mut payload);
            (event.event, payload)
        };
        let (delivered_id, delivered_payload) = event(1);
        let (_, owed_payload) = event(2);
        let mut outcome = Vec::new();
        WebhookDelivered {
            event: delivered_id,
            attempts: 1,
            outcome: crate::wal::WebhookOutcome::Delivered,
            finished_at_ms: 6,
        }
        .encode(&mut outcome);
        let mut bytes = Vec::new();
        let event_kind = RecordKind::WebhookEvent.as_u8();
        wal::encode_record(&mut bytes, event_kind, 1, &delivered_payload);
        wal::encode_record(&mut bytes, event_kind, 2, &owed_payload);
        wal::encode_record(
            &mut bytes,
            RecordKind::WebhookDelivered.as_u8(),
            3,
            &outcome,
        );
        let path = dir.path().join(segment_file_name(1));
        std::fs::write(&path, &bytes).unwrap();
        let segment = SegmentFile {
            first_sequence: 1,
            path,
        };
        let mentioned = payments_mentioned(&[segment]).unwrap();
        let carried: Vec<(u64, &[u8])> = mentioned
            .owed_webhooks
            .iter()
            .map(|owed| (owed.position, owed.payload.as_slice()))
            .collect();
        assert_eq!(carried, [(2, owed_payload.as_slice())]);
    }
}
