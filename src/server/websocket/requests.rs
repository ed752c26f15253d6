//! The requests of one WebSocket connection in flight, each a future polled in place by
//! the session's own task: no task, no allocation and no extra wake-up per message.
//!
//! Each request sits in a slot (a box allocated once and reused): a future never moves
//! once polled, since it is written into its slot's box and dropped there. Each slot has
//! its own waker, which queues the slot's index and wakes the session, so a wake-up
//! polls only the requests that were woken, however many are in flight. A request is
//! polled once as it starts: one that needs no waiting (a read, a create answered at
//! once without fsync) finishes there, and its answer joins the others of the same read.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};

/// Slots a connection keeps once it goes quiet (nothing in flight at a ping): a slot holds
/// a request's whole state (a few KiB), so a connection that once had many requests in
/// flight does not hold them all while idle.
pub const SLOTS_KEPT_IDLE_MAX: usize = 2;

/// What the slots' wakers share with the session.
#[derive(Default)]
struct Shared {
    /// Slots woken since the session last looked, and the session's waker.
    state: Mutex<WakeState>,
    /// Set with each index queued: the session takes the lock only when it is set.
    any_woken: AtomicBool,
}

#[derive(Default)]
struct WakeState {
    woken: Vec<usize>,
    session: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, WakeState> {
        // The lock is never held across anything that can panic: a poisoned state is
        // still a valid list of indices.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One slot's waker: queues its index (once until the session looks) and wakes the
/// session. Atomic because a `Waker` may be sent anywhere, though payd's are woken on
/// their own core.
struct SlotWake {
    index: usize,
    queued: AtomicBool,
    shared: Arc<Shared>,
}

impl Wake for SlotWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut state = self.shared.lock();
        state.woken.push(self.index);
        self.shared.any_woken.store(true, Ordering::Release);
        if let Some(session) = &state.session {
            session.wake_by_ref();
        }
    }
}

struct Slot<F> {
    future: Pin<Box<Option<F>>>,
    wake: Arc<SlotWake>,
    waker: Waker,
}

/// The requests in flight on one connection.
pub struct Requests<F: Future> {
    slots: Vec<Slot<F>>,
    /// Indices of the slots without a future.
    free: Vec<usize>,
    shared: Arc<Shared>,
    /// The session's waker as last given to `shared`, to compare without the lock.
    session: Option<Waker>,
    /// The woken indices being polled (reused).
    polling: Vec<usize>,
}

impl<F: Future> Default for Requests<F> {
    fn default() -> Self {
        Requests {
            slots: Vec::new(),
            free: Vec::new(),
            shared: Arc::default(),
            session: None,
            polling: Vec::new(),
        }
    }
}

