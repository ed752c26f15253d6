//! Shards: the stateful part of payd. Each shard owns the payments whose
//! `(merchant_id, order_id)` hashes to it and lives on one core; `routing` says which shard
//! and which core, `state` is the pure payment state machine of one shard.
pub mod routing;
pub mod state;
