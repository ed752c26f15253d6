//! Tests of the retry policy (pure) and of `authorize` on a real glommio executor.

use super::simulated::Simulated;
use super::*;
use crate::testing::on_executor;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Instant;

fn policy(max_attempts: u32, attempt_timeout_ms: u64) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        attempt_timeout_ms,
        backoff_base_ms: 2,
        backoff_max_ms: 8,
    }
}

fn request(payment_method: &str) -> AuthorizeRequest {
    AuthorizeRequest {
        payment_id: PaymentId {
            shard: 3,
            sequence: 42,
        },
        merchant_id: "m_demo".to_string(),
        amount: 1999,
        currency: Currency::parse("CNY").unwrap(),
        payment_method: payment_method.to_string(),
    }
}

#[test]
fn backoff_grows_exponentially_within_equal_jitter_bounds() {
    let policy = RetryPolicy {
        max_attempts: 5,
        attempt_timeout_ms: 1000,
        backoff_base_ms: 100,
        backoff_max_ms: 1_000,
    };
    // Ceilings 100, 200, 400, 800, then capped at 1000; each wait in [ceiling/2, ceiling].
    for (attempt, ceiling) in [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000), (9, 1000)] {
        assert_eq!(
            policy.backoff_ms(attempt, 0),
            ceiling / 2,
            "attempt {attempt}"
        );
        let span = ceiling - ceiling / 2 + 1;
        assert_eq!(
            policy.backoff_ms(attempt, span - 1),
            ceiling,
            "attempt {attempt}"
        );
        assert_eq!(
            policy.backoff_ms(attempt, span),
            ceiling / 2,
            "attempt {attempt}"
        );
        for random in [1, 7, 12_345, u64::MAX] {
            let wait = policy.backoff_ms(attempt, random);
            assert!(
                (ceiling / 2..=ceiling).contains(&wait),
                "attempt {attempt}: {wait}"
            );
        }
    }
}

#[test]
fn backoff_never_overflows() {
    let policy = RetryPolicy {
        max_attempts: 20,
        attempt_timeout_ms: 1000,
        backoff_base_ms: u64::MAX / 2,
        backoff_max_ms: u64::MAX,
    };
    for attempt in [1, 2, 3, 63, 64, 65, u32::MAX] {
        assert!(policy.backoff_ms(attempt, u64::MAX) >= u64::MAX / 4);
    }
}

#[test]
fn policy_from_config_takes_attempts_and_timeout() {
    let config = AcquirerConfig::default();
    let policy = RetryPolicy::from_config(&config);
    assert_eq!(policy.max_attempts, config.max_attempts);
    assert_eq!(policy.attempt_timeout_ms, config.attempt_timeout_ms);
    assert_eq!(policy.backoff_base_ms, BACKOFF_BASE_MS);
    assert_eq!(policy.backoff_max_ms, BACKOFF_MAX_MS);
}

#[test]
fn http_statuses_are_classified_as_the_contract_says() {
    for status in [408, 429, 500, 502, 503, 504, 599] {
        assert_eq!(
            AttemptOutcome::of_http_status(status),
            AttemptOutcome::Retryable
        );
    }
    for status in [400, 401, 403, 404, 409, 410, 422, 499, 301, 204] {
        assert_eq!(
            AttemptOutcome::of_http_status(status),
            AttemptOutcome::Rejected
        );
    }
}

#[test]
fn decline_codes_are_kept_only_when_short_identifiers() {
    assert_eq!(
        sanitize_decline_code("card_declined".into()),
        "card_declined"
    );
    assert_eq!(
        sanitize_decline_code("do-not.honor_05".into()),
        "do-not.honor_05"
    );
    let longest = "a".repeat(DECLINE_CODE_LENGTH_MAX);
    assert_eq!(sanitize_decline_code(longest.clone()), longest);
    for code in [
        String::new(),
        "a".repeat(DECLINE_CODE_LENGTH_MAX + 1),
        "card declined".to_string(),
        "x\"y".to_string(),
        "4111111111111111\n".to_string(),
    ] {
        assert_eq!(sanitize_decline_code(code), DECLINE_CODE_FALLBACK);
    }
}

#[test]
fn flaky_is_approved_on_the_second_attempt_with_the_same_payment_id() {
    let (authorization, attempts) = on_executor(|| async {
        let simulated = Simulated {
            latency_ms: 0,
            jitter_ms: 1,
        };
        let request = request("tok_flaky");
        let attempts = RefCell::new(Vec::new());
        let authorization = authorize(&policy(5, 1_000), &request, |request, number| {
            attempts.borrow_mut().push((request.payment_id, number));
            simulated.attempt(request, number)
        })
        .await;
        (authorization, attempts.into_inner())
    });
    assert_eq!(authorization, Authorization::Approved);
    let id = request("tok_flaky").payment_id;
    assert_eq!(attempts, vec![(id, 1), (id, 2)]);
}

#[test]
fn error_fails_as_unavailable_after_max_attempts() {
    let (authorization, attempts) = on_executor(|| async {
        let simulated = Simulated {
            latency_ms: 0,
            jitter_ms: 0,
        };
        let request = request("tok_error");
        let attempts = Cell::new(0);
        let authorization = authorize(&policy(4, 1_000), &request, |request, number| {
            attempts.set(attempts.get() + 1);
            simulated.attempt(request, number)
        })
        .await;
        (authorization, attempts.get())
    });
    assert_eq!(
        authorization,
        Authorization::Failed("acquirer_unavailable".into())
    );
    assert_eq!(attempts, 4);
}

