//! A consistent hash ring (ketama-style) for `ip_hash` and `hash`: each
//! server owns `160 × weight` points placed by hashing its identity, so every
//! process with the same config maps a key to the same server, and removing
//! one of N servers moves only the keys it owned (about 1/N).

use super::{Candidate, hash_key};

const POINTS_PER_WEIGHT: u32 = 160;
/// Caps the ring at a sane size for very large weights.
const MAX_WEIGHT_FOR_POINTS: u32 = 100;

#[derive(Debug, Clone)]
pub struct HashRing {
    /// (position, server index), sorted by position.
    points: Vec<(u64, usize)>,
}

impl HashRing {
    pub fn new(servers: &[(&str, u32)]) -> Self {
        let mut points = Vec::new();
        for (index, (identity, weight)) in servers.iter().enumerate() {
            let count = POINTS_PER_WEIGHT * (*weight).clamp(1, MAX_WEIGHT_FOR_POINTS);
            for i in 0..count {
                points.push((hash_key(format!("{identity}#{i}").as_bytes()), index));
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    /// The first eligible server clockwise from `key`.
    pub fn pick(&self, candidates: &[Candidate], key: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|(pos, _)| *pos < key);
        let n = self.points.len();
        (0..n)
            .map(|step| self.points[(start + step) % n].1)
            .find(|&i| candidates.get(i).is_some_and(|c| c.eligible))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn up(n: usize) -> Vec<Candidate> {
        vec![
            Candidate {
                weight: 1,
                eligible: true,
                in_flight: 0,
                latency_us: 1.0
            };
            n
        ]
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250)).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(8))]
        #[test]
        fn removing_one_of_n_servers_moves_only_its_keys(n in 3usize..10, removed in 0usize..10) {
            let removed = removed % n;
            let names = ids(n);
            let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
            let ring = HashRing::new(&all);
            let mut without = up(n);
            without[removed].eligible = false;
            let mut moved = 0;
            for k in 0..10_000u64 {
                let key = hash_key(&k.to_le_bytes());
                let before = ring.pick(&up(n), key).unwrap();
                let after = ring.pick(&without, key).unwrap();
                if before != after {
                    prop_assert_eq!(before, removed, "a key moved off a server that stayed");
                    moved += 1;
                }
            }
            let bound = 10_000.0 * (1.0 / n as f64 + 0.05);
            prop_assert!(f64::from(moved) <= bound, "moved {} of 10000 with n={}", moved, n);
        }
    }

    #[test]
    fn a_ring_rebuilt_from_the_same_config_maps_keys_the_same() {
        let names = ids(4);
        let all: Vec<(&str, u32)> = names.iter().map(|s| (s.as_str(), 1)).collect();
        let (a, b) = (HashRing::new(&all), HashRing::new(&all));
        for k in 0..1000u64 {
            let key = hash_key(&k.to_le_bytes());
            assert_eq!(a.pick(&up(4), key), b.pick(&up(4), key));
        }
    }

    #[test]
    fn weights_are_roughly_respected() {
        let names = ids(2);
        let ring = HashRing::new(&[(names[0].as_str(), 2), (names[1].as_str(), 1)]);
        let heavy = (0..10_000u64)
            .filter(|k| ring.pick(&up(2), hash_key(&k.to_le_bytes())) == Some(0))
            .count();
        assert!((6_000..=7_400).contains(&heavy), "weight-2 server got {heavy} of 10000");
    }
}
