//! A shard's webhook dispatcher: the pure outbox of `webhooks::dispatch` driven by one
//! task per shard, with the outbound client and the shard's log at its edges.
//!
//! The finalise path offers each event once its record is durable; the task starts every
//! attempt the outbox allows, each in a task of its own so a hung endpoint holds only its
//! own slot. Every failed attempt with a retry to come is written as `WebhookAttempted`,
//! a delivered event as `WebhookDelivered`, and one that failed for good as
//! `WebhookDeadLetter` (which also enters the shard's dead-letter index): a restart
//! resumes exactly what is still owed, with its attempt counts (recovery hands those to
//! `Dispatcher::resume`). Events a full backlog left on disk are read back by a reload
//! (`webhook_reload`) on the blocking pool as soon as the backlog has room.

use super::runtime::{now_ms, Shard};
use super::webhook_reload::{scan, Scan, ScanRequest};
use crate::acquirer::random;
use crate::auth::MerchantKeys;
use crate::config::{resolve_secret, Config};
use crate::metrics::{CoreMetrics, WebhookAttemptOutcome, WebhookFate, WebhookGauges};
use crate::outbound::{Client, ClientSettings, HttpUrl};
use crate::payment::{EventId, MerchantIndex};
use crate::payment_object::PaymentSnapshot;
use crate::tls::TlsConnector;
use crate::wal::{
    RecordKind, WebhookAttempted, WebhookDeadLetter, WebhookDelivered, WebhookEvent, WebhookOutcome,
};
use crate::webhooks::dead_letters::{
    DeadLetter, DeadLetterKey, DeadLetters, DEAD_LETTERS_PER_SHARD_MAX,
};
use crate::webhooks::dispatch::{
    Completion, Delivery, Fate, Offer, Outbox, OutboxEvent, OutboxLimits,
};
use crate::webhooks::event::{write_event_body, EVENT_BODY_BYTES_TYPICAL};
use crate::webhooks::retry::RetrySchedule;
use crate::webhooks::sender::{attempt, DeliveryOutcome};
use crate::webhooks::signing::WebhookKey;
use crate::webhooks::MERCHANT_DELIVERIES_PER_SHARD_MAX;
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::{Rc, Weak};
use std::time::{Duration, Instant};

/// The dispatcher looks at its outbox at least this often even when nothing woke it: a
/// bound on how late a wake that was lost (a full wake channel) can make an attempt.
pub const IDLE_WAKE_MS_MAX: u64 = 1_000;
/// Reloads of events from disk start at most this often: each one reads the log from
/// the oldest event waiting there, so back-to-back reloads would only burn the disk.
pub const RELOAD_INTERVAL_MS_MIN: u64 = 100;
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
    /// `tls` is the core's connector, for `https://` URLs.
    pub fn from_config(
        config: &Config,
        keys: &MerchantKeys,
        tls: &TlsConnector,
    ) -> Result<Endpoints, String> {
        assert_eq!(config.merchants.len(), keys.len());
        let mut clients: HashMap<(bool, String, u16), Rc<Client>> = HashMap::new();
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
            let origin = (parsed.tls, parsed.host.clone(), parsed.port);
            let client = clients
                .entry(origin)
                .or_insert_with(|| Rc::new(origin_client(parsed, config.webhooks.timeout_ms, tls)));
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

fn origin_client(mut url: HttpUrl, timeout_ms: u64, tls: &TlsConnector) -> Client {
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
        tls,
    )
}

/// A shard's outbox, its dead letters, its endpoints and the wake-up of its task.
pub struct Dispatcher {
    outbox: RefCell<Outbox<Rc<WebhookEvent>>>,
    /// Events whose delivery failed for good, each as its encoded `WebhookEvent`.
    dead_letters: RefCell<DeadLetters<Box<[u8]>>>,
    endpoints: Rc<Endpoints>,
    metrics: Rc<RefCell<CoreMetrics>>,
    keys: &'static MerchantKeys,
    shard_dir: PathBuf,
    timeout_ms: u64,
    backlog_events_max: usize,
    /// Every record below this sequence is in the log's files: a reload reads up to it.
    readable_end: Cell<u64>,
    reloading: Cell<bool>,
    last_reload_ms: Cell<u64>,
    reloads_total: Cell<u64>,
    wake_sender: LocalSender<()>,
    /// Taken by the dispatcher task when it starts.
    wake_receiver: RefCell<Option<LocalReceiver<()>>>,
}

