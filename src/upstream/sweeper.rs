//! Closes idle pooled connections that only hold a descriptor: those the
//! server has closed (its own keep-alive timeout, a restart) and those past
//! the upstream's `keepalive_timeout`, even when no request comes to take
//! them. nginx notices at once, through a read handler on every cached
//! connection; here each worker sweeps its own pool slots once a second, so
//! a request pays nothing for it (no task, clock read or lock more) and a
//! socket is only polled by the worker whose reactor it is registered with.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::ServerState;
use crate::server::{Shared, Snapshot, worker};

/// How often a worker sweeps: about the longest a connection the server
/// closed stays open on our side.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Sweeps the calling worker's idle connections every `SWEEP_INTERVAL`, for
/// as long as its runtime runs; follows snapshot swaps.
pub async fn run(shared: Arc<Shared>) {
    let mut swaps = shared.generation.subscribe();
    let mut sweeper = Sweeper::default();
    let mut ticks = tokio::time::interval(SWEEP_INTERVAL);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        // Read before the snapshot is loaded, so the snapshot is at least as
        // new as the generation and no swap goes unnoticed.
        let generation = *swaps.borrow_and_update();
        let snapshot = shared.snapshot.load();
        let closed = sweeper.sweep(&snapshot, generation, Instant::now());
        if closed > 0 {
            tracing::debug!(worker = worker::current(), closed, "idle upstream connections closed");
        }
    }
}

/// One worker's view of the servers whose pools it sweeps.
#[derive(Debug, Default)]
struct Sweeper {
    /// The snapshot generation `known` was taken at.
    generation: Option<u64>,
    /// The servers of the snapshot then.
    known: Vec<Weak<ServerState>>,
    /// Servers a swap removed that something still keeps alive (a tunnel's
    /// in-flight count, a request on the old snapshot): their idle
    /// connections, and any a request in flight returns, are closed.
    retired: Vec<Weak<ServerState>>,
}

impl Sweeper {
    /// Closes this worker's idle connections that are expired at `now` or
    /// closed by their server, and every one of a retired server; returns
    /// how many.
    fn sweep(&mut self, snapshot: &Snapshot, generation: u64, now: Instant) -> usize {
        if self.generation != Some(generation) {
            self.follow(snapshot);
            self.generation = Some(generation);
        }
        let mut closed = 0;
        self.retired.retain(|server| match server.upgrade() {
            Some(server) => {
                closed += server.pool.close_idle();
                true
            }
            None => false,
        });
        for server in servers(snapshot) {
            closed += server.pool.sweep(now);
        }
        closed
    }

    /// Takes the servers of a new snapshot; those of the previous one it
    /// lacks are retired.
    fn follow(&mut self, snapshot: &Snapshot) {
        let current: HashSet<*const ServerState> = servers(snapshot).map(Arc::as_ptr).collect();
        for server in self.known.drain(..) {
            if server.strong_count() > 0 && !current.contains(&server.as_ptr()) {
                self.retired.push(server);
            }
        }
        self.known = servers(snapshot).map(Arc::downgrade).collect();
    }
}

fn servers(snapshot: &Snapshot) -> impl Iterator<Item = &Arc<ServerState>> {
    snapshot.upstreams.iter().flat_map(|u| &u.servers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::ListenerSlot;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    fn snapshot(server: &str, previous: Option<&Snapshot>) -> Snapshot {
        let toml = format!(
            "[[listeners]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n[[routes]]\nupstream = \"app\"\n\
             [upstreams.app]\nservers = [ {{ address = \"{server}\" }} ]\n"
        );
        let config = crate::config::parse(&toml, "test.toml", &|_| None).unwrap();
        Snapshot::build(Arc::new(config), &[ListenerSlot(0)], previous)
    }

    #[tokio::test]
    async fn a_server_a_swap_removed_loses_its_idle_connections_while_something_holds_it() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let first = snapshot(&listener.local_addr().unwrap().to_string(), None);
        // Held as a tunnel's in-flight count holds it.
        let server = first.upstreams[0].servers[0].clone();
        let pooled = server.connect(Duration::from_secs(10), Instant::now()).await.unwrap();
        pooled.release(Instant::now());
        let (mut theirs, _) = listener.accept().await.unwrap();
        let mut sweeper = Sweeper::default();
        assert_eq!(sweeper.sweep(&first, 1, Instant::now()), 0, "a live connection stays");

        let second = snapshot("127.0.0.1:9", Some(&first));
        drop(first);
        assert_eq!(sweeper.sweep(&second, 2, Instant::now()), 1);
        let read = tokio::time::timeout(Duration::from_secs(10), theirs.read(&mut [0u8; 1])).await;
        assert_eq!(read.expect("our end stayed open").unwrap(), 0);

        // Once nothing holds it, it is forgotten.
        drop(server);
        sweeper.sweep(&second, 2, Instant::now());
        assert!(sweeper.retired.is_empty());
    }
}
