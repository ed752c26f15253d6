//! What one attempt's outcome means for its event (API.md section 5), and when the next
//! attempt is due: pure functions of the outcome, the schedule and a random value.
//!
//! A 2xx is delivery. A 410 stops at once. Anything else, 3xx included, a timeout or a
//! broken connection, is retried after the next delay of `webhooks.retry_schedule_secs`
//! plus a little jitter, or after the receiver's `Retry-After` on 429 and 503 when that
//! is longer. After the last delay's attempt fails, the event is dead-lettered.

use super::sender::DeliveryOutcome;
use crate::config::WebhooksConfig;

/// `webhooks.retry_schedule_secs` has at most this many delays (config.rs checks it).
pub const RETRIES_MAX: usize = 32;
/// The first attempt and every retry.
pub const ATTEMPTS_MAX: u32 = 1 + RETRIES_MAX as u32;
/// A `Retry-After` longer than this is cut to it: a receiver may slow its own deliveries
/// down, not park an event for ever.
pub const RETRY_AFTER_SECS_MAX: u64 = 86_400;
/// Jitter adds up to a tenth of each delay, so events that failed together (an endpoint
/// that was down) do not all come back in the same millisecond.
pub const JITTER_DELAY_DIVISOR: u64 = 10;

/// What an attempt's outcome means for the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// 410 Gone: the receiver wants no more attempts of this event.
    Gone,
    /// Try again; not before `retry_after_secs` if the receiver said so.
    Retry {
        retry_after_secs: Option<u64>,
    },
}

impl Verdict {
    pub fn of(outcome: &DeliveryOutcome) -> Verdict {
        match *outcome {
            DeliveryOutcome::Answered { status, .. } if (200..=299).contains(&status) => {
                Verdict::Delivered
            }
            DeliveryOutcome::Answered { status: 410, .. } => Verdict::Gone,
            DeliveryOutcome::Answered {
                status: 429 | 503,
                retry_after_secs,
            } => Verdict::Retry { retry_after_secs },
            // Retry-After on any other status is not the contract's: ignore it.
            DeliveryOutcome::Answered { .. }
            | DeliveryOutcome::TimedOut
            | DeliveryOutcome::Failed
            | DeliveryOutcome::TlsFailed => Verdict::Retry {
                retry_after_secs: None,
            },
        }
    }
}

/// The delays between attempts, from `webhooks.retry_schedule_secs`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    delays_secs: Vec<u64>,
}

impl RetrySchedule {
    pub fn new(delays_secs: Vec<u64>) -> RetrySchedule {
        assert!(delays_secs.len() <= RETRIES_MAX);
        RetrySchedule { delays_secs }
    }

    pub fn from_config(config: &WebhooksConfig) -> RetrySchedule {
        RetrySchedule::new(config.retry_schedule_secs.clone())
    }

    /// Attempts an event gets before it is dead-lettered.
    pub fn attempts_max(&self) -> u32 {
        1 + self.delays_secs.len() as u32
    }

