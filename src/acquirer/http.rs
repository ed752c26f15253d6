//! The acquirer over HTTP (API.md section 4): one attempt is one
//! `POST {acquirer.url}/v1/authorize` on the core's pooled client, behind the core's
//! circuit breaker. The retry policy around attempts lives in `authorize`, as for
//! every acquirer; this file only makes one call and says what it came to.

use super::breaker::{Admission, Breaker, BreakerState, Verdict};
use super::breaker::{BREAKER_COOLING_MS, BREAKER_FAILURES_TO_OPEN};
use super::notices::{BreakerChange, UnreachableLog};
use super::{AttemptOutcome, AuthorizeRequest};
use crate::config::AcquirerConfig;
use crate::metrics::AcquirerOutcome;
use crate::outbound::{Client, ClientSettings, HttpUrl, OutboundError, PoolStats, Request};
use crate::tls::TlsConnector;
use serde::{Deserialize, Serialize};
use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

pub const AUTHORIZE_PATH: &str = "/v1/authorize";
/// An acquirer's answer is a few dozen bytes; anything over this is not one.
pub const RESPONSE_BYTES_MAX: usize = 16 * 1024;
/// A connect gives up after this long (or the attempt timeout, if shorter): on loopback
/// or in a data centre a connection takes well under a millisecond.
pub const CONNECT_TIMEOUT_MS_MAX: u64 = 1_000;
/// Attempts that may wait for a pooled connection, per connection of the pool. A burst
/// of creates waits its turn; past this the attempt fails fast and is retried later.
pub const WAITERS_PER_CONNECTION_MAX: usize = 64;
/// Idle connections older than this are closed rather than reused.
pub const IDLE_CONNECTION_MS_MAX: u64 = 30_000;
/// Share of an attempt's timeout it may spend waiting for a pooled connection; past it
/// the attempt is not sent (retryable, `pool_busy`): the acquirer would get too little
/// of the time to answer, and the timeout would blame it for payd's own queue.
pub const ATTEMPT_QUEUE_WAIT_PERCENT_MAX: u32 = 50;

/// The body of an authorisation, in the contract's field order.
#[derive(Serialize)]
struct AuthorizeBody<'a> {
    payment_id: &'a str,
    merchant_id: &'a str,
    amount: u64,
    currency: &'a str,
    payment_method: &'a str,
}

/// `{"approved": true}` or `{"approved": false, "code": "..."}`; other fields are
/// ignored, as acquirers add some.
#[derive(Deserialize)]
struct AuthorizeAnswer {
    approved: bool,
    #[serde(default)]
    code: Option<String>,
}

/// One core's HTTP acquirer: its pool of connections and its breaker.
pub struct HttpAcquirer {
    client: Client,
    /// How long an attempt may wait for a pooled connection before it is not sent
    /// (`ATTEMPT_QUEUE_WAIT_PERCENT_MAX` of `acquirer.attempt_timeout_ms`).
    queue_wait_max: Duration,
    breaker: RefCell<Breaker>,
    /// The breaker counts milliseconds from here.
    epoch: Instant,
    /// `host:port` of `acquirer.url`, for the log: never the path or query.
    host: String,
    unreachable: RefCell<UnreachableLog>,
}

impl HttpAcquirer {
    pub fn new(config: &AcquirerConfig, tls: &TlsConnector) -> HttpAcquirer {
        // Invariant: the config refused a URL that does not parse.
        let url = HttpUrl::parse(&config.url).expect("acquirer.url was validated");
        let settings = ClientSettings {
            pool_size: config.pool_size,
            waiters_max: config.pool_size * WAITERS_PER_CONNECTION_MAX,
            connect_timeout_ms: config.attempt_timeout_ms.min(CONNECT_TIMEOUT_MS_MAX),
            response_bytes_max: RESPONSE_BYTES_MAX,
            idle_ms_max: IDLE_CONNECTION_MS_MAX,
        };
        let host = format!("{}:{}", url.host, url.port);
        HttpAcquirer {
            host,
            unreachable: RefCell::new(UnreachableLog::default()),
            client: Client::new(url, settings, tls),
            queue_wait_max: Duration::from_millis(config.attempt_timeout_ms)
                * ATTEMPT_QUEUE_WAIT_PERCENT_MAX
                / 100,
            breaker: RefCell::new(Breaker::default()),
            epoch: Instant::now(),
        }
    }

