//! The write-ahead log: every acknowledged payment survives any crash.
//!
//! # The model
//!
//! Each shard has its own log, written only by the executor that owns the shard, so no
//! lock is ever taken. A log is a directory of *segment* files (`<data_dir>/shard-NNNN/`),
//! each named by the sequence number of its first record and rolled over at a size
//! limit. A *record* is a kind and a compact binary payload (`Created`, `Finalized`,
//! `Checkpoint`, and the webhook outbox's `WebhookEvent`, `WebhookAttempted`,
//! `WebhookDelivered`, `WebhookDeadLetter`), numbered by its sequence in the log.
//!
//! Writes use *group commit*. `ShardLog::append` encodes the record into the batch that
//! is filling and returns a future; one commit task per shard writes the whole batch as
//! one checksummed *frame* (`frame`) with one write and one fdatasync, then resolves
//! every future that sync covered. While it syncs, the next batch fills. Records that must
//! live or die together go in with `ShardLog::append_group`: never split across frames. With `durability = "fsync"` (the default) an append
//! resolves only after its sync: the caller answers the client after that, never before.
//! `durability = "none"` resolves at once and never syncs: for benchmarks only.
//!
//! A failed write or fdatasync fails the log for good (`LogError::Failed`): the shard
//! answers 503 and says why. It is never retried as if the data were safe.
//!
//! # Start-up, in order
//!
//! 1. `DataDir::open` locks the data directory (a second payd on it fails) and reads or
//!    writes the manifest that fixes the shard count.
//! 2. Per shard, `recover` replays every record into a visitor that rebuilds the shard's
//!    state, cuts off a torn or zeroed tail of the last segment, and refuses any other
//!    damage with the file and offset. It uses blocking file I/O: the shard is not
//!    serving yet.
//! 3. `ShardLog::open` (inside the shard's glommio executor) at `Recovery::next_sequence`
//!    starts a new segment there. Opening after `scan` (which cuts nothing) or without
//!    recovery would leave a torn tail inside the log: do not.
//!
//! # Retention
//!
//! `dead_segment_prefix` tells which oldest segments hold nothing live, given a predicate
//! from the shard; `delete_segments` removes them. Live records in an old segment are
//! carried forward by appending them again, so replay lets the later record win.
//!
//! # Files
//!
//! `frame` lays batches out on disk (format 2); `record` reads the bare records of logs
//! written before frames (format 1); `payload` encodes what records say; `segment` names
//! files; `recovery` reads a log back; `manifest` owns the data directory; `disk` is the
//! storage seam (the filesystem, or a simulated disk in tests); `writer` does the segment
//! I/O (direct I/O, or buffered where the filesystem refuses `O_DIRECT`); `log` is the
//! group commit; `retention` frees old segments.

mod disk;
mod frame;
mod log;
mod manifest;
mod payload;
mod record;
mod recovery;
mod retention;
mod segment;
mod webhook_payload;
mod writer;

#[cfg(test)]
pub(crate) mod fuzz;
#[cfg(test)]
mod simulation;

pub use disk::Disk;
pub use frame::{
    decode_frame, encode_frame, Frame, FrameCorruption, FrameOutcome, FRAME_HEADER_BYTES,
    FRAME_MAGIC,
};
pub use log::{Append, LogError, LogOptions, LogStats, ShardLog, GROUP_RECORDS_MAX};
pub use manifest::{DataDir, DataDirError, MANIFEST_FORMAT_VERSION};
pub use payload::{
    encode_created, encode_finalized, Checkpoint, Created, Finalized, PayloadError, RecordKind,
    DECLINE_CODE_LENGTH_MAX, MERCHANT_ID_LENGTH_MAX,
};
pub use record::{
    decode_record, encode_record, CorruptReason, DecodeOutcome, Record, RECORD_BYTES_MAX,
    RECORD_PAYLOAD_BYTES_MAX,
};
pub use recovery::{
    read_records, recover, recover_on, replay_closed_segment, scan, RecordVisitor, RecordsRead,
    Recovery, RecoveryError, RecoveryProblem, SegmentSummary, Truncation,
};
pub use retention::{dead_segment_prefix, delete_segments};
pub use segment::{
    list_segments, segment_file_name, SegmentFile, SEGMENT_BYTES_CEILING, SEGMENT_BYTES_MIN,
    SEQUENCE_FIRST,
};
pub use webhook_payload::{
    WebhookAttempted, WebhookDeadLetter, WebhookDelivered, WebhookEvent, WebhookOutcome,
};
pub use writer::{IoMode, BATCH_BYTES_MAX};

/// A segment size for when the config has no say: large enough that roll-overs are
/// rare, small enough that retention frees disk in useful steps and recovery reads one
/// segment into memory at a time without strain.
pub const SEGMENT_BYTES_DEFAULT: u64 = 64 << 20;

// The largest record fits in an empty segment, so a roll-over always makes room, and in
// an empty batch, so an append never waits for ever.
const _: () = assert!(RECORD_BYTES_MAX as u64 <= SEGMENT_BYTES_MIN);
const _: () = assert!(RECORD_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(SEGMENT_BYTES_MIN <= SEGMENT_BYTES_DEFAULT);
const _: () = assert!(SEGMENT_BYTES_DEFAULT <= SEGMENT_BYTES_CEILING);
