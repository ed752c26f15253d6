//! The outbox of one shard: which webhook event to attempt next, when, and what an
//! attempt's outcome changes. Pure: no I/O, no clock, no randomness inside; the caller
//! passes `now_ms` and a random value in, so every rule can be tested and replayed.
//!
//! # The model
//!
//! Every event owed to a merchant is a `WebhookEvent` record in the shard's log with no
//! `WebhookDelivered` after it; its *position* is its record's sequence number. Only some
//! of them are *loaded* (held in memory, at most `backlog_events_max`); the rest wait on
//! disk and are found again by a *reload*: the caller scans the log from
//! `reload_wanted()`'s cursor and offers what it reads. The caller's loop is:
//!
//! - `offer` each new event once its record is durable;
//! - `next_delivery` while it returns one, and attempt each (see `sender::attempt`);
//! - `complete` each attempt; a `Finished` completion is written as `WebhookDelivered`
//!   (or `WebhookDeadLetter`), and `ended` once that record is durable;
//! - sleep until `next_due_ms`, a completion or an offer;
//! - when `reload_wanted`, scan: `begin_reload`, then in log order `offer_reloaded` each
//!   `WebhookEvent` and `settled` each `WebhookDelivered`, then `end_reload`. Start-up
//!   is the first reload, from position 0 (nothing is loaded before it).
//!
//! # The rules
//!
//! - Order per payment: a payment's events are attempted one after the other, each
//!   only once the one before it has finished (delivered, dead-lettered or gone).
//! - A merchant's events are loaded in position order: once one is left on disk, its
//!   later ones are too, until a reload has loaded it. So order per payment survives
//!   a full backlog.
//! - Fairness between merchants, so one slow or dead endpoint never delays another:
//!   - every merchant may always have one delivery in flight; beyond that, merchants
//!     share `shared_in_flight_max` more, each up to `merchant_in_flight_max`. At most
//!     `merchants + shared_in_flight_max` deliveries are in flight;
//!   - the next delivery goes to the merchant with the fewest in flight, then the
//!     earliest due;
//!   - when the backlog is full, an event of a merchant holding fewer events than the
//!     heaviest takes the place of the heaviest's newest event (not in flight, last of
//!     its payment), which goes back to disk. A dead endpoint's retries cannot fill
//!     memory and starve the others.
//! - Progress survives disk: every failed attempt with a retry to come is written as a
//!   `WebhookAttempted` record, and a reload (or a restart) that finds one hands it to
//!   `restore_attempts`, so the schedule goes on from there instead of from attempt 1.

use super::retry::{RetrySchedule, Verdict};
use super::sender::DeliveryOutcome;
use crate::payment::{EventId, MerchantIndex, PaymentId};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

/// A reload is worth its scan of the log when this fraction of the backlog is free
/// (or when fairness lets a starved merchant in; see `reload_wanted`).
pub const RELOAD_ROOM_DIVISOR: usize = 8;

/// The bounds of one outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Events held in memory, those in flight included.
    pub backlog_events_max: usize,
    /// Deliveries in flight beyond each merchant's first.
    pub shared_in_flight_max: usize,
    /// Deliveries in flight to one merchant.
    pub merchant_in_flight_max: usize,
}

/// An event as the outbox gets it. `P` is whatever the caller needs to attempt it (the
/// stored event, or its body): the outbox only holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent<P> {
    pub event: EventId,
    pub payment: PaymentId,
    pub merchant: MerchantIndex,
    /// The sequence number of the event's record in the shard's log.
    pub position: u64,
    pub payload: P,
}

/// What became of an offered event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Loaded: it will be attempted in its turn (after `end_reload`, for a reload).
    Accepted,
    /// Left on disk for a later reload (backlog full, or an earlier event of the same
    /// merchant is still on disk).
    Refused,
    /// Already loaded.
    Duplicate,
    /// Reload only: it was loaded before and has finished since.
    Finished,
    /// Live offer only: a reload under way covers its position and will offer it.
    LeftToReload,
    /// Its merchant has no endpoint: it stays on disk, owed (see `Outbox::park`).
    Parked,
}

/// An attempt to make now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub event: EventId,
    pub merchant: MerchantIndex,
    /// 1 for the first attempt.
    pub attempt: u32,
}

/// How an event's delivery ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Delivered,
    /// The last attempt of the schedule failed.
    DeadLettered,
    /// The receiver answered 410.
    Gone,
}

