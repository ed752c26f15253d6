//! A shard at work: the pure state machine of `state`, driven by commands, with the store
//! and the acquirer at its edges. This is the only place that reads the clock for a
//! payment and the only place that awaits its I/O.
//!
//! The life of a create (DESIGN.md, steps 5 to 8): decide against the order index; for a
//! new payment, make the pending record durable, then authorise in a task of its own and
//! wait for it at most `acquirer.response_timeout_ms`; a final answer in time is made
//! durable and answered 201, otherwise the client gets 202 `pending` and the task goes
//! on to finalise the payment in the background.

use super::state::{CreateDecision, Payment, ShardState};
use super::store::{Store, StoreError};
use super::webhooks::Dispatcher;
use crate::acquirer::{Acquirer, AuthorizeRequest};
use crate::auth::MerchantKeys;
use crate::config::Config;
use crate::metrics::{CoreMetrics, Stage};
use crate::payment::{Authorization, MerchantIndex, PaymentId, PaymentTerms};
use crate::payment_object::PaymentSnapshot;
use crate::wal::{encode_created, encode_finalized, Checkpoint, RecordKind, WebhookEvent};
use crate::webhooks::event::final_status_event;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// What a shard can be asked to do. Sent over the mesh, so it owns its data.
pub enum Command {
    /// `now_ms` is when the request was read: the payment's `created_at`.
    Create { terms: PaymentTerms, now_ms: u64 },
    Get {
        merchant: MerchantIndex,
        id: PaymentId,
    },
    GetByOrder {
        merchant: MerchantIndex,
        order_id: String,
    },
    /// The payment once it is final (at once if it already is): a WebSocket connection
    /// waits so for the payments it answered 202 `pending`, to push them.
    AwaitFinal {
        merchant: MerchantIndex,
        id: PaymentId,
    },
}

/// What a shard answers. A payment travels as `P`, made from the shard's copy by the
/// caller's function: a boxed copy over the mesh (the state stays on its core), or, for a
/// caller on the same core, whatever it makes of a borrow (the answer's JSON) with no copy.
pub enum Reply<P = Box<Payment>> {
    /// A new payment; `final` is false when the acquirer had not answered in time (202).
    Created {
        payment: P,
        r#final: bool,
    },
    /// The same order again, first request answered: the payment as it is now.
    Replayed(P),
    Found(P),
    NotFound,
    InProgress,
    Conflict,
    /// The shard's queue is full.
    Overloaded,
    /// The shard cannot make payments durable: its log failed.
    Unavailable,
    /// The shard is still recovering (or its core is gone, during shutdown).
    NotReady,
}

/// Carried records that live or die together: one group in the log.
type CarriedUnit = Vec<(RecordKind, Vec<u8>)>;

/// Pending payments a shard asks the acquirer about at once after a restart: a log left
/// with thousands pending must not start thousands of authorisations (and hold their
/// memory) together.
pub const RESUMED_AUTHORIZATIONS_CONCURRENT_MAX: usize = 64;

/// Capacities of the per-record payload buffers: most records fit without growing.
const CREATED_PAYLOAD_BYTES_TYPICAL: usize = 256;
const FINALIZED_PAYLOAD_BYTES_TYPICAL: usize = 64;

/// What a core's shards share: the acquirer client and the core's metrics.
#[derive(Clone)]
pub struct ShardEdges {
    pub acquirer: Rc<Acquirer>,
    pub metrics: Rc<RefCell<CoreMetrics>>,
}

pub struct Shard {
    id: u16,
    config: &'static Config,
    merchants: &'static MerchantKeys,
    state: RefCell<ShardState>,
    store: Store,
    acquirer: Rc<Acquirer>,
    /// Creates from their first decision until their authorisation ended, answered or
    /// not: one answered 202 still counts while it authorises in the background, so
    /// `server.shard_inbox_capacity` bounds all of them, not only those awaited.
    creates_in_flight: Cell<usize>,
    webhooks: Dispatcher,
    /// Pending payments someone awaits (`Command::AwaitFinal`): the semaphore is closed,
    /// waking them all, when the payment is final. At most one entry per pending payment.
    final_waiters: RefCell<HashMap<PaymentId, Rc<Semaphore>>>,
    /// The core's metrics: this shard's acquirer and persist stages are timed into them.
    metrics: Rc<RefCell<CoreMetrics>>,
}

