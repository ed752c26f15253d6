//! The circuit breaker of one core's acquirer client: a pure state machine over
//! milliseconds given by the caller, so it can be tested without a clock.
//!
//! Closed, it lets every attempt through and counts consecutive failures; at
//! `BREAKER_FAILURES_TO_OPEN` it opens. Open, it refuses attempts (they fail fast as
//! retryable, without a connection) until `BREAKER_COOLING_MS` have passed. Then the
//! next attempt is let through alone as a probe (half-open): its success closes the
//! breaker, its failure opens it for another cooling period. This keeps a core from
//! piling connections and waiting requests onto an acquirer that is down, while the
//! retry policy above still gives each payment its attempts.

/// Consecutive failed attempts that open the breaker.
pub const BREAKER_FAILURES_TO_OPEN: u32 = 5;
/// How long an open breaker refuses attempts before it lets a probe through.
pub const BREAKER_COOLING_MS: u64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed {
        failures: u32,
    },
    Open {
        until_ms: u64,
    },
    /// One probe is in flight; every other attempt is refused until it settles.
    HalfOpen,
}

impl BreakerState {
    /// The metric label of the state.
    pub fn label(self) -> &'static str {
        match self {
            BreakerState::Closed { .. } => "closed",
            BreakerState::Open { .. } => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }
}

/// What the breaker says to an attempt about to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; report the result with `settle`.
    Allowed,
    /// Go ahead as the half-open probe; report the result with `settle`.
    Probe,
    /// Fail fast without calling the acquirer.
    Refused,
}

/// How an admitted attempt went, as far as the acquirer's health is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The acquirer answered (whatever the answer).
    Healthy,
    /// No usable answer: connection error, timeout, or an overload status.
    Failed,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Breaker {
    state: BreakerState,
    failures_to_open: u32,
    cooling_ms: u64,
    opened_total: u64,
}

impl Default for Breaker {
    fn default() -> Breaker {
        Breaker::new(BREAKER_FAILURES_TO_OPEN, BREAKER_COOLING_MS)
    }
}

