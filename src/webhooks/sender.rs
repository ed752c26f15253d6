//! The sender seam: one POST of one event to a merchant's endpoint, and its outcome.
//!
//! A `Sender` is anything that can make the request: the shared outbound HTTP client
//! (one client for the acquirer and webhooks, not two) or, in tests, `ScriptedSender`.
//! `attempt` owns what every sender must get right the same way: it signs the attempt
//! with its own timestamp and bounds it by `webhooks.timeout_ms`, so a hung endpoint
//! costs one timeout, never a stuck delivery slot.

use super::signing::{WebhookHeaders, WebhookKey};
use crate::outbound::{Client, Request};
use crate::payment::EventId;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How one attempt ended, as far as the sender could tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// The receiver answered with this status; `Retry-After` in seconds if it sent one
    /// (see `parse_retry_after`).
    Answered {
        status: u16,
        retry_after_secs: Option<u64>,
    },
    /// No complete answer within `webhooks.timeout_ms`.
    TimedOut,
    /// No answer at all: the connection was refused, reset, or the answer was not HTTP.
    Failed,
    /// The TLS handshake failed (the receiver's certificate did not verify, above all):
    /// nothing was sent. Retried like `Failed`, counted apart.
    TlsFailed,
}

/// One attempt's request: a POST of `body` to `url` with `headers`.
#[derive(Clone, Copy, Debug)]
pub struct WebhookRequest<'a> {
    /// The merchant's `webhook_url` (an `http://` or `https://` URL, checked by the config).
    pub url: &'a str,
    pub headers: &'a WebhookHeaders,
    pub body: &'a [u8],
}

/// The future a sender returns. Boxed so senders can be chosen at run time (`dyn`); one
/// allocation per attempt is nothing next to a network round trip.
pub type SendFuture<'a> = Pin<Box<dyn Future<Output = DeliveryOutcome> + 'a>>;

/// Makes one request and reports its outcome. It needs no timeout of its own (`attempt`
/// drops the future at the deadline), so it must be cancel-safe: dropping it mid-way
/// only closes or abandons its connection.
pub trait Sender {
    fn send<'a>(&'a self, request: WebhookRequest<'a>) -> SendFuture<'a>;
}

/// The outbound HTTP client is the sender in production: one client per merchant origin
/// per core, so a slow merchant's pool never holds another's connections. Its base path
/// must be empty: the request carries the whole path of the merchant's URL.
impl Sender for Client {
    fn send<'a>(&'a self, request: WebhookRequest<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let pairs = request.headers.pairs();
            let outbound = Request {
                method: "POST",
                path: url_path(request.url),
                headers: &pairs,
                body: request.body,
            };
            match Client::send(self, &outbound).await {
                Ok(response) => DeliveryOutcome::Answered {
                    status: response.status,
                    retry_after_secs: response.retry_after_secs,
                },
                Err(crate::outbound::OutboundError::Tls) => DeliveryOutcome::TlsFailed,
                Err(_) => DeliveryOutcome::Failed,
            }
        })
    }
}

/// The path of an `http[s]://host[:port][/path]` URL: `/` when it has none.
pub fn url_path(url: &str) -> &str {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url);
    match rest.find('/') {
        Some(start) => &rest[start..],
        None => "/",
    }
}

/// One signed attempt of `event` through `sender`, bounded by `timeout_ms`. The
/// `webhook-timestamp` is the clock now: each attempt is signed anew, the id stays.
pub async fn attempt<S: Sender + ?Sized>(
    sender: &S,
    url: &str,
    key: &WebhookKey,
    event: EventId,
    body: &[u8],
    timeout_ms: u64,
) -> DeliveryOutcome {
    assert!(timeout_ms > 0);
    let headers = WebhookHeaders::sign(key, event, now_secs(), body);
    let request = WebhookRequest {
        url,
        headers: &headers,
        body,
    };
    let deadline = Duration::from_millis(timeout_ms);
    let send = sender.send(request);
    glommio::timer::timeout(deadline, async { Ok(send.await) })
        .await
        .unwrap_or(DeliveryOutcome::TimedOut)
}

/// The seconds a `Retry-After` value asks for: delta-seconds, or an HTTP date turned
/// into seconds after `now_secs` (a past date asks for none). `None` when malformed.
pub fn parse_retry_after(value: &[u8], now_secs: u64) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?.trim();
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits that overflow are a very long wait; the retry rules cap it anyway.
        return Some(text.parse().unwrap_or(u64::MAX));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    let date_secs = date.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(date_secs.saturating_sub(now_secs))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A sender for tests: answers from a script and records every request it got.
#[cfg(test)]
pub mod scripted {
    use super::*;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    /// One scripted answer.
    #[derive(Clone, Copy, Debug)]
    pub enum Script {
        /// Answer with this outcome after `delay_ms`.
        Answer {
            outcome: DeliveryOutcome,
            delay_ms: u64,
        },
        /// Never answer, as a hung endpoint.
        Hang,
    }