impl Shard {
    pub fn new(
        id: u16,
        config: &'static Config,
        merchants: &'static MerchantKeys,
        state: ShardState,
        store: Store,
        webhooks: Dispatcher,
        edges: ShardEdges,
    ) -> Shard {
        Shard {
            id,
            config,
            merchants,
            state: RefCell::new(state),
            store,
            acquirer: edges.acquirer,
            creates_in_flight: Cell::new(0),
            webhooks,
            final_waiters: RefCell::new(HashMap::new()),
            metrics: edges.metrics,
        }
    }

    pub fn webhooks(&self) -> &Dispatcher {
        &self.webhooks
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn log(&self) -> &crate::wal::ShardLog {
        self.store.log()
    }

    pub fn config(&self) -> &'static Config {
        self.config
    }

    /// Retention: final payments untouched for `retention_ms` leave memory.
    pub fn expire(&self, now_ms: u64, retention_ms: u64) -> usize {
        self.state.borrow_mut().expire(now_ms, retention_ms)
    }

    /// Makes what the log holds durable and refuses later appends (shutdown): with
    /// `durability = "none"` this is what keeps acknowledged payments across a clean stop.
    pub async fn shut_log(&self) {
        if let Err(error) = self.store.log().shut().await {
            eprintln!("payd: shard {}: closing the log: {error}", self.id);
        }
    }

    /// Retention: how many payments the shard holds in memory, for `/metrics`.
    pub fn payments_in_memory(&self) -> usize {
        self.state.borrow().len()
    }

    /// Retention: appends again every payment of `ids` still in memory (its `Created`
    /// and, once final, its `Finalized`), then a `Checkpoint` of the payment sequence,
    /// and waits until all of it is durable. Returns how many payments were carried.
    ///
    /// The records are encoded from the state and queued in one step, with no await in
    /// between, so they say what the state said at one instant. A finalisation racing
    /// with it may land before the carried `Created`: recovery lets it wait for it.
    ///
    /// A final payment's `Created` and `Finalized` go in as one group. Appended one by
    /// one they could land in two frames, and a crash between their syncs would leave a
    /// copy that says pending: harmless while the originals stand, but once a later pass
    /// deletes them (the payment expired, so nobody carries it again), a restart would
    /// bring the payment back as pending and ask the acquirer again.
    pub async fn carry_forward(
        &self,
        ids: &[PaymentId],
        webhook_records: &[(RecordKind, Vec<u8>)],
    ) -> Result<(usize, u64), StoreError> {
        let (units, carried) = self.carried_records(ids, webhook_records);
        let groups: Vec<Vec<(u8, &[u8])>> = units
            .iter()
            .map(|unit| {
                let records = unit.iter();
                records
                    .map(|(kind, payload)| (kind.as_u8(), &payload[..]))
                    .collect()
            })
            .collect();
        let log = self.store.log();
        let appends: Vec<_> = groups.iter().map(|group| log.append_group(group)).collect();
        let mut last_position = 0;
        for append in appends {
            last_position = append
                .await
                .map_err(|error| StoreError(error.to_string()))?;
        }
        Ok((carried, last_position))
    }

    /// The records to carry, in units that must live or die together (each one group).
    fn carried_records(
        &self,
        ids: &[PaymentId],
        webhook_records: &[(RecordKind, Vec<u8>)],
    ) -> (Vec<CarriedUnit>, usize) {
        let state = self.state.borrow();
        let mut units = Vec::new();
        let mut carried = 0;
        for payment in ids.iter().filter_map(|&id| state.get_by_id(id)) {
            carried += 1;
            let mut records = Vec::with_capacity(2);
            let mut created = Vec::with_capacity(CREATED_PAYLOAD_BYTES_TYPICAL);
            let merchant_id = self.merchants.merchant_id(payment.merchant());
            let terms = payment.terms();
            encode_created(
                &mut created,
                payment.id(),
                merchant_id,
                &terms,
                payment.created_at_ms(),
            );
            records.push((RecordKind::Created, created));
            if payment.status().is_final() {
                let mut finalized = Vec::with_capacity(FINALIZED_PAYLOAD_BYTES_TYPICAL);
                encode_finalized(
                    &mut finalized,
                    payment.id(),
                    payment.status(),
                    payment.decline_code(),
                    payment.updated_at_ms(),
                );
                records.push((RecordKind::Finalized, finalized));
            }
            units.push(records);
        }
        // Webhook events still owed (and their last failed attempts) are written again
        // verbatim: recovery lets the later copy of an event replace the earlier one.
        units.extend(webhook_records.iter().map(|record| vec![record.clone()]));
        let mut checkpoint = Vec::new();
        Checkpoint {
            next_payment_sequence: state.next_sequence(),
        }
        .encode(&mut checkpoint);
        units.push(vec![(RecordKind::Checkpoint, checkpoint)]);
        (units, carried)
    }