    pub fn pool_stats(&self) -> PoolStats {
        self.client.stats()
    }

    pub fn breaker(&self) -> (BreakerState, u64) {
        let breaker = self.breaker.borrow();
        (breaker.state(), breaker.opened_total())
    }

    /// One attempt: the outcome for the retry policy and the label for the metrics.
    /// If the attempt is dropped (its timeout) after its request went out, the breaker
    /// counts it as failed; dropped while it still waited for a pooled connection, it
    /// tells the breaker nothing about the acquirer (the queue is payd's own). A request
    /// goes out only with at least half of its attempt's time left, so a failure counted
    /// is one the acquirer had time to avoid.
    pub async fn attempt(&self, request: &AuthorizeRequest) -> (AttemptOutcome, AcquirerOutcome) {
        let admission = self.breaker.borrow_mut().admit(self.now_ms());
        if admission == Admission::Refused {
            return (AttemptOutcome::Retryable, AcquirerOutcome::BreakerOpen);
        }
        let send_by = Instant::now() + self.queue_wait_max;
        let sending = Cell::new(false);
        let mut settlement = Settlement {
            acquirer: self,
            admission,
            settled: false,
            sending: &sending,
        };
        let body = authorize_body(request);
        let idempotency_key = request.payment_id.to_string();
        let headers = [
            ("Idempotency-Key", idempotency_key.as_str()),
            ("Content-Type", "application/json"),
        ];
        let authorize = Request {
            method: "POST",
            path: AUTHORIZE_PATH,
            headers: &headers,
            body: &body,
        };
        let result = self
            .client
            .send_before(&authorize, Some(send_by), &sending)
            .await;
        if let Err(error) = &result {
            self.note_unreachable(unreachable_reason(error));
        }
        let (outcome, label, verdict) = classify(result);
        settlement.settle(verdict);
        (outcome, label)
    }

    fn note_unreachable(&self, reason: Option<&str>) {
        if let Some(reason) = reason {
            let now_ms = self.now_ms();
            self.unreachable
                .borrow_mut()
                .report(now_ms, &self.host, reason);
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// Reports an admitted attempt to the breaker exactly once, even when the attempt is
/// dropped at its timeout: a failure if its request had gone out (the acquirer did not
/// answer in time), nothing if it was still waiting for a pooled connection.
struct Settlement<'a> {
    acquirer: &'a HttpAcquirer,
    admission: Admission,
    settled: bool,
    /// The request went out on a connection: from then on it is the acquirer's time.
    sending: &'a Cell<bool>,
}

impl Settlement<'_> {
    /// `None` says the attempt never reached the acquirer (the pool was full): it tells
    /// nothing about the acquirer's health, but a probe must still end its half-open
    /// state, so a probe counts it as failed and cools down again.
    fn settle(&mut self, verdict: Option<Verdict>) {
        assert!(!self.settled);
        self.settled = true;
        let verdict = match (verdict, self.admission) {
            (Some(verdict), _) => verdict,
            (None, Admission::Probe) => Verdict::Failed,
            (None, _) => return,
        };
        let now_ms = self.acquirer.now_ms();
        let mut breaker = self.acquirer.breaker.borrow_mut();
        let before = breaker.state();
        breaker.settle(self.admission, verdict, now_ms);
        if let Some(change) = BreakerChange::between(before, breaker.state()) {
            change.log(
                &self.acquirer.host,
                BREAKER_FAILURES_TO_OPEN,
                BREAKER_COOLING_MS,
            );
        }
    }
}

impl Drop for Settlement<'_> {
    fn drop(&mut self) {
        if !self.settled {
            // Dropped while it still waited for a pooled connection: the acquirer never
            // had it, so it tells nothing of the acquirer.
            let verdict = self.sending.get().then_some(Verdict::Failed);
            if verdict.is_some() {
                self.acquirer
                    .note_unreachable(Some("no answer within acquirer.attempt_timeout_ms"));
            }
            self.settle(verdict);
        }
    }
}

