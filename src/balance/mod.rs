//! Balancing algorithms: which server of an upstream gets the next request.
//! Pure: algorithms see plain per-server facts and keep their own state; no
//! I/O, no clock.

mod round_robin;

pub use round_robin::SmoothWeighted;

use crate::config::Balance;

/// What an algorithm may know about one server when picking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    /// Effective weight, at least 1.
    pub weight: u32,
    /// False for a server that must not be picked (down, drained, tried).
    pub eligible: bool,
}

/// One upstream's balancing state. An enum, not a trait object: the set of
/// algorithms is closed and dispatch stays inlinable.
#[derive(Debug, Clone)]
pub enum Balancer {
    RoundRobin(SmoothWeighted),
}

impl Balancer {
    pub fn new(kind: Balance, servers: usize) -> Self {
        match kind {
            Balance::RoundRobin => Balancer::RoundRobin(SmoothWeighted::new(servers)),
        }
    }

    /// The index of the server to use, or `None` when no candidate is eligible.
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(candidates),
        }
    }
}