    /// Finishes every payment the log left pending (a crash between the Created and
    /// Finalized records): asks the acquirer again with the same idempotency key, at most
    /// `RESUMED_AUTHORIZATIONS_CONCURRENT_MAX` at a time. Returns how many are pending.
    pub fn resume_pending(self: &Rc<Self>) -> usize {
        let pending: Vec<PaymentId> = self.state.borrow().pending().map(Payment::id).collect();
        let count = pending.len();
        if count > 0 {
            glommio::spawn_local(Rc::clone(self).resume(pending)).detach();
        }
        count
    }

    async fn resume(self: Rc<Self>, pending: Vec<PaymentId>) {
        let permits = Rc::new(Semaphore::new(RESUMED_AUTHORIZATIONS_CONCURRENT_MAX as u64));
        for id in pending {
            // Invariant: nothing closes this semaphore.
            let permit = permits
                .acquire_static_permit(1)
                .await
                .expect("the resume semaphore stays open");
            let shard = Rc::clone(&self);
            glommio::spawn_local(async move {
                let _permit = permit;
                let _ = shard.authorize(id).await;
            })
            .detach();
        }
    }

    /// Runs a command for another core: the payment in the reply is a boxed copy.
    pub async fn execute(self: &Rc<Self>, command: Command) -> Reply {
        self.execute_with(command, |payment| Box::new(payment.clone()))
            .await
    }

    /// Runs a command; `take` makes the reply's payment from the shard's copy, once.
    pub async fn execute_with<P>(
        self: &Rc<Self>,
        command: Command,
        take: impl FnOnce(&Payment) -> P,
    ) -> Reply<P> {
        match command {
            Command::Create { terms, now_ms } => self.create(terms, now_ms, take).await,
            Command::Get { merchant, id } => found(self.state.borrow().get(merchant, id), take),
            Command::GetByOrder { merchant, order_id } => {
                found(self.state.borrow().get_by_order(merchant, &order_id), take)
            }
            Command::AwaitFinal { merchant, id } => self.await_final(merchant, id, take).await,
        }
    }

    /// Waits until payment `id` of `merchant` is final, then answers it as `Found`.
    async fn await_final<P>(
        &self,
        merchant: MerchantIndex,
        id: PaymentId,
        take: impl FnOnce(&Payment) -> P,
    ) -> Reply<P> {
        let waiter = {
            let state = self.state.borrow();
            match state.get(merchant, id) {
                None => return Reply::NotFound,
                Some(payment) if payment.status().is_final() => return Reply::Found(take(payment)),
                Some(_) => {}
            }
            let mut waiters = self.final_waiters.borrow_mut();
            Rc::clone(
                waiters
                    .entry(id)
                    .or_insert_with(|| Rc::new(Semaphore::new(0))),
            )
        };
        // No permit is ever signalled: this returns when `finalize` closes it.
        let _ = waiter.acquire(1).await;
        found(self.state.borrow().get(merchant, id), take)
    }

    fn snapshot<P>(&self, id: PaymentId, take: impl FnOnce(&Payment) -> P) -> P {
        let state = self.state.borrow();
        // Invariant: ids handed out by the state machine stay in it until retention.
        take(state.get_by_id(id).expect("payment of a decision exists"))
    }

