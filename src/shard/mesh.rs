//! The cross-core mesh: the only way one core reaches another.
//!
//! Every core joins one glommio full channel mesh (lock-free single-producer rings between
//! each pair of cores) at start. Peer ids follow executor creation order, which is the
//! order of `server.cores`, so peer `i` is core index `i`. A core's receive loops never
//! await anything but the next message: work a message asks for runs in its own task,
//! so a full ring can never deadlock two cores waiting on each other (glommio #555).
//!
//! Besides shard commands, cores ask each other for metrics (`gather_metrics`) and for
//! a merchant's dead-lettered webhook events (`failed_events`), both gathered from every
//! core and merged in a fixed order.

use super::runtime::{Command, Reply, Shard};
use super::webhooks::FailedEvent;
use crate::metrics::{CoreMetrics, WalTotals, RECENT_SLICE_MS};
use crate::payment::{EventId, MerchantIndex};
use crate::webhooks::dead_letters::DeadLetterKey;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Senders};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

/// Messages in flight between one pair of cores before senders wait.
pub const MESH_CHANNEL_CAPACITY: usize = 1024;
/// A scrape gives up on a core that has not answered within this time.
pub const SCRAPE_TIMEOUT_MS: u64 = 1000;
/// Scrapes one core gathers at once; `/metrics` is unauthenticated and each scrape holds
/// a copy of every core's histograms (about 2 MiB a core), so more are answered 503.
pub const SCRAPES_IN_FLIGHT_MAX: usize = 4;
/// A shard command gives up on its owner after this long. Owners answer creates within
/// `acquirer.response_timeout_ms` plus their durable writes, so only a stalled disk or
/// core gets here.
pub const SHARD_REPLY_TIMEOUT_MS: u64 = 30_000;

pub type Mesh = MeshBuilder<Message, Full>;

pub fn new_mesh(cores: usize) -> Mesh {
    MeshBuilder::full(cores, MESH_CHANNEL_CAPACITY)
}

/// What cores say to each other.
pub enum Message {
    MetricsRequest {
        token: u64,
    },
    MetricsReply {
        token: u64,
        metrics: Box<CoreMetrics>,
    },
    ShardRequest {
        token: u64,
        shard: u16,
        command: Command,
    },
    ShardReply {
        token: u64,
        reply: Reply,
    },
    EventsRequest {
        token: u64,
        query: EventsQuery,
    },
    EventsReply {
        token: u64,
        answer: EventsAnswer,
    },
    /// `/readyz`: which of your shards cannot persist?
    PersistRequest {
        token: u64,
    },
    PersistReply {
        token: u64,
        unable: Vec<u16>,
    },
}

/// A question about dead-lettered webhook events, answered by a core for its shards.
#[derive(Clone, Copy, Debug)]
pub enum EventsQuery {
    /// Where `merchant`'s dead letter `event` sorts (asked of the core that owns it).
    KeyOf {
        merchant: MerchantIndex,
        event: EventId,
    },
    /// Up to `limit` of `merchant`'s dead letters after `after`, in key order.
    Page {
        merchant: MerchantIndex,
        after: Option<DeadLetterKey>,
        limit: usize,
    },
}

pub enum EventsAnswer {
    Key(Option<DeadLetterKey>),
    Page(Vec<FailedEvent>),
}

/// Why `failed_events` could not list a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventsError {
    /// `starting_after` names no dead letter of this merchant.
    UnknownCursor,
    /// A core did not answer in time (or is gone): a page without it would skip events.
    NotReady,
}

/// A page of dead letters from every core: the events, and whether more follow.
pub struct FailedEventsPage {
    pub events: Vec<FailedEvent>,
    pub has_more: bool,
}

/// One core's end of the mesh: senders to every peer, the shards this core owns, and
/// the replies it awaits, by token. A token's high 16 bits name the asking core.
pub struct Peers {
    index: usize,
    count: usize,
    senders: Option<Senders<Message>>,
    metrics: Rc<RefCell<CoreMetrics>>,
    /// Indexed by shard id; `Some` for the shards this core owns.
    local_shards: RefCell<Vec<Option<Rc<Shard>>>>,
    next_token: Cell<u64>,
    awaiting: RefCell<HashMap<u64, Awaited>>,
    scrapes_in_flight: Cell<usize>,
}

/// One unit of a count, given back when dropped (even if its future is).
struct Counted<'c>(&'c Cell<usize>);

