//! Smooth weighted round-robin (nginx's algorithm): weights 5:1:1 give
//! `a a b a c a a`, interleaved, not blocks of one server.

use super::Candidate;

/// Per-server running scores of the smooth weighted round-robin.
#[derive(Debug, Clone)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    pub fn new(servers: usize) -> Self {
        SmoothWeighted {
            current: vec![0; servers],
        }
    }

    /// Each eligible server gains its weight; the highest score wins and pays
    /// back the total. Over any window of `sum(weights)` picks with a fixed
    /// eligible set, each server is picked exactly `weight` times.
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        self.pick_among(candidates, |c| c.eligible)
    }

    /// `pick` restricted to the candidates `admit` accepts (which must be
    /// eligible ones). Servers left out keep their score, as in nginx's
    /// `least_conn`, which runs this round robin over the tied servers only.
    pub fn pick_among(&mut self, candidates: &[Candidate], admit: impl Fn(&Candidate) -> bool) -> Option<usize> {
        // Only a caller that broke the "same length as `new`" contract pays this allocation.
        if self.current.len() != candidates.len() {
            self.current = vec![0; candidates.len()];
        }
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (i, c) in candidates.iter().enumerate() {
            if !c.eligible || !admit(c) {
                continue;
            }
            let w = i64::from(c.weight.max(1));
            self.current[i] += w;
            total += w;
            if best.is_none_or(|b| self.current[i] > self.current[b]) {
                best = Some(i);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn up(weights: &[u32]) -> Vec<Candidate> {
        weights.iter().map(|&weight| Candidate::idle(weight)).collect()
    }

    #[test]
    fn five_one_one_interleaves_like_nginx() {
        let mut rr = SmoothWeighted::new(3);
        let c = up(&[5, 1, 1]);
        let picks: Vec<usize> = (0..7).map(|_| rr.pick(&c).unwrap()).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn nothing_eligible_gives_none() {
        let mut rr = SmoothWeighted::new(2);
        let c = vec![
            Candidate {
                weight: 1,
                eligible: false,
                in_flight: 0,
                latency_us: 1.0,
            };
            2
        ];
        assert_eq!(rr.pick(&c), None);
    }

    proptest! {
        #[test]
        fn each_window_matches_weights(weights in proptest::collection::vec(1u32..20, 1..8), rounds in 1usize..4) {
            let mut rr = SmoothWeighted::new(weights.len());
            let c = up(&weights);
            let total: u32 = weights.iter().sum();
            for _ in 0..rounds {
                let mut counts = vec![0u32; weights.len()];
                for _ in 0..total {
                    counts[rr.pick(&c).unwrap()] += 1;
                }
                prop_assert_eq!(&counts, &weights);
            }
        }

        #[test]
        fn ineligible_server_is_never_picked(
            servers in proptest::collection::vec((1u32..10, any::<bool>()), 1..8),
            picks in 1usize..200,
        ) {
            let c: Vec<Candidate> = servers.iter().map(|&(weight, eligible)| Candidate { weight, eligible, in_flight: 0, latency_us: 1.0 }).collect();
            let mut rr = SmoothWeighted::new(c.len());
            for _ in 0..picks {
                match rr.pick(&c) {
                    Some(i) => prop_assert!(c[i].eligible),
                    None => prop_assert!(c.iter().all(|c| !c.eligible)),
                }
            }
        }
    }
}
