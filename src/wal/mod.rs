//! The shard-local write-ahead log: record framing, payloads, recovery, group commit.
pub mod manifest;
pub mod payload;
pub mod record;
pub mod recovery;
pub mod segment;