    async fn create<P>(
        self: &Rc<Self>,
        terms: PaymentTerms,
        now: u64,
        take: impl FnOnce(&Payment) -> P,
    ) -> Reply<P> {
        if self.creates_in_flight.get() >= self.config.server.shard_inbox_capacity {
            return Reply::Overloaded;
        }
        if self.store.failure().is_some() {
            return Reply::Unavailable;
        }
        // The Created record is encoded before the decision moves the terms into the
        // state: the id it will get is the state's next sequence, and nothing runs in
        // between on this core. Replays throw the encoding away.
        let provisional = PaymentId {
            shard: self.id,
            sequence: self.state.borrow().next_sequence(),
        };
        let mut created = Vec::with_capacity(CREATED_PAYLOAD_BYTES_TYPICAL);
        let merchant_id = self.merchants.merchant_id(terms.merchant);
        encode_created(&mut created, provisional, merchant_id, &terms, now);
        let decision = self.state.borrow_mut().begin_create(terms, now);
        match decision {
            CreateDecision::New(id) => {
                assert_eq!(id, provisional, "a new payment takes the next sequence");
                let in_flight = InFlight::enter(self);
                self.create_new(id, &created, in_flight, take).await
            }
            CreateDecision::Replay(id) => Reply::Replayed(self.snapshot(id, take)),
            CreateDecision::InProgress => Reply::InProgress,
            CreateDecision::Conflict => Reply::Conflict,
        }
    }

    async fn create_new<P>(
        self: &Rc<Self>,
        id: PaymentId,
        created: &[u8],
        in_flight: InFlight,
        take: impl FnOnce(&Payment) -> P,
    ) -> Reply<P> {
        if let Some(authorization) = self.answer_at_once(id) {
            return self.create_decided(id, created, authorization, take).await;
        }
        let persisting = Instant::now();
        let appended = self.store.append(RecordKind::Created, created).await;
        self.record_stage(Stage::Persist, persisting);
        if let Err(error) = appended {
            self.report_store_error(&error.0);
            // Never acknowledged, so forgetting it is safe; a retry creates it afresh.
            self.state.borrow_mut().abandon(id);
            return Reply::Unavailable;
        }
        // Authorised inline, not in a task of its own: an acquirer that answers at once
        // (the simulation without latency) then costs neither a task nor a timer, even
        // while its final record waits for its sync (API.md: 202 is for an acquirer that
        // has not answered). Only an authorisation whose acquirer is still thinking is
        // timed, and moves to a task at the timeout, to finish there.
        let mut asking = Box::pin(Rc::clone(self).ask_acquirer(id));
        let outcome = match futures_lite::future::poll_once(asking.as_mut()).await {
            Some(answer) => Some(Rc::clone(self).finalize(id, answer).await),
            None => {
                let shard = Rc::clone(self);
                let mut authorization =
                    Box::pin(async move { shard.finalize(id, asking.await).await });
                let wait = Duration::from_millis(self.config.acquirer.response_timeout_ms);
                let authorized = async { Ok(authorization.as_mut().await) };
                let outcome = glommio::timer::timeout(wait, authorized).await.ok();
                if outcome.is_none() {
                    // Still counted in flight until it ends in its task.
                    glommio::spawn_local(async move {
                        let _in_flight = in_flight;
                        authorization.await
                    })
                    .detach();
                }
                outcome
            }
        };
        let reply = match outcome {
            Some(Ok(())) => Reply::Created {
                payment: self.snapshot(id, take),
                r#final: true,
            },
            Some(Err(())) => Reply::Unavailable,
            // Still authorising (in its task now): the pending record is durable, so 202
            // is safe.
            None => Reply::Created {
                payment: self.snapshot(id, take),
                r#final: false,
            },
        };
        self.state.borrow_mut().mark_answered(id);
        reply
    }

    /// Asks the acquirer, makes the final status durable, then applies it, so nobody
    /// sees a status that a crash could take back. Err when the store failed: the
    /// payment stays pending in the log and recovery finishes it.
    async fn authorize(self: Rc<Self>, id: PaymentId) -> Result<(), ()> {
        let authorization = Rc::clone(&self).ask_acquirer(id).await;
        self.finalize(id, authorization).await
    }

