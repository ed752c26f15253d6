//! `ShardLog`: the group-commit appender of one shard, living on that shard's executor.
//!
//! Appends encode their record into the *filling* batch at once and get the next sequence
//! number. One commit task per shard swaps the filling batch for an empty one, writes it
//! with one write and one fdatasync, then wakes every append its sync covered. While that
//! sync runs, new appends fill the next batch, so under load every sync covers many
//! records and the log's throughput follows the load, not the disk's latency.
//!
//! Each commit is one frame on disk (`frame`): recovery keeps or cuts it whole. Records that
//! must live or die together (a final status and the webhook event it owes) are appended
//! as one group (`append_group`): a group always goes into one batch, so into one frame.
//!
//! With `Durability::Fsync` an append resolves only once the fdatasync that covers its
//! record returned. With `Durability::None` it resolves at once and the commit task writes
//! without syncing (for benchmarks only: a crash loses what the kernel had not written).
//!
//! A failed write or fdatasync fails the log for good: the data's fate is unknown (the
//! kernel may have dropped the dirty pages), so every pending and later append returns
//! `LogError::Failed` with the reason. Nothing is retried as if it were safe.

use crate::config::Durability;
use crate::wal::disk::Disk;
use crate::wal::frame::{encode_entry, ENTRY_HEADER_BYTES, FRAME_HEADER_BYTES};
use crate::wal::record::RECORD_PAYLOAD_BYTES_MAX;
use crate::wal::segment::{SEGMENT_BYTES_CEILING, SEGMENT_BYTES_MIN};
use crate::wal::writer::{FrameToWrite, IoMode, SegmentWriter, BATCH_BYTES_MAX};
use hdrhistogram::Histogram;
use std::cell::{Cell, Ref, RefCell};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// What a batch buffer starts with; it grows towards `BATCH_BYTES_MAX` only under load.
const BATCH_BYTES_INITIAL: usize = 64 * 1024;
/// The fsync latency histogram tracks up to a minute; slower syncs count as a minute.
pub const FSYNC_LATENCY_US_MAX: u64 = 60_000_000;
/// The most records a batch can hold: every one at least the framing.
pub const BATCH_RECORDS_MAX: u64 = (BATCH_BYTES_MAX / ENTRY_HEADER_BYTES) as u64;
/// The most records in one group: a payment's `Created`, `Finalized` and webhook event.
pub const GROUP_RECORDS_MAX: usize = 3;

// A group of the largest records fits in the batch of the smallest segment, so a group
// never waits for room that cannot come.
const _: () = assert!(
    GROUP_RECORDS_MAX * (ENTRY_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX) + FRAME_HEADER_BYTES
        <= SEGMENT_BYTES_MIN as usize
);
const HISTOGRAM_SIGNIFICANT_DIGITS: u8 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogError {
    /// The log failed for good; the reason says what failed and where.
    Failed(Rc<str>),
    /// The payload is above `RECORD_PAYLOAD_BYTES_MAX`, or a group has more than
    /// `GROUP_RECORDS_MAX` records.
    PayloadTooLarge { bytes: usize },
    /// The log is closing or closed.
    Closed,
    /// The log could not be opened.
    Open(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Failed(reason) => write!(f, "write-ahead log failed: {reason}"),
            LogError::PayloadTooLarge { bytes } => write!(
                f,
                "record payload of {bytes} bytes is above {RECORD_PAYLOAD_BYTES_MAX}"
            ),
            LogError::Closed => write!(f, "write-ahead log is closed"),
            LogError::Open(reason) => write!(f, "cannot open write-ahead log: {reason}"),
        }
    }
}

impl std::error::Error for LogError {}

/// How to open a log. `ShardLog::open` covers the usual case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogOptions {
    pub durability: Durability,
    /// A segment rolls over before it would exceed this many bytes of records.
    pub segment_bytes_max: u64,
    /// Use buffered I/O even where direct I/O works.
    pub buffered_io: bool,
}

/// Counters and histograms for `/metrics`, updated after every commit.
pub struct LogStats {
    /// Every fdatasync of a segment, in microseconds.
    pub fsync_latency_us: Histogram<u64>,
    /// Records covered by each commit.
    pub records_per_batch: Histogram<u64>,
    pub batches: u64,
    pub records: u64,
    pub bytes: u64,
}

impl LogStats {
    fn new() -> LogStats {
        let histogram = |high| {
            Histogram::new_with_bounds(1, high, HISTOGRAM_SIGNIFICANT_DIGITS)
                .expect("valid histogram bounds")
        };
        LogStats {
            fsync_latency_us: histogram(FSYNC_LATENCY_US_MAX),
            records_per_batch: histogram(BATCH_RECORDS_MAX),
            batches: 0,
            records: 0,
            bytes: 0,
        }
    }
}

