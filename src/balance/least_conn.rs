//! `least_conn`: the server with the fewest in-flight requests per unit of
//! weight; equal servers take turns.

use super::Candidate;

#[derive(Debug, Clone, Default)]
pub struct LeastConn {
    /// Where the next scan starts, so ties do not always go to the first.
    offset: usize,
}

impl LeastConn {
    pub fn pick(&mut self, candidates: &[Candidate]) -> Option<usize> {
        let n = candidates.len();
        if n == 0 {
            return None;
        }
        self.offset = (self.offset + 1) % n;
        let mut best: Option<usize> = None;
        for step in 0..n {
            let i = (self.offset + step) % n;
            let c = &candidates[i];
            if !c.eligible {
                continue;
            }
            // in_flight/weight < best.in_flight/best.weight, without division.
            let fewer = best.is_none_or(|b| {
                let b = &candidates[b];
                u64::from(c.in_flight) * u64::from(b.weight.max(1))
                    < u64::from(b.in_flight) * u64::from(c.weight.max(1))
            });
            if fewer {
                best = Some(i);
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(weight: u32, in_flight: u32) -> Candidate {
        Candidate {
            weight,
            eligible: true,
            in_flight,
            latency_us: 1.0,
        }
    }

    #[test]
    fn fewest_in_flight_wins() {
        let mut lc = LeastConn::default();
        for _ in 0..10 {
            assert_eq!(lc.pick(&[c(1, 5), c(1, 2), c(1, 9)]), Some(1));
        }
    }

    #[test]
    fn ties_take_turns() {
        let mut lc = LeastConn::default();
        let picks: Vec<_> = (0..6).map(|_| lc.pick(&[c(1, 0), c(1, 0), c(1, 0)]).unwrap()).collect();
        let mut seen = picks.clone();
        seen.sort();
        seen.dedup();
        assert_eq!(seen, vec![0, 1, 2], "{picks:?}");
    }

    #[test]
    fn weights_converge_when_load_follows_picks() {
        let mut lc = LeastConn::default();
        let mut servers = [c(3, 0), c(1, 0)];
        let mut counts = [0u32; 2];
        for _ in 0..400 {
            let i = lc.pick(&servers).unwrap();
            counts[i] += 1;
            servers[i].in_flight += 1; // requests never finish: load grows with picks
        }
        assert!((290..=310).contains(&counts[0]), "{counts:?}");
    }
}
