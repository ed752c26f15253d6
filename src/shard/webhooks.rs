//! A shard's webhook dispatcher: the pure outbox of `webhooks::dispatch` driven by one
//! task per shard, with the outbound client and the shard's log at its edges.
//!
//! The finalise path offers each event once its record is durable; the task starts every
//! attempt the outbox allows, each in a task of its own so a hung endpoint holds only its
//! own slot; a finished delivery is written as `WebhookDelivered`, so a restart resumes
//! exactly what is still owed (recovery hands those to `Dispatcher::resume`).

use super::runtime::{now_ms, Shard};
use crate::acquirer::random;
use crate::auth::MerchantKeys;
use crate::config::{resolve_secret, Config};
use crate::metrics::{CoreMetrics, WebhookAttemptOutcome, WebhookFate};
use crate::outbound::{Client, ClientSettings, HttpUrl};
use crate::payment::MerchantIndex;
use crate::wal::{RecordKind, WebhookDelivered, WebhookEvent, WebhookOutcome};
use crate::webhooks::dispatch::{Completion, Delivery, Fate, Outbox, OutboxEvent, OutboxLimits};
use crate::webhooks::event::{write_event_body, EVENT_BODY_BYTES_TYPICAL};
use crate::webhooks::retry::RetrySchedule;
use crate::webhooks::sender::{attempt, DeliveryOutcome};
use crate::webhooks::signing::WebhookKey;
use crate::webhooks::MERCHANT_DELIVERIES_PER_SHARD_MAX;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// The dispatcher looks at its outbox at least this often even when nothing woke it: a
/// bound on how late a wake that was lost (a full wake channel) can make an attempt.
pub const IDLE_WAKE_MS_MAX: u64 = 1_000;
/// Connection limits of a merchant origin's client. Every shard of the core shares it,
/// so it allows each shard's per-merchant share of in-flight attempts, twice over.
const ORIGIN_POOL_SIZE: usize = 2 * MERCHANT_DELIVERIES_PER_SHARD_MAX;
const ORIGIN_WAITERS_MAX: usize = 1024;
const CONNECT_TIMEOUT_MS_MAX: u64 = 5_000;
/// A receiver's answer is read only for its status and `Retry-After`.
const RESPONSE_BYTES_MAX: usize = 16 * 1024;
const IDLE_CONNECTION_MS_MAX: u64 = 30_000;

/// Where and how one merchant's events go.
pub struct Endpoint {
    pub url: String,
    pub key: WebhookKey,
    pub client: Rc<Client>,
}

/// One core's webhook endpoints, by merchant index: `None` for a merchant without a
/// `webhook_url`. Merchants on the same origin share one client.
pub struct Endpoints(Vec<Option<Endpoint>>);

impl Endpoints {
    /// Resolves every merchant's URL and key (the config checked both at load).
    pub fn from_config(config: &Config, keys: &MerchantKeys) -> Result<Endpoints, String> {
        assert_eq!(config.merchants.len(), keys.len());
        let mut clients: HashMap<(String, u16), Rc<Client>> = HashMap::new();
        let mut endpoints = Vec::with_capacity(config.merchants.len());
        for merchant in &config.merchants {
            let (Some(url), Some(secret)) = (&merchant.webhook_url, &merchant.webhook_secret)
            else {
                endpoints.push(None);
                continue;
            };
            let what = format!("merchant {}: webhook", merchant.id);
            let secret = resolve_secret(secret).map_err(|e| format!("{what} secret: {e}"))?;
            let key = WebhookKey::parse(&secret).map_err(|e| format!("{what} secret: {e}"))?;
            let parsed = HttpUrl::parse(url).map_err(|e| format!("{what} url: {e}"))?;
            let origin = (parsed.host.clone(), parsed.port);
            let client = clients
                .entry(origin)
                .or_insert_with(|| Rc::new(origin_client(parsed, config.webhooks.timeout_ms)));
            endpoints.push(Some(Endpoint {
                url: url.clone(),
                key,
                client: Rc::clone(client),
            }));
        }
        Ok(Endpoints(endpoints))
    }