/// What an attempt's outcome did to its event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Completion {
    /// Attempt again at `due_ms`.
    Retry { due_ms: u64 },
    /// Done: write `WebhookDelivered` with `attempts` and the fate.
    Finished { fate: Fate, attempts: u32 },
}

/// Gauges and counters for `/metrics`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub loaded: usize,
    pub in_flight: usize,
    /// Merchants with events waiting on disk.
    pub merchants_with_unloaded: usize,
    pub evicted_total: u64,
    pub refused_total: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Waiting for an earlier event of its payment to finish.
    Blocked,
    /// Loaded by a reload under way; its `WebhookDelivered` may still follow. It becomes
    /// ready at `due_ms` (0 until `restore_attempts` says otherwise: at once).
    Staged {
        due_ms: u64,
    },
    Ready {
        due_ms: u64,
    },
    InFlight,
}

struct Entry<P> {
    payment: PaymentId,
    merchant: MerchantIndex,
    position: u64,
    attempts: u32,
    state: State,
    payload: P,
}

/// One merchant's share of the outbox.
#[derive(Default)]
struct Lane {
    loaded: usize,
    in_flight: usize,
    /// Events that may be attempted, by due time.
    ready: BTreeSet<(u64, u64, EventId)>,
    /// Every loaded event, by position.
    positions: BTreeMap<u64, EventId>,
    /// The lowest position of an event of this merchant left on disk.
    unloaded_from: Option<u64>,
    /// The merchant has no endpoint: its events stay on disk, owed, until a config
    /// gives it one again (see `park`).
    parked: bool,
}

struct Reload {
    /// Positions at and after this are not the reload's (live offers get them).
    end: u64,
    /// Each merchant's `unloaded_from` when the reload began.
    unloaded_before: Vec<Option<u64>>,
    /// Each merchant's events left on disk during the reload.
    unloaded_after: Vec<Option<u64>>,
    /// Events that finished while the reload ran: their `WebhookDelivered` lies beyond
    /// its end, so the scan must not take them for owed. At most the completions of one
    /// reload.
    finished: HashSet<EventId>,
}

pub struct Outbox<P> {
    limits: OutboxLimits,
    schedule: RetrySchedule,
    events: HashMap<EventId, Entry<P>>,
    /// Each payment's loaded events, in position order.
    chains: HashMap<PaymentId, VecDeque<EventId>>,
    lanes: Vec<Lane>,
    in_flight: usize,
    /// In flight beyond each merchant's first.
    shared_in_flight: usize,
    /// Until the first reload, every merchant's events are on disk from position 0.
    unloaded_floor: Option<u64>,
    reload: Option<Reload>,
    /// Events that finished whose end record (`WebhookDelivered`, `WebhookDeadLetter`) is
    /// not durable yet: a reload must not take them for owed. At most the deliveries in
    /// flight when they finished.
    ending: HashSet<EventId>,
    offered_position_max: Option<u64>,
    evicted_total: u64,
    refused_total: u64,
}

impl<P> Outbox<P> {
    /// An outbox with nothing loaded: the first reload (the start-up scan) loads what the
    /// log owes. `merchant_count` is the number of merchants in the config.
    pub fn new(limits: OutboxLimits, schedule: RetrySchedule, merchant_count: usize) -> Self {
        assert!(limits.backlog_events_max > 0);
        assert!(limits.merchant_in_flight_max > 0);
        Outbox {
            limits,
            schedule,
            events: HashMap::new(),
            chains: HashMap::new(),
            lanes: (0..merchant_count).map(|_| Lane::default()).collect(),
            in_flight: 0,
            shared_in_flight: 0,
            unloaded_floor: Some(0),
            reload: None,
            ending: HashSet::new(),
            offered_position_max: None,
            evicted_total: 0,
            refused_total: 0,
        }
    }

    /// A merchant without an endpoint (its `webhook_url` was removed): its events are
    /// never loaded, so never attempted, and stay owed on disk (`may_be_owed`) for a
    /// config that gives it an endpoint again. No reload is wanted for it. Call before
    /// the start-up reload.
    pub fn park(&mut self, merchant: MerchantIndex) {
        let index = self.lane_index(merchant);
        assert!(self.reload.is_none() && self.unloaded_floor.is_some());
        assert_eq!(self.lanes[index].loaded, 0);
        self.lanes[index].parked = true;
    }

