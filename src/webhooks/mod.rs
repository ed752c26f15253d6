//! Webhooks: notifying merchants of final payments (API.md section 5).
//!
//! `signing` makes the Standard Webhooks headers; `event` writes an event's body.
pub mod event;
pub mod signing;