/// Encoded entries waiting for (or in) one write: one frame on disk.
struct Batch {
    entries: Vec<u8>,
    records: u64,
    first_sequence: u64,
    last_sequence: u64,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            entries: Vec::with_capacity(BATCH_BYTES_INITIAL),
            records: 0,
            first_sequence: 0,
            last_sequence: 0,
        }
    }

    /// Whether `bytes` more entry bytes fit under `capacity`. An empty batch takes
    /// anything a group can be: the capacity is at least that.
    fn has_room_for(&self, bytes: usize, capacity: usize) -> bool {
        self.entries.is_empty() || self.entries.len() + bytes <= capacity
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.records = 0;
    }

    fn frame(&self) -> FrameToWrite<'_> {
        FrameToWrite {
            entries: &self.entries,
            first_sequence: self.first_sequence,
            entry_count: u32::try_from(self.records).expect("a batch's records fit a u32"),
        }
    }
}

/// Wakers of futures waiting for one kind of event. A future remembers its slot, so
/// polling it again replaces its waker instead of adding one: the list stays bounded by
/// the number of waiting futures.
struct WaitList {
    epoch: u64,
    wakers: Vec<Waker>,
}

#[derive(Clone, Copy)]
struct WaitSlot {
    epoch: u64,
    index: usize,
}

impl WaitList {
    fn new() -> WaitList {
        WaitList {
            epoch: 0,
            wakers: Vec::new(),
        }
    }

    fn register(&mut self, slot: &mut Option<WaitSlot>, waker: &Waker) {
        match slot {
            Some(slot) if slot.epoch == self.epoch => {
                if !self.wakers[slot.index].will_wake(waker) {
                    self.wakers[slot.index] = waker.clone();
                }
            }
            _ => {
                *slot = Some(WaitSlot {
                    epoch: self.epoch,
                    index: self.wakers.len(),
                });
                self.wakers.push(waker.clone());
            }
        }
    }

    /// Wakes everyone. glommio's wake only schedules the task, so this may run while
    /// the shared state is borrowed.
    fn wake_all(&mut self) {
        self.epoch += 1;
        for waker in self.wakers.drain(..) {
            waker.wake();
        }
    }
}

/// What the appends and the commit task share, on one executor.
struct Shared {
    durability: Durability,
    /// Entry bytes a batch holds at most: one frame must fit an empty segment.
    batch_bytes_max: usize,
    filling: Batch,
    next_sequence: u64,
    /// Every record up to this one is durable (written, with `Durability::None`).
    durable_sequence: u64,
    failure: Option<Rc<str>>,
    closing: bool,
    durable_waiters: WaitList,
    room_waiters: WaitList,
    commit_waker: Option<Waker>,
    stats: LogStats,
    #[cfg(test)]
    injected_failure: Option<&'static str>,
    /// A deliberately broken log for the simulation to catch: appends resolve once
    /// written, before the sync.
    #[cfg(test)]
    acknowledge_before_sync: bool,
}

impl Shared {
    /// Puts a group's records into the filling batch, in order; returns the last one's
    /// sequence number. The caller checked the room.
    fn push(&mut self, records: Records<'_>) -> u64 {
        if self.filling.records == 0 {
            self.filling.first_sequence = self.next_sequence;
        }
        for (kind, payload) in records.iter() {
            encode_entry(&mut self.filling.entries, kind, payload);
            self.filling.records += 1;
            self.filling.last_sequence = self.next_sequence;
            self.next_sequence += 1;
        }
        assert!(self.filling.entries.len() <= self.batch_bytes_max.max(records.bytes()));
        if let Some(waker) = self.commit_waker.take() {
            waker.wake();
        }
        self.next_sequence - 1
    }

    fn fail(&mut self, reason: String, shard_dir: &Path) {
        eprintln!(
            "payd: write-ahead log in {} failed: {reason}; this shard stops acknowledging writes",
            shard_dir.display()
        );
        self.failure = Some(reason.into());
        self.durable_waiters.wake_all();
        self.room_waiters.wake_all();
    }
}

/// The write-ahead log of one shard. Not `Send`: it lives on its shard's executor.
pub struct ShardLog {
    shared: Rc<RefCell<Shared>>,
    /// Taken by the first `close` or `shut`; a detached task after that would be lost.
    commit_task: Cell<Option<glommio::Task<()>>>,
    mode: IoMode,
}

impl ShardLog {
    /// Opens the log for appending, after recovery read it and cut its torn tail:
    /// `next_sequence` is recovery's. Appends go to a new segment that starts there.
    /// Must run inside a glommio executor; the commit task is spawned on it.
    pub async fn open(
        shard_dir: &Path,
        durability: Durability,
        next_sequence: u64,
        segment_bytes_max: u64,
    ) -> Result<ShardLog, LogError> {
        let options = LogOptions {
            durability,
            segment_bytes_max,
            buffered_io: false,
        };
        ShardLog::open_with(shard_dir, options, next_sequence).await
    }

    pub async fn open_with(
        shard_dir: &Path,
        options: LogOptions,
        next_sequence: u64,
    ) -> Result<ShardLog, LogError> {
        ShardLog::open_on(&Disk::Os, shard_dir, options, next_sequence).await
    }