    /// A new event, offered once its record is durable.
    pub fn offer(&mut self, event: OutboxEvent<P>, now_ms: u64) -> Offer {
        self.note_offered(&event);
        if self.lanes[event.merchant as usize].parked {
            return Offer::Parked;
        }
        if self.events.contains_key(&event.event) {
            return Offer::Duplicate;
        }
        if self.reload.as_ref().is_some_and(|r| event.position < r.end) {
            return Offer::LeftToReload;
        }
        let unloaded_from = self.unloaded_from(event.merchant);
        if unloaded_from.is_some_and(|from| from <= event.position) {
            return self.refuse(event.merchant, event.position);
        }
        self.admit(event, State::Ready { due_ms: now_ms })
    }

    /// The event to attempt now, if one is due and the limits allow it. Call until `None`.
    pub fn next_delivery(&mut self, now_ms: u64) -> Option<Delivery> {
        let merchant = self.lane_to_serve(now_ms)?;
        let lane = &mut self.lanes[merchant];
        let (_, _, event) = lane
            .ready
            .pop_first()
            .expect("a lane to serve has a ready event");
        if lane.in_flight > 0 {
            self.shared_in_flight += 1;
        }
        lane.in_flight += 1;
        self.in_flight += 1;
        let entry = self
            .events
            .get_mut(&event)
            .expect("a ready event is loaded");
        entry.state = State::InFlight;
        entry.attempts += 1;
        Some(Delivery {
            event,
            merchant: merchant as MerchantIndex,
            attempt: entry.attempts,
        })
    }

    /// What the caller needs to attempt a loaded event.
    pub fn payload(&self, event: EventId) -> Option<&P> {
        self.events.get(&event).map(|entry| &entry.payload)
    }

    /// Applies the outcome of an attempt `next_delivery` started. `random` spreads the
    /// retry (see `RetrySchedule::delay_ms`).
    pub fn complete(
        &mut self,
        event: EventId,
        outcome: &DeliveryOutcome,
        now_ms: u64,
        random: u64,
    ) -> Completion {
        let entry = self
            .events
            .get_mut(&event)
            .expect("a completed event is loaded");
        assert_eq!(
            entry.state,
            State::InFlight,
            "only an attempt in flight completes"
        );
        let lane = &mut self.lanes[entry.merchant as usize];
        lane.in_flight -= 1;
        if lane.in_flight > 0 {
            self.shared_in_flight -= 1;
        }
        self.in_flight -= 1;
        let attempts = entry.attempts;
        let fate = match Verdict::of(outcome) {
            Verdict::Delivered => Fate::Delivered,
            Verdict::Gone => Fate::Gone,
            Verdict::Retry { retry_after_secs } => {
                match self.schedule.delay_ms(attempts, retry_after_secs, random) {
                    Some(delay_ms) => {
                        let due_ms = now_ms.saturating_add(delay_ms);
                        self.make_ready(event, due_ms);
                        return Completion::Retry { due_ms };
                    }
                    None => Fate::DeadLettered,
                }
            }
        };
        self.remove(event, now_ms);
        if let Some(reload) = &mut self.reload {
            reload.finished.insert(event);
        }
        let inserted = self.ending.insert(event);
        assert!(inserted, "an event finishes once while loaded");
        Completion::Finished { fate, attempts }
    }

    /// The end record of a `Finished` event is durable (or could not be written: then
    /// the log has failed and a restart sends the event again). A reload under way may
    /// have read the log before that record: it still knows the event finished.
    pub fn ended(&mut self, event: EventId) {
        let removed = self.ending.remove(&event);
        assert!(removed, "only a finished event ends");
        if let Some(reload) = &mut self.reload {
            reload.finished.insert(event);
        }
    }

    /// When the next delivery that the limits would allow falls due, if any.
    pub fn next_due_ms(&self) -> Option<u64> {
        self.lanes
            .iter()
            .filter(|lane| self.may_start(lane))
            .filter_map(|lane| lane.ready.first().map(|&(due_ms, _, _)| due_ms))
            .min()
    }

    pub fn stats(&self) -> OutboxStats {
        OutboxStats {
            loaded: self.events.len(),
            in_flight: self.in_flight,
            merchants_with_unloaded: (0..self.lanes.len())
                .filter(|&merchant| self.unloaded_from(merchant as MerchantIndex).is_some())
                .count(),
            evicted_total: self.evicted_total,
            refused_total: self.refused_total,
        }
    }

