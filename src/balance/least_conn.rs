//! `least_conn`: the server with the fewest in-flight requests per unit of
//! weight; servers tied on that share the request by smooth weighted round
//! robin, so ties take turns and weights still count when nothing is busy.

use super::{Candidate, SmoothWeighted};

#[derive(Debug, Clone)]
pub struct LeastConn {
    /// Breaks ties. Without weighted tie-breaking, a lightly loaded upstream
    /// (in-flight mostly 0) would be split evenly whatever the weights.
    ties: SmoothWeighted,
}

impl LeastConn {
    pub fn new(servers: usize) -> Self {
        LeastConn {
            ties: SmoothWeighted::new(servers),
        }
    }

    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let best = candidates
            .iter()
            .filter(|c| c.eligible)
            .reduce(|best, c| if busier(best, c) { c } else { best })?;
        self.ties.pick_among(candidates, |c| !busier(c, best))
    }
}

/// `a.in_flight / a.weight > b.in_flight / b.weight`, in exact integers:
/// cross products of two u32s cannot overflow a u64.
fn busier(a: &Candidate, b: &Candidate) -> bool {
    u64::from(a.in_flight) * u64::from(b.weight.max(1)) > u64::from(b.in_flight) * u64::from(a.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(weight: u32, in_flight: u32) -> Candidate {
        Candidate {
            in_flight,
            ..Candidate::idle(weight)
        }
    }

    fn picks(lc: &mut LeastConn, servers: &[Candidate], n: usize) -> Vec<usize> {
        (0..n).filter_map(|_| lc.pick(servers)).collect()
    }

    #[test]
    fn fewest_in_flight_wins() {
        let mut lc = LeastConn::new(3);
        assert_eq!(picks(&mut lc, &[c(1, 5), c(1, 2), c(1, 9)], 10), vec![1; 10]);
    }

    #[test]
    fn in_flight_counts_per_unit_of_weight() {
        // 4/2 < 3/1: the heavier server is less loaded for its size.
        let mut lc = LeastConn::new(2);
        assert_eq!(picks(&mut lc, &[c(1, 3), c(2, 4)], 5), vec![1; 5]);
    }

    #[test]
    fn ties_alternate_instead_of_favouring_the_first() {
        let mut lc = LeastConn::new(3);
        assert_eq!(picks(&mut lc, &[c(1, 0); 3], 6), vec![0, 1, 2, 0, 1, 2]);
        let mut lc = LeastConn::new(3);
        assert_eq!(picks(&mut lc, &[c(1, 1), c(1, 7), c(1, 1)], 4), vec![0, 2, 0, 2]);
    }

    #[test]
    fn weights_count_when_nothing_is_in_flight() {
        let mut lc = LeastConn::new(2);
        let chosen = picks(&mut lc, &[c(3, 0), c(1, 0)], 400);
        assert_eq!(chosen.iter().filter(|&&i| i == 0).count(), 300);
    }

    #[test]
    fn nothing_eligible_gives_none() {
        let mut lc = LeastConn::new(2);
        let down = Candidate {
            eligible: false,
            ..c(1, 0)
        };
        assert_eq!(lc.pick(&[down, down]), None);
        assert_eq!(lc.pick(&[]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn weights_converge_when_load_follows_picks(weights in proptest::collection::vec(1u32..10, 1..6)) {
            let mut lc = LeastConn::new(weights.len());
            let mut servers: Vec<Candidate> = weights.iter().map(|&w| c(w, 0)).collect();
            let total: u32 = weights.iter().sum();
            let rounds = 50;
            for _ in 0..total * rounds {
                let i = lc.pick(&servers).unwrap_or(0);
                servers[i].in_flight += 1; // requests never finish: load grows with picks
            }
            for (s, w) in servers.iter().zip(&weights) {
                // Within one request of the exact weighted share.
                prop_assert!(s.in_flight.abs_diff(w * rounds) <= 1, "{:?} for weights {:?}", servers, weights);
            }
        }
    }
}
