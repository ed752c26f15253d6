//! Shards: the stateful part of payd. Each shard owns the payments whose
//! `(merchant_id, order_id)` hashes to it and lives on one core; other cores reach it by
//! message over the mesh.
//!
//! `routing` says which shard and which core; `state` is the pure payment state machine of
//! one shard; `runtime` drives it with commands, with `store` (the log) and the acquirer
//! at its edges; `recovery` rebuilds it from the log at start; `retention` frees old
//! payments and segments; `mesh` carries commands
//! and replies between cores.
pub mod mesh;
pub mod recovery;
pub mod retention;
pub mod routing;
pub mod runtime;
pub mod state;
pub mod store;
pub mod webhook_reload;
pub mod webhooks;