#[test]
fn an_attempt_over_its_timeout_is_dropped_and_retried() {
    let (authorization, attempts, elapsed) = on_executor(|| async {
        let request = request("tok_visa");
        let attempts = Cell::new(0);
        let started = Instant::now();
        let authorization = authorize(&policy(3, 50), &request, |_, number| {
            attempts.set(attempts.get() + 1);
            async move {
                if number == 1 {
                    // Far over the 50 ms attempt timeout: only the timeout ends it.
                    glommio::timer::sleep(Duration::from_secs(30)).await;
                }
                AttemptOutcome::Approved
            }
        })
        .await;
        (authorization, attempts.get(), started.elapsed())
    });
    assert_eq!(authorization, Authorization::Approved);
    assert_eq!(attempts, 2);
    assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[test]
fn slow_token_times_out_every_attempt() {
    let (authorization, elapsed) = on_executor(|| async {
        let simulated = Simulated {
            latency_ms: 0,
            jitter_ms: 0,
        };
        let request = request("tok_slow");
        let started = Instant::now();
        let authorization = authorize(&policy(2, 30), &request, |request, number| {
            simulated.attempt(request, number)
        })
        .await;
        (authorization, started.elapsed())
    });
    assert_eq!(
        authorization,
        Authorization::Failed("acquirer_unavailable".into())
    );
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn rejected_is_final_after_one_attempt() {
    let (authorization, attempts) = on_executor(|| async {
        let request = request("tok_visa");
        let attempts = Cell::new(0);
        let authorization = authorize(&policy(5, 1_000), &request, |_, _| {
            attempts.set(attempts.get() + 1);
            async { AttemptOutcome::of_http_status(422) }
        })
        .await;
        (authorization, attempts.get())
    });
    assert_eq!(
        authorization,
        Authorization::Failed("acquirer_rejected".into())
    );
    assert_eq!(attempts, 1);
}

#[test]
fn declines_are_final_and_keep_their_code() {
    let authorizations = on_executor(|| async {
        let simulated = Simulated {
            latency_ms: 1,
            jitter_ms: 1,
        };
        let mut authorizations = Vec::new();
        for token in ["tok_decline", "tok_insufficient_funds", "tok_visa"] {
            let request = request(token);
            let attempts = Cell::new(0);
            let authorization = authorize(&policy(5, 1_000), &request, |request, number| {
                attempts.set(attempts.get() + 1);
                simulated.attempt(request, number)
            })
            .await;
            authorizations.push((authorization, attempts.get()));
        }
        authorizations
    });
    assert_eq!(
        authorizations,
        vec![
            (Authorization::Declined("card_declined".into()), 1),
            (Authorization::Declined("insufficient_funds".into()), 1),
            (Authorization::Approved, 1),
        ]
    );
}

#[test]
fn simulated_latency_is_waited_on_timers() {
    let elapsed = on_executor(|| async {
        let simulated = Simulated {
            latency_ms: 20,
            jitter_ms: 10,
        };
        let request = request("tok_visa");
        let started = Instant::now();
        let outcome = simulated.attempt(&request, 1).await;
        assert_eq!(outcome, AttemptOutcome::Approved);
        started.elapsed()
    });
    assert!(elapsed >= Duration::from_millis(20), "{elapsed:?}");
    assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
}

#[test]
fn simulated_latency_does_not_block_the_executor() {
    let ticks = on_executor(|| async {
        let ticks = Rc::new(Cell::new(0u32));
        let ticker = glommio::spawn_local({
            let ticks = ticks.clone();
            async move {
                for _ in 0..5 {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                    ticks.set(ticks.get() + 1);
                }
            }
        });
        let simulated = Simulated {
            latency_ms: 40,
            jitter_ms: 0,
        };
        simulated.attempt(&request("tok_visa"), 1).await;
        let ticks_during_attempt = ticks.get();
        ticker.await;
        ticks_during_attempt
    });
    assert_eq!(ticks, 5, "the other task ran while the attempt waited");
}

fn acquirer_of(extra: &str) -> (Acquirer, Rc<RefCell<crate::metrics::CoreMetrics>>) {
    let text = format!("[acquirer]\n{extra}\n[[merchants]]\nid = \"m\"\nsecrets = [\"test-only-secret-0123456789abcdef\"]\n");
    let config = crate::config::Config::parse(&text).unwrap();
    let metrics = Rc::new(RefCell::new(crate::metrics::CoreMetrics::new(0)));
    let connector = crate::tls::ClientTls::without_roots().core_connector();
    (
        Acquirer::new(&config, Rc::clone(&metrics), &connector),
        metrics,
    )
}

#[test]
fn the_simulation_without_latency_answers_final_first_attempts_at_once() {
    use crate::metrics::AcquirerOutcome;
    let (acquirer, metrics) = acquirer_of("");
    assert_eq!(
        acquirer.answer_at_once("tok_visa"),
        Some(Authorization::Approved)
    );
    assert_eq!(
        acquirer.answer_at_once("tok_decline"),
        Some(Authorization::Declined("card_declined".into()))
    );
    // Slow, flaky and failing tokens still go through `authorize`: timers and retries.
    for token in ["tok_slow", "tok_flaky", "tok_error"] {
        assert_eq!(acquirer.answer_at_once(token), None, "{token}");
    }
    let calls = &metrics.borrow().acquirer;
    assert_eq!(calls.calls(AcquirerOutcome::Approved), 1);
    assert_eq!(calls.calls(AcquirerOutcome::Declined), 1);
    assert_eq!(calls.calls(AcquirerOutcome::RetryableStatus), 0);

    let (with_latency, _) = acquirer_of("latency_ms = 5");
    assert_eq!(with_latency.answer_at_once("tok_visa"), None);
}
