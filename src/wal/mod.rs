//! The shard-local write-ahead log: record framing, payloads, recovery, group commit.
pub mod log;
pub mod manifest;
pub mod payload;
pub mod record;
pub mod recovery;
pub mod segment;
pub mod writer;
