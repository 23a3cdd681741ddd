//! Balancing algorithms: which server of an upstream gets the next request.
//! Pure: algorithms see plain per-server facts and keep their own state; no
//! I/O, no clock.

mod ewma;
mod hash_ring;
mod least_conn;
mod random;
mod round_robin;

pub use hash_ring::HashRing;
pub use least_conn::LeastConn;
pub use random::PowerOfTwo;
pub use round_robin::SmoothWeighted;

use crate::config::Balance;

/// What an algorithm may know about one server when picking.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    /// Effective weight, at least 1 (slow start already applied).
    pub weight: u32,
    /// False for a server that must not be picked: down, drained, at
    /// `max_requests`, or already tried for this request.
    pub eligible: bool,
    /// Requests in flight on this server, over all workers.
    pub in_flight: u32,
    /// Peak-EWMA latency estimate in microseconds (> 0; the caller supplies
    /// a default for a server with no samples yet).
    pub latency_us: f64,
}

#[cfg(test)]
impl Candidate {
    /// An eligible server with nothing in flight, for tests.
    pub(crate) fn idle(weight: u32) -> Self {
        Candidate {
            weight,
            eligible: true,
            in_flight: 0,
            latency_us: 1.0,
        }
    }
}

/// One upstream's balancing state. An enum, not a trait object: the set of
/// algorithms is closed and dispatch stays inlinable.
#[derive(Debug, Clone)]
pub enum Balancer {
    RoundRobin(SmoothWeighted),
    LeastConn(LeastConn),
    /// `ip_hash` and `hash`: the key decides; without a key, round robin.
    Hash(HashRing, SmoothWeighted),
    Random(PowerOfTwo),
    Ewma(PowerOfTwo),
}

impl Balancer {
    /// `servers`: (identity, weight) per server in config order; the identity
    /// (the configured address) places a server on the hash ring, so every
    /// process with the same config hashes alike. `seed` seeds any randomness.
    pub fn new(kind: Balance, servers: &[(&str, u32)], seed: u64) -> Self {
        let n = servers.len();
        match kind {
            Balance::RoundRobin => Balancer::RoundRobin(SmoothWeighted::new(n)),
            Balance::LeastConn => Balancer::LeastConn(LeastConn::new(n)),
            Balance::IpHash | Balance::Hash => Balancer::Hash(HashRing::new(servers), SmoothWeighted::new(n)),
            Balance::Random => Balancer::Random(PowerOfTwo::new(seed)),
            Balance::Ewma => Balancer::Ewma(PowerOfTwo::new(seed)),
        }
    }

    /// The index of an eligible candidate, or `None` exactly when none is
    /// eligible. `key` is the request's hashed key (`hash_key`), used by the
    /// hash algorithms only; without one they fall back to round robin.
    /// Never allocates while `candidates` has one entry per server given to
    /// `new`; any other length is still safe (state is rebuilt to fit).
    pub fn pick(&mut self, candidates: &[Candidate], key: Option<u64>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(candidates),
            Balancer::LeastConn(lc) => lc.pick(candidates),
            // The ring only misses when no server it knows is eligible, which
            // can leave eligible ones only if the caller passed extra candidates.
            Balancer::Hash(ring, fallback) => match key {
                Some(key) => ring.pick(candidates, key).or_else(|| fallback.pick(candidates)),
                None => fallback.pick(candidates),
            },
            Balancer::Random(p2c) => p2c.pick(candidates, random::load),
            Balancer::Ewma(p2c) => p2c.pick(candidates, ewma::cost),
        }
    }
}

/// A stable 64-bit hash of key bytes: the same on every process, machine and
/// Rust version (FNV-1a, then a murmur3 finalizer to spread the bits), so
/// that every Fulcrum instance maps a key to the same server.
pub fn hash_key(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_key_is_pinned() {
        // These values are part of the contract: instances and restarts must agree.
        // Computed independently (FNV-1a + murmur3 fmix64 in Python).
        assert_eq!(hash_key(b""), 0xefd0_1f60_ba99_2926);
        assert_eq!(hash_key(b"10.0.0.1"), 0xc879_e56d_dc6c_5c88);
        assert_eq!(hash_key(b"a"), 0x82a2_a958_a9be_ce5b);
        assert_eq!(hash_key(b"client-42"), 0xc456_11be_9bd9_112b);
        assert_ne!(hash_key(b"10.0.0.1"), hash_key(b"10.0.0.2"));
    }

    const KINDS: [Balance; 6] = [
        Balance::RoundRobin,
        Balance::LeastConn,
        Balance::IpHash,
        Balance::Hash,
        Balance::Random,
        Balance::Ewma,
    ];

    proptest! {
        #[test]
        fn an_ineligible_server_is_never_picked(
            servers in proptest::collection::vec((1u32..10, any::<bool>(), 0u32..50, 1.0f64..100_000.0), 1..8),
            keys in proptest::collection::vec(any::<u64>(), 1..50),
            seed in any::<u64>(),
        ) {
            let ids: Vec<String> = (0..servers.len()).map(|i| format!("10.0.0.{i}:80")).collect();
            let identities: Vec<(&str, u32)> = ids.iter().zip(&servers).map(|(id, s)| (id.as_str(), s.0)).collect();
            let candidates: Vec<Candidate> = servers
                .iter()
                .map(|&(weight, eligible, in_flight, latency_us)| Candidate { weight, eligible, in_flight, latency_us })
                .collect();
            for kind in KINDS {
                let mut b = Balancer::new(kind, &identities, seed);
                for key in &keys {
                    match b.pick(&candidates, Some(*key)) {
                        Some(i) => prop_assert!(candidates[i].eligible, "{kind:?} picked ineligible {i}"),
                        None => prop_assert!(candidates.iter().all(|c| !c.eligible), "{kind:?} found none"),
                    }
                }
            }
        }

        #[test]
        fn candidates_that_do_not_match_the_servers_are_still_safe(
            configured in 0usize..6,
            eligible in proptest::collection::vec(any::<bool>(), 0..8),
            key in proptest::option::of(any::<u64>()),
        ) {
            let ids: Vec<String> = (0..configured).map(|i| format!("10.0.0.{i}:80")).collect();
            let identities: Vec<(&str, u32)> = ids.iter().map(|id| (id.as_str(), 2)).collect();
            let candidates: Vec<Candidate> = eligible
                .iter()
                .map(|&eligible| Candidate { weight: 1, eligible, in_flight: 0, latency_us: 1.0 })
                .collect();
            for kind in KINDS {
                let mut b = Balancer::new(kind, &identities, 1);
                for _ in 0..3 {
                    match b.pick(&candidates, key) {
                        Some(i) => prop_assert!(candidates[i].eligible, "{kind:?} picked ineligible {i}"),
                        None => prop_assert!(eligible.iter().all(|e| !e), "{kind:?} found none"),
                    }
                }
            }
        }
    }
}