    /// `open_with` on a given disk (the simulated one, in tests).
    pub(crate) async fn open_on(
        disk: &Disk,
        shard_dir: &Path,
        options: LogOptions,
        next_sequence: u64,
    ) -> Result<ShardLog, LogError> {
        check_open_arguments(disk, shard_dir, &options, next_sequence)?;
        let writer = SegmentWriter::open(
            disk,
            shard_dir,
            next_sequence,
            options.segment_bytes_max,
            options.buffered_io,
        )
        .await
        .map_err(LogError::Open)?;
        let mode = writer.mode();
        let batch_bytes_max =
            BATCH_BYTES_MAX.min(options.segment_bytes_max as usize - FRAME_HEADER_BYTES);
        let shared = Rc::new(RefCell::new(Shared {
            durability: options.durability,
            batch_bytes_max,
            filling: Batch::new(),
            next_sequence,
            durable_sequence: next_sequence - 1,
            failure: None,
            closing: false,
            durable_waiters: WaitList::new(),
            room_waiters: WaitList::new(),
            commit_waker: None,
            stats: LogStats::new(),
            #[cfg(test)]
            injected_failure: None,
            #[cfg(test)]
            acknowledge_before_sync: false,
        }));
        let task = commit_loop(shared.clone(), writer, shard_dir.to_path_buf());
        Ok(ShardLog {
            shared,
            commit_task: Cell::new(Some(glommio::spawn_local(task))),
            mode,
        })
    }

    /// Appends a record. Its sequence number is taken now, in call order, when the
    /// filling batch has room; the future resolves once the record is durable (at once
    /// with `Durability::None`).
    pub fn append<'a>(&self, kind: u8, payload: &'a [u8]) -> Append<'a> {
        self.append_records(Records::One(kind, payload))
    }

    /// Appends records that live or die together: all of them go into one batch, so one
    /// frame on disk, with consecutive sequence numbers. Resolves to the last one's
    /// sequence number once all are durable. At most `GROUP_RECORDS_MAX` records.
    pub fn append_group<'a>(&self, records: &'a [(u8, &'a [u8])]) -> Append<'a> {
        self.append_records(Records::Group(records))
    }

    fn append_records<'a>(&self, records: Records<'a>) -> Append<'a> {
        let mut append = Append {
            shared: self.shared.clone(),
            state: AppendState::Queued(records),
            slot: None,
        };
        append.try_push();
        append
    }

    /// How segments are written: direct I/O, or buffered where that is refused.
    pub fn io_mode(&self) -> IoMode {
        self.mode
    }

    /// The reason the log failed, if it did: the shard answers 503 from then on.
    pub fn failure(&self) -> Option<Rc<str>> {
        self.shared.borrow().failure.clone()
    }

    /// The sequence number the next append will take.
    pub fn next_sequence(&self) -> u64 {
        self.shared.borrow().next_sequence
    }

    /// Fsync latency and batch sizes, for `/metrics`. Do not hold across an await.
    pub fn stats(&self) -> Ref<'_, LogStats> {
        Ref::map(self.shared.borrow(), |shared| &shared.stats)
    }

    /// Commits and syncs every record appended so far, then closes the files. Appends
    /// still waiting for room get `LogError::Closed`.
    pub async fn close(self) -> Result<(), LogError> {
        self.shut().await
    }

    /// `close` for a log others still hold (the shard's tasks, at shutdown): commits and
    /// syncs what was appended, then refuses every later append with `LogError::Closed`.
    /// With `Durability::None` this is what makes acknowledged records durable before
    /// the process exits. A second call returns at once.
    pub async fn shut(&self) -> Result<(), LogError> {
        self.begin_closing();
        if let Some(task) = self.commit_task.take() {
            task.await;
        }
        match self.shared.borrow().failure.clone() {
            Some(reason) => Err(LogError::Failed(reason)),
            None => Ok(()),
        }
    }

    /// Makes the next commit fail as a failed write would.
    #[cfg(test)]
    fn inject_failure(&self, reason: &'static str) {
        self.shared.borrow_mut().injected_failure = Some(reason);
    }

    /// A power cut or SIGKILL, as far as this log knows: the commit task stops where it
    /// is, nothing more is written, pending appends never resolve.
    #[cfg(test)]
    pub(crate) fn crash(&self) {
        drop(self.commit_task.take());
        let mut shared = self.shared.borrow_mut();
        shared.closing = true;
        shared.failure = Some("crashed".into());
    }

    /// Breaks the log on purpose: appends resolve once written, before their sync. The
    /// simulation must catch this.
    #[cfg(test)]
    pub(crate) fn acknowledge_before_sync(&self) {
        self.shared.borrow_mut().acknowledge_before_sync = true;
    }

    fn begin_closing(&self) {
        let mut shared = self.shared.borrow_mut();
        shared.closing = true;
        shared.room_waiters.wake_all();
        if let Some(waker) = shared.commit_waker.take() {
            waker.wake();
        }
    }
}

impl Drop for ShardLog {
    /// Without `close`, the commit task still writes what was appended, in the background.
    fn drop(&mut self) {
        if let Some(task) = self.commit_task.get_mut().take() {
            self.begin_closing();
            task.detach();
        }
    }
}

