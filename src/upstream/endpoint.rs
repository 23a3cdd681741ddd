//! Where a server's connections go: the socket address of an IP literal, or
//! the addresses a host name last resolved to. The resolver thread
//! (`upstream::resolver`) replaces those in place; the connect path only
//! reads them, without a lock and without a DNS lookup.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use tokio::net::TcpStream;

/// A server's addresses.
#[derive(Debug)]
pub enum Endpoints {
    /// An IP literal: nothing is ever resolved.
    Fixed(SocketAddr),
    /// A host name, re-resolved in the background.
    Named(NamedEndpoints),
}

impl Endpoints {
    /// From a configured `host:port` (already validated).
    pub fn new(address: &str) -> Self {
        if let Ok(addr) = address.parse() {
            return Endpoints::Fixed(addr);
        }
        let (host, port) = address.rsplit_once(':').unwrap_or((address, "0"));
        Endpoints::Named(NamedEndpoints {
            host: host.to_string(),
            port: port.parse().unwrap_or(0),
            addrs: ArcSwap::from_pointee(Vec::new()),
            generation: AtomicU64::new(0),
            next_due_ms: AtomicU64::new(0),
            failures: AtomicU32::new(0),
        })
    }

    pub fn named(&self) -> Option<&NamedEndpoints> {
        match self {
            Endpoints::Fixed(_) => None,
            Endpoints::Named(named) => Some(named),
        }
    }

    /// Whether there is an address to connect to (a host name that never
    /// resolved has none, and its server counts as down).
    #[inline]
    pub fn is_resolved(&self) -> bool {
        match self {
            Endpoints::Fixed(_) => true,
            Endpoints::Named(named) => named.generation() != 0,
        }
    }

    /// Changes each time the set of addresses does (always 0 for an IP).
    #[inline]
    pub fn generation(&self) -> u64 {
        match self {
            Endpoints::Fixed(_) => 0,
            Endpoints::Named(named) => named.generation(),
        }
    }

    /// Whether `addr` is one of the current addresses.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        match self {
            Endpoints::Fixed(fixed) => *fixed == addr,
            Endpoints::Named(named) => named.addrs.load().contains(&addr),
        }
    }

    /// The current addresses.
    pub fn current(&self) -> Vec<SocketAddr> {
        match self {
            Endpoints::Fixed(fixed) => vec![*fixed],
            Endpoints::Named(named) => named.addrs.load().to_vec(),
        }
    }

    /// A TCP connection to one of the addresses, and which one. A host name
    /// with several addresses spreads connections over them (starting at a
    /// random one) and tries the next when one refuses.
    pub async fn connect(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let named = match self {
            Endpoints::Fixed(addr) => return TcpStream::connect(addr).await.map(|s| (s, *addr)),
            Endpoints::Named(named) => named,
        };
        // A thread-local generator: no write shared across cores.
        let start = fastrand::usize(..);
        let mut last_error = None;
        for attempt in 0.. {
            let addr = {
                let addrs = named.addrs.load();
                if attempt >= addrs.len() {
                    break;
                }
                addrs[(start + attempt) % addrs.len()]
            };
            match TcpStream::connect(addr).await {
                Ok(stream) => return Ok((stream, addr)),
                Err(error) => last_error = Some(error),
            }
        }
        Err(last_error.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("{} has not resolved to any address yet", named.host),
            )
        }))
    }
}

/// The addresses of a host name, and the resolver's schedule for it. Kept
/// with the server, so both survive a reload that keeps the server.
#[derive(Debug)]
pub struct NamedEndpoints {
    /// Without the port.
    pub host: String,
    pub port: u16,
    /// Sorted, without duplicates; empty until the first good answer.
    addrs: ArcSwap<Vec<SocketAddr>>,
    /// Bumped on every change of `addrs`; 0 while it has never resolved.
    generation: AtomicU64,
    /// When to resolve again (`health::now_ms` time); only the resolver
    /// thread writes it.
    next_due_ms: AtomicU64,
    /// Failed resolutions in a row; only the resolver thread writes it.
    failures: AtomicU32,
}

/// What a resolution did to a host name's addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The first answer: the server can be used from now on.
    First(Arc<Vec<SocketAddr>>),
    /// Different addresses than before.
    Changed {
        old: Arc<Vec<SocketAddr>>,
        new: Arc<Vec<SocketAddr>>,
    },
    /// The same addresses; `recovered` when earlier tries had failed.
    Same { recovered: bool },
    /// No answer: the last good addresses stay. `first` for the first
    /// failure in a row (the one to log).
    Failed { first: bool },
}