    /// The wait after failed attempt number `attempt` (1-based), or `None` when that was
    /// the last one. `random` is any uniformly random value: passing it in keeps this pure.
    pub fn delay_ms(
        &self,
        attempt: u32,
        retry_after_secs: Option<u64>,
        random: u64,
    ) -> Option<u64> {
        assert!(attempt >= 1);
        let delay_secs = *self.delays_secs.get(attempt as usize - 1)?;
        let base_ms = delay_secs.saturating_mul(1000);
        let jitter_ms = random % (base_ms / JITTER_DELAY_DIVISOR + 1);
        let scheduled_ms = base_ms + jitter_ms;
        let asked_ms = retry_after_secs.map_or(0, |secs| secs.min(RETRY_AFTER_SECS_MAX) * 1000);
        Some(scheduled_ms.max(asked_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(status: u16) -> DeliveryOutcome {
        DeliveryOutcome::Answered {
            status,
            retry_after_secs: None,
        }
    }

    fn default_schedule() -> RetrySchedule {
        RetrySchedule::from_config(&WebhooksConfig::default())
    }

    #[test]
    fn every_2xx_is_delivery() {
        for status in [200, 201, 202, 204, 299] {
            assert_eq!(
                Verdict::of(&answered(status)),
                Verdict::Delivered,
                "{status}"
            );
        }
    }

    #[test]
    fn gone_stops_at_once() {
        assert_eq!(Verdict::of(&answered(410)), Verdict::Gone);
    }

    #[test]
    fn redirects_errors_timeouts_and_broken_connections_are_retried() {
        let retry = Verdict::Retry {
            retry_after_secs: None,
        };
        for status in [
            100, 199, 300, 301, 302, 307, 308, 400, 401, 404, 408, 500, 502, 504,
        ] {
            assert_eq!(Verdict::of(&answered(status)), retry, "{status}");
        }
        assert_eq!(Verdict::of(&DeliveryOutcome::TimedOut), retry);
        assert_eq!(Verdict::of(&DeliveryOutcome::Failed), retry);
        assert_eq!(Verdict::of(&DeliveryOutcome::TlsFailed), retry);
    }

    #[test]
    fn retry_after_counts_on_429_and_503_only() {
        for status in [429, 503] {
            let outcome = DeliveryOutcome::Answered {
                status,
                retry_after_secs: Some(60),
            };
            assert_eq!(
                Verdict::of(&outcome),
                Verdict::Retry {
                    retry_after_secs: Some(60)
                }
            );
        }
        let other = DeliveryOutcome::Answered {
            status: 500,
            retry_after_secs: Some(60),
        };
        assert_eq!(
            Verdict::of(&other),
            Verdict::Retry {
                retry_after_secs: None
            }
        );
    }

    #[test]
    fn delays_follow_the_schedule_then_dead_letter() {
        let schedule = default_schedule();
        assert_eq!(schedule.attempts_max(), 8);
        let expected_secs = [5, 300, 1800, 7200, 18000, 36000, 36000];
        for (index, secs) in expected_secs.into_iter().enumerate() {
            let attempt = index as u32 + 1;
            assert_eq!(schedule.delay_ms(attempt, None, 0), Some(secs * 1000));
        }
        assert_eq!(schedule.delay_ms(8, None, 0), None);
        assert_eq!(schedule.delay_ms(9, Some(5), 0), None);
        assert_eq!(RetrySchedule::new(Vec::new()).delay_ms(1, None, 0), None);
    }

    #[test]
    fn jitter_adds_at_most_a_tenth() {
        let schedule = default_schedule();
        let mut seen = std::collections::HashSet::new();
        for random in 0..2_000u64 {
            let random = random.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let delay_ms = schedule.delay_ms(1, None, random).unwrap();
            assert!((5_000..=5_500).contains(&delay_ms), "{delay_ms}");
            seen.insert(delay_ms);
        }
        // The jitter spreads: many distinct delays, not a couple of values.
        assert!(seen.len() > 300, "{}", seen.len());
        assert_eq!(schedule.delay_ms(1, None, 500), Some(5_500));
        assert_eq!(schedule.delay_ms(1, None, 501), Some(5_000));
        // A zero delay (tests configure them) stays zero.
        assert_eq!(
            RetrySchedule::new(vec![0]).delay_ms(1, None, u64::MAX),
            Some(0)
        );
    }

    #[test]
    fn a_longer_retry_after_wins_and_is_capped() {
        let schedule = default_schedule();
        // Shorter than the schedule: the schedule stands.
        assert_eq!(schedule.delay_ms(1, Some(2), 0), Some(5_000));
        assert_eq!(schedule.delay_ms(1, Some(60), 0), Some(60_000));
        assert_eq!(
            schedule.delay_ms(1, Some(u64::MAX), 0),
            Some(RETRY_AFTER_SECS_MAX * 1000)
        );
        // The last attempt's Retry-After does not buy another attempt.
        assert_eq!(schedule.delay_ms(8, Some(60), 0), None);
    }
}