impl Breaker {
    pub fn new(failures_to_open: u32, cooling_ms: u64) -> Breaker {
        assert!(failures_to_open >= 1);
        assert!(cooling_ms >= 1);
        Breaker {
            state: BreakerState::Closed { failures: 0 },
            failures_to_open,
            cooling_ms,
            opened_total: 0,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// How many times the breaker opened.
    pub fn opened_total(&self) -> u64 {
        self.opened_total
    }

    pub fn admit(&mut self, now_ms: u64) -> Admission {
        match self.state {
            BreakerState::Closed { .. } => Admission::Allowed,
            BreakerState::Open { until_ms } if now_ms < until_ms => Admission::Refused,
            BreakerState::Open { .. } => {
                self.state = BreakerState::HalfOpen;
                Admission::Probe
            }
            BreakerState::HalfOpen => Admission::Refused,
        }
    }

    /// Records the result of an attempt admitted as `admission`. Only attempts that the
    /// current state let through move it: a late result of an attempt admitted before
    /// the breaker opened says nothing about the acquirer now.
    pub fn settle(&mut self, admission: Admission, verdict: Verdict, now_ms: u64) {
        match (admission, self.state, verdict) {
            (Admission::Refused, _, _) => {
                unreachable!("a refused attempt never reaches the acquirer")
            }
            (Admission::Probe, BreakerState::HalfOpen, Verdict::Healthy)
            | (Admission::Allowed, BreakerState::Closed { .. }, Verdict::Healthy) => {
                self.state = BreakerState::Closed { failures: 0 };
            }
            (Admission::Probe, BreakerState::HalfOpen, Verdict::Failed) => self.open(now_ms),
            (Admission::Allowed, BreakerState::Closed { failures }, Verdict::Failed) => {
                let failures = failures + 1;
                if failures >= self.failures_to_open {
                    self.open(now_ms);
                } else {
                    self.state = BreakerState::Closed { failures };
                }
            }
            // Results of attempts admitted under an earlier state.
            (Admission::Allowed, BreakerState::Open { .. } | BreakerState::HalfOpen, _) => {}
            (Admission::Probe, state, _) => {
                unreachable!("a probe settles while the breaker is {}", state.label())
            }
        }
    }

    fn open(&mut self, now_ms: u64) {
        self.state = BreakerState::Open {
            until_ms: now_ms.saturating_add(self.cooling_ms),
        };
        self.opened_total += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failing(breaker: &mut Breaker, count: u32, now_ms: u64) {
        for _ in 0..count {
            assert_eq!(breaker.admit(now_ms), Admission::Allowed);
            breaker.settle(Admission::Allowed, Verdict::Failed, now_ms);
        }
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut breaker = Breaker::new(3, 100);
        failing(&mut breaker, 2, 0);
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 2 });
        // A success in between starts the count again.
        breaker.settle(Admission::Allowed, Verdict::Healthy, 0);
        failing(&mut breaker, 2, 0);
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 2 });
        failing(&mut breaker, 1, 10);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 110 });
        assert_eq!(breaker.opened_total(), 1);
    }

    #[test]
    fn open_refuses_until_cooled_then_lets_one_probe_through() {
        let mut breaker = Breaker::new(1, 100);
        failing(&mut breaker, 1, 0);
        assert_eq!(breaker.admit(0), Admission::Refused);
        assert_eq!(breaker.admit(99), Admission::Refused);
        assert_eq!(breaker.admit(100), Admission::Probe);
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        // While the probe is out, everyone else still fails fast.
        assert_eq!(breaker.admit(101), Admission::Refused);
        assert_eq!(breaker.admit(10_000), Admission::Refused);
    }

    #[test]
    fn a_healthy_probe_closes() {
        let mut breaker = Breaker::new(1, 100);
        failing(&mut breaker, 1, 0);
        assert_eq!(breaker.admit(150), Admission::Probe);
        breaker.settle(Admission::Probe, Verdict::Healthy, 160);
        assert_eq!(breaker.state(), BreakerState::Closed { failures: 0 });
        assert_eq!(breaker.admit(161), Admission::Allowed);
    }

    #[test]
    fn a_failed_probe_opens_for_another_cooling_period() {
        let mut breaker = Breaker::new(1, 100);
        failing(&mut breaker, 1, 0);
        assert_eq!(breaker.admit(100), Admission::Probe);
        breaker.settle(Admission::Probe, Verdict::Failed, 130);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 230 });
        assert_eq!(breaker.opened_total(), 2);
        assert_eq!(breaker.admit(229), Admission::Refused);
        assert_eq!(breaker.admit(230), Admission::Probe);
    }

    #[test]
    fn late_results_of_earlier_attempts_do_not_move_it() {
        let mut breaker = Breaker::new(2, 100);
        // Three attempts start while closed; two fail and open it.
        for _ in 0..3 {
            assert_eq!(breaker.admit(0), Admission::Allowed);
        }
        breaker.settle(Admission::Allowed, Verdict::Failed, 5);
        breaker.settle(Admission::Allowed, Verdict::Failed, 5);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 105 });
        // The third answers late: the breaker stays open, cooling as before.
        breaker.settle(Admission::Allowed, Verdict::Healthy, 50);
        assert_eq!(breaker.state(), BreakerState::Open { until_ms: 105 });
        assert_eq!(breaker.admit(105), Admission::Probe);
        breaker.settle(Admission::Allowed, Verdict::Failed, 106);
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "only the probe decides"
        );
    }

    #[test]
    fn default_uses_the_named_limits() {
        let mut breaker = Breaker::default();
        failing(&mut breaker, BREAKER_FAILURES_TO_OPEN - 1, 0);
        assert_eq!(breaker.admit(0), Admission::Allowed);
        failing(&mut breaker, 1, 0);
        assert_eq!(breaker.admit(BREAKER_COOLING_MS - 1), Admission::Refused);
        assert_eq!(breaker.admit(BREAKER_COOLING_MS), Admission::Probe);
    }
}