    /// Whether the event whose record is at `position` may still be owed: it is loaded,
    /// or its merchant has events on disk from that position or before. One neither
    /// loaded nor there was loaded once and has finished since, whatever records later
    /// in the log say. Retention asks before carrying an event forward: a finished one
    /// carried would be sent again after a restart.
    pub fn may_be_owed(&self, event: EventId, merchant: MerchantIndex, position: u64) -> bool {
        let index = self.lane_index(merchant);
        self.lanes[index].parked
            || self.events.contains_key(&event)
            || self
                .unloaded_from(merchant)
                .is_some_and(|from| from <= position)
            || self.reload.is_some()
    }

    /// Retention copied `event`, owed, to a position at or after `copies_from`, and will
    /// delete the original. Unless it is loaded, the merchant's events wait on disk from
    /// there: a reload then reads the copy, where the original is gone.
    pub fn carried(&mut self, merchant: MerchantIndex, event: EventId, copies_from: u64) {
        let index = self.lane_index(merchant);
        if !self.lanes[index].parked && !self.events.contains_key(&event) {
            self.mark_unloaded(merchant, copies_from);
        }
    }

    /// Per merchant, the lowest position of its events waiting on disk (`None`: none).
    pub fn unloaded_positions(&self) -> Vec<Option<u64>> {
        (0..self.lanes.len() as MerchantIndex)
            .map(|merchant| self.unloaded_from(merchant))
            .collect()
    }

    /// Where a reload should start scanning the log, when one is worth it: events wait
    /// on disk, no reload is under way, and either a good part of the backlog is free or
    /// a merchant with events on disk would get in by fairness.
    pub fn reload_wanted(&self) -> Option<u64> {
        if self.reload.is_some() {
            return None;
        }
        let cursor = self.reload_cursor()?;
        let room = self.limits.backlog_events_max - self.events.len();
        let room_min = (self.limits.backlog_events_max / RELOAD_ROOM_DIVISOR).max(1);
        let starved = (0..self.lanes.len() as MerchantIndex).any(|merchant| {
            self.unloaded_from(merchant).is_some() && self.eviction_victim(merchant).is_some()
        });
        (self.unloaded_floor.is_some() || room >= room_min || starved).then_some(cursor)
    }

    /// Starts a reload of the log up to `end` (exclusive: the first position not yet
    /// durable). Returns the position to scan from.
    pub fn begin_reload(&mut self, end: u64) -> u64 {
        assert!(self.reload.is_none(), "one reload at a time");
        assert!(
            self.offered_position_max.is_none_or(|max| max < end),
            "a reload covers every event offered so far"
        );
        let unloaded_before: Vec<Option<u64>> = (0..self.lanes.len() as MerchantIndex)
            .map(|merchant| self.unloaded_from(merchant))
            .collect();
        let cursor = self.reload_cursor().unwrap_or(end).min(end);
        self.reload = Some(Reload {
            end,
            unloaded_after: vec![None; unloaded_before.len()],
            unloaded_before,
            finished: HashSet::new(),
        });
        cursor
    }

    /// An event the reload read from the log, in log order.
    pub fn offer_reloaded(&mut self, event: OutboxEvent<P>) -> Offer {
        let merchant = self.lane_index(event.merchant);
        self.note_offered(&event);
        if self.lanes[merchant].parked {
            return Offer::Parked;
        }
        if self.events.contains_key(&event.event) {
            return Offer::Duplicate;
        }
        let reload = self
            .reload
            .as_ref()
            .expect("offer_reloaded inside a reload");
        assert!(
            event.position < reload.end,
            "the reload reads up to its end"
        );
        if reload.finished.contains(&event.event) || self.ending.contains(&event.event) {
            return Offer::Finished;
        }
        // Below where the merchant's events went to disk, every event was loaded once:
        // one not loaded now has finished.
        match reload.unloaded_before[merchant] {
            Some(from) if from <= event.position => {}
            _ => return Offer::Finished,
        }
        if reload.unloaded_after[merchant].is_some_and(|after| after <= event.position) {
            return self.refuse(event.merchant, event.position);
        }
        self.admit(event, State::Staged { due_ms: 0 })
    }

    /// The reload read that `attempts` attempts of a staged `event` failed and the next
    /// is due at `due_ms`: its schedule goes on from there. Ignored for an event not
    /// staged by this reload (one loaded before keeps its own, newer, count).
    pub fn restore_attempts(&mut self, event: EventId, attempts: u32, due_ms: u64) {
        assert!(self.reload.is_some(), "restore_attempts inside a reload");
        if let Some(entry) = self.events.get_mut(&event) {
            if let State::Staged { .. } = entry.state {
                entry.attempts = attempts;
                entry.state = State::Staged { due_ms };
            }
        }
    }