impl<'c> Counted<'c> {
    fn enter(count: &'c Cell<usize>) -> Counted<'c> {
        count.set(count.get() + 1);
        Counted(count)
    }
}

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Why `gather_metrics` gathered nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScrapesBusy;

enum Awaited {
    Metrics(Rc<Scrape>),
    Shard(Rc<ReplySlot>),
    Events(Rc<EventsGather>),
    Persist(Rc<PersistGather>),
}

/// One readiness question in progress over the other cores.
struct PersistGather {
    unable: RefCell<Vec<u16>>,
    arrived: Semaphore,
}

/// Whether every shard can persist, as `/readyz` asks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistState {
    /// Shards whose write-ahead log failed (disk full, a failed fsync), ascending.
    pub unable: Vec<u16>,
    /// Cores that did not answer within `SCRAPE_TIMEOUT_MS`: their shards are unknown.
    pub cores_silent: usize,
}

/// One events query in progress over several cores.
struct EventsGather {
    answers: RefCell<Vec<EventsAnswer>>,
    arrived: Semaphore,
}

/// One scrape in progress: replies land here, and each one signals the semaphore.
struct Scrape {
    replies: RefCell<Vec<CoreMetrics>>,
    arrived: Semaphore,
}

/// Where one shard reply lands.
struct ReplySlot {
    reply: RefCell<Option<Reply>>,
    arrived: Semaphore,
}

impl Peers {
    /// Joins the mesh (waits for every core) and starts this core's receive loops.
    /// With one core there is no mesh at all.
    pub async fn join(
        mesh: Option<Mesh>,
        index: usize,
        metrics: Rc<RefCell<CoreMetrics>>,
    ) -> Rc<Peers> {
        let (senders, receivers) = match mesh {
            Some(mesh) => {
                let (senders, receivers) = mesh.join().await.expect("joining the core mesh");
                assert_eq!(senders.peer_id(), index, "mesh peer ids follow core order");
                (Some(senders), Some(receivers))
            }
            None => (None, None),
        };
        let count = senders.as_ref().map_or(1, Senders::nr_consumers);
        let peers = Rc::new(Peers {
            index,
            count,
            senders,
            metrics,
            local_shards: RefCell::new(Vec::new()),
            next_token: Cell::new(0),
            awaiting: RefCell::new(HashMap::new()),
            scrapes_in_flight: Cell::new(0),
        });
        if let Some(mut receivers) = receivers {
            for (_, receiver) in receivers.streams() {
                let peers = Rc::clone(&peers);
                glommio::spawn_local(async move {
                    while let Some(message) = receiver.recv().await {
                        Rc::clone(&peers).dispatch(message);
                    }
                })
                .detach();
            }
        }
        peers
    }

    pub fn index(&self) -> usize {
        self.index
    }

    /// Number of cores.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Hands this core its shards, indexed by shard id, before it serves requests.
    pub fn set_local_shards(&self, shards: Vec<Option<Rc<Shard>>>) {
        *self.local_shards.borrow_mut() = shards;
    }

    pub fn local_shards(&self) -> Vec<Rc<Shard>> {
        self.local_shards
            .borrow()
            .iter()
            .flatten()
            .cloned()
            .collect()
    }

    /// The shard if this core owns it (and it is serving).
    pub fn local_shard(&self, shard: u16) -> Option<Rc<Shard>> {
        self.local_shards
            .borrow()
            .get(usize::from(shard))
            .cloned()
            .flatten()
    }

    /// Runs a command on the shard that owns it: a direct call when this core owns the
    /// shard, a message over the mesh otherwise. A full ring answers `Overloaded` at once.
    pub async fn submit(&self, shard: u16, command: Command) -> Reply {
        let owner = usize::from(shard) % self.count;
        if owner == self.index {
            return match self.local_shard(shard) {
                Some(local) => local.execute(command).await,
                None => Reply::NotReady,
            };
        }
        let Some(senders) = &self.senders else {
            return Reply::NotReady;
        };
        let token = self.token();
        let slot = Rc::new(ReplySlot {
            reply: RefCell::new(None),
            arrived: Semaphore::new(0),
        });
        self.awaiting
            .borrow_mut()
            .insert(token, Awaited::Shard(Rc::clone(&slot)));
        if senders
            .try_send_to(
                owner,
                Message::ShardRequest {
                    token,
                    shard,
                    command,
                },
            )
            .is_err()
        {
            self.awaiting.borrow_mut().remove(&token);
            return Reply::Overloaded;
        }
        let deadline = Duration::from_millis(SHARD_REPLY_TIMEOUT_MS);
        let arrived = glommio::timer::timeout(deadline, slot.arrived.acquire(1)).await;
        self.awaiting.borrow_mut().remove(&token);
        let reply = slot.reply.borrow_mut().take();
        match (arrived, reply) {
            (Ok(()), Some(reply)) => reply,
            // The owner did not answer in time. The command may still take effect, which
            // is safe: a create retried with the same order_id is answered idempotently.
            _ => Reply::Overloaded,
        }
    }

