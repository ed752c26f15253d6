//! payd: a thread-per-core payment server.
pub mod acquirer;
pub mod api;
pub mod auth;
pub mod config;
pub mod http;
pub mod payment;
pub mod shard;
pub mod wal;