/// A dead-lettered event as `GET /v1/events` lists it.
pub struct FailedEvent {
    pub event: EventId,
    pub attempts: u32,
    pub last_status: Option<u16>,
    /// When the last attempt ended.
    pub failed_at_ms: u64,
    /// When the event happened (the `timestamp` of its body).
    pub created_at_ms: u64,
    pub payment: PaymentSnapshot,
}

impl FailedEvent {
    /// The event's `type`, as its body says: `payment.` and the final status.
    pub fn event_type(&self) -> &'static str {
        crate::webhooks::event::event_type(self.payment.status)
    }
}

impl Dispatcher {
    pub fn new(
        config: &Config,
        keys: &'static MerchantKeys,
        shard_dir: PathBuf,
        endpoints: Rc<Endpoints>,
        metrics: Rc<RefCell<CoreMetrics>>,
    ) -> Dispatcher {
        let schedule = RetrySchedule::from_config(&config.webhooks);
        let limits = OutboxLimits {
            backlog_events_max: config.webhooks.max_backlog_per_shard,
            ..OutboxLimits::default()
        };
        let mut outbox = Outbox::new(limits, schedule, endpoints.len());
        // Their events stay owed on disk until a config gives them a url again.
        for merchant in 0..endpoints.len() as MerchantIndex {
            if endpoints.get(merchant).is_none() {
                outbox.park(merchant);
            }
        }
        let (wake_sender, wake_receiver) = local_channel::new_bounded(1);
        Dispatcher {
            outbox: RefCell::new(outbox),
            dead_letters: RefCell::new(DeadLetters::new(DEAD_LETTERS_PER_SHARD_MAX)),
            endpoints,
            metrics,
            keys,
            shard_dir,
            timeout_ms: config.webhooks.timeout_ms,
            backlog_events_max: config.webhooks.max_backlog_per_shard,
            readable_end: Cell::new(0),
            reloading: Cell::new(false),
            last_reload_ms: Cell::new(0),
            reloads_total: Cell::new(0),
            wake_sender,
            wake_receiver: RefCell::new(Some(wake_receiver)),
        }
    }

    pub fn endpoint(&self, merchant: MerchantIndex) -> Option<&Endpoint> {
        self.endpoints.get(merchant)
    }

    /// Loads what recovery found (owed events in log order, with their attempts, where
    /// the ones it did not keep start, and dead letters), up to `end`, the log's next
    /// sequence. The outbox refuses live offers until this first reload ran. Returns
    /// how many events were loaded.
    pub fn resume(
        &self,
        owed: Scan,
        dead_letters: Vec<(MerchantIndex, WebhookDeadLetter)>,
        end: u64,
    ) -> usize {
        self.note_waiting_for_url(&owed);
        let mut outbox = self.outbox.borrow_mut();
        outbox.begin_reload(end);
        apply_scan(&mut outbox, owed, &[], end);
        outbox.end_reload(now_ms());
        let loaded = outbox.stats().loaded;
        self.readable_end.set(end);
        let mut index = self.dead_letters.borrow_mut();
        for (merchant, dead) in dead_letters {
            index.insert(dead_letter_entry(merchant, &dead));
        }
        loaded
    }

    /// Says which merchants without a `webhook_url` have events owed: they stay on disk
    /// (kept by retention) and go out once a config gives the merchant a url again.
    fn note_waiting_for_url(&self, owed: &Scan) {
        let mut waiting = vec![false; self.endpoints.len()];
        let merchants = owed.events.iter().map(|found| found.merchant);
        let left = owed.left_on_disk.iter().map(|&(merchant, _)| merchant);
        for merchant in merchants.chain(left) {
            waiting[merchant as usize] |= self.endpoint(merchant).is_none();
        }
        for merchant in (0..waiting.len()).filter(|&merchant| waiting[merchant]) {
            eprintln!(
                "payd: webhook events owed to merchant {} wait on disk until it has a webhook_url again",
                self.keys.merchant_id(merchant as MerchantIndex)
            );
        }
    }