    /// The reload left an owed event at `position` on disk without offering it (it
    /// reads only so many per merchant): that merchant's events wait on disk from there.
    pub fn leave_on_disk(&mut self, merchant: MerchantIndex, position: u64) {
        let index = self.lane_index(merchant);
        let reload = self.reload.as_ref().expect("leave_on_disk inside a reload");
        assert!(position < reload.end, "the reload reads up to its end");
        if !self.lanes[index].parked {
            self.refuse(merchant, position);
        }
    }

    /// The reload read a `WebhookDelivered` for `event`: it is no longer owed.
    pub fn settled(&mut self, event: EventId, now_ms: u64) {
        assert!(self.reload.is_some(), "settled inside a reload");
        let in_flight = self
            .events
            .get(&event)
            .is_some_and(|entry| entry.state == State::InFlight);
        if self.events.contains_key(&event) && !in_flight {
            self.remove(event, now_ms);
        }
    }

    /// Ends the reload: what it loaded may be attempted from `now_ms`.
    pub fn end_reload(&mut self, now_ms: u64) {
        let reload = self.reload.take().expect("end_reload after begin_reload");
        let staged: Vec<(EventId, u64)> = self
            .events
            .iter()
            .filter_map(|(&event, entry)| match entry.state {
                State::Staged { due_ms } => Some((event, due_ms)),
                _ => None,
            })
            .collect();
        for (event, due_ms) in staged {
            let entry = &self.events[&event];
            if self.chains[&entry.payment].front() == Some(&event) {
                self.make_ready(event, due_ms.max(now_ms));
            } else {
                self.events.get_mut(&event).unwrap().state = State::Blocked;
            }
        }
        for (merchant, lane) in self.lanes.iter_mut().enumerate() {
            // What was on disk before the reload and beyond its end is still there.
            let beyond_end = reload.unloaded_before[merchant].filter(|&from| from >= reload.end);
            lane.unloaded_from = min_position(reload.unloaded_after[merchant], beyond_end);
        }
        self.unloaded_floor = None;
    }

    fn note_offered(&mut self, event: &OutboxEvent<P>) {
        self.lane_index(event.merchant);
        self.offered_position_max = self.offered_position_max.max(Some(event.position));
    }

    fn lane_index(&self, merchant: MerchantIndex) -> usize {
        let index = merchant as usize;
        assert!(
            index < self.lanes.len(),
            "merchant {merchant} is in the config"
        );
        index
    }

    /// Where `merchant`'s events wait on disk for a reload; never for a parked one (its
    /// events wait for an endpoint, not for room).
    fn unloaded_from(&self, merchant: MerchantIndex) -> Option<u64> {
        if self.lanes[merchant as usize].parked {
            return None;
        }
        min_position(
            self.lanes[merchant as usize].unloaded_from,
            self.unloaded_floor,
        )
    }

    fn reload_cursor(&self) -> Option<u64> {
        (0..self.lanes.len() as MerchantIndex)
            .filter_map(|merchant| self.unloaded_from(merchant))
            .min()
            .or(self.unloaded_floor)
    }

    /// Leaves an event on disk: this merchant's later events must wait for it.
    fn refuse(&mut self, merchant: MerchantIndex, position: u64) -> Offer {
        self.mark_unloaded(merchant, position);
        self.refused_total += 1;
        Offer::Refused
    }

    fn mark_unloaded(&mut self, merchant: MerchantIndex, position: u64) {
        let lane = &mut self.lanes[merchant as usize];
        assert!(!lane.parked, "a parked merchant's events are never loaded");
        lane.unloaded_from = min_position(lane.unloaded_from, Some(position));
        if let Some(reload) = &mut self.reload {
            let after = &mut reload.unloaded_after[merchant as usize];
            *after = min_position(*after, Some(position));
        }
    }

    /// Loads the event if there is room, making room by fairness if it can.
    fn admit(&mut self, event: OutboxEvent<P>, state: State) -> Offer {
        if self.events.len() >= self.limits.backlog_events_max {
            match self.eviction_victim(event.merchant) {
                Some(victim) => self.evict(victim),
                None => return self.refuse(event.merchant, event.position),
            }
        }
        self.insert(event, state);
        Offer::Accepted
    }

