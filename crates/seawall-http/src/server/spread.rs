//! Evens out client connections across workers.
//!
//! Each worker accepts on its own `SO_REUSEPORT` listener, where the kernel places a connection by
//! a hash of its addresses: with few connections, or a few long and busy ones, one worker can
//! serve clearly more than another while the other has time to spare, and its clients wait
//! longer. A worker that accepts a connection while it serves [`MARGIN`] or more connections than
//! the least loaded worker hands the socket to that worker instead. Nothing has been read from a
//! handed connection, so nothing is lost with it; the cost (a cross-thread wake-up and a
//! registration with the other worker's poller) is paid once per moved connection, never per
//! request.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::mpsc;

use crate::metrics::Registry;

/// How many more connections than the least loaded worker a worker serves before it hands new
/// ones over.
pub const MARGIN: i64 = 2;

/// A connection on its way to another worker.
pub struct Handed {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
}

/// The workers' loads (their shards of `connections_open`) and a way to reach each of them.
pub struct Spread {
    registry: Arc<Registry>,
    inboxes: Vec<mpsc::UnboundedSender<Handed>>,
}

impl Spread {
    /// Spreading for `workers` workers, and each worker's inbox.
    pub fn new(
        registry: Arc<Registry>,
        workers: usize,
    ) -> (Arc<Spread>, Vec<mpsc::UnboundedReceiver<Handed>>) {
        let (inboxes, receivers) = (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        (Arc::new(Spread { registry, inboxes }), receivers)
    }

    /// The worker that serves a connection worker `me` accepted: `me`, unless another worker
    /// serves at least [`MARGIN`] fewer. The connection counts as open on that worker from now.
    pub fn assign(&self, me: usize) -> usize {
        let open = &self.registry.connections_open;
        let mine = open.shard(me);
        let least = (0..self.inboxes.len())
            .filter(|&w| w != me)
            .map(|w| (open.shard(w), w))
            .min()
            .filter(|&(theirs, _)| mine >= theirs + MARGIN);
        let target = least.map_or(me, |(_, w)| w);
        open.add_to(target, 1);
        target
    }

    /// Counts a connection worker `me` accepted and serves itself whatever the others serve
    /// (one to the egress listener).
    pub fn keep(&self, me: usize) -> usize {
        self.registry.connections_open.add_to(me, 1);
        me
    }

    /// Sends a connection that worker `from` accepted to worker `to` (as [`Spread::assign`]
    /// chose). When `to` no longer takes connections (it is draining), the connection is
    /// counted back on `from` and returned.
    pub fn hand_over(&self, from: usize, to: usize, handed: Handed) -> Result<(), Handed> {
        match self.inboxes[to].send(handed) {
            Ok(()) => {
                self.registry.connections_handed_over.add(1);
                Ok(())
            }
            Err(mpsc::error::SendError(handed)) => {
                self.registry.connections_open.add_to(to, -1);
                self.registry.connections_open.add_to(from, 1);
                Err(handed)
            }
        }
    }

    /// A connection assigned to worker `to` was lost before it could be served.
    pub fn lost(&self, to: usize) {
        self.registry.connections_open.add_to(to, -1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_keeps_its_connections_until_it_serves_clearly_more() {
        let registry = Arc::new(Registry::new(3));
        let (spread, _inboxes) = Spread::new(Arc::clone(&registry), 3);
        let open = |w| registry.connections_open.shard(w);
        // Worker 0 accepts everything: it keeps a connection while it serves fewer than MARGIN
        // more than the least loaded worker, and hands the rest to whichever serves least.
        let targets: Vec<usize> = (0..9).map(|_| spread.assign(0)).collect();
        assert_eq!(targets, [0, 0, 1, 2, 0, 1, 2, 0, 1]);
        assert_eq!((open(0), open(1), open(2)), (4, 3, 2));
        // Connections closing on worker 0 let it keep the next ones again.
        registry.connections_open.add_to(0, -3);
        assert_eq!(spread.assign(0), 0);
    }

    #[test]
    fn a_connection_for_a_worker_that_is_gone_comes_back() {
        let registry = Arc::new(Registry::new(2));
        let (spread, inboxes) = Spread::new(Arc::clone(&registry), 2);
        drop(inboxes);
        registry.connections_open.add_to(1, 1);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let peer = stream.local_addr().unwrap();
        assert!(spread.hand_over(0, 1, Handed { stream, peer }).is_err());
        assert_eq!(registry.connections_open.shard(0), 1);
        assert_eq!(registry.connections_open.shard(1), 0);
        assert_eq!(registry.connections_handed_over.get(), 0);
    }
}