    /// A record durable at `position`: durable means written, so a reload may read
    /// everything up to it (ends of deliveries included, which keeps a reload from
    /// taking a finished event for owed).
    fn note_readable(&self, position: u64) {
        self.readable_end
            .set(self.readable_end.get().max(position + 1));
    }

    /// A new event, durable at `position`.
    pub fn offer(&self, position: u64, merchant: MerchantIndex, event: WebhookEvent) {
        self.note_readable(position);
        self.outbox.borrow_mut().offer(
            OutboxEvent {
                event: event.event,
                payment: event.payment.id,
                merchant,
                position,
                payload: Rc::new(event),
            },
            now_ms(),
        );
        // Refused: it waits in the log, and a reload loads it once the backlog has room.
        self.wake();
    }

    /// The sort key of `merchant`'s dead letter `event`, if it has one here.
    pub fn dead_letter_key(
        &self,
        merchant: MerchantIndex,
        event: EventId,
    ) -> Option<DeadLetterKey> {
        self.dead_letters.borrow().key_of(merchant, event)
    }

    /// Up to `limit` of `merchant`'s dead letters after `after`, in key order.
    pub fn dead_letter_page(
        &self,
        merchant: MerchantIndex,
        after: Option<DeadLetterKey>,
        limit: usize,
    ) -> Vec<FailedEvent> {
        let page = self.dead_letters.borrow().page(merchant, after, limit);
        page.into_iter()
            .map(|entry| {
                // Invariant: the index holds only events this code encoded.
                let event = WebhookEvent::decode(&entry.payload).expect("an encoded event");
                FailedEvent {
                    event: entry.event,
                    attempts: entry.attempts,
                    last_status: entry.last_status,
                    failed_at_ms: entry.failed_at_ms,
                    created_at_ms: event.created_at_ms,
                    payment: event.payment,
                }
            })
            .collect()
    }

    /// Retention: whether `event`, whose record is at `position` in segments about to
    /// be deleted, must be carried forward. Events of merchants no longer in the config
    /// are carried: they stay on disk for a config that has them again.
    pub fn may_be_owed(&self, event: &WebhookEvent, position: u64) -> bool {
        match self.keys.index_of(event.payment.merchant_id.as_bytes()) {
            Some(merchant) => self
                .outbox
                .borrow()
                .may_be_owed(event.event, merchant, position),
            None => true,
        }
    }

    /// Retention: `event`'s merchant and id if the event is owed but not loaded (it
    /// waits on disk for a reload, or for an endpoint).
    pub fn waiting_on_disk(&self, event: &WebhookEvent) -> Option<(MerchantIndex, EventId)> {
        let merchant = self.keys.index_of(event.payment.merchant_id.as_bytes())?;
        let loaded = self.outbox.borrow().payload(event.event).is_some();
        (!loaded).then_some((merchant, event.event))
    }

    /// Retention carried `on_disk`'s events forward: their copies lie from `copies_from`
    /// on, and every record up to `last_position` is durable. They wait on disk from
    /// there, so a reload reads the copies before the originals' segments go.
    pub fn note_carried(
        &self,
        on_disk: &[(MerchantIndex, EventId)],
        copies_from: u64,
        last_position: u64,
    ) {
        assert!(copies_from <= last_position);
        self.note_readable(last_position);
        let mut outbox = self.outbox.borrow_mut();
        for &(merchant, event) in on_disk {
            outbox.carried(merchant, event, copies_from);
        }
        drop(outbox);
        self.wake();
    }

    /// Retention: dead letters `retention_ms` old leave memory (their records may go).
    pub fn expire_dead_letters(&self, now_ms: u64, retention_ms: u64) -> usize {
        self.dead_letters.borrow_mut().expire(now_ms, retention_ms)
    }