fn check_open_arguments(
    disk: &Disk,
    shard_dir: &Path,
    options: &LogOptions,
    next_sequence: u64,
) -> Result<(), LogError> {
    let bytes_max = options.segment_bytes_max;
    // The simulated disk takes small segments, so that its short runs roll over often;
    // its records are small.
    let bytes_min = match disk {
        Disk::Os => SEGMENT_BYTES_MIN,
        #[cfg(test)]
        Disk::Simulated(_) => SIMULATED_SEGMENT_BYTES_MIN,
    };
    if !(bytes_min..=SEGMENT_BYTES_CEILING).contains(&bytes_max) {
        return Err(LogError::Open(format!(
            "segment size {bytes_max} is outside {bytes_min}..={SEGMENT_BYTES_CEILING}"
        )));
    }
    if next_sequence == 0 {
        return Err(LogError::Open("sequence numbers start at 1".to_string()));
    }
    let segments = disk
        .list_segments(shard_dir)
        .map_err(|e| LogError::Open(format!("cannot list {}: {e}", shard_dir.display())))?;
    if let Some(later) = segments.iter().find(|s| s.first_sequence > next_sequence) {
        return Err(LogError::Open(format!(
            "{} starts after sequence {next_sequence}: recovery was not run",
            later.path.display()
        )));
    }
    Ok(())
}

/// The smallest segment the simulated disk takes.
#[cfg(test)]
pub(crate) const SIMULATED_SEGMENT_BYTES_MIN: u64 = 4096;

/// The records of one append: one, or a group that lives or dies together.
#[derive(Clone, Copy)]
enum Records<'a> {
    One(u8, &'a [u8]),
    Group(&'a [(u8, &'a [u8])]),
}

impl<'a> Records<'a> {
    fn iter(self) -> impl Iterator<Item = (u8, &'a [u8])> {
        let (one, group) = match self {
            Records::One(kind, payload) => (Some((kind, payload)), &[][..]),
            Records::Group(records) => (None, records),
        };
        one.into_iter().chain(group.iter().copied())
    }

    fn count(self) -> usize {
        match self {
            Records::One(..) => 1,
            Records::Group(records) => records.len(),
        }
    }

    /// Entry bytes the records take in a batch.
    fn bytes(self) -> usize {
        self.iter()
            .map(|(_, payload)| ENTRY_HEADER_BYTES + payload.len())
            .sum()
    }

    /// Why the log can never take these records, if it cannot.
    fn refusal(self) -> Option<LogError> {
        let largest = self.iter().map(|(_, payload)| payload.len()).max()?;
        if largest > RECORD_PAYLOAD_BYTES_MAX {
            return Some(LogError::PayloadTooLarge { bytes: largest });
        }
        (self.count() > GROUP_RECORDS_MAX).then_some(LogError::PayloadTooLarge {
            bytes: self.bytes(),
        })
    }
}

enum AppendState<'a> {
    /// Waiting for room in the filling batch.
    Queued(Records<'a>),
    /// In a batch, waiting for the sync that covers it.
    Waiting { sequence: u64 },
    /// The outcome, until the first poll after it takes it.
    Resolved(Option<Result<u64, LogError>>),
}

/// The future of one append: resolves to the record's sequence number once durable.
#[must_use = "an append is durable only once its future resolves"]
pub struct Append<'a> {
    shared: Rc<RefCell<Shared>>,
    state: AppendState<'a>,
    slot: Option<WaitSlot>,
}

impl Append<'_> {
    /// Puts queued records in the filling batch if there is room for all of them, or
    /// resolves the append if they cannot be written at all.
    fn try_push(&mut self) {
        let AppendState::Queued(records) = self.state else {
            return;
        };
        let mut shared = self.shared.borrow_mut();
        let refusal = if let Some(reason) = &shared.failure {
            Some(LogError::Failed(reason.clone()))
        } else if shared.closing {
            Some(LogError::Closed)
        } else if records.count() == 0 {
            Some(LogError::PayloadTooLarge { bytes: 0 })
        } else {
            records.refusal()
        };
        if let Some(error) = refusal {
            self.state = AppendState::Resolved(Some(Err(error)));
            return;
        }
        if !shared
            .filling
            .has_room_for(records.bytes(), shared.batch_bytes_max)
        {
            return;
        }
        let sequence = shared.push(records);
        self.state = if shared.durability == Durability::None {
            AppendState::Resolved(Some(Ok(sequence)))
        } else {
            AppendState::Waiting { sequence }
        };
        // A slot in the room waiters means nothing in the durable waiters.
        self.slot = None;
    }
}

impl Future for Append<'_> {
    type Output = Result<u64, LogError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        this.try_push();
        let mut shared = this.shared.borrow_mut();
        match &mut this.state {
            AppendState::Queued(_) => {
                shared.room_waiters.register(&mut this.slot, cx.waker());
                Poll::Pending
            }
            AppendState::Waiting { sequence } => {
                let sequence = *sequence;
                if shared.durable_sequence >= sequence {
                    this.state = AppendState::Resolved(None);
                    Poll::Ready(Ok(sequence))
                } else if let Some(reason) = &shared.failure {
                    let error = LogError::Failed(reason.clone());
                    this.state = AppendState::Resolved(None);
                    Poll::Ready(Err(error))
                } else {
                    shared.durable_waiters.register(&mut this.slot, cx.waker());
                    Poll::Pending
                }
            }
            AppendState::Resolved(outcome) => {
                Poll::Ready(outcome.take().expect("append polled after it resolved"))
            }
        }
    }
}

