//! The acquirer a core talks to, as the config says: the policy of `authorize` around
//! the configured kind of attempt (in-process simulation or HTTP), and the core's
//! acquirer metrics recorded around every attempt.

use super::breaker::BreakerState;
use super::http::HttpAcquirer;
use super::simulated::{self, Simulated};
use super::{authorize, final_authorization, AttemptOutcome, AuthorizeRequest, RetryPolicy};
use crate::config::{AcquirerMode, Config};
use crate::metrics::{AcquirerOutcome, BreakerGauge, CoreMetrics};
use crate::payment::Authorization;
use crate::tls::TlsConnector;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::Instant;

/// One core's acquirer. Shared by the core's shards through an `Rc`.
pub struct Acquirer {
    policy: RetryPolicy,
    attempts: Attempts,
    metrics: Rc<RefCell<CoreMetrics>>,
}

enum Attempts {
    Simulated(Simulated),
    Http(Box<HttpAcquirer>),
}

impl Acquirer {
    /// `tls` is the core's connector, for an `https://` acquirer URL.
    pub fn new(config: &Config, metrics: Rc<RefCell<CoreMetrics>>, tls: &TlsConnector) -> Acquirer {
        let attempts = match config.acquirer.mode {
            AcquirerMode::Simulated => Attempts::Simulated(Simulated {
                latency_ms: config.acquirer.latency_ms,
                jitter_ms: config.acquirer.jitter_ms,
            }),
            AcquirerMode::Http => {
                Attempts::Http(Box::new(HttpAcquirer::new(&config.acquirer, tls)))
            }
        };
        let acquirer = Acquirer {
            policy: RetryPolicy::from_config(&config.acquirer),
            attempts,
            metrics,
        };
        acquirer.publish_gauges();
        acquirer
    }

    /// Authorises one payment, retrying as the policy says, to a final answer.
    pub async fn authorize(&self, request: &AuthorizeRequest) -> Authorization {
        authorize(&self.policy, request, |request, attempt_number| {
            self.attempt(request, attempt_number)
        })
        .await
    }

    /// The simulation without latency answers a first attempt at once: when that answer
    /// is final, it is returned here (and counted as a call of no latency) with no
    /// request built, no timer and no clock read. `None` when the payment must go through
    /// `authorize`: an HTTP acquirer, a simulated latency, or a first attempt to retry.
    pub fn answer_at_once(&self, payment_method: &str) -> Option<Authorization> {
        let Attempts::Simulated(simulated) = &self.attempts else {
            return None;
        };
        if simulated.latency_ms != 0 || simulated.jitter_ms != 0 {
            return None;
        }
        let answer = simulated::answer(payment_method, 1);
        if answer.delay_ms != 0 {
            return None;
        }
        let outcome = answer.reply.outcome();
        let label = simulated_label(&outcome);
        let authorization = final_authorization(outcome)?;
        self.metrics.borrow_mut().acquirer.record_call(label, 0);
        Some(authorization)
    }

    async fn attempt(&self, request: &AuthorizeRequest, attempt_number: u32) -> AttemptOutcome {
        if attempt_number > 1 {
            self.metrics.borrow_mut().acquirer.retries += 1;
        }
        let mut record = CallRecord {
            acquirer: self,
            started: Instant::now(),
            finished: false,
        };
        let (outcome, label) = match &self.attempts {
            Attempts::Simulated(simulated) => {
                let outcome = simulated.attempt(request, attempt_number).await;
                let label = simulated_label(&outcome);
                (outcome, label)
            }
            // Boxed: an HTTP attempt's future is kilobytes (its request and response
            // buffers), and inline it would make every authorisation future that large,
            // simulated ones included, to be copied on each task spawn.
            Attempts::Http(http) => Box::pin(http.attempt(request)).await,
        };
        record.finish(label);
        outcome
    }

    /// Copies the pool's and the breaker's state into the core's metrics. Called around
    /// every attempt, so a scrape sees them as of the latest one.
    fn publish_gauges(&self) {
        let Attempts::Http(http) = &self.attempts else {
            return;
        };
        let pool = http.pool_stats();
        let (state, opened_total) = http.breaker();
        let mut metrics = self.metrics.borrow_mut();
        let gauges = &mut metrics.acquirer;
        gauges.pool_size = pool.size as u64;
        gauges.pool_connections_in_use = pool.in_use as u64;
        gauges.pool_connections_in_use_max = pool.in_use_max as u64;
        gauges.pool_connections_open = pool.open as u64;
        gauges.pool_waiting = pool.waiting as u64;
        gauges.pool_connects = pool.connects_total;
        gauges.breaker_state = match state {
            BreakerState::Closed { .. } => BreakerGauge::Closed,
            BreakerState::Open { .. } => BreakerGauge::Open,
            BreakerState::HalfOpen => BreakerGauge::HalfOpen,
        };
        gauges.breaker_opened = opened_total;
    }
}

/// The simulation's outcomes in the metrics' terms (it has no transport to fail).
fn simulated_label(outcome: &AttemptOutcome) -> AcquirerOutcome {
    match outcome {
        AttemptOutcome::Approved => AcquirerOutcome::Approved,
        AttemptOutcome::Declined(_) => AcquirerOutcome::Declined,
        AttemptOutcome::Rejected => AcquirerOutcome::Rejected,
        AttemptOutcome::Retryable => AcquirerOutcome::RetryableStatus,
    }
}

/// Records one attempt in the metrics exactly once: with its outcome when it finishes,
/// as a timeout when `authorize` drops it at `acquirer.attempt_timeout_ms`.
struct CallRecord<'a> {
    acquirer: &'a Acquirer,
    started: Instant,
    finished: bool,
}

impl CallRecord<'_> {
    fn finish(&mut self, outcome: AcquirerOutcome) {
        assert!(!self.finished);
        self.finished = true;
        let latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.acquirer
            .metrics
            .borrow_mut()
            .acquirer
            .record_call(outcome, latency_us);
        self.acquirer.publish_gauges();
    }
}

impl Drop for CallRecord<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(AcquirerOutcome::Timeout);
        }
    }
}