/// What to log of a failed call when it means the acquirer cannot be reached.
fn unreachable_reason(error: &OutboundError) -> Option<&'static str> {
    match error {
        OutboundError::Resolve => Some("its host name does not resolve"),
        OutboundError::Connect => Some("connection refused or timed out"),
        OutboundError::Broken => Some("the connection broke before an answer"),
        // The outbound client logs a failed handshake itself, with rustls' reason.
        OutboundError::Tls => None,
        OutboundError::Malformed | OutboundError::TooLarge | OutboundError::PoolBusy => None,
    }
}

fn authorize_body(request: &AuthorizeRequest) -> Vec<u8> {
    let payment_id = request.payment_id.to_string();
    let body = AuthorizeBody {
        payment_id: &payment_id,
        merchant_id: &request.merchant_id,
        amount: request.amount,
        currency: request.currency.as_str(),
        payment_method: &request.payment_method,
    };
    // Invariant: a struct of strings and an integer always serialises.
    simd_json::to_vec(&body).expect("the authorize body serialises")
}

/// What a call came to: for the policy, for the metrics, and for the breaker (`None`
/// when the acquirer was never reached).
pub(crate) fn classify(
    result: Result<crate::outbound::Response, OutboundError>,
) -> (AttemptOutcome, AcquirerOutcome, Option<Verdict>) {
    let retryable = AttemptOutcome::Retryable;
    let mut response = match result {
        Ok(response) => response,
        Err(OutboundError::PoolBusy) => return (retryable, AcquirerOutcome::PoolBusy, None),
        Err(OutboundError::Malformed | OutboundError::TooLarge) => {
            return (
                retryable,
                AcquirerOutcome::BadResponse,
                Some(Verdict::Failed),
            )
        }
        // Retried like a connection error, and counted apart: a certificate that does
        // not verify is never accepted, and an operator must see why calls fail.
        Err(OutboundError::Tls) => {
            return (retryable, AcquirerOutcome::TlsError, Some(Verdict::Failed))
        }
        Err(OutboundError::Resolve | OutboundError::Connect | OutboundError::Broken) => {
            return (
                retryable,
                AcquirerOutcome::ConnectionError,
                Some(Verdict::Failed),
            )
        }
    };
    if response.status == 200 {
        // The acquirer answered, so it is up, even if we cannot read what it said.
        let verdict = Some(Verdict::Healthy);
        return match parse_answer(&mut response.body) {
            Some(AttemptOutcome::Approved) => {
                (AttemptOutcome::Approved, AcquirerOutcome::Approved, verdict)
            }
            Some(declined) => (declined, AcquirerOutcome::Declined, verdict),
            None => (retryable, AcquirerOutcome::BadResponse, verdict),
        };
    }
    let outcome = AttemptOutcome::of_http_status(response.status);
    let label = match outcome {
        AttemptOutcome::Retryable => AcquirerOutcome::RetryableStatus,
        _ => AcquirerOutcome::Rejected,
    };
    (outcome, label, Some(verdict_of_status(response.status)))
}

/// Statuses that say the acquirer itself cannot serve (overloaded, down behind its
/// gateway) count against the breaker; any other answer proves it is there. A 500 is
/// left out on purpose: it is an answer about one request (`tok_error` answers 500
/// every time), and one bad payment must not cut every other off.
fn verdict_of_status(status: u16) -> Verdict {
    match status {
        429 | 502 | 503 | 504 => Verdict::Failed,
        _ => Verdict::Healthy,
    }
}