/// The commit task: one batch at a time, until closed with nothing left, or failed.
async fn commit_loop(shared: Rc<RefCell<Shared>>, mut writer: SegmentWriter, shard_dir: PathBuf) {
    let sync = shared.borrow().durability == Durability::Fsync;
    let mut in_flight = Batch::new();
    while next_batch(&shared).await {
        take_filling(&shared, &mut in_flight);
        let outcome = match take_injected_failure(&shared) {
            Some(reason) => Err(reason),
            None => commit(&shared, &mut writer, &in_flight, sync).await,
        };
        let mut state = shared.borrow_mut();
        if let Err(reason) = outcome {
            state.fail(reason, &shard_dir);
            return;
        }
        record_commit(&mut state, &in_flight, &writer.sync_latencies_us);
        in_flight.clear();
    }
    // Closing: with Durability::None this is the sync that makes the records durable.
    if let Err(reason) = writer.close().await {
        shared.borrow_mut().fail(reason, &shard_dir);
    }
}

/// Writes one batch as one frame and syncs it (when `sync`).
async fn commit(
    shared: &RefCell<Shared>,
    writer: &mut SegmentWriter,
    batch: &Batch,
    sync: bool,
) -> Result<(), String> {
    #[cfg(test)]
    if sync && shared.borrow().acknowledge_before_sync {
        writer.commit(batch.frame(), false).await?;
        {
            let mut state = shared.borrow_mut();
            state.durable_sequence = batch.last_sequence;
            state.durable_waiters.wake_all();
        }
        return writer.commit_sync().await;
    }
    let _ = shared;
    writer.commit(batch.frame(), sync).await
}