    /// The acquirer's final answer for a pending payment, retries included.
    async fn ask_acquirer(self: Rc<Self>, id: PaymentId) -> Authorization {
        let asking = Instant::now();
        let request = {
            let state = self.state.borrow();
            let payment = state
                .get_by_id(id)
                .expect("a payment being authorised exists");
            if let Some(authorization) = self.acquirer.answer_at_once(payment.payment_method()) {
                self.record_stage(Stage::Acquirer, asking);
                return authorization;
            }
            AuthorizeRequest {
                payment_id: id,
                merchant_id: self.merchants.merchant_id(payment.merchant()).to_string(),
                amount: payment.amount(),
                currency: payment.currency(),
                payment_method: payment.payment_method().to_string(),
            }
        };
        let authorization = self.acquirer.authorize(&request).await;
        self.record_stage(Stage::Acquirer, asking);
        authorization
    }

    /// Logs why a record could not be made durable, unless the log failed: it said so
    /// itself, once, and every create in flight would repeat it.
    fn report_store_error(&self, error: &str) {
        if self.store.failure().is_none() {
            eprintln!("payd: shard {}: {error}", self.id);
        }
    }

    fn record_stage(&self, stage: Stage, started: Instant) {
        let duration_ns = started.elapsed().as_nanos() as u64;
        self.metrics.borrow_mut().record_stage(stage, duration_ns);
    }

    /// Makes the acquirer's answer durable (with its webhook event), then applies it.
    /// The acquirer's answer if it is known without asking anyone: the in-process
    /// simulation without latency.
    fn answer_at_once(&self, id: PaymentId) -> Option<Authorization> {
        let asking = Instant::now();
        let state = self.state.borrow();
        let payment = state.get_by_id(id).expect("a payment being created exists");
        let answer = self.acquirer.answer_at_once(payment.payment_method());
        if answer.is_some() {
            self.record_stage(Stage::Acquirer, asking);
        }
        answer
    }

    /// A create whose final answer was known at once: the intent, the final status and
    /// its webhook event are made durable together, in one group, with one sync. The
    /// rule that the intent is durable before the acquirer is asked protects against an
    /// authorisation that payd does not know about; an in-process answer leaves none.
    async fn create_decided<P>(
        self: &Rc<Self>,
        id: PaymentId,
        created: &[u8],
        authorization: Authorization,
        take: impl FnOnce(&Payment) -> P,
    ) -> Reply<P> {
        let outcome = Rc::clone(self)
            .make_final(id, authorization, Some(created))
            .await;
        let reply = match outcome {
            Ok(()) => Reply::Created {
                payment: self.snapshot(id, take),
                r#final: true,
            },
            Err(()) => {
                // Nothing of it was acknowledged: a retry creates it afresh.
                self.state.borrow_mut().abandon(id);
                return Reply::Unavailable;
            }
        };
        self.state.borrow_mut().mark_answered(id);
        reply
    }

    async fn finalize(
        self: Rc<Self>,
        id: PaymentId,
        authorization: Authorization,
    ) -> Result<(), ()> {
        self.make_final(id, authorization, None).await
    }

    /// Makes the acquirer's answer durable with its webhook event (and the payment's
    /// `Created` record, when `created` is given), in one group, then applies it.
    async fn make_final(
        self: Rc<Self>,
        id: PaymentId,
        authorization: Authorization,
        created: Option<&[u8]>,
    ) -> Result<(), ()> {
        let updated_at_ms = now_ms();
        let mut finalized = Vec::with_capacity(FINALIZED_PAYLOAD_BYTES_TYPICAL);
        encode_finalized(
            &mut finalized,
            id,
            authorization.status(),
            authorization.decline_code(),
            updated_at_ms,
        );
        let event = self.final_event(id, &authorization, updated_at_ms);
        let mut event_payload = Vec::new();
        if let Some((_, event)) = &event {
            event.encode(&mut event_payload);
        }
        // One group: the final status is never durable without the event that tells it.
        let log = self.store.log();
        let mut group: [(u8, &[u8]); 3] = [(0, &[]); 3];
        let mut records = 0;
        for (kind, payload) in [
            created.map(|created| (RecordKind::Created, created)),
            Some((RecordKind::Finalized, finalized.as_slice())),
            event
                .as_ref()
                .map(|_| (RecordKind::WebhookEvent, event_payload.as_slice())),
        ]
        .into_iter()
        .flatten()
        {
            group[records] = (kind.as_u8(), payload);
            records += 1;
        }
        let records = &group[..records];
        let has_event = event.is_some();
        let durable = async {
            let last = log.append_group(records).await?;
            Ok::<_, crate::wal::LogError>(has_event.then_some(last))
        };
        let persisting = Instant::now();
        let durable = durable.await;
        self.record_stage(Stage::Persist, persisting);
        let position = match durable {
            Ok(position) => position,
            Err(error) => {
                self.report_store_error(&error.to_string());
                return Err(());
            }
        };
        // Invariant: only this task finalises this payment.
        self.state
            .borrow_mut()
            .finalize(id, &authorization, updated_at_ms)
            .expect("a pending payment finalises once");
        if let (Some(position), Some((merchant, event))) = (position, event) {
            self.webhooks.offer(position, merchant, event);
        }
        if let Some(waiters) = self.final_waiters.borrow_mut().remove(&id) {
            waiters.close();
        }
        Ok(())
    }