    fn dispatch(self: Rc<Self>, message: Message) {
        match message {
            Message::MetricsRequest { token } => {
                let copy = Box::new(self.metrics_copy());
                glommio::spawn_local(async move {
                    let reply = Message::MetricsReply {
                        token,
                        metrics: copy,
                    };
                    self.send_within(origin(token), reply, SCRAPE_TIMEOUT_MS)
                        .await;
                })
                .detach();
            }
            Message::ShardRequest {
                token,
                shard,
                command,
            } => {
                glommio::spawn_local(async move {
                    let reply = match self.local_shard(shard) {
                        Some(local) => local.execute(command).await,
                        None => Reply::NotReady,
                    };
                    let reply = Message::ShardReply { token, reply };
                    self.send_within(origin(token), reply, SHARD_REPLY_TIMEOUT_MS)
                        .await;
                })
                .detach();
            }
            Message::EventsRequest { token, query } => {
                let answer = self.answer_events(query);
                glommio::spawn_local(async move {
                    let reply = Message::EventsReply { token, answer };
                    self.send_within(origin(token), reply, SCRAPE_TIMEOUT_MS)
                        .await;
                })
                .detach();
            }
            Message::PersistRequest { token } => {
                let unable = self.local_unable_to_persist();
                glommio::spawn_local(async move {
                    let reply = Message::PersistReply { token, unable };
                    self.send_within(origin(token), reply, SCRAPE_TIMEOUT_MS)
                        .await;
                })
                .detach();
            }
            Message::PersistReply { token, unable } => {
                if let Some(Awaited::Persist(gather)) = self.awaiting.borrow_mut().remove(&token) {
                    gather.unable.borrow_mut().extend(unable);
                    gather.arrived.signal(1);
                }
            }
            Message::EventsReply { token, answer } => {
                if let Some(Awaited::Events(gather)) = self.awaiting.borrow_mut().remove(&token) {
                    gather.answers.borrow_mut().push(answer);
                    gather.arrived.signal(1);
                }
            }
            Message::MetricsReply { token, metrics } => {
                if let Some(Awaited::Metrics(scrape)) = self.awaiting.borrow_mut().remove(&token) {
                    scrape.replies.borrow_mut().push(*metrics);
                    scrape.arrived.signal(1);
                }
            }
            Message::ShardReply { token, reply } => {
                if let Some(Awaited::Shard(slot)) = self.awaiting.borrow_mut().remove(&token) {
                    *slot.reply.borrow_mut() = Some(reply);
                    slot.arrived.signal(1);
                }
            }
        }
    }

    /// Sends a reply, waiting for room in the ring at most `timeout_ms`: the asker gives
    /// up after its own timeout anyway, and a reply task must not wait for ever on a
    /// peer that stopped reading.
    async fn send_within(&self, to: usize, message: Message, timeout_ms: u64) {
        if let Some(senders) = &self.senders {
            let sent = async {
                // An error means the peer is gone (shutdown): nothing to do.
                let _ = senders.send_to(to, message).await;
                Ok(())
            };
            let _ = glommio::timer::timeout(Duration::from_millis(timeout_ms), sent).await;
        }
    }

    /// This core's metrics, with its shards' logs and webhook gauges folded in.
    fn metrics_copy(&self) -> CoreMetrics {
        let shards = self.local_shards();
        let can_persist = shards
            .iter()
            .map(|shard| (shard.id(), shard.log().failure().is_none()))
            .collect();
        let mut copy = self
            .metrics
            .borrow()
            .scrape_copy(&self.wal_totals(), can_persist);
        for shard in &shards {
            copy.webhooks.gauges.add(&shard.webhooks().gauges());
        }
        copy
    }

    /// This core's shards whose log failed.
    fn local_unable_to_persist(&self) -> Vec<u16> {
        self.local_shards()
            .iter()
            .filter(|shard| shard.log().failure().is_some())
            .map(|shard| shard.id())
            .collect()
    }

