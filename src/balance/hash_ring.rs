//! A consistent hash ring (ketama-style) for `ip_hash` and `hash`: each
//! server owns `160 × weight` points placed by hashing its identity, so every
//! process with the same config maps a key to the same server, and removing
//! one of N servers moves only the keys it owned (about 1/N).

use super::{Candidate, hash_key};

const POINTS_PER_WEIGHT: u64 = 160;
/// Weights above this buy no more points: beyond 100:1 the ring is precise enough.
const MAX_WEIGHT_FOR_POINTS: u32 = 100;
/// Every worker builds its own ring; this keeps one near 1 MiB at most. Above it
/// each server's count shrinks in proportion; as point `i` of a server is
/// always at `hash("{identity}#{i}")`, shrinking drops points, never moves them.
const MAX_POINTS: u64 = 1 << 16;

#[derive(Debug, Clone)]
pub struct HashRing {
    /// (position, server index), sorted by position.
    points: Vec<(u64, usize)>,
    servers: usize,
}

impl HashRing {
    pub fn new(servers: &[(&str, u32)]) -> Self {
        let wanted = |weight: u32| POINTS_PER_WEIGHT * u64::from(weight.clamp(1, MAX_WEIGHT_FOR_POINTS));
        let total: u64 = servers.iter().map(|&(_, w)| wanted(w)).sum();
        let mut points = Vec::new();
        for (index, &(identity, weight)) in servers.iter().enumerate() {
            let count = if total > MAX_POINTS {
                (wanted(weight) * MAX_POINTS / total).max(1)
            } else {
                wanted(weight)
            };
            for i in 0..count {
                points.push((hash_key(format!("{identity}#{i}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        HashRing {
            points,
            servers: servers.len(),
        }
    }

    /// The first eligible server clockwise from `key`, or `None` when no
    /// server on the ring is eligible (candidates past the ring's servers
    /// are not on it).
    pub fn pick(&self, candidates: &[Candidate], key: u64) -> Option<usize> {
        // Without this, an all-down ring would be walked point by point.
        if !candidates.iter().take(self.servers).any(|c| c.eligible) {
            return None;
        }
        let start = self.points.partition_point(|(pos, _)| *pos < key);
        let (after, before) = (self.points.get(start..)?, self.points.get(..start)?);
        after
            .iter()
            .chain(before)
            .map(|&(_, i)| i)
            .find(|&i| candidates.get(i).is_some_and(|c| c.eligible))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn up(n: usize) -> Vec<Candidate> {
        vec![Candidate::idle(1); n]
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250)).collect()
    }

    fn keys() -> impl Iterator<Item = u64> {
        (0..10_000u64).map(|k| hash_key(format!("192.168.{}.{}", k / 256, k % 256).as_bytes()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        #[test]
        fn removing_one_of_n_servers_moves_only_its_keys(n in 3usize..10, removed in 0usize..10) {
            let removed = removed % n;
            let names = ids(n);
            let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
            let ring = HashRing::new(&all);
            // Removed from the config: the ring is rebuilt without it.
            let rest: Vec<(&str, u32)> = all.iter().enumerate().filter(|&(i, _)| i != removed).map(|(_, &s)| s).collect();
            let rebuilt = HashRing::new(&rest);
            let (everyone, mut without) = (up(n), up(n));
            without[removed].eligible = false;
            let mut moved = 0;
            for key in keys() {
                let before = ring.pick(&everyone, key);
                let after = ring.pick(&without, key);
                // The rebuilt ring numbers servers without the removed one.
                let after_rebuild = rebuilt.pick(&up(n - 1), key).map(|i| if i >= removed { i + 1 } else { i });
                prop_assert_eq!(after, after_rebuild, "marking down and removing disagree");
                if before != after {
                    prop_assert_eq!(before, Some(removed), "a key moved off a server that stayed");
                    moved += 1;
                }
            }
            let bound = 10_000.0 * (1.0 / n as f64 + 0.05);
            prop_assert!(f64::from(moved) <= bound, "moved {} of 10000 with n={}", moved, n);
        }
    }

    #[test]
    fn keys_map_to_the_same_server_in_every_process() {
        // Pinned (checked against an independent Python ketama): another
        // instance, or this one after a restart, must agree.
        let names = ids(3);
        let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
        let ring = HashRing::new(&all);
        let picks: Vec<usize> = ["10.1.2.3", "10.1.2.4", "2001:db8::1", "user-42", "user-43", ""]
            .iter()
            .filter_map(|k| ring.pick(&up(3), hash_key(k.as_bytes())))
            .collect();
        assert_eq!(picks, vec![2, 1, 0, 0, 0, 1]);
    }

    #[test]
    fn each_server_gets_about_its_share() {
        let names = ids(5);
        let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
        let ring = HashRing::new(&all);
        let mut counts = [0u32; 5];
        for key in keys() {
            counts[ring.pick(&up(5), key).unwrap_or(0)] += 1;
        }
        assert!(counts.iter().all(|&c| (1_500..=2_500).contains(&c)), "{counts:?}");
    }

    #[test]
    fn weights_are_roughly_respected() {
        let names = ids(3);
        let ring = HashRing::new(&[(names[0].as_str(), 2), (names[1].as_str(), 1), (names[2].as_str(), 1)]);
        let heavy = keys().filter(|&key| ring.pick(&up(3), key) == Some(0)).count();
        assert!((4_300..=5_700).contains(&heavy), "weight-2 server got {heavy} of 10000");
    }

    #[test]
    fn huge_weights_are_capped_in_proportion() {
        let names = ids(20);
        let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1_000)).collect();
        let ring = HashRing::new(&all);
        assert!(ring.points.len() as u64 <= MAX_POINTS);
        let mut counts = [0u32; 20];
        for key in keys() {
            counts[ring.pick(&up(20), key).unwrap_or(0)] += 1;
        }
        assert!(counts.iter().all(|&c| (300..=700).contains(&c)), "{counts:?}");
    }

    #[test]
    fn candidates_beyond_the_ring_are_not_on_it() {
        let ring = HashRing::new(&[("a:1", 1), ("b:1", 1)]);
        let mut c = up(3);
        c[0].eligible = false;
        c[1].eligible = false;
        assert_eq!(ring.pick(&c, 7), None);
        assert_eq!(ring.pick(&c[..1], 7), None);
        assert_eq!(HashRing::new(&[]).pick(&c, 7), None);
    }
}