    /// The webhook event that tells this finalisation, for a merchant with an endpoint.
    fn final_event(
        &self,
        id: PaymentId,
        authorization: &Authorization,
        updated_at_ms: u64,
    ) -> Option<(MerchantIndex, WebhookEvent)> {
        let state = self.state.borrow();
        let payment = state
            .get_by_id(id)
            .expect("a payment being finalised exists");
        let merchant = payment.merchant();
        self.webhooks.endpoint(merchant)?;
        let snapshot = PaymentSnapshot {
            id,
            merchant_id: self.merchants.merchant_id(merchant).to_string(),
            order_id: payment.order_id().to_string(),
            amount: payment.amount(),
            currency: payment.currency(),
            status: authorization.status(),
            decline_code: authorization.decline_code().map(str::to_string),
            description: payment.description().map(str::to_string),
            metadata: payment
                .metadata()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            created_at_ms: payment.created_at_ms(),
            updated_at_ms,
        };
        let (event, created_at_ms) = final_status_event(&snapshot);
        Some((
            merchant,
            WebhookEvent {
                event,
                created_at_ms,
                payment: snapshot,
            },
        ))
    }
}

/// One create counted in its shard's `creates_in_flight`, until dropped: when its
/// authorisation ends, in the request or in the task that finishes it after a 202.
struct InFlight(Rc<Shard>);

impl InFlight {
    fn enter(shard: &Rc<Shard>) -> InFlight {
        shard
            .creates_in_flight
            .set(shard.creates_in_flight.get() + 1);
        InFlight(Rc::clone(shard))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let count = &self.0.creates_in_flight;
        count.set(count.get() - 1);
    }
}

