//! The worker's parking lot: idle keep-alive connections wait here without a task of their own.
//!
//! A connection that has been idle for [`PARK_AFTER`](crate::h1::PARK_AFTER) hands its socket to
//! the lot and its task ends. The lot registers a small waker with the socket; when the client
//! sends again, that waker puts the connection on the lot's ready list and the lot starts a new
//! connection task for it. Meanwhile a parked connection costs its socket, its slot here and that
//! waker — no task, no future, no timer of its own. One lot task per worker scans for keep-alive
//! expiry every [`SCAN_EVERY`] and closes everything when the gateway drains.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Wake, Waker};
use std::time::Duration;

use seawall_core::clock::now_ms;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::conn::ClientConn;
use crate::metrics::Registry;
use crate::signal::LocalSignal;

/// How often the lot looks for connections whose keep-alive time is over.
pub const SCAN_EVERY: Duration = Duration::from_millis(250);

/// An idle client connection, as the lot keeps it.
pub struct Parked {
    /// Plain or TLS: the lot watches the socket underneath either way.
    pub stream: ClientConn,
    pub peer: SocketAddr,
    /// The connection's place under `server.max_connections`.
    pub permit: OwnedSemaphorePermit,
    /// It came to the egress listener.
    pub egress: bool,
}

struct Slot {
    conn: Parked,
    /// When the keep-alive time is over, in `seawall_core::clock` milliseconds.
    expires_ms: u64,
    generation: u32,
}

/// A slot and the generation of the connection it held when its socket signalled.
type SlotRef = (usize, u32);

/// Slots whose socket signalled; filled by wakers, drained by the lot task (whose waker it keeps).
#[derive(Default)]
struct ReadyList {
    inner: Mutex<(Vec<SlotRef>, Option<Waker>)>,
}

impl ReadyList {
    fn push(&self, slot: usize, generation: u32) {
        let waker = {
            let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
            inner.0.push((slot, generation));
            inner.1.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    fn take(&self, into: &mut Vec<(usize, u32)>, waker: &Waker) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        into.append(&mut inner.0);
        match &mut inner.1 {
            Some(w) => w.clone_from(waker),
            none => *none = Some(waker.clone()),
        }
    }
}

/// The waker a parked socket holds: it names the slot.
struct SlotWaker {
    slot: usize,
    generation: u32,
    ready: Arc<ReadyList>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.ready.push(self.slot, self.generation);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.push(self.slot, self.generation);
    }
}

/// One worker's parked connections.
pub struct ParkingLot {
    registry: Arc<Registry>,
    slots: RefCell<Vec<Option<Slot>>>,
    free: RefCell<Vec<usize>>,
    generation: std::cell::Cell<u32>,
    ready: Arc<ReadyList>,
}

/// What a parked socket's state is when looked at.
enum Peeked {
    /// The client sent bytes: serve them.
    Data,
    /// Nothing yet; the given waker is registered.
    Idle,
    /// The client closed or the socket failed.
    Gone,
}

fn peek(stream: &TcpStream, waker: &Waker) -> Peeked {
    let mut cx = std::task::Context::from_waker(waker);
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    match stream.poll_peek(&mut cx, &mut buf) {
        Poll::Ready(Ok(n)) if n > 0 => Peeked::Data,
        Poll::Ready(_) => Peeked::Gone,
        Poll::Pending => Peeked::Idle,
    }
}

impl ParkingLot {
    /// An empty lot; `registry` counts what it holds.
    pub fn new(registry: Arc<Registry>) -> Self {
        ParkingLot {
            registry,
            slots: RefCell::default(),
            free: RefCell::default(),
            generation: std::cell::Cell::default(),
            ready: Arc::default(),
        }
    }

