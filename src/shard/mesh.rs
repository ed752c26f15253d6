//! The cross-core mesh: the only way one core reaches another.
//!
//! Every core joins one glommio full channel mesh (lock-free single-producer rings between
//! each pair of cores) at start. Peer ids follow executor creation order, which is the
//! order of `server.cores`, so peer `i` is core index `i`. A core's receive loops never
//! await anything but the next message: work a message asks for runs in its own task,
//! so a full ring can never deadlock two cores waiting on each other (glommio #555).

use crate::metrics::CoreMetrics;
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
}

/// One core's end of the mesh: senders to every peer, and replies awaited by token.
pub struct Peers {
    index: usize,
    count: usize,
    senders: Option<Senders<Message>>,
    metrics: Rc<RefCell<CoreMetrics>>,
    next_token: Cell<u64>,
    awaiting_metrics: RefCell<HashMap<u64, Rc<Scrape>>>,
}

/// One scrape in progress: replies land here, and each one signals the semaphore.
struct Scrape {
    replies: RefCell<Vec<CoreMetrics>>,
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
            next_token: Cell::new(0),
            awaiting_metrics: RefCell::new(HashMap::new()),
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

    pub fn count(&self) -> usize {
        self.count
    }

    fn dispatch(self: Rc<Self>, message: Message) {
        match message {
            Message::MetricsRequest { token } => {
                let copy = Box::new(self.metrics.borrow().clone());
                // The asking core is known by the token's high bits.
                let to = usize::try_from(token >> 48).expect("core index fits usize");
                glommio::spawn_local(async move {
                    let reply = Message::MetricsReply {
                        token,
                        metrics: copy,
                    };
                    self.send(to, reply).await;
                })
                .detach();
            }
            Message::MetricsReply { token, metrics } => {
                let scrape = self.awaiting_metrics.borrow_mut().remove(&token);
                if let Some(scrape) = scrape {
                    scrape.replies.borrow_mut().push(*metrics);
                    scrape.arrived.signal(1);
                }
            }
        }
    }

    async fn send(&self, to: usize, message: Message) {
        if let Some(senders) = &self.senders {
            // An error means the peer is gone (shutdown): nothing to do.
            let _ = senders.send_to(to, message).await;
        }
    }

    fn token(&self) -> u64 {
        let sequence = self.next_token.get();
        self.next_token
            .set(sequence.wrapping_add(1) & ((1 << 48) - 1));
        ((self.index as u64) << 48) | sequence
    }

    /// Every core's metrics: this core's own, and a copy from each peer that answers
    /// within `SCRAPE_TIMEOUT_MS`.
    pub async fn gather_metrics(&self) -> Vec<CoreMetrics> {
        let scrape = Rc::new(Scrape {
            replies: RefCell::new(Vec::new()),
            arrived: Semaphore::new(0),
        });
        let mut tokens = Vec::with_capacity(self.count);
        for peer in (0..self.count).filter(|&peer| peer != self.index) {
            let token = self.token();
            self.awaiting_metrics
                .borrow_mut()
                .insert(token, Rc::clone(&scrape));
            tokens.push(token);
            self.send(peer, Message::MetricsRequest { token }).await;
        }
        let deadline = Duration::from_millis(SCRAPE_TIMEOUT_MS);
        let expected = tokens.len() as u64;
        // A core that does not answer in time is left out rather than stalling the scrape.
        let _ = glommio::timer::timeout(deadline, scrape.arrived.acquire(expected)).await;
        let mut awaiting = self.awaiting_metrics.borrow_mut();
        for token in tokens {
            awaiting.remove(&token);
        }
        drop(awaiting);
        let mut all = std::mem::take(&mut *scrape.replies.borrow_mut());
        all.push(self.metrics.borrow().clone());
        all.sort_by_key(|metrics| metrics.cpu);
        all
    }
}
