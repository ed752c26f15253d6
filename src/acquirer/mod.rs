//! The acquirer seam (API.md section 4): one authorisation per payment, made of attempts
//! retried with exponential backoff under a per-attempt timeout.
//!
//! An attempt is any async function from the request to an `AttemptOutcome`: the in-process
//! simulation (`simulated`) or a call over HTTP (`http`, on the pooled `outbound` client,
//! behind a per-core circuit breaker, `breaker`). `authorize` owns the policy around
//! it (timeouts, retries, backoff, the mapping to a payment's final status), so every
//! acquirer behaves the same. The idempotency key is the payment id, which the request
//! carries unchanged into every attempt.

pub mod breaker;
mod client;
pub mod http;
mod notices;
pub mod random;
pub mod sim_server;
pub mod simulated;

pub use client::Acquirer;

use crate::config::AcquirerConfig;
use crate::payment::{Authorization, Currency, PaymentId};
use std::future::Future;
use std::time::Duration;

/// The longest decline code kept from an acquirer; longer or odd ones become `declined`.
pub const DECLINE_CODE_LENGTH_MAX: usize = 64;
/// A code for a decline whose own code was unusable.
pub const DECLINE_CODE_FALLBACK: &str = "declined";
/// `decline_code` of a payment the acquirer refused with a final 4xx.
pub const DECLINE_CODE_REJECTED: &str = "acquirer_rejected";
/// `decline_code` of a payment whose every attempt failed.
pub const DECLINE_CODE_UNAVAILABLE: &str = "acquirer_unavailable";

/// Upper bound of `acquirer.max_attempts` (the config checks the same bound).
pub const ATTEMPTS_MAX: u32 = 20;
/// First backoff ceiling, doubled after each failed attempt up to `BACKOFF_MAX_MS`.
pub const BACKOFF_BASE_MS: u64 = 100;
pub const BACKOFF_MAX_MS: u64 = 10_000;

/// What payd asks the acquirer for one payment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizeRequest {
    /// Also the `Idempotency-Key` of every attempt.
    pub payment_id: PaymentId,
    pub merchant_id: String,
    pub amount: u64,
    pub currency: Currency,
    pub payment_method: String,
}

/// The result of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    Approved,
    /// Declined by the issuer, with the acquirer's code.
    Declined(String),
    /// A final refusal: an HTTP 4xx other than 408 and 429.
    Rejected,
    /// Worth another attempt: timeout, connection error, 408, 429 or 5xx.
    Retryable,
}

impl AttemptOutcome {
    /// The outcome of an HTTP answer other than `200`, whose body decides instead.
    /// API.md makes every 4xx but 408 and 429 final; an unexpected 1xx, 2xx or 3xx is
    /// final too, as retrying an answer nobody specified would not change it.
    pub fn of_http_status(status: u16) -> AttemptOutcome {
        match status {
            408 | 429 | 500..=599 => AttemptOutcome::Retryable,
            _ => AttemptOutcome::Rejected,
        }
    }
}

/// How `authorize` retries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub attempt_timeout_ms: u64,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl RetryPolicy {
    pub fn from_config(config: &AcquirerConfig) -> RetryPolicy {
        RetryPolicy {
            max_attempts: config.max_attempts,
            attempt_timeout_ms: config.attempt_timeout_ms,
            backoff_base_ms: BACKOFF_BASE_MS,
            backoff_max_ms: BACKOFF_MAX_MS,
        }
    }

    /// The wait after failed attempt number `attempt` (1-based): exponential, capped at
    /// `backoff_max_ms`, with equal jitter (between half the ceiling and the ceiling), so
    /// retries of many payments spread out yet never hammer the acquirer back to back.
    /// `random` is any uniformly random value; passing it in keeps this function pure.
    pub fn backoff_ms(&self, attempt: u32, random: u64) -> u64 {
        assert!(attempt >= 1);
        let doublings = attempt - 1;
        let ceiling_ms = if doublings >= u64::BITS {
            self.backoff_max_ms
        } else {
            self.backoff_base_ms
                .saturating_mul(1 << doublings)
                .min(self.backoff_max_ms)
        };
        let half_ms = ceiling_ms / 2;
        let jitter_span_ms = ceiling_ms - half_ms + 1;
        half_ms + random % jitter_span_ms
    }
}

/// Authorises one payment: attempts until one is final or `max_attempts` were made, each
/// bounded by `attempt_timeout_ms` (a timed-out attempt is dropped and counts as
/// retryable), sleeping `backoff_ms` between attempts. `attempt(request, n)` gets the same
/// request, hence the same idempotency key, every time; `n` counts from 1.
pub async fn authorize<'r, F, Fut>(
    policy: &RetryPolicy,
    request: &'r AuthorizeRequest,
    mut attempt: F,
) -> Authorization
where
    F: FnMut(&'r AuthorizeRequest, u32) -> Fut,
    Fut: Future<Output = AttemptOutcome>,
{
    assert!((1..=ATTEMPTS_MAX).contains(&policy.max_attempts));
    assert!(policy.attempt_timeout_ms > 0);
    let attempt_timeout = Duration::from_millis(policy.attempt_timeout_ms);
    for attempt_number in 1..=policy.max_attempts {
        let attempt_future = attempt(request, attempt_number);
        let timed = glommio::timer::timeout(attempt_timeout, async { Ok(attempt_future.await) });
        let outcome = timed.await.unwrap_or(AttemptOutcome::Retryable);
        if let Some(authorization) = final_authorization(outcome) {
            return authorization;
        }
        if attempt_number < policy.max_attempts {
            let backoff_ms = policy.backoff_ms(attempt_number, random::next_u64());
            glommio::timer::sleep(Duration::from_millis(backoff_ms)).await;
        }
    }
    Authorization::Failed(DECLINE_CODE_UNAVAILABLE.to_string())
}

/// The payment's final status after an attempt with this outcome; `None` to retry.
pub fn final_authorization(outcome: AttemptOutcome) -> Option<Authorization> {
    match outcome {
        AttemptOutcome::Approved => Some(Authorization::Approved),
        AttemptOutcome::Declined(code) => {
            Some(Authorization::Declined(sanitize_decline_code(code)))
        }
        AttemptOutcome::Rejected => Some(Authorization::Failed(DECLINE_CODE_REJECTED.to_string())),
        AttemptOutcome::Retryable => None,
    }
}

/// Keeps an acquirer's decline code only if it is a short identifier (it is stored, logged
/// and rendered to merchants); anything else becomes `declined`.
pub fn sanitize_decline_code(code: String) -> String {
    let usable = (1..=DECLINE_CODE_LENGTH_MAX).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if usable {
        code
    } else {
        DECLINE_CODE_FALLBACK.to_string()
    }
}

#[cfg(test)]
mod tests;
