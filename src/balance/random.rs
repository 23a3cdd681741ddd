//! Power of two random choices: sample two different eligible servers, with
//! probability proportional to weight, and keep the one with the lower cost.
//! `balance = "random"` costs by load, `ewma` by latency × load (`ewma.rs`).

use super::Candidate;

#[derive(Debug, Clone)]
pub struct PowerOfTwo {
    rng: fastrand::Rng,
}

impl PowerOfTwo {
    pub fn new(seed: u64) -> Self {
        PowerOfTwo {
            rng: fastrand::Rng::with_seed(seed),
        }
    }

    /// Sampling by weight keeps weights meaningful when every cost is equal
    /// (an idle upstream); ties keep the first sample, which is random.
    pub fn pick(&mut self, candidates: &[Candidate], cost: fn(&Candidate) -> f64) -> Option<usize> {
        let total: u64 = candidates.iter().filter(|c| c.eligible).map(weight).sum();
        if total == 0 {
            return None;
        }
        let a = sample(candidates, None, self.rng.u64(..total))?;
        let rest = total - weight(&candidates[a]);
        if rest == 0 {
            return Some(a);
        }
        let Some(b) = sample(candidates, Some(a), self.rng.u64(..rest)) else {
            return Some(a);
        };
        Some(if cost(&candidates[b]) < cost(&candidates[a]) {
            b
        } else {
            a
        })
    }
}

fn weight(c: &Candidate) -> u64 {
    u64::from(c.weight.max(1))
}

/// The eligible server (other than `skip`) under `point` when their weights
/// are laid end to end; `point` must be below their sum.
fn sample(candidates: &[Candidate], skip: Option<usize>, mut point: u64) -> Option<usize> {
    for (i, c) in candidates.iter().enumerate() {
        if !c.eligible || Some(i) == skip {
            continue;
        }
        if point < weight(c) {
            return Some(i);
        }
        point -= weight(c);
    }
    None
}

/// In-flight requests per unit of weight.
pub fn load(c: &Candidate) -> f64 {
    f64::from(c.in_flight) / f64::from(c.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(weights: &[u32]) -> Vec<Candidate> {
        weights.iter().map(|&weight| Candidate::idle(weight)).collect()
    }

    fn counts(p2c: &mut PowerOfTwo, servers: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; servers.len()];
        for _ in 0..picks {
            if let Some(i) = p2c.pick(servers, load) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn a_loaded_server_gets_clearly_less_than_its_share() {
        let mut p2c = PowerOfTwo::new(7);
        let mut servers = servers(&[1, 1, 1]);
        servers[0].in_flight = 20;
        let counts = counts(&mut p2c, &servers, 3000);
        assert!(counts[0] < 300, "{counts:?}");
        assert!(counts[1] > 1000 && counts[2] > 1000, "{counts:?}");
    }

    #[test]
    fn an_idle_upstream_is_split_by_weight() {
        let mut p2c = PowerOfTwo::new(3);
        let counts = counts(&mut p2c, &servers(&[3, 1]), 10_000);
        assert!((7_200..=7_800).contains(&counts[0]), "{counts:?}");
    }

    #[test]
    fn one_eligible_server_is_always_the_pick() {
        let mut p2c = PowerOfTwo::new(1);
        let mut servers = servers(&[1, 1, 1, 1]);
        for (i, s) in servers.iter_mut().enumerate() {
            s.eligible = i == 2;
        }
        assert_eq!(counts(&mut p2c, &servers, 50), vec![0, 0, 50, 0]);
        servers[2].eligible = false;
        assert_eq!(p2c.pick(&servers, load), None);
        assert_eq!(p2c.pick(&[], load), None);
    }

    #[test]
    fn the_same_seed_gives_the_same_picks() {
        let servers = servers(&[1, 2, 3]);
        let (mut a, mut b) = (PowerOfTwo::new(11), PowerOfTwo::new(11));
        for _ in 0..100 {
            assert_eq!(a.pick(&servers, load), b.pick(&servers, load));
        }
    }
}