    /// A request as the receiver saw it.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct Received {
        pub url: String,
        pub headers: WebhookHeaders,
        pub body: Vec<u8>,
    }

    #[derive(Default)]
    pub struct ScriptedSender {
        pub script: RefCell<VecDeque<Script>>,
        pub received: RefCell<Vec<Received>>,
    }

    impl ScriptedSender {
        pub fn new(script: impl IntoIterator<Item = Script>) -> ScriptedSender {
            ScriptedSender {
                script: RefCell::new(script.into_iter().collect()),
                received: RefCell::new(Vec::new()),
            }
        }
    }

    impl Sender for ScriptedSender {
        fn send<'a>(&'a self, request: WebhookRequest<'a>) -> SendFuture<'a> {
            self.received.borrow_mut().push(Received {
                url: request.url.to_string(),
                headers: request.headers.clone(),
                body: request.body.to_vec(),
            });
            let next = self.script.borrow_mut().pop_front();
            Box::pin(async move {
                match next.expect("the script has an answer for every request") {
                    Script::Answer { outcome, delay_ms } => {
                        glommio::timer::sleep(Duration::from_millis(delay_ms)).await;
                        outcome
                    }
                    Script::Hang => std::future::pending().await,
                }
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::scripted::{Script, ScriptedSender};
    use super::*;
    use crate::testing::on_executor;
    use std::time::Instant;

    const SECRET: &[u8] = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn event() -> EventId {
        EventId {
            shard: 2,
            sequence: 9,
        }
    }

    #[test]
    fn an_attempt_is_signed_now_and_reports_the_answer() {
        let (received, outcome) = on_executor(|| async {
            let sender = ScriptedSender::new([Script::Answer {
                outcome: DeliveryOutcome::Answered {
                    status: 503,
                    retry_after_secs: Some(7),
                },
                delay_ms: 0,
            }]);
            let key = WebhookKey::parse(SECRET).unwrap();
            let url = "http://127.0.0.1:9200/hooks";
            let outcome = attempt(&sender, url, &key, event(), b"{\"a\":1}", 1_000).await;
            (sender.received.take(), outcome)
        });
        assert_eq!(
            outcome,
            DeliveryOutcome::Answered {
                status: 503,
                retry_after_secs: Some(7)
            }
        );
        assert_eq!(received.len(), 1);
        let request = &received[0];
        assert_eq!(request.url, "http://127.0.0.1:9200/hooks");
        assert_eq!(request.body, b"{\"a\":1}");
        assert_eq!(request.headers.id, "evt_00020000000000000009");
        let timestamp: u64 = request.headers.timestamp.parse().unwrap();
        assert!(timestamp.abs_diff(now_secs()) <= 5, "{timestamp}");
        let key = WebhookKey::parse(SECRET).unwrap();
        assert_eq!(
            request.headers.signature,
            key.sign(event(), timestamp, b"{\"a\":1}")
        );
    }

    #[test]
    fn a_hung_endpoint_costs_one_timeout() {
        let (outcome, elapsed) = on_executor(|| async {
            let sender = ScriptedSender::new([Script::Hang]);
            let key = WebhookKey::parse(SECRET).unwrap();
            let started = Instant::now();
            let outcome = attempt(&sender, "http://x/", &key, event(), b"{}", 50).await;
            (outcome, started.elapsed())
        });
        assert_eq!(outcome, DeliveryOutcome::TimedOut);
        assert!(elapsed >= Duration::from_millis(50), "{elapsed:?}");
        assert!(elapsed < Duration::from_millis(2_000), "{elapsed:?}");
    }

    #[test]
    fn a_slow_answer_past_the_timeout_is_a_timeout() {
        let outcome = on_executor(|| async {
            let sender = ScriptedSender::new([Script::Answer {
                outcome: DeliveryOutcome::Answered {
                    status: 204,
                    retry_after_secs: None,
                },
                delay_ms: 500,
            }]);
            let key = WebhookKey::parse(SECRET).unwrap();
            attempt(&sender, "http://x/", &key, event(), b"{}", 20).await
        });
        assert_eq!(outcome, DeliveryOutcome::TimedOut);
    }

    #[test]
    fn the_path_is_what_follows_the_origin() {
        assert_eq!(url_path("http://127.0.0.1:9200/hooks/a"), "/hooks/a");
        assert_eq!(url_path("http://example.com"), "/");
        assert_eq!(url_path("http://example.com/"), "/");
    }

    #[test]
    fn retry_after_is_seconds_or_a_date() {
        let now = 1_763_800_000;
        assert_eq!(parse_retry_after(b"120", now), Some(120));
        assert_eq!(parse_retry_after(b" 0 ", now), Some(0));
        assert_eq!(
            parse_retry_after(b"99999999999999999999999", now),
            Some(u64::MAX)
        );
        // 1763800000 is Sat, 22 Nov 2025 08:26:40 GMT.
        assert_eq!(
            parse_retry_after(b"Sat, 22 Nov 2025 08:28:40 GMT", now),
            Some(120)
        );
        assert_eq!(
            parse_retry_after(b"Sat, 22 Nov 2025 08:00:00 GMT", now),
            Some(0)
        );
        for bad in [&b""[..], b"-1", b"1.5", b"soon", b"\xff"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
