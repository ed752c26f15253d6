//! The simulated acquirer of API.md section 4: answers by payment-method token, after a
//! configurable latency. `answer` is the pure token table, shared by the in-process
//! simulation here and the standalone `payd acquirer-sim` HTTP server.

use super::{random, AttemptOutcome, AuthorizeRequest};
use std::time::Duration;

/// How long `tok_slow` takes: longer than the default `acquirer.response_timeout_ms`
/// (2 s), so it exercises the 202 `pending` path.
pub const SLOW_DELAY_MS: u64 = 3_000;

/// What the simulation answers to one attempt, as the HTTP server would send it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimulatedAnswer {
    /// Added to the configured latency before answering.
    pub delay_ms: u64,
    pub reply: SimulatedReply,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimulatedReply {
    /// `200 {"approved": true}`
    Approved,
    /// `200 {"approved": false, "code": ...}`
    Declined(&'static str),
    /// An HTTP error status with no decision.
    HttpStatus(u16),
}

impl SimulatedReply {
    pub fn outcome(self) -> AttemptOutcome {
        match self {
            SimulatedReply::Approved => AttemptOutcome::Approved,
            SimulatedReply::Declined(code) => AttemptOutcome::Declined(code.to_string()),
            SimulatedReply::HttpStatus(status) => AttemptOutcome::of_http_status(status),
        }
    }
}

/// The token table. `attempt_number` counts the attempts for one payment id, from 1.
pub fn answer(payment_method: &str, attempt_number: u32) -> SimulatedAnswer {
    assert!(attempt_number >= 1);
    let (delay_ms, reply) = match payment_method {
        "tok_decline" => (0, SimulatedReply::Declined("card_declined")),
        "tok_insufficient_funds" => (0, SimulatedReply::Declined("insufficient_funds")),
        "tok_slow" => (SLOW_DELAY_MS, SimulatedReply::Approved),
        "tok_flaky" if attempt_number == 1 => (0, SimulatedReply::HttpStatus(503)),
        "tok_error" => (0, SimulatedReply::HttpStatus(500)),
        _ => (0, SimulatedReply::Approved),
    };
    SimulatedAnswer { delay_ms, reply }
}

/// The in-process simulated acquirer: every answer comes after `latency_ms` plus a uniform
/// jitter in `0..=jitter_ms`, waited on glommio timers so the core keeps serving.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Simulated {
    pub latency_ms: u64,
    pub jitter_ms: u64,
}

impl Simulated {
    /// One attempt, usable as the `attempt` function of `authorize`.
    pub async fn attempt(&self, request: &AuthorizeRequest, attempt_number: u32) -> AttemptOutcome {
        let answer = answer(&request.payment_method, attempt_number);
        let delay_ms = self.latency_ms + self.jitter_ms(random::next_u64()) + answer.delay_ms;
        if delay_ms > 0 {
            glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
        }
        answer.reply.outcome()
    }

    fn jitter_ms(&self, random: u64) -> u64 {
        random % self.jitter_ms.saturating_add(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_table_matches_the_contract() {
        let approved = SimulatedAnswer {
            delay_ms: 0,
            reply: SimulatedReply::Approved,
        };
        assert_eq!(answer("tok_visa", 1), approved);
        assert_eq!(answer("tok_anything_else", 3), approved);
        assert_eq!(
            answer("tok_decline", 1).reply,
            SimulatedReply::Declined("card_declined")
        );
        assert_eq!(
            answer("tok_insufficient_funds", 2).reply,
            SimulatedReply::Declined("insufficient_funds")
        );
        assert_eq!(
            answer("tok_slow", 1),
            SimulatedAnswer {
                delay_ms: 3_000,
                reply: SimulatedReply::Approved
            }
        );
    }

    #[test]
    fn flaky_fails_only_the_first_attempt() {
        assert_eq!(
            answer("tok_flaky", 1).reply,
            SimulatedReply::HttpStatus(503)
        );
        assert_eq!(
            answer("tok_flaky", 1).reply.outcome(),
            AttemptOutcome::Retryable
        );
        assert_eq!(answer("tok_flaky", 2).reply, SimulatedReply::Approved);
        assert_eq!(answer("tok_flaky", 5).reply, SimulatedReply::Approved);
    }

    #[test]
    fn error_fails_every_attempt() {
        for attempt_number in 1..=20 {
            let reply = answer("tok_error", attempt_number).reply;
            assert_eq!(reply, SimulatedReply::HttpStatus(500));
            assert_eq!(reply.outcome(), AttemptOutcome::Retryable);
        }
    }

    #[test]
    fn tokens_match_exactly() {
        for token in ["TOK_DECLINE", "tok_decline ", "tok_declined", "tok_flak"] {
            assert_eq!(answer(token, 1).reply, SimulatedReply::Approved, "{token}");
        }
    }

    #[test]
    fn jitter_stays_within_its_bound() {
        let simulated = Simulated {
            latency_ms: 5,
            jitter_ms: 10,
        };
        for random in [0, 1, 10, 11, u64::MAX] {
            assert!(simulated.jitter_ms(random) <= 10);
        }
        assert_eq!(simulated.jitter_ms(11), 0);
        let no_jitter = Simulated {
            latency_ms: 0,
            jitter_ms: 0,
        };
        assert_eq!(no_jitter.jitter_ms(u64::MAX), 0);
    }
}