    /// Gauges and counters for `/metrics`.
    pub fn gauges(&self) -> WebhookGauges {
        let stats = self.outbox.borrow().stats();
        let dead_letters = self.dead_letters.borrow();
        WebhookGauges {
            backlog: stats.loaded as u64,
            in_flight: stats.in_flight as u64,
            merchants_waiting_on_disk: stats.merchants_with_unloaded as u64,
            left_on_disk_total: stats.refused_total + stats.evicted_total,
            reloads_total: self.reloads_total.get(),
            dead_letters: dead_letters.len() as u64,
            dead_letters_dropped_total: dead_letters.dropped_total(),
        }
    }

    fn wake(&self) {
        // A full channel already holds a wake-up: nothing is lost.
        let _ = self.wake_sender.try_send(());
    }

    /// Starts a reload if events wait on disk, the backlog has room for them, and the
    /// last one was long enough ago. True when one is wanted but must wait.
    fn maybe_reload(&self, shard: &Rc<Shard>, now: u64) -> bool {
        if self.reloading.get() || self.outbox.borrow().reload_wanted().is_none() {
            return false;
        }
        if now
            < self
                .last_reload_ms
                .get()
                .saturating_add(RELOAD_INTERVAL_MS_MIN)
        {
            return true;
        }
        self.reloading.set(true);
        self.last_reload_ms.set(now);
        let weak = Rc::downgrade(shard);
        glommio::spawn_local(async move { reload(weak).await }).detach();
        false
    }
}

fn offer_reloaded(
    outbox: &mut Outbox<Rc<WebhookEvent>>,
    position: u64,
    merchant: MerchantIndex,
    event: WebhookEvent,
    attempted: Option<WebhookAttempted>,
) -> Offer {
    let id = event.event;
    let offer = outbox.offer_reloaded(OutboxEvent {
        event: id,
        payment: event.payment.id,
        merchant,
        position,
        payload: Rc::new(event),
    });
    if let (Offer::Accepted, Some(attempted)) = (offer, attempted) {
        outbox.restore_attempts(
            id,
            u32::from(attempted.attempts),
            attempted.next_attempt_at_ms,
        );
    }
    offer
}