impl<F: Future> Requests<F> {
    /// Requests started and not yet finished.
    pub fn running(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Starts the future `make` makes in a free slot and polls it once: its output if it
    /// finished then. (Made here, inlined, so that it can be written straight into its
    /// slot rather than copied there: a request's future is a few KiB.)
    #[inline(always)]
    pub fn start(&mut self, make: impl FnOnce() -> F) -> Option<F::Output> {
        let index = match self.free.pop() {
            Some(index) => index,
            None => self.add_slot(),
        };
        let slot = &mut self.slots[index];
        assert!(slot.future.is_none(), "a free slot holds no future");
        slot.future.set(Some(make()));
        self.poll_slot(index)
    }

    /// Polls every request woken since the last call and appends the outputs of those
    /// that finished to `finished`. `cx` is the session's: wakes reach it from now on.
    pub fn poll_woken(&mut self, cx: &Context<'_>, finished: &mut Vec<F::Output>) {
        let known = self.session.as_ref();
        if !known.is_some_and(|known| known.will_wake(cx.waker())) {
            let waker = cx.waker().clone();
            self.shared.lock().session = Some(waker.clone());
            self.session = Some(waker);
        }
        // Cleared before the queue is taken: an index queued after this is polled now or
        // sets the flag again for the next call.
        if !self.shared.any_woken.swap(false, Ordering::AcqRel) {
            return;
        }
        std::mem::swap(&mut self.shared.lock().woken, &mut self.polling);
        let mut polling = std::mem::take(&mut self.polling);
        for &index in &polling {
            if let Some(output) = self.poll_slot(index) {
                finished.push(output);
            }
        }
        polling.clear();
        self.polling = polling;
    }

    /// Frees the slots beyond `SLOTS_KEPT_IDLE_MAX` when nothing is in flight.
    pub fn shrink_if_idle(&mut self) {
        if self.running() > 0 || self.slots.len() <= SLOTS_KEPT_IDLE_MAX {
            return;
        }
        self.slots.truncate(SLOTS_KEPT_IDLE_MAX);
        self.free.clear();
        self.free.extend(0..self.slots.len());
    }

    /// Polls slot `index` if it holds a future (a stale wake may name a free one).
    fn poll_slot(&mut self, index: usize) -> Option<F::Output> {
        let slot = self.slots.get_mut(index)?;
        // Cleared before polling, so a wake during the poll queues the slot again.
        slot.wake.queued.store(false, Ordering::Release);
        let future = slot.future.as_mut().as_pin_mut()?;
        let mut cx = Context::from_waker(&slot.waker);
        let Poll::Ready(output) = future.poll(&mut cx) else {
            return None;
        };
        slot.future.set(None);
        self.free.push(index);
        Some(output)
    }

    fn add_slot(&mut self) -> usize {
        let index = self.slots.len();
        let wake = Arc::new(SlotWake {
            index,
            queued: AtomicBool::new(false),
            shared: Arc::clone(&self.shared),
        });
        self.slots.push(Slot {
            future: Box::pin(None),
            waker: Waker::from(Arc::clone(&wake)),
            wake,
        });
        index
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A future that finishes with `value` once `gate` is open, keeping the last waker.
    struct Gated {
        gate: Rc<Cell<bool>>,
        waker: LastWaker,
        value: u32,
    }

    impl Future for Gated {
        type Output = u32;
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u32> {
            if self.gate.get() {
                return Poll::Ready(self.value);
            }
            self.waker.set(Some(cx.waker().clone()));
            Poll::Pending
        }
    }

    struct Counting(std::sync::atomic::AtomicUsize);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The waker a `Gated` future last saw.
    type LastWaker = Rc<Cell<Option<Waker>>>;

    fn gated(value: u32) -> (Gated, Rc<Cell<bool>>, LastWaker) {
        let gate = Rc::new(Cell::new(false));
        let waker = Rc::new(Cell::new(None));
        let future = Gated {
            gate: Rc::clone(&gate),
            waker: Rc::clone(&waker),
            value,
        };
        (future, gate, waker)
    }

    #[test]
    fn only_woken_requests_are_polled_and_slots_are_reused() {
        let session = Arc::new(Counting(Default::default()));
        let session_waker = Waker::from(Arc::clone(&session));
        let cx = Context::from_waker(&session_waker);
        let mut requests = Requests::default();
        let (ready, gate, _) = gated(1);
        gate.set(true);
        assert_eq!(
            requests.start(|| ready),
            Some(1),
            "finished in its first poll"
        );
        let (first, first_gate, first_waker) = gated(2);
        let (second, _, _) = gated(3);
        assert_eq!(requests.start(|| first), None);
        assert_eq!(requests.start(|| second), None);
        assert_eq!(requests.running(), 2);
        assert_eq!(requests.slots.len(), 2, "the first slot was reused");
        let mut finished = Vec::new();
        requests.poll_woken(&cx, &mut finished);
        assert!(finished.is_empty());
        first_gate.set(true);
        let waker = first_waker.take().unwrap();
        waker.wake_by_ref();
        waker.wake_by_ref();
        assert_eq!(
            session.0.load(Ordering::Relaxed),
            1,
            "queued once until polled"
        );
        requests.poll_woken(&cx, &mut finished);
        assert_eq!(finished, vec![2]);
        assert_eq!(requests.running(), 1);
        // A stale wake of a free slot polls nothing.
        waker.wake();
        requests.poll_woken(&cx, &mut finished);
        assert_eq!(finished, vec![2]);
    }

    #[test]
    fn an_idle_connection_keeps_few_slots() {
        let mut requests = Requests::default();
        let mut gates = Vec::new();
        for value in 0..5 {
            let (future, gate, waker) = gated(value);
            assert_eq!(requests.start(|| future), None);
            gates.push((gate, waker));
        }
        requests.shrink_if_idle();
        assert_eq!(requests.slots.len(), 5, "not while requests run");
        let session_waker = Waker::from(Arc::new(Counting(Default::default())));
        let cx = Context::from_waker(&session_waker);
        let mut finished = Vec::new();
        for (gate, waker) in &gates {
            gate.set(true);
            waker.take().unwrap().wake();
        }
        requests.poll_woken(&cx, &mut finished);
        finished.sort();
        assert_eq!(finished, vec![0, 1, 2, 3, 4]);
        requests.shrink_if_idle();
        assert_eq!(requests.slots.len(), SLOTS_KEPT_IDLE_MAX);
        assert_eq!(requests.running(), 0);
    }
}
