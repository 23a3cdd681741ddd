//! Power of two random choices: sample two eligible servers, keep the one
//! with the lower cost. `balance = "random"` costs by load, `ewma` by
//! latency × load (see `ewma.rs`).

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

    pub fn pick(&mut self, candidates: &[Candidate], cost: fn(&Candidate) -> f64) -> Option<usize> {
        let eligible = candidates.iter().filter(|c| c.eligible).count();
        let a = nth_eligible(candidates, self.rng.usize(..eligible.max(1)))?;
        if eligible == 1 {
            return Some(a);
        }
        // A second, different eligible server.
        let mut second = self.rng.usize(..eligible - 1);
        let a_rank = candidates[..a].iter().filter(|c| c.eligible).count();
        if second >= a_rank {
            second += 1;
        }
        let b = nth_eligible(candidates, second)?;
        Some(if cost(&candidates[b]) < cost(&candidates[a]) {
            b
        } else {
            a
        })
    }
}

fn nth_eligible(candidates: &[Candidate], n: usize) -> Option<usize> {
    candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.eligible)
        .nth(n)
        .map(|(i, _)| i)
}

/// In-flight requests per unit of weight.
pub fn load(c: &Candidate) -> f64 {
    f64::from(c.in_flight) / f64::from(c.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loaded_server_gets_clearly_less_than_its_share() {
        let mut p2c = PowerOfTwo::new(7);
        let mut servers = vec![
            Candidate {
                weight: 1,
                eligible: true,
                in_flight: 0,
                latency_us: 1.0
            };
            3
        ];
        servers[0].in_flight = 20;
        let mut counts = [0; 3];
        for _ in 0..3000 {
            counts[p2c.pick(&servers, load).unwrap()] += 1;
        }
        assert!(counts[0] < 300, "{counts:?}");
        assert!(counts[1] > 1000 && counts[2] > 1000, "{counts:?}");
    }

    #[test]
    fn one_eligible_server_is_always_the_pick() {
        let mut p2c = PowerOfTwo::new(1);
        let mut servers = vec![
            Candidate {
                weight: 1,
                eligible: false,
                in_flight: 0,
                latency_us: 1.0
            };
            4
        ];
        servers[2].eligible = true;
        for _ in 0..50 {
            assert_eq!(p2c.pick(&servers, load), Some(2));
        }
        servers[2].eligible = false;
        assert_eq!(p2c.pick(&servers, load), None);
    }
}
