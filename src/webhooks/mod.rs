//! Webhooks: telling merchants that their payments are final (API.md section 5).
//!
//! # The model
//!
//! When a payment becomes final, its shard writes a `WebhookEvent` record (wal) in the
//! same batch as the final status: that record *is* the outbox entry, so an event owed
//! survives any crash. Each shard delivers its own events: the outbox (`dispatch`) picks
//! the next attempt, the sender seam (`sender`) makes it. A failed attempt with a retry
//! to come is written as `WebhookAttempted`; when an event's delivery ends, a
//! `WebhookDelivered` record says so, or a self-contained `WebhookDeadLetter` when it
//! failed for good (kept in `dead_letters` for `GET /v1/events?delivery=failed`).
//! Replaying the log therefore resumes exactly the undelivered events, each where its
//! schedule was. Delivery is at least once, in order per payment; receivers dedupe on
//! the event id, which is the same on every attempt and every restart.
//!
//! The in-memory backlog is bounded (`webhooks.max_backlog_per_shard`); events beyond it
//! wait in the log and the shard reads them back as the backlog drains.
//!
//! Everything here but `sender::attempt` is pure: the outbox takes the time and a random
//! value from its caller, so every rule (retry schedule, `Retry-After`, 410, dead
//! letters, bounds, fairness between merchants) is tested without sockets or disks.
//!
//! # Files
//!
//! - `event`: the event's id and JSON body, the payment object written by the shared
//!   writer of `payment_object`, as the API writes it.
//! - `signing`: the Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
//!   `webhook-signature`) under the merchant's `whsec_` key.
//! - `retry`: what an attempt's outcome means, and when the next attempt is due.
//! - `dispatch`: the per-shard outbox state machine, its bounds and its fairness.
//! - `dead_letters`: the per-shard index of events whose delivery failed for good.
//! - `sender`: the seam to the outbound HTTP client, with the per-attempt timeout.
//!
//! # Limits
//!
//! The constants below are the defaults of `OutboxLimits`; the retry schedule and the
//! attempt timeout come from `[webhooks]` in the config.

pub mod dead_letters;
pub mod dispatch;
pub mod event;
pub mod retry;
pub mod sender;
pub mod signing;

use dispatch::OutboxLimits;

// The backlog's limits are the config's: it owns every key's default and ceiling.
use crate::config::{BACKLOG_EVENTS_PER_SHARD_CEILING, BACKLOG_EVENTS_PER_SHARD_MAX};
/// Deliveries in flight on one shard beyond each merchant's first. A core with several
/// shards has this many per shard.
pub const SHARED_DELIVERIES_PER_SHARD_MAX: usize = 64;
/// Deliveries in flight to one merchant from one shard: a slow endpoint holds at most
/// this many attempts, each at most `webhooks.timeout_ms`.
pub const MERCHANT_DELIVERIES_PER_SHARD_MAX: usize = 8;

impl Default for OutboxLimits {
    fn default() -> OutboxLimits {
        OutboxLimits {
            backlog_events_max: BACKLOG_EVENTS_PER_SHARD_MAX,
            shared_in_flight_max: SHARED_DELIVERIES_PER_SHARD_MAX,
            merchant_in_flight_max: MERCHANT_DELIVERIES_PER_SHARD_MAX,
        }
    }
}

// One merchant's attempts beyond its first take only part of the shared slots.
const _: () = assert!(MERCHANT_DELIVERIES_PER_SHARD_MAX <= SHARED_DELIVERIES_PER_SHARD_MAX / 2);
const _: () = assert!(MERCHANT_DELIVERIES_PER_SHARD_MAX >= 1);
const _: () = assert!(BACKLOG_EVENTS_PER_SHARD_MAX <= BACKLOG_EVENTS_PER_SHARD_CEILING);