    /// Asks every core which of its shards cannot persist; a core that does not answer
    /// within `SCRAPE_TIMEOUT_MS` is counted as silent.
    pub async fn persist_state(&self) -> PersistState {
        let gather = Rc::new(PersistGather {
            unable: RefCell::new(self.local_unable_to_persist()),
            arrived: Semaphore::new(0),
        });
        let mut tokens = Vec::with_capacity(self.count);
        if let Some(senders) = &self.senders {
            for peer in (0..self.count).filter(|&peer| peer != self.index) {
                let token = self.token();
                self.awaiting
                    .borrow_mut()
                    .insert(token, Awaited::Persist(Rc::clone(&gather)));
                // A full ring is a core that cannot answer now: it counts as silent.
                if senders
                    .try_send_to(peer, Message::PersistRequest { token })
                    .is_ok()
                {
                    tokens.push(token);
                } else {
                    self.awaiting.borrow_mut().remove(&token);
                }
            }
        }
        let deadline = Duration::from_millis(SCRAPE_TIMEOUT_MS);
        let asked = tokens.len() as u64;
        let all_arrived = glommio::timer::timeout(deadline, gather.arrived.acquire(asked)).await;
        self.forget(&tokens);
        // After a timeout the permits nobody took are the replies that did arrive.
        let answered = match all_arrived {
            Ok(()) => asked,
            Err(_) => asked.min(gather.arrived.available()),
        };
        let mut unable = std::mem::take(&mut *gather.unable.borrow_mut());
        unable.sort_unstable();
        PersistState {
            unable,
            cores_silent: self.count - 1 - answered as usize,
        }
    }

    /// The write-ahead log histograms of this core's shards, added up.
    fn wal_totals(&self) -> WalTotals {
        let mut totals = WalTotals::default();
        for shard in self.local_shards() {
            let stats = shard.log().stats();
            totals.add(&stats.fsync_latency_us, &stats.records_per_batch);
        }
        totals
    }

    /// Starts a new slice of this core's recent metric windows every `RECENT_SLICE_MS`,
    /// for as long as the core runs.
    pub async fn rotate_metrics(self: Rc<Self>) {
        loop {
            glommio::timer::sleep(Duration::from_millis(RECENT_SLICE_MS)).await;
            let totals = self.wal_totals();
            self.metrics.borrow_mut().rotate(totals);
        }
    }

    fn token(&self) -> u64 {
        let sequence = self.next_token.get();
        self.next_token
            .set(sequence.wrapping_add(1) & TOKEN_SEQUENCE_MASK);
        ((self.index as u64) << TOKEN_CORE_SHIFT) | sequence
    }

    /// Every core's metrics: this core's own, and a copy from each peer that answers
    /// within `SCRAPE_TIMEOUT_MS` (a peer whose ring is full is not asked). At most
    /// `SCRAPES_IN_FLIGHT_MAX` at once on one core.
    pub async fn gather_metrics(&self) -> Result<Vec<CoreMetrics>, ScrapesBusy> {
        if self.scrapes_in_flight.get() >= SCRAPES_IN_FLIGHT_MAX {
            return Err(ScrapesBusy);
        }
        let _counted = Counted::enter(&self.scrapes_in_flight);
        Ok(self.gather_metrics_of_every_core().await)
    }

    async fn gather_metrics_of_every_core(&self) -> Vec<CoreMetrics> {
        let scrape = Rc::new(Scrape {
            replies: RefCell::new(Vec::new()),
            arrived: Semaphore::new(0),
        });
        let mut tokens = Vec::with_capacity(self.count);
        if let Some(senders) = &self.senders {
            for peer in (0..self.count).filter(|&peer| peer != self.index) {
                let token = self.token();
                let request = Message::MetricsRequest { token };
                if senders.try_send_to(peer, request).is_ok() {
                    self.awaiting
                        .borrow_mut()
                        .insert(token, Awaited::Metrics(Rc::clone(&scrape)));
                    tokens.push(token);
                }
            }
        }
        let deadline = Duration::from_millis(SCRAPE_TIMEOUT_MS);
        let expected = tokens.len() as u64;
        // A core that does not answer in time is left out rather than stalling the scrape.
        let _ = glommio::timer::timeout(deadline, scrape.arrived.acquire(expected)).await;
        let mut awaiting = self.awaiting.borrow_mut();
        for token in tokens {
            awaiting.remove(&token);
        }
        drop(awaiting);
        let mut all = std::mem::take(&mut *scrape.replies.borrow_mut());
        all.push(self.metrics_copy());
        all.sort_by_key(|metrics| metrics.cpu);
        all
    }
}

