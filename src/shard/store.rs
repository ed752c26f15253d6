//! The store seam: where a shard makes its records durable.
//!
//! A shard writes a `Created` record before it asks the acquirer and a `Finalized` record
//! before it applies a final status; `append` returns once the record is durable (at once
//! with `storage.durability = "none"`). Behind it is the shard's write-ahead log.

use crate::wal::{RecordKind, ShardLog};

#[derive(Debug)]
pub struct StoreError(pub String);

pub struct Store {
    log: ShardLog,
}

impl Store {
    pub fn new(log: ShardLog) -> Store {
        Store { log }
    }

    /// Why the store can no longer make records durable, if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.log.failure().map(|reason| reason.to_string())
    }

    /// Appends one record and waits until it is durable.
    pub async fn append(&self, kind: RecordKind, payload: &[u8]) -> Result<(), StoreError> {
        self.log
            .append(kind.as_u8(), payload)
            .await
            .map(|_sequence| ())
            .map_err(|error| StoreError(error.to_string()))
    }

    pub fn log(&self) -> &ShardLog {
        &self.log
    }
}