impl NamedEndpoints {
    #[inline]
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(super) fn next_due_ms(&self) -> u64 {
        self.next_due_ms.load(Ordering::Relaxed)
    }

    pub(super) fn set_next_due_ms(&self, at_ms: u64) {
        self.next_due_ms.store(at_ms, Ordering::Relaxed);
    }

    /// Failed resolutions in a row.
    pub(super) fn failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Takes a resolution's answer: `Some` addresses (at least one) or
    /// `None` for a failure, which keeps the last good ones.
    pub(super) fn update(&self, answer: Option<Vec<SocketAddr>>) -> Outcome {
        let Some(mut addrs) = answer.filter(|a| !a.is_empty()) else {
            let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
            return Outcome::Failed { first: failures == 1 };
        };
        let recovered = self.failures.swap(0, Ordering::Relaxed) > 0;
        // DNS servers rotate their answers; order is not a change.
        addrs.sort_unstable();
        addrs.dedup();
        let old = self.addrs.load_full();
        if *old == addrs {
            return Outcome::Same { recovered };
        }
        let new = Arc::new(addrs);
        self.addrs.store(new.clone());
        // After the store: whoever sees the new generation sees the new set.
        let first = self.generation.fetch_add(1, Ordering::AcqRel) == 0;
        if first {
            Outcome::First(new)
        } else {
            Outcome::Changed { old, new }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn named(endpoints: &Endpoints) -> &NamedEndpoints {
        endpoints.named().expect("a host name")
    }

    #[test]
    fn ip_literals_are_fixed_and_names_start_unresolved() {
        let ip = Endpoints::new("127.0.0.1:9001");
        assert!(ip.named().is_none() && ip.is_resolved());
        assert_eq!(ip.current(), vec![addr("127.0.0.1:9001")]);
        assert!(matches!(Endpoints::new("[::1]:80"), Endpoints::Fixed(_)));

        let name = Endpoints::new("app.internal:3000");
        let n = named(&name);
        assert_eq!((n.host.as_str(), n.port), ("app.internal", 3000));
        assert!(!name.is_resolved());
        assert!(name.current().is_empty());
    }

    #[test]
    fn answers_replace_the_set_and_failures_keep_it() {
        let name = Endpoints::new("app.internal:3000");
        let n = named(&name);
        let (a, b) = (addr("10.0.0.1:3000"), addr("10.0.0.2:3000"));

        assert_eq!(n.update(None), Outcome::Failed { first: true });
        assert!(!name.is_resolved(), "a failure before any answer leaves it unresolved");

        assert_eq!(n.update(Some(vec![b, a, b])), Outcome::First(Arc::new(vec![a, b])));
        assert!(name.is_resolved() && name.contains(a) && name.contains(b));
        let generation = name.generation();

        // Rotated order, same set: no change.
        assert_eq!(n.update(Some(vec![b, a])), Outcome::Same { recovered: false });
        assert_eq!(name.generation(), generation);

        assert_eq!(n.update(None), Outcome::Failed { first: true });
        assert_eq!(n.update(Some(vec![])), Outcome::Failed { first: false });
        assert_eq!(name.current(), vec![a, b], "the last good addresses stay");
        assert_eq!(n.failures(), 2);

        assert_eq!(n.update(Some(vec![a, b])), Outcome::Same { recovered: true });
        assert_eq!(n.failures(), 0);

        assert_eq!(
            n.update(Some(vec![b])),
            Outcome::Changed {
                old: Arc::new(vec![a, b]),
                new: Arc::new(vec![b])
            }
        );
        assert!(name.generation() > generation);
        assert!(!name.contains(a));
    }

    #[tokio::test]
    async fn connect_tries_every_address_until_one_accepts() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        // A port that refuses: bound, then closed.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let name = Endpoints::new("app.internal:1");
        named(&name).update(Some(vec![open, closed]));
        for _ in 0..8 {
            let (_, peer) = name.connect().await.expect("one address accepts");
            assert_eq!(peer, open);
            let _ = listener.accept().await.unwrap();
        }

        let unresolved = Endpoints::new("app.internal:1");
        let error = unresolved.connect().await.unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AddrNotAvailable);
    }
}