/// Resolves to true when there is a batch to commit, false when closing with none.
async fn next_batch(shared: &RefCell<Shared>) -> bool {
    std::future::poll_fn(|cx| {
        let mut state = shared.borrow_mut();
        if !state.filling.entries.is_empty() {
            Poll::Ready(true)
        } else if state.closing {
            Poll::Ready(false)
        } else {
            state.commit_waker = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Swaps the filling batch for the empty one, so appends fill it during the write.
fn take_filling(shared: &RefCell<Shared>, in_flight: &mut Batch) {
    let mut state = shared.borrow_mut();
    assert!(in_flight.entries.is_empty());
    std::mem::swap(&mut state.filling, in_flight);
    state.room_waiters.wake_all();
}

fn take_injected_failure(shared: &RefCell<Shared>) -> Option<String> {
    #[cfg(test)]
    {
        let injected = shared.borrow_mut().injected_failure.take();
        injected.map(str::to_string)
    }
    #[cfg(not(test))]
    {
        let _ = shared;
        None
    }
}

fn record_commit(state: &mut Shared, batch: &Batch, sync_latencies_us: &[u64]) {
    assert!(batch.last_sequence >= state.durable_sequence);
    state.durable_sequence = batch.last_sequence;
    let stats = &mut state.stats;
    stats.batches += 1;
    stats.records += batch.records;
    stats.bytes += (FRAME_HEADER_BYTES + batch.entries.len()) as u64;
    stats.records_per_batch.saturating_record(batch.records);
    for &latency_us in sync_latencies_us {
        stats.fsync_latency_us.saturating_record(latency_us.max(1));
    }
    state.durable_waiters.wake_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::run_here as run;
    use crate::wal::recovery::recover;
    use crate::wal::segment::list_segments;
    use crate::wal::segment::{segment_file_name, SEQUENCE_FIRST};
    use crate::wal::writer::is_tmpfs;

    /// A directory on a real filesystem (direct I/O works there), under the target dir.
    fn disk_dir() -> tempfile::TempDir {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        assert!(!is_tmpfs(dir.path()), "the target dir must not be tmpfs");
        dir
    }

    fn options(durability: Durability, buffered_io: bool) -> LogOptions {
        LogOptions {
            durability,
            segment_bytes_max: 16 << 20,
            buffered_io,
        }
    }

    fn payload_of(sequence_hint: usize, bytes: usize) -> Vec<u8> {
        let mut payload = format!("record {sequence_hint} ").into_bytes();
        payload.resize(bytes.max(payload.len()), b'.');
        payload
    }

    /// Recovers `dir` and returns every record's (sequence, payload).
    fn recovered(dir: &Path) -> (u64, Vec<(u64, Vec<u8>)>) {
        let mut records = Vec::new();
        let recovery = recover(dir, &mut |record| {
            records.push((record.sequence, record.payload.to_vec()));
            Ok(())
        })
        .unwrap();
        (recovery.next_sequence, records)
    }

    /// `tasks` concurrent tasks each append `rounds` records one after the other.
    async fn append_concurrently(log: &Rc<ShardLog>, tasks: usize, rounds: usize, bytes: usize) {
        let handles: Vec<_> = (0..tasks)
            .map(|task| {
                let log = log.clone();
                glommio::spawn_local(async move {
                    for round in 0..rounds {
                        let payload = payload_of(task * rounds + round, bytes);
                        log.append(1, &payload).await.expect("append");
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.await;
        }
    }

    async fn concurrent_appends_are_grouped_and_recovered(dir: &Path, buffered_io: bool) {
        let log = ShardLog::open_with(dir, options(Durability::Fsync, buffered_io), 1)
            .await
            .unwrap();
        let expected_mode = if buffered_io {
            IoMode::Buffered
        } else {
            IoMode::Direct
        };
        assert_eq!(log.io_mode(), expected_mode);
        let log = Rc::new(log);
        append_concurrently(&log, 50, 4, 100).await;
        {
            let stats = log.stats();
            assert_eq!(stats.records, 200);
            assert!(stats.batches < 200, "{} batches", stats.batches);
            assert!(stats.records_per_batch.max() > 1);
            assert_eq!(stats.fsync_latency_us.len(), stats.batches);
        }
        Rc::try_unwrap(log).ok().unwrap().close().await.unwrap();
        let (next_sequence, records) = recovered(dir);
        assert_eq!(next_sequence, 201);
        let mut payloads: Vec<Vec<u8>> = records.into_iter().map(|(_, p)| p).collect();
        payloads.sort();
        let mut expected: Vec<Vec<u8>> = (0..200).map(|i| payload_of(i, 100)).collect();
        expected.sort();
        assert_eq!(payloads, expected);
    }

    #[test]
    fn direct_io_groups_concurrent_appends_and_recovery_reads_them() {
        let dir = disk_dir();
        run(concurrent_appends_are_grouped_and_recovered(
            dir.path(),
            false,
        ));
    }

    #[test]
    fn buffered_io_groups_concurrent_appends_and_recovery_reads_them() {
        let dir = disk_dir();
        run(concurrent_appends_are_grouped_and_recovered(
            dir.path(),
            true,
        ));
    }

    #[test]
    fn tmpfs_falls_back_to_buffered_io() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() || !is_tmpfs(shm) {
            eprintln!("no tmpfs at /dev/shm; fallback not exercised");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open(&path, Durability::Fsync, 1, 16 << 20)
                .await
                .unwrap();
            assert_eq!(log.io_mode(), IoMode::Buffered);
            assert_eq!(log.append(2, b"on tmpfs").await, Ok(1));
            log.close().await.unwrap();
        });
        assert_eq!(recovered(dir.path()).1, [(1, b"on tmpfs".to_vec())]);
    }

    #[test]
    fn the_next_batch_fills_while_a_sync_is_in_flight() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, options(Durability::Fsync, false), 1)
                .await
                .unwrap();
            let first = log.append(1, b"first");
            // Let the commit task take the batch and start its write.
            while !log.shared.borrow().filling.entries.is_empty() {
                futures_lite::future::yield_now().await;
            }
            let second = log.append(1, b"second");
            let third = log.append(1, b"third");
            assert_eq!(log.shared.borrow().filling.records, 2);
            assert_eq!(first.await, Ok(1));
            assert_eq!((second.await, third.await), (Ok(2), Ok(3)));
            let stats = log.stats();
            assert_eq!((stats.batches, stats.records), (2, 3));
            assert_eq!(stats.records_per_batch.max(), 2);
        });
    }

    #[test]
    fn sequence_numbers_follow_call_order() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, options(Durability::Fsync, false), 41)
                .await
                .unwrap();
            let a = log.append(1, b"a");
            let b = log.append(2, b"b");
            assert_eq!(log.next_sequence(), 43);
            // Awaited out of order: the numbers were taken at the call.
            assert_eq!(b.await, Ok(42));
            assert_eq!(a.await, Ok(41));
            log.close().await.unwrap();
        });
        let (next_sequence, records) = recovered(dir.path());
        assert_eq!(next_sequence, 43);
        assert_eq!(records, [(41, b"a".to_vec()), (42, b"b".to_vec())]);
    }

    #[test]
    fn segments_roll_over_and_a_reopened_log_continues_after_recovery() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        let segment_bytes_max = SEGMENT_BYTES_MIN;
        let log_options = LogOptions {
            durability: Durability::Fsync,
            segment_bytes_max,
            buffered_io: false,
        };
        run(async move {
            let log = Rc::new(ShardLog::open_with(&path, log_options, 1).await.unwrap());
            // 600 records of 1017 bytes: a little over two segments.
            append_concurrently(&log, 20, 30, 1000).await;
            Rc::try_unwrap(log).ok().unwrap().close().await.unwrap();
        });
        let segments = list_segments(dir.path()).unwrap();
        // The segment opened at start gives way to a prepared one as soon as that is
        // ready, whatever it holds; the others fill up.
        assert!((3..=4).contains(&segments.len()), "{segments:?}");
        // A frame holds at most one record per task (20 of 1005 bytes), and never
        // straddles two segments: a full one lacks less than a frame.
        let frame_bytes_max = (FRAME_HEADER_BYTES + 20 * (ENTRY_HEADER_BYTES + 1000)) as u64;
        for segment in &segments[1..segments.len() - 1] {
            let bytes = std::fs::metadata(&segment.path).unwrap().len();
            // Frames up to the limit, then at most a block of padding.
            assert!(bytes <= segment_bytes_max + 4096, "{bytes}");
            assert!(bytes > segment_bytes_max - frame_bytes_max, "{bytes}");
        }
        let (next_sequence, records) = recovered(dir.path());
        assert_eq!(next_sequence, 601);
        assert_eq!(records.len(), 600);

        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, log_options, next_sequence)
                .await
                .unwrap();
            assert_eq!(log.append(1, b"after restart").await, Ok(601));
            log.close().await.unwrap();
        });
        assert!(dir.path().join(segment_file_name(601)).exists());
        let (next_sequence, records) = recovered(dir.path());
        assert_eq!(next_sequence, 602);
        assert_eq!(records.last().unwrap(), &(601, b"after restart".to_vec()));
        let sequences: Vec<u64> = records.iter().map(|(s, _)| *s).collect();
        assert_eq!(sequences, (1..=601).collect::<Vec<u64>>());
    }

    #[test]
    fn a_batch_never_outgrows_a_segment_so_a_frame_is_never_split() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        let log_options = LogOptions {
            durability: Durability::Fsync,
            segment_bytes_max: SEGMENT_BYTES_MIN,
            buffered_io: false,
        };
        run(async move {
            let log = ShardLog::open_with(&path, log_options, 1).await.unwrap();
            let payload = vec![3u8; RECORD_PAYLOAD_BYTES_MAX];
            // Four of the largest records fill a minimum segment's batch: the rest wait.
            let appends: Vec<_> = (0..15).map(|_| log.append(1, &payload)).collect();
            for append in appends {
                append.await.unwrap();
            }
            let stats = log.stats();
            assert!(stats.batches >= 4, "{} batches", stats.batches);
            assert_eq!(stats.records_per_batch.max(), 4);
        });
        // Each frame went whole into one segment: recovery reads every record back, and
        // no segment holds more than its limit.
        let segments = list_segments(dir.path()).unwrap();
        assert!(segments.len() >= 4, "{segments:?}");
        for segment in &segments {
            let bytes = std::fs::metadata(&segment.path).unwrap().len();
            assert!(bytes <= SEGMENT_BYTES_MIN + 4096, "{bytes}");
        }
        let (next_sequence, records) = recovered(dir.path());
        assert_eq!((next_sequence, records.len()), (16, 15));
    }

    #[test]
    fn a_group_goes_into_one_frame_even_when_the_filling_batch_is_nearly_full() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        let log_options = LogOptions {
            durability: Durability::Fsync,
            segment_bytes_max: SEGMENT_BYTES_MIN,
            buffered_io: false,
        };
        run(async move {
            let log = ShardLog::open_with(&path, log_options, 1).await.unwrap();
            let large = vec![1u8; RECORD_PAYLOAD_BYTES_MAX];
            // Three largest records leave room for one more in the batch, not for two:
            // appended one by one, the group's first record would go in with them.
            let fillers: Vec<_> = (0..3).map(|_| log.append(1, &large)).collect();
            let group = [(2u8, &large[..]), (3u8, &large[..])];
            let grouped = log.append_group(&group);
            for filler in fillers {
                filler.await.unwrap();
            }
            assert_eq!(grouped.await, Ok(5));
            log.close().await.unwrap();
        });
        let segments = list_segments(dir.path()).unwrap();
        // The group went whole into the next frame, which did not fit the first segment.
        let firsts: Vec<u64> = segments.iter().map(|s| s.first_sequence).collect();
        assert_eq!(firsts, [1, 4]);
        let (_, records) = recovered(dir.path());
        let sequences: Vec<u64> = records.iter().map(|(sequence, _)| *sequence).collect();
        assert_eq!(sequences, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_group_larger_than_allowed_is_refused() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, options(Durability::Fsync, false), 1)
                .await
                .unwrap();
            let record = (1u8, &b"x"[..]);
            let too_many = [record; GROUP_RECORDS_MAX + 1];
            assert!(matches!(
                log.append_group(&too_many).await,
                Err(LogError::PayloadTooLarge { .. })
            ));
            assert!(matches!(
                log.append_group(&[]).await,
                Err(LogError::PayloadTooLarge { .. })
            ));
            assert_eq!(log.append_group(&[record, record]).await, Ok(2));
            log.close().await.unwrap();
        });
    }

    #[test]
    fn a_full_batch_makes_appends_wait_for_room() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, options(Durability::Fsync, false), 1)
                .await
                .unwrap();
            let payload = vec![7u8; RECORD_PAYLOAD_BYTES_MAX];
            // 40 largest records are 2.6 MB: more than two batches.
            let appends: Vec<_> = (0..40).map(|_| log.append(1, &payload)).collect();
            let filling = log.shared.borrow().filling.entries.len();
            assert!(filling <= BATCH_BYTES_MAX, "{filling}");
            let queued = appends
                .iter()
                .filter(|a| matches!(a.state, AppendState::Queued { .. }))
                .count();
            assert!(queued >= 40 - BATCH_BYTES_MAX / RECORD_PAYLOAD_BYTES_MAX);
            for append in appends {
                append.await.unwrap();
            }
            assert!(log.stats().batches >= 3);
            log.close().await.unwrap();
        });
        let (next_sequence, records) = recovered(dir.path());
        assert_eq!((next_sequence, records.len()), (41, 40));
    }

    #[test]
    fn durability_none_acknowledges_before_any_sync_and_close_syncs() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, options(Durability::None, false), 1)
                .await
                .unwrap();
            for expected in 1..=10 {
                assert_eq!(log.append(1, b"fast").await, Ok(expected));
            }
            // Nothing was committed yet: the acknowledgements came first.
            assert_eq!(log.stats().batches, 0);
            log.close().await.unwrap();
        });
        assert_eq!(recovered(dir.path()).1.len(), 10);
    }

    #[test]
    fn shut_through_a_shared_log_writes_what_was_acknowledged_and_refuses_the_rest() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = Rc::new(
                ShardLog::open_with(&path, options(Durability::None, false), 1)
                    .await
                    .unwrap(),
            );
            let holder = Rc::clone(&log);
            for expected in 1..=10 {
                assert_eq!(log.append(1, b"fast").await, Ok(expected));
            }
            assert_eq!(log.stats().batches, 0);
            log.shut().await.unwrap();
            assert_eq!(holder.append(1, b"late").await, Err(LogError::Closed));
            // A second shut, as another core's drain might do, returns at once.
            holder.shut().await.unwrap();
        });
        assert_eq!(recovered(dir.path()).1.len(), 10);
    }

    #[test]
    fn a_failed_commit_fails_every_pending_and_later_append() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, options(Durability::Fsync, false), 1)
                .await
                .unwrap();
            assert_eq!(log.append(1, b"durable").await, Ok(1));
            log.inject_failure("injected: fdatasync returned EIO");
            let pending: Vec<_> = (0..5).map(|_| log.append(1, b"lost")).collect();
            for append in pending {
                let error = append.await.unwrap_err();
                assert!(matches!(&error, LogError::Failed(reason) if reason.contains("EIO")));
            }
            assert!(log.failure().unwrap().contains("EIO"));
            // Later appends fail at once, with the same reason.
            let later = log.append(1, b"later").await;
            assert_eq!(later, Err(LogError::Failed(log.failure().unwrap())));
            assert!(matches!(log.close().await, Err(LogError::Failed(_))));
        });
        // What was acknowledged before the failure is still there.
        assert_eq!(recovered(dir.path()).1, [(1, b"durable".to_vec())]);
    }

    #[test]
    fn an_oversized_payload_is_refused() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let log = ShardLog::open_with(&path, options(Durability::Fsync, false), 1)
                .await
                .unwrap();
            let payload = vec![0u8; RECORD_PAYLOAD_BYTES_MAX + 1];
            let error = log.append(1, &payload).await.unwrap_err();
            assert_eq!(
                error,
                LogError::PayloadTooLarge {
                    bytes: RECORD_PAYLOAD_BYTES_MAX + 1
                }
            );
            assert_eq!(log.next_sequence(), 1);
            log.close().await.unwrap();
        });
    }

    #[test]
    fn open_reuses_an_empty_segment_but_never_one_with_records() {
        let dir = disk_dir();
        let path = dir.path().to_path_buf();
        run(async move {
            let opened = ShardLog::open_with(&path, options(Durability::Fsync, false), 1).await;
            opened.unwrap().close().await.unwrap();
            // A crash right after creating a segment leaves it empty: open it again.
            let log = ShardLog::open_with(&path, options(Durability::Fsync, false), 1)
                .await
                .unwrap();
            assert_eq!(log.append(1, b"x").await, Ok(1));
            log.close().await.unwrap();
            // Recovery was skipped: next_sequence 1 names a segment with records.
            let error = ShardLog::open_with(&path, options(Durability::Fsync, false), 1)
                .await
                .err()
                .unwrap();
            assert!(
                error.to_string().contains("already holds records"),
                "{error}"
            );
        });
    }

    #[test]
    fn open_refuses_a_sequence_behind_existing_segments_and_bad_sizes() {
        let dir = disk_dir();
        std::fs::write(dir.path().join(segment_file_name(10)), b"").unwrap();
        let path = dir.path().to_path_buf();
        run(async move {
            let behind = ShardLog::open_with(&path, options(Durability::Fsync, false), 5).await;
            assert!(behind
                .err()
                .unwrap()
                .to_string()
                .contains("recovery was not run"));
            let small = LogOptions {
                segment_bytes_max: SEGMENT_BYTES_MIN - 1,
                ..options(Durability::Fsync, false)
            };
            let error = ShardLog::open_with(&path, small, 10).await.err().unwrap();
            assert!(error.to_string().contains("segment size"), "{error}");
            let zero = ShardLog::open_with(&path, options(Durability::Fsync, false), 0).await;
            assert!(zero.is_err());
        });
        assert_eq!(SEQUENCE_FIRST, 1);
    }
}