fn dead_letter_entry(merchant: MerchantIndex, dead: &WebhookDeadLetter) -> DeadLetter<Box<[u8]>> {
    let mut payload = Vec::with_capacity(EVENT_BODY_BYTES_TYPICAL);
    dead.event.encode(&mut payload);
    DeadLetter {
        event: dead.event.event,
        merchant,
        fate: match dead.outcome {
            WebhookOutcome::Gone => Fate::Gone,
            _ => Fate::DeadLettered,
        },
        attempts: u32::from(dead.attempts),
        last_status: dead.last_status,
        failed_at_ms: dead.failed_at_ms,
        payload: payload.into_boxed_slice(),
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
        let reload_waits = shard.webhooks().maybe_reload(&shard, now);
        let next_due_ms = shard.webhooks().outbox.borrow().next_due_ms();
        let mut sleep_ms = next_due_ms
            .map_or(IDLE_WAKE_MS_MAX, |due| due.saturating_sub(now))
            .clamp(1, IDLE_WAKE_MS_MAX);
        if reload_waits {
            sleep_ms = sleep_ms.min(RELOAD_INTERVAL_MS_MIN);
        }
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

/// One reload: reads the owed events that wait on disk (on the blocking pool) and hands
/// them to the outbox, which keeps what its backlog has room for.
async fn reload(weak: Weak<Shard>) {
    let Some(shard) = weak.upgrade() else { return };
    let dispatcher = shard.webhooks();
    let end = dispatcher.readable_end.get();
    let (from, unloaded_from) = {
        let mut outbox = dispatcher.outbox.borrow_mut();
        let from = outbox.begin_reload(end);
        (from, outbox.unloaded_positions())
    };
    let request = ScanRequest {
        from,
        end,
        unloaded_from: unloaded_from.clone(),
        events_per_merchant_max: dispatcher.backlog_events_max,
        keys: dispatcher.keys,
    };
    let dir = dispatcher.shard_dir.clone();
    drop(shard);
    let scanned = glommio::executor()
        .spawn_blocking(move || scan(&dir, &request))
        .await;
    let Some(shard) = weak.upgrade() else { return };
    let dispatcher = shard.webhooks();
    let mut outbox = dispatcher.outbox.borrow_mut();
    match scanned {
        Ok(scanned) => apply_scan(&mut outbox, scanned, &unloaded_from, end),
        Err(error) => {
            eprintln!("payd: shard {}: webhook reload: {error}", shard.id());
            // Nothing was loaded: every merchant's events still wait where they did.
            leave_from(&mut outbox, &unloaded_from, 0, end);
        }
    }
    outbox.end_reload(now_ms());
    drop(outbox);
    dispatcher
        .reloads_total
        .set(dispatcher.reloads_total.get() + 1);
    dispatcher.reloading.set(false);
    dispatcher.wake();
}

fn apply_scan(
    outbox: &mut Outbox<Rc<WebhookEvent>>,
    scanned: Scan,
    unloaded_from: &[Option<u64>],
    end: u64,
) {
    for found in scanned.events {
        offer_reloaded(
            outbox,
            found.position,
            found.merchant,
            found.event,
            found.attempted,
        );
    }
    for (merchant, position) in scanned.left_on_disk {
        outbox.leave_on_disk(merchant, position);
    }
    if let Some(unread_from) = scanned.unread_from {
        // Records the writer had not finished: any merchant's events may be there, live
        // offers of them included, so every merchant waits on disk from there.
        let everyone = vec![Some(unread_from); unloaded_from.len()];
        leave_from(outbox, &everyone, unread_from, end);
    }
}

/// Leaves each merchant's events on disk from its position (at least `floor`), for
/// positions inside the reload.
fn leave_from(
    outbox: &mut Outbox<Rc<WebhookEvent>>,
    positions: &[Option<u64>],
    floor: u64,
    end: u64,
) {
    for (merchant, position) in positions.iter().enumerate() {
        if let Some(position) = position.map(|position| position.max(floor)) {
            if position < end {
                outbox.leave_on_disk(merchant as MerchantIndex, position);
            }
        }
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
    let now = now_ms();
    let completion =
        dispatcher
            .outbox
            .borrow_mut()
            .complete(delivery.event, &outcome, now, random::next_u64());
    dispatcher.wake();
    let attempt = AttemptEnd {
        attempts: delivery.attempt,
        last_status: answered_status(&outcome),
        at_ms: now,
    };
    match completion {
        Completion::Retry { due_ms } => note_retry(&shard, delivery.event, attempt, due_ms).await,
        Completion::Finished { fate, attempts } => {
            assert_eq!(attempts, attempt.attempts);
            finish(&shard, delivery.merchant, &event, fate, attempt).await
        }
    }
}

/// How an event's latest attempt ended.
#[derive(Clone, Copy)]
struct AttemptEnd {
    attempts: u32,
    last_status: Option<u16>,
    at_ms: u64,
}

/// Writes that an attempt failed and when the next is due, so a restart goes on from
/// there. Losing this record (a failed log) only restarts the schedule: harmless.
async fn note_retry(shard: &Shard, event: EventId, attempt: AttemptEnd, due_ms: u64) {
    let mut payload = Vec::new();
    WebhookAttempted {
        event,
        attempts: attempts_u16(attempt.attempts),
        last_status: attempt.last_status,
        attempted_at_ms: attempt.at_ms,
        next_attempt_at_ms: due_ms,
    }
    .encode(&mut payload);
    let append = shard
        .log()
        .append(RecordKind::WebhookAttempted.as_u8(), &payload);
    match append.await {
        Ok(position) => shard.webhooks().note_readable(position),
        Err(error) => eprintln!("payd: shard {}: {error}", shard.id()),
    }
}

/// Writes the end of a delivery, so a restart does not send the event again; a failed
/// one also enters the dead-letter index, for `GET /v1/events?delivery=failed`.
async fn finish(
    shard: &Shard,
    merchant: MerchantIndex,
    event: &WebhookEvent,
    fate: Fate,
    attempt: AttemptEnd,
) {
    let metric = match fate {
        Fate::Delivered => WebhookFate::Delivered,
        Fate::DeadLettered => WebhookFate::DeadLettered,
        Fate::Gone => WebhookFate::Gone,
    };
    shard
        .webhooks()
        .metrics
        .borrow_mut()
        .webhooks
        .record_fate(metric);
    let mut payload = Vec::new();
    let mut dead_letter = None;
    let kind = if fate == Fate::Delivered {
        WebhookDelivered {
            event: event.event,
            attempts: attempts_u16(attempt.attempts),
            outcome: WebhookOutcome::Delivered,
            finished_at_ms: attempt.at_ms,
        }
        .encode(&mut payload);
        RecordKind::WebhookDelivered
    } else {
        eprintln!(
            "payd: shard {}: webhook {} for merchant {} failed for good after {} attempts",
            shard.id(),
            event.event,
            event.payment.merchant_id,
            attempt.attempts
        );
        let dead = WebhookDeadLetter {
            outcome: if fate == Fate::Gone {
                WebhookOutcome::Gone
            } else {
                WebhookOutcome::DeadLettered
            },
            attempts: attempts_u16(attempt.attempts),
            last_status: attempt.last_status,
            failed_at_ms: attempt.at_ms,
            event: event.clone(),
        };
        dead.encode(&mut payload);
        dead_letter = Some(dead_letter_entry(merchant, &dead));
        RecordKind::WebhookDeadLetter
    };
    let append = shard.log().append(kind.as_u8(), &payload);
    let dispatcher = shard.webhooks();
    match append.await {
        Ok(position) => {
            dispatcher.note_readable(position);
            // Listed only once durable: a failed write leaves the event owed.
            if let Some(entry) = dead_letter {
                dispatcher.dead_letters.borrow_mut().insert(entry);
            }
        }
        // The event stays owed in the log: a restart sends it again (at least once).
        Err(error) => eprintln!("payd: shard {}: {error}", shard.id()),
    }
    dispatcher.outbox.borrow_mut().ended(event.event);
}

fn attempts_u16(attempts: u32) -> u16 {
    // At most `retry::ATTEMPTS_MAX` (33) per schedule; a schedule shortened by a config
    // change cannot push a count past this either.
    attempts.min(u32::from(u16::MAX)) as u16
}

fn answered_status(outcome: &DeliveryOutcome) -> Option<u16> {
    match outcome {
        // The log stores a status as three digits; anything else was no HTTP answer.
        DeliveryOutcome::Answered { status, .. } => {
            Some(*status).filter(|status| (100..=999).contains(status))
        }
        DeliveryOutcome::TimedOut | DeliveryOutcome::Failed | DeliveryOutcome::TlsFailed => None,
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
        DeliveryOutcome::TlsFailed => WebhookAttemptOutcome::TlsError,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment_object::sample_snapshot;

    /// What one dead letter costs in memory, for the memory figure: the entry, its two
    /// index keys, and its encoded event on the heap.
    #[test]
    fn a_dead_letter_is_small_in_memory() {
        let payment = sample_snapshot();
        let dead = WebhookDeadLetter {
            outcome: WebhookOutcome::DeadLettered,
            attempts: 8,
            last_status: Some(500),
            failed_at_ms: 1,
            event: WebhookEvent {
                event: EventId::of_final_status(payment.id),
                created_at_ms: payment.updated_at_ms,
                payment,
            },
        };
        let entry = dead_letter_entry(0, &dead);
        let entry_bytes = std::mem::size_of::<DeadLetter<Box<[u8]>>>();
        let key_bytes = std::mem::size_of::<(MerchantIndex, DeadLetterKey)>();
        assert!(entry_bytes <= 64, "{entry_bytes}");
        assert!(key_bytes <= 40, "{key_bytes}");
        // A payment with a description and one metadata pair.
        assert!(entry.payload.len() <= 128, "{}", entry.payload.len());
    }
}
