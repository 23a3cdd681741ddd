//! `max_connections_per_ip`: open connections counted per client address,
//! shared by every worker of a listener. Counting happens once per accepted
//! connection (not per request), in one of a few shards picked by the
//! address, and only when a limit is set. Entries leave the map when their
//! last connection closes, so memory follows the open connections.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const SHARDS: usize = 16;

#[derive(Debug)]
pub(crate) struct PerIp {
    /// 0: unlimited (nothing is counted).
    limit: AtomicUsize,
    hasher: RandomState,
    shards: [Mutex<HashMap<IpAddr, usize>>; SHARDS],
}

/// Holds one counted connection of an address until dropped.
#[derive(Debug)]
pub(crate) struct PerIpGuard(Option<(Arc<PerIp>, IpAddr)>);

impl PerIp {
    pub fn new(limit: usize) -> Self {
        PerIp {
            limit: AtomicUsize::new(limit),
            hasher: RandomState::new(),
            shards: Default::default(),
        }
    }

    /// A new limit from a reload; connections already open stay.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    /// Counts a connection from `ip`, or `None` if it already has `limit`
    /// open. With no limit set, counts nothing.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr) -> Option<PerIpGuard> {
        let limit = self.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return Some(PerIpGuard(None));
        }
        let mut shard = self.shard(ip);
        let open = shard.entry(ip).or_insert(0);
        if *open >= limit {
            return None;
        }
        *open += 1;
        Some(PerIpGuard(Some((self.clone(), ip))))
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let i = self.hasher.hash_one(ip) as usize % SHARDS;
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        if let Some((per_ip, ip)) = self.0.take() {
            let mut shard = per_ip.shard(ip);
            if let Some(open) = shard.get_mut(&ip) {
                *open -= 1;
                if *open == 0 {
                    shard.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_gets_at_most_limit_connections_and_entries_leave_when_closed() {
        let per_ip = Arc::new(PerIp::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = per_ip.try_enter(a).unwrap();
        let second = per_ip.try_enter(a).unwrap();
        assert!(per_ip.try_enter(a).is_none());
        let other = per_ip.try_enter(b).unwrap();
        drop(first);
        let third = per_ip.try_enter(a).unwrap();
        assert!(per_ip.try_enter(a).is_none());
        drop((second, third, other));
        assert_eq!(per_ip.tracked(), 0);
    }

    #[test]
    fn no_limit_counts_nothing() {
        let per_ip = Arc::new(PerIp::new(0));
        let guards: Vec<_> = (0..100)
            .map(|_| per_ip.try_enter("10.0.0.1".parse().unwrap()))
            .collect();
        assert!(guards.iter().all(Option::is_some));
        assert_eq!(per_ip.tracked(), 0);
    }
}