impl Peers {
    /// A page of `merchant`'s dead-lettered webhook events from every shard, ordered by
    /// the time of the dead letter, then event id; after `starting_after` if given.
    pub async fn failed_events(
        &self,
        merchant: MerchantIndex,
        starting_after: Option<EventId>,
        limit: usize,
    ) -> Result<FailedEventsPage, EventsError> {
        let after = match starting_after {
            None => None,
            Some(event) => {
                let owner = usize::from(event.shard) % self.count;
                let query = EventsQuery::KeyOf { merchant, event };
                match self.ask_events(&[owner], query).await?.pop() {
                    Some(EventsAnswer::Key(Some(key))) => Some(key),
                    _ => return Err(EventsError::UnknownCursor),
                }
            }
        };
        // One more than asked tells whether more follow.
        let query = EventsQuery::Page {
            merchant,
            after,
            limit: limit + 1,
        };
        let cores: Vec<usize> = (0..self.count).collect();
        let mut events = Vec::new();
        for answer in self.ask_events(&cores, query).await? {
            if let EventsAnswer::Page(page) = answer {
                events.extend(page);
            }
        }
        let has_more = merge_page(&mut events, limit);
        Ok(FailedEventsPage { events, has_more })
    }

    /// Asks `cores` one events query each (this core answers directly) and waits for
    /// every answer, at most `SCRAPE_TIMEOUT_MS`.
    async fn ask_events(
        &self,
        cores: &[usize],
        query: EventsQuery,
    ) -> Result<Vec<EventsAnswer>, EventsError> {
        let gather = Rc::new(EventsGather {
            answers: RefCell::new(Vec::with_capacity(cores.len())),
            arrived: Semaphore::new(0),
        });
        let mut tokens = Vec::with_capacity(cores.len());
        for &core in cores.iter().filter(|&&core| core != self.index) {
            let Some(senders) = &self.senders else {
                return Err(EventsError::NotReady);
            };
            let token = self.token();
            self.awaiting
                .borrow_mut()
                .insert(token, Awaited::Events(Rc::clone(&gather)));
            tokens.push(token);
            if senders
                .try_send_to(core, Message::EventsRequest { token, query })
                .is_err()
            {
                self.forget(&tokens);
                return Err(EventsError::NotReady);
            }
        }
        let deadline = Duration::from_millis(SCRAPE_TIMEOUT_MS);
        let expected = tokens.len() as u64;
        let arrived = glommio::timer::timeout(deadline, gather.arrived.acquire(expected)).await;
        self.forget(&tokens);
        if arrived.is_err() {
            return Err(EventsError::NotReady);
        }
        let mut answers = std::mem::take(&mut *gather.answers.borrow_mut());
        if cores.contains(&self.index) {
            answers.push(self.answer_events(query));
        }
        Ok(answers)
    }

    fn forget(&self, tokens: &[u64]) {
        let mut awaiting = self.awaiting.borrow_mut();
        for token in tokens {
            awaiting.remove(token);
        }
    }

    /// This core's answer, from its own shards.
    fn answer_events(&self, query: EventsQuery) -> EventsAnswer {
        match query {
            EventsQuery::KeyOf { merchant, event } => {
                let key = self
                    .local_shard(event.shard)
                    .and_then(|shard| shard.webhooks().dead_letter_key(merchant, event));
                EventsAnswer::Key(key)
            }
            EventsQuery::Page {
                merchant,
                after,
                limit,
            } => {
                let mut events = Vec::new();
                for shard in self.local_shards() {
                    events.extend(shard.webhooks().dead_letter_page(merchant, after, limit));
                }
                merge_page(&mut events, limit);
                EventsAnswer::Page(events)
            }
        }
    }
}

/// Sorts pages gathered from several shards into one (dead-letter time, then event id)
/// and keeps the first `limit`. True when some were cut.
fn merge_page(events: &mut Vec<FailedEvent>, limit: usize) -> bool {
    events.sort_unstable_by_key(|event| (event.failed_at_ms, event.event));
    let has_more = events.len() > limit;
    events.truncate(limit);
    has_more
}

const TOKEN_CORE_SHIFT: u32 = 48;
const TOKEN_SEQUENCE_MASK: u64 = (1 << TOKEN_CORE_SHIFT) - 1;

/// The core that asked, from a token.
fn origin(token: u64) -> usize {
    usize::try_from(token >> TOKEN_CORE_SHIFT).expect("core index fits usize")
}