    pub fn get(&self, merchant: MerchantIndex) -> Option<&Endpoint> {
        self.0.get(merchant as usize).and_then(Option::as_ref)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn origin_client(mut url: HttpUrl, timeout_ms: u64) -> Client {
    // Requests carry the merchant's whole path, so merchants of one origin share it.
    url.base_path.clear();
    Client::new(
        url,
        ClientSettings {
            pool_size: ORIGIN_POOL_SIZE,
            waiters_max: ORIGIN_WAITERS_MAX,
            connect_timeout_ms: timeout_ms.min(CONNECT_TIMEOUT_MS_MAX),
            response_bytes_max: RESPONSE_BYTES_MAX,
            idle_ms_max: IDLE_CONNECTION_MS_MAX,
        },
    )
}

/// A shard's outbox, its endpoints and the wake-up of its task.
pub struct Dispatcher {
    outbox: RefCell<Outbox<Rc<WebhookEvent>>>,
    endpoints: Rc<Endpoints>,
    metrics: Rc<RefCell<CoreMetrics>>,
    timeout_ms: u64,
    wake_sender: LocalSender<()>,
    /// Taken by the dispatcher task when it starts.
    wake_receiver: RefCell<Option<LocalReceiver<()>>>,
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        endpoints: Rc<Endpoints>,
        metrics: Rc<RefCell<CoreMetrics>>,
    ) -> Dispatcher {
        let schedule = RetrySchedule::from_config(&config.webhooks);
        let outbox = Outbox::new(OutboxLimits::default(), schedule, endpoints.len());
        let (wake_sender, wake_receiver) = local_channel::new_bounded(1);
        Dispatcher {
            outbox: RefCell::new(outbox),
            endpoints,
            metrics,
            timeout_ms: config.webhooks.timeout_ms,
            wake_sender,
            wake_receiver: RefCell::new(Some(wake_receiver)),
        }
    }

    pub fn endpoint(&self, merchant: MerchantIndex) -> Option<&Endpoint> {
        self.endpoints.get(merchant)
    }

    /// Loads what recovery found owed (in log order), up to `end`, the log's next
    /// sequence. The outbox refuses live offers until this first reload ran.
    pub fn resume(&self, owed: Vec<(u64, MerchantIndex, WebhookEvent)>, end: u64) -> usize {
        let mut outbox = self.outbox.borrow_mut();
        outbox.begin_reload(end);
        let mut loaded = 0;
        for (position, merchant, event) in owed {
            let offer = outbox.offer_reloaded(OutboxEvent {
                event: event.event,
                payment: event.payment.id,
                merchant,
                position,
                payload: Rc::new(event),
            });
            loaded += usize::from(offer == crate::webhooks::dispatch::Offer::Accepted);
        }
        outbox.end_reload(now_ms());
        loaded
    }

    /// A new event, durable at `position`.
    pub fn offer(&self, position: u64, merchant: MerchantIndex, event: WebhookEvent) {
        let offer = self.outbox.borrow_mut().offer(
            OutboxEvent {
                event: event.event,
                payment: event.payment.id,
                merchant,
                position,
                payload: Rc::new(event),
            },
            now_ms(),
        );
        if offer == crate::webhooks::dispatch::Offer::Refused {
            // It waits in the log; the next start loads it (see the report of issue 6).
            eprintln!("payd: webhook backlog full: an event waits on disk");
        }
        self.wake();
    }

    fn wake(&self) {
        // A full channel already holds a wake-up: nothing is lost.
        let _ = self.wake_sender.try_send(());
    }

    fn publish_gauges(&self) {
        let stats = self.outbox.borrow().stats();
        let mut metrics = self.metrics.borrow_mut();
        metrics.webhooks.backlog = stats.loaded as u64;
        metrics.webhooks.in_flight = stats.in_flight as u64;
    }
}

/// Starts the shard's dispatcher task. It stops once the shard is dropped.
pub fn spawn(shard: &Rc<Shard>) {
    let weak = Rc::downgrade(shard);
    let wake = shard
        .webhooks()
        .wake_receiver
        .borrow_mut()
        .take()
        .expect("one dispatcher task per shard");
    glommio::spawn_local(async move { run(weak, wake).await }).detach();
}

async fn run(weak: Weak<Shard>, wake: LocalReceiver<()>) {
    loop {
        let Some(shard) = weak.upgrade() else { return };
        let now = now_ms();
        loop {
            let next = shard.webhooks().outbox.borrow_mut().next_delivery(now);
            let Some(delivery) = next else { break };
            let attempt_shard = Rc::clone(&shard);
            glommio::spawn_local(async move { deliver(attempt_shard, delivery).await }).detach();
        }
        shard.webhooks().publish_gauges();
        let next_due_ms = shard.webhooks().outbox.borrow().next_due_ms();
        let sleep_ms = next_due_ms
            .map_or(IDLE_WAKE_MS_MAX, |due| due.saturating_sub(now))
            .clamp(1, IDLE_WAKE_MS_MAX);
        drop(shard);
        let sleep = async {
            glommio::timer::sleep(Duration::from_millis(sleep_ms)).await;
        };
        let woken = async {
            wake.recv().await;
        };
        futures_lite::future::or(sleep, woken).await;
    }
}

/// One attempt of one event, then what its outcome changes.
async fn deliver(shard: Rc<Shard>, delivery: Delivery) {
    let dispatcher = shard.webhooks();
    let event = dispatcher
        .outbox
        .borrow()
        .payload(delivery.event)
        .cloned()
        .expect("an event in flight is loaded");
    let endpoint = dispatcher
        .endpoint(delivery.merchant)
        .expect("only merchants with an endpoint get events");
    let mut body = Vec::with_capacity(EVENT_BODY_BYTES_TYPICAL);
    write_event_body(&mut body, event.created_at_ms, &event.payment);
    let started = Instant::now();
    let outcome = attempt(
        &*endpoint.client,
        &endpoint.url,
        &endpoint.key,
        delivery.event,
        &body,
        dispatcher.timeout_ms,
    )
    .await;
    let latency_us = started.elapsed().as_micros() as u64;
    dispatcher
        .metrics
        .borrow_mut()
        .webhooks
        .record_attempt(attempt_outcome(&outcome), latency_us);
    let completion = dispatcher.outbox.borrow_mut().complete(
        delivery.event,
        &outcome,
        now_ms(),
        random::next_u64(),
    );
    dispatcher.wake();
    if let Completion::Finished { fate, attempts } = completion {
        finish(&shard, &event, fate, attempts).await;
    }
}

/// Writes the end of a delivery, so a restart does not send the event again.
async fn finish(shard: &Shard, event: &WebhookEvent, fate: Fate, attempts: u32) {
    let (outcome, metric) = match fate {
        Fate::Delivered => (WebhookOutcome::Delivered, WebhookFate::Delivered),
        Fate::DeadLettered => (WebhookOutcome::DeadLettered, WebhookFate::DeadLettered),
        Fate::Gone => (WebhookOutcome::Gone, WebhookFate::Gone),
    };
    shard
        .webhooks()
        .metrics
        .borrow_mut()
        .webhooks
        .record_fate(metric);
    if fate == Fate::DeadLettered {
        eprintln!(
            "payd: shard {}: webhook {} for merchant {} dead-lettered after {attempts} attempts",
            shard.id(),
            event.event,
            event.payment.merchant_id
        );
    }
    let mut payload = Vec::new();
    WebhookDelivered {
        event: event.event,
        attempts: attempts.min(u32::from(u16::MAX)) as u16,
        outcome,
        finished_at_ms: now_ms(),
    }
    .encode(&mut payload);
    let append = shard
        .log()
        .append(RecordKind::WebhookDelivered.as_u8(), &payload);
    if let Err(error) = append.await {
        // The event stays owed in the log: a restart sends it again (at least once).
        eprintln!("payd: shard {}: {error}", shard.id());
    }
}

fn attempt_outcome(outcome: &DeliveryOutcome) -> WebhookAttemptOutcome {
    match outcome {
        DeliveryOutcome::Answered { status, .. } if (200..300).contains(status) => {
            WebhookAttemptOutcome::Success
        }
        DeliveryOutcome::Answered { .. } => WebhookAttemptOutcome::Rejected,
        DeliveryOutcome::TimedOut => WebhookAttemptOutcome::Timeout,
        DeliveryOutcome::Failed => WebhookAttemptOutcome::ConnectionError,
    }
}
