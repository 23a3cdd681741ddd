//! The local store: each client's TAT in this process's memory. Keys are
//! hashed with a per-process secret (so nobody can aim a key at another
//! client's bucket) and spread over shards, each behind its own lock, so
//! workers rarely meet on one. Memory is bounded: a shard holds at most its
//! share of `max_keys`; buckets whose TAT has passed (idle long enough to be
//! full again, so equal to no state) are swept out; and while a shard is
//! full of live buckets, keys it has no room for share that shard's overflow
//! bucket instead of pushing out clients that are being limited.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::gcra::{Decision, Gcra};

/// How often a shard may be swept of idle buckets (a sweep walks the shard).
const SWEEP_INTERVAL_NS: u64 = 1_000_000_000;
/// Which bits of the key hash pick the shard: clear of the low bits the map
/// uses for its index and the top 7 it keeps as tags.
const SHARD_SHIFT: u32 = 40;
const MAX_SHARDS: usize = 1 << 16;

/// Every client's TAT for one rate limit.
#[derive(Debug)]
pub struct LocalStore {
    secret: RandomState,
    shards: Box<[Shard]>,
    /// Most buckets per shard.
    shard_cap: usize,
}

/// On its own cache line, so that two shards' locks never share one.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard(Mutex<Buckets>);

#[derive(Debug, Default)]
struct Buckets {
    /// Key hash → TAT.
    tats: HashMap<u64, u64, BuildHasherDefault<Prehashed>>,
    /// Shared by new keys while the map is full.
    overflow_tat: u64,
    next_sweep: u64,
}

impl LocalStore {
    /// A store for up to `max_keys` clients; more shards for more workers.
    pub fn new(max_keys: usize, workers: usize) -> LocalStore {
        let shards = workers.saturating_mul(8).clamp(16, MAX_SHARDS).next_power_of_two();
        LocalStore {
            secret: RandomState::new(),
            shards: (0..shards).map(|_| Shard::default()).collect(),
            shard_cap: max_keys.div_ceil(shards).max(1),
        }
    }

    /// Decides a request with `key` (`None`: the request lacks it; all such
    /// requests share one bucket) at `now` (nanoseconds, monotonic).
    pub fn check(&self, gcra: &Gcra, key: Option<&[u8]>, now: u64) -> Decision {
        let hash = self.secret.hash_one(key);
        let shard = &self.shards[(hash >> SHARD_SHIFT) as usize & (self.shards.len() - 1)];
        lock(shard).check(gcra, hash, now, self.shard_cap)
    }

    /// Buckets held now, idle ones not yet swept included.
    pub fn bucket_count(&self) -> usize {
        self.shards.iter().map(|s| lock(s).tats.len()).sum()
    }

    /// The most buckets this store ever holds.
    pub fn capacity(&self) -> usize {
        self.shard_cap * self.shards.len()
    }
}

fn lock(shard: &Shard) -> MutexGuard<'_, Buckets> {
    // The lock guards plain numbers updated in one step: a panic elsewhere
    // cannot leave them half-written.
    shard.0.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Buckets {
    fn check(&mut self, gcra: &Gcra, hash: u64, now: u64, cap: usize) -> Decision {
        if let Some(tat) = self.tats.get_mut(&hash) {
            let decision = gcra.check(*tat, now);
            if let Decision::Allow { tat: next } = decision {
                *tat = next;
            }
            return decision;
        }
        if now >= self.next_sweep {
            self.tats.retain(|_, tat| *tat > now);
            self.next_sweep = now.saturating_add(SWEEP_INTERVAL_NS);
        }
        if self.tats.len() >= cap {
            let decision = gcra.check(self.overflow_tat, now);
            if let Decision::Allow { tat } = decision {
                self.overflow_tat = tat;
            }
            return decision;
        }
        // A client with no state is always admitted (burst is at least 1).
        let decision = gcra.check(0, now);
        if let Decision::Allow { tat } = decision {
            self.tats.insert(hash, tat);
        }
        decision
    }
}

/// The map's keys are already keyed hashes: hashing them again is waste.
#[derive(Debug, Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn admitted(store: &LocalStore, gcra: &Gcra, key: Option<&[u8]>, now: u64, n: usize) -> usize {
        (0..n)
            .filter(|_| matches!(store.check(gcra, key, now), Decision::Allow { .. }))
            .count()
    }

    #[test]
    fn each_key_has_its_own_bucket_and_keyless_requests_share_one() {
        let store = LocalStore::new(1000, 2);
        let gcra = Gcra::new(1.0, 3);
        let now = 100 * SEC;
        assert_eq!(admitted(&store, &gcra, Some(b"alice"), now, 10), 3);
        assert_eq!(admitted(&store, &gcra, Some(b"bob"), now, 10), 3);
        assert_eq!(admitted(&store, &gcra, None, now, 10), 3);
        assert_eq!(admitted(&store, &gcra, None, now, 10), 0);
        // The empty value is a key like any other, not the keyless bucket.
        assert_eq!(admitted(&store, &gcra, Some(b""), now, 10), 3);
        assert_eq!(admitted(&store, &gcra, Some(b"alice"), now + SEC, 10), 1);
    }

    #[test]
    fn a_flood_of_new_keys_stays_within_the_cap_and_limited_clients_keep_their_state() {
        let store = LocalStore::new(1000, 2);
        let gcra = Gcra::new(1.0, 2);
        let now = 100 * SEC;
        assert_eq!(admitted(&store, &gcra, Some(b"victim"), now, 5), 2);
        let mut flood_admitted = 0;
        for i in 0..200_000u32 {
            if matches!(store.check(&gcra, Some(&i.to_le_bytes()), now), Decision::Allow { .. }) {
                flood_admitted += 1;
            }
        }
        assert!(
            store.bucket_count() <= store.capacity(),
            "{} > {}",
            store.bucket_count(),
            store.capacity()
        );
        assert!(store.capacity() < 1000 + 16 * 2, "{}", store.capacity());
        // Beyond the cap, new keys share the shards' overflow buckets.
        let shards = store.shards.len();
        assert!(
            flood_admitted <= store.capacity() + shards * 2,
            "{flood_admitted} admitted"
        );
        assert_eq!(
            admitted(&store, &gcra, Some(b"victim"), now, 5),
            0,
            "the flood did not reset a limited client"
        );
    }

    #[test]
    fn idle_buckets_are_swept_and_make_room() {
        let store = LocalStore::new(64, 1);
        let gcra = Gcra::new(10.0, 1);
        let now = 100 * SEC;
        for i in 0..10_000u32 {
            store.check(&gcra, Some(&i.to_le_bytes()), now);
        }
        assert_eq!(store.bucket_count(), store.capacity(), "the flood filled every shard");
        // 100 ms on every bucket is full again; a second on, sweeps may run.
        let later = now + 2 * SEC;
        let fresh = 10_000..11_000u32;
        let admitted = fresh
            .clone()
            .filter(|i| {
                matches!(
                    store.check(&gcra, Some(&i.to_le_bytes()), later),
                    Decision::Allow { .. }
                )
            })
            .count();
        assert!(store.bucket_count() <= store.capacity());
        // Every shard was swept of the idle buckets and refilled by new keys.
        for shard in store.shards.iter() {
            assert!(
                lock(shard).tats.values().all(|tat| *tat > later),
                "an idle bucket survived"
            );
        }
        assert!(admitted >= store.capacity(), "{admitted}");
    }
}