    /// Parks `conn` until the client sends, `keepalive` passes or the gateway drains. Returns the
    /// connection when it must be served (or closed) at once instead.
    pub fn park(&self, conn: Parked, keepalive: Duration) -> Option<Parked> {
        let generation = self.generation.get().wrapping_add(1);
        self.generation.set(generation);
        let slot = self.free.borrow_mut().pop().unwrap_or_else(|| {
            let mut slots = self.slots.borrow_mut();
            slots.push(None);
            slots.len() - 1
        });
        let waker =
            Waker::from(Arc::new(SlotWaker { slot, generation, ready: self.ready.clone() }));
        match peek(conn.stream.tcp(), &waker) {
            Peeked::Idle => {
                let expires_ms =
                    now_ms() + u64::try_from(keepalive.as_millis()).unwrap_or(u64::MAX);
                self.slots.borrow_mut()[slot] = Some(Slot { conn, expires_ms, generation });
                self.registry.connections_parked.add(1);
                None
            }
            Peeked::Data | Peeked::Gone => {
                self.free.borrow_mut().push(slot);
                Some(conn)
            }
        }
    }

    fn take(&self, slot: usize) -> Option<Slot> {
        let taken = self.slots.borrow_mut().get_mut(slot)?.take();
        if taken.is_some() {
            self.free.borrow_mut().push(slot);
            self.registry.connections_parked.add(-1);
        }
        taken
    }

    /// Every parked connection, removed from the lot.
    fn take_all(&self) -> Vec<Parked> {
        let mut slots = self.slots.borrow_mut();
        let all: Vec<Parked> = slots.iter_mut().filter_map(Option::take).map(|s| s.conn).collect();
        slots.clear();
        self.free.borrow_mut().clear();
        self.registry.connections_parked.add(-(all.len() as i64));
        all
    }

    /// Connections whose keep-alive time is over at `now_ms`, removed from the lot.
    fn take_expired(&self, now_ms: u64) -> Vec<Parked> {
        let expired: Vec<usize> = self
            .slots
            .borrow()
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().filter(|s| s.expires_ms <= now_ms).map(|_| i))
            .collect();
        expired.into_iter().filter_map(|i| self.take(i)).map(|s| s.conn).collect()
    }
}

/// The lot's task: resumes connections whose clients send (`resume`), closes expired ones
/// (`close(conn, true)`), and closes them all when `drain` fires (`close(conn, false)`).
pub async fn run(
    lot: Rc<ParkingLot>,
    drain: &LocalSignal,
    resume: impl Fn(Parked),
    close: impl Fn(Parked, bool),
) {
    let mut scan = tokio::time::interval(SCAN_EVERY);
    scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ready = Vec::new();
    loop {
        let mut drained = std::pin::pin!(drain.wait());
        let event = std::future::poll_fn(|cx| {
            lot.ready.take(&mut ready, cx.waker());
            if drained.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Drain);
            }
            if !ready.is_empty() {
                return Poll::Ready(Event::Ready);
            }
            scan.poll_tick(cx).map(|_| Event::Scan)
        })
        .await;
        match event {
            Event::Drain => {
                for conn in lot.take_all() {
                    close(conn, false);
                }
                // Nothing parks after this: connections check the drain before they park.
                return;
            }
            Event::Ready => {
                for (slot, generation) in ready.drain(..) {
                    let current = lot
                        .slots
                        .borrow()
                        .get(slot)
                        .and_then(|s| s.as_ref().map(|s| s.generation == generation));
                    if current != Some(true) {
                        continue; // a stale wake for a slot that has moved on
                    }
                    let Some(parked) = lot.take(slot) else { continue };
                    resume(parked.conn);
                }
            }
            Event::Scan => {
                for conn in lot.take_expired(now_ms()) {
                    close(conn, true);
                }
            }
        }
    }
}

enum Event {
    Drain,
    Ready,
    Scan,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_waker_reports_its_slot() {
        let ready = Arc::new(ReadyList::default());
        let waker =
            Waker::from(Arc::new(SlotWaker { slot: 7, generation: 3, ready: ready.clone() }));
        waker.wake_by_ref();
        waker.wake();
        let mut got = Vec::new();
        ready.take(&mut got, Waker::noop());
        assert_eq!(got, vec![(7, 3), (7, 3)]);
    }
}