/// The outcome of a `200` body, or `None` when it is not the contract's JSON.
fn parse_answer(body: &mut [u8]) -> Option<AttemptOutcome> {
    // serde would take an array for a struct too; the contract says an object.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let answer: AuthorizeAnswer = simd_json::serde::from_slice(body).ok()?;
    Some(match answer {
        AuthorizeAnswer { approved: true, .. } => AttemptOutcome::Approved,
        // `authorize` keeps a code only if it is a short identifier.
        AuthorizeAnswer { code, .. } => AttemptOutcome::Declined(code.unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::Response;
    use crate::payment::{Currency, PaymentId};

    #[test]
    fn the_body_is_the_contracts_json_with_escaping() {
        let request = AuthorizeRequest {
            payment_id: PaymentId {
                shard: 1,
                sequence: 2,
            },
            merchant_id: "m_demo".to_string(),
            amount: 1999,
            currency: Currency::parse("CNY").unwrap(),
            payment_method: "tok_\"odd\"".to_string(),
        };
        assert_eq!(
            String::from_utf8(authorize_body(&request)).unwrap(),
            r#"{"payment_id":"pay_00010000000000000002","merchant_id":"m_demo","amount":1999,"currency":"CNY","payment_method":"tok_\"odd\""}"#
        );
    }

    fn answer(status: u16, body: &str) -> (AttemptOutcome, AcquirerOutcome, Option<Verdict>) {
        classify(Ok(Response {
            status,
            body: body.as_bytes().to_vec(),
            retry_after_secs: None,
        }))
    }

    #[test]
    fn answers_are_classified_as_the_contract_says() {
        let healthy = Some(Verdict::Healthy);
        assert_eq!(
            answer(200, r#"{"approved": true}"#),
            (AttemptOutcome::Approved, AcquirerOutcome::Approved, healthy)
        );
        assert_eq!(
            answer(
                200,
                r#"{"approved": false, "code": "card_declined", "extra": 1}"#
            ),
            (
                AttemptOutcome::Declined("card_declined".into()),
                AcquirerOutcome::Declined,
                healthy
            )
        );
        assert_eq!(
            answer(200, r#"{"approved": false}"#).0,
            AttemptOutcome::Declined(String::new())
        );
        for garbage in ["", "{}", "[true]", r#"{"approved": "yes"}"#, "approved"] {
            assert_eq!(
                answer(200, garbage),
                (
                    AttemptOutcome::Retryable,
                    AcquirerOutcome::BadResponse,
                    healthy
                ),
                "{garbage:?}"
            );
        }
        assert_eq!(
            answer(400, ""),
            (AttemptOutcome::Rejected, AcquirerOutcome::Rejected, healthy)
        );
        assert_eq!(
            answer(500, ""),
            (
                AttemptOutcome::Retryable,
                AcquirerOutcome::RetryableStatus,
                healthy
            )
        );
        for overloaded in [429, 502, 503, 504] {
            assert_eq!(
                answer(overloaded, ""),
                (
                    AttemptOutcome::Retryable,
                    AcquirerOutcome::RetryableStatus,
                    Some(Verdict::Failed)
                )
            );
        }
    }

    #[test]
    fn transport_failures_are_retryable_and_count_against_the_breaker() {
        let failed = Some(Verdict::Failed);
        for error in [
            OutboundError::Resolve,
            OutboundError::Connect,
            OutboundError::Broken,
        ] {
            assert_eq!(
                classify(Err(error)),
                (
                    AttemptOutcome::Retryable,
                    AcquirerOutcome::ConnectionError,
                    failed
                )
            );
        }
        assert_eq!(
            classify(Err(OutboundError::TooLarge)),
            (
                AttemptOutcome::Retryable,
                AcquirerOutcome::BadResponse,
                failed
            )
        );
        assert_eq!(
            classify(Err(OutboundError::PoolBusy)),
            (AttemptOutcome::Retryable, AcquirerOutcome::PoolBusy, None)
        );
    }
}
