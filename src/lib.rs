//! payd: a thread-per-core payment server.
//!
//! # Layout
//!
//! The modules follow the life of a request, each importing only from those below it:
//!
//! - `server`: one pinned glommio executor per core, its listener, the connection loop,
//!   the access log, start-up and shutdown.
//! - `http`: bytes to request heads and bodies (httparse, limits, smuggling defences),
//!   and responses back to bytes.
//! - `api`: routes and handlers, and the error catalogue of API.md.
//! - `shard`: the stateful part; shards and the cross-core mesh that reaches them.
//! - `metrics` (beside the others): per-core counters and HDR histograms, merged on scrape.
//! - `config`, `lifecycle`, `payment`, `payment_object`: the config file, the process's
//!   ready/stopping flags, the payment domain types every layer speaks, and the payment
//!   object's JSON (shared by the API and webhooks).
//! - `auth`: request signatures, used by `api`.
//! - `wal`, `acquirer`, `webhooks` (below `shard`): the write-ahead log; the acquirer with
//!   its retry policy, circuit breaker, HTTP attempt and simulation; webhook signing,
//!   events, the outbox state machine and the dead-letter index (driven per shard by
//!   `shard::webhooks`).
//! - `outbound` (below `acquirer` and `webhooks`): the HTTP/1.1 client with its pool of
//!   keep-alive connections, for every call payd makes to another service.
//! - `fuzzing` (beside the others): the bodies of the fuzz targets in `fuzz/`, shared
//!   with the corpus replay test.
//! - `tls` (below `server` and `outbound`): certificates, keys and roots, the per-core
//!   acceptors and connectors, and the plain-or-TLS stream both sides use.
pub mod acquirer;
pub mod api;
pub mod auth;
pub mod config;
pub mod fuzzing;
pub mod http;
pub mod lifecycle;
pub mod metrics;
pub mod outbound;
pub mod payment;
pub mod payment_object;
pub mod server;
pub mod shard;
#[cfg(test)]
pub mod testing;
pub mod tls;
pub mod wal;
pub mod webhooks;
