//! Webhooks: notifying merchants of final payments (API.md section 5).
//!
//! `signing` makes the Standard Webhooks headers; `event` writes an event's body.
pub mod dispatch;
pub mod event;
pub mod retry;
pub mod sender;
pub mod signing;