    fn insert(&mut self, event: OutboxEvent<P>, state: State) {
        assert!(self.events.len() < self.limits.backlog_events_max);
        let OutboxEvent {
            event: id,
            payment,
            merchant,
            position,
            payload,
        } = event;
        let chain = self.chains.entry(payment).or_default();
        if let Some(last) = chain.back() {
            assert!(
                self.events[last].position < position,
                "a payment's events are loaded in log order"
            );
        }
        chain.push_back(id);
        let first_of_payment = chain.len() == 1;
        let lane = &mut self.lanes[merchant as usize];
        lane.loaded += 1;
        let previous = lane.positions.insert(position, id);
        assert!(previous.is_none(), "one event per position");
        let state = match state {
            State::Ready { .. } if !first_of_payment => State::Blocked,
            state => state,
        };
        if let State::Ready { due_ms } = state {
            lane.ready.insert((due_ms, position, id));
        }
        self.events.insert(
            id,
            Entry {
                payment,
                merchant,
                position,
                attempts: 0,
                state,
                payload,
            },
        );
    }

    fn make_ready(&mut self, event: EventId, due_ms: u64) {
        let entry = self.events.get_mut(&event).expect("a loaded event");
        entry.state = State::Ready { due_ms };
        let lane = &mut self.lanes[entry.merchant as usize];
        lane.ready.insert((due_ms, entry.position, event));
    }

    /// Takes a loaded event out of memory (finished, settled or evicted); an attempt in
    /// flight leaves only by its completion. The next event
    /// of its payment, if blocked behind it, becomes ready at `due_ms`.
    fn remove(&mut self, event: EventId, due_ms: u64) -> Entry<P> {
        let entry = self.events.remove(&event).expect("a loaded event");
        let lane = &mut self.lanes[entry.merchant as usize];
        lane.loaded -= 1;
        lane.positions.remove(&entry.position);
        if let State::Ready { due_ms } = entry.state {
            lane.ready.remove(&(due_ms, entry.position, event));
        }
        let chain = self
            .chains
            .get_mut(&entry.payment)
            .expect("a loaded event's chain");
        chain.retain(|&other| other != event);
        match chain.front().copied() {
            None => {
                self.chains.remove(&entry.payment);
            }
            Some(next) if self.events[&next].state == State::Blocked => {
                self.make_ready(next, due_ms);
            }
            Some(_) => {}
        }
        entry
    }

    /// The newest event of the heaviest merchant that holds at least two more events
    /// than `merchant`: not in flight, and last of its payment so order is kept.
    fn eviction_victim(&self, merchant: MerchantIndex) -> Option<EventId> {
        let loaded = self.lanes[merchant as usize].loaded;
        let mut heaviest: Vec<&Lane> = self
            .lanes
            .iter()
            .filter(|lane| lane.loaded > loaded + 1)
            .collect();
        heaviest.sort_by_key(|lane| std::cmp::Reverse(lane.loaded));
        heaviest
            .into_iter()
            .find_map(|lane| self.newest_evictable(lane))
    }

    fn newest_evictable(&self, lane: &Lane) -> Option<EventId> {
        lane.positions.values().rev().copied().find(|event| {
            let entry = &self.events[event];
            entry.state != State::InFlight && self.chains[&entry.payment].back() == Some(event)
        })
    }

    fn evict(&mut self, event: EventId) {
        let entry = self.remove(event, 0);
        assert_ne!(
            entry.state,
            State::InFlight,
            "an attempt in flight stays loaded"
        );
        self.mark_unloaded(entry.merchant, entry.position);
        self.evicted_total += 1;
    }

    fn may_start(&self, lane: &Lane) -> bool {
        lane.in_flight == 0
            || (lane.in_flight < self.limits.merchant_in_flight_max
                && self.shared_in_flight < self.limits.shared_in_flight_max)
    }

    /// The merchant whose due event goes next: fewest in flight, then earliest due.
    fn lane_to_serve(&self, now_ms: u64) -> Option<usize> {
        self.lanes
            .iter()
            .enumerate()
            .filter(|(_, lane)| self.may_start(lane))
            .filter_map(|(index, lane)| {
                let &(due_ms, _, _) = lane.ready.first()?;
                (due_ms <= now_ms).then_some((lane.in_flight, due_ms, index))
            })
            .min()
            .map(|(_, _, index)| index)
    }
}

/// The lower of two optional positions, `None` meaning "none".
fn min_position(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests;