fn found<P>(payment: Option<&Payment>, take: impl FnOnce(&Payment) -> P) -> Reply<P> {
    payment.map_or(Reply::NotFound, |payment| Reply::Found(take(payment)))
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payment::Currency;
    use crate::shard::webhooks::Endpoints;
    use crate::wal::{
        decode_frame, list_segments, FrameOutcome, LogOptions, ShardLog, FRAME_HEADER_BYTES,
        RECORD_PAYLOAD_BYTES_MAX, SEGMENT_BYTES_MIN,
    };
    use std::path::Path;

    /// A kind no record of payd has: filler the frame walk below skips.
    const FILLER_KIND: u8 = 0xee;
    const ENTRY_HEADER_BYTES: usize = 5;

    /// A shard of one merchant (no webhook url) over a fresh log in `dir`, with the
    /// in-process acquirer, which answers `tok_visa` at once.
    async fn shard_in(dir: &Path) -> Rc<Shard> {
        let text = "[[merchants]]\nid = \"m\"\nsecrets = [\"test-only-secret-0123456789abcdef\"]\n";
        let config: &'static Config = Box::leak(Box::new(Config::parse(text).unwrap()));
        let keys: &'static MerchantKeys = Box::leak(Box::new(MerchantKeys::new(vec![(
            "m".to_string(),
            vec![b"test-only-secret-0123456789abcdef".to_vec()],
        )])));
        let metrics = Rc::new(RefCell::new(CoreMetrics::new(0)));
        let connector = crate::tls::ClientTls::without_roots().core_connector();
        let acquirer = Rc::new(Acquirer::new(config, Rc::clone(&metrics), &connector));
        let endpoints = Rc::new(Endpoints::from_config(config, keys, &connector).unwrap());
        let dispatcher = Dispatcher::new(
            config,
            keys,
            dir.to_path_buf(),
            endpoints,
            Rc::clone(&metrics),
        );
        let options = LogOptions {
            durability: crate::config::Durability::Fsync,
            segment_bytes_max: SEGMENT_BYTES_MIN,
            buffered_io: false,
        };
        let log = ShardLog::open_with(dir, options, 1).await.unwrap();
        let edges = ShardEdges { acquirer, metrics };
        Rc::new(Shard::new(
            0,
            config,
            keys,
            ShardState::new(0, 1),
            Store::new(log),
            dispatcher,
            edges,
        ))
    }

    /// Every record of the log in `dir`: (index of its frame, kind, payload).
    fn records_by_frame(dir: &Path) -> Vec<(usize, u8, Vec<u8>)> {
        let mut found = Vec::new();
        let mut frame_index = 0;
        for segment in list_segments(dir).unwrap() {
            let data = std::fs::read(&segment.path).unwrap();
            let mut offset = 0;
            while let FrameOutcome::Frame(frame) = decode_frame(&data, offset) {
                for record in frame.records().flatten() {
                    found.push((frame_index, record.kind, record.payload.to_vec()));
                }
                offset += frame.length_total;
                frame_index += 1;
            }
        }
        found
    }

    #[test]
    fn a_carried_final_payment_keeps_its_created_and_finalized_in_one_frame() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::tempdir_in(&base).unwrap();
        let path = dir.path().to_path_buf();
        let (created, finalized) = crate::testing::run_here(async move {
            let shard = shard_in(&path).await;
            let terms = PaymentTerms {
                merchant: 0,
                order_id: "order-1".to_string(),
                amount: 100,
                currency: Currency::parse("EUR").unwrap(),
                payment_method: "tok_visa".to_string(),
                description: None,
                metadata: Vec::new(),
            };
            let reply = shard.execute(Command::Create { terms, now_ms: 1 }).await;
            let Reply::Created { payment, r#final } = reply else {
                panic!("not created");
            };
            assert!(r#final);
            let id = payment.id();
            let (units, _) = shard.carried_records(&[id], &[]);
            let (created, finalized) = (units[0][0].1.clone(), units[0][1].1.clone());
            // Fill the batch so that the carried Created still fits and its Finalized
            // does not: carried one by one, they would go into two frames, and a crash
            // between their syncs leaves a copy of the payment that says pending.
            let log = shard.log();
            let room = SEGMENT_BYTES_MIN as usize - FRAME_HEADER_BYTES;
            let mut filler_bytes = room - (ENTRY_HEADER_BYTES + created.len());
            let filler = vec![7u8; RECORD_PAYLOAD_BYTES_MAX];
            let mut fillers = Vec::new();
            while filler_bytes > 0 {
                let payload = filler_bytes.min(ENTRY_HEADER_BYTES + RECORD_PAYLOAD_BYTES_MAX);
                fillers.push(log.append(FILLER_KIND, &filler[..payload - ENTRY_HEADER_BYTES]));
                filler_bytes -= payload;
            }
            shard.carry_forward(&[id], &[]).await.unwrap();
            for filler in fillers {
                filler.await.unwrap();
            }
            (created, finalized)
        });
        let records = records_by_frame(dir.path());
        let frame_of = |kind: RecordKind, payload: &[u8]| {
            let copies: Vec<usize> = records
                .iter()
                .filter(|(_, k, p)| *k == kind.as_u8() && p == payload)
                .map(|(frame, _, _)| *frame)
                .collect();
            assert_eq!(copies.len(), 2, "the original and the carried copy");
            copies[1]
        };
        assert_eq!(
            frame_of(RecordKind::Created, &created),
            frame_of(RecordKind::Finalized, &finalized),
            "the carried Created and Finalized of one payment are in different frames"
        );
    }
}
