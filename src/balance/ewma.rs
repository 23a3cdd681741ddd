//! `ewma`: peak-EWMA latency × (in-flight + 1) / weight, the cost that power
//! of two choices minimises (Linkerd's balancer). The latency estimate itself
//! is kept per server by `upstream::health::PeakEwma`.

use super::Candidate;

/// Expected wait on this server: `+ 1` counts the request being placed, so
/// an idle server still costs its latency and idle servers compare by speed.
pub fn cost(c: &Candidate) -> f64 {
    c.latency_us * f64::from(c.in_flight.saturating_add(1)) / f64::from(c.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::super::PowerOfTwo;
    use super::*;

    fn servers(latencies_us: &[f64]) -> Vec<Candidate> {
        latencies_us
            .iter()
            .map(|&latency_us| Candidate {
                weight: 1,
                eligible: true,
                in_flight: 0,
                latency_us,
            })
            .collect()
    }

    fn counts(p2c: &mut PowerOfTwo, servers: &[Candidate], picks: usize) -> Vec<usize> {
        let mut counts = vec![0; servers.len()];
        for _ in 0..picks {
            if let Some(i) = p2c.pick(servers, cost) {
                counts[i] += 1;
            }
        }
        counts
    }

    #[test]
    fn a_ten_times_slower_server_gets_little_traffic() {
        let mut p2c = PowerOfTwo::new(42);
        let counts = counts(&mut p2c, &servers(&[1_000.0, 10_000.0, 1_000.0]), 10_000);
        assert!(counts[1] < 1_500, "{counts:?}");
    }

    #[test]
    fn a_server_that_recovers_gets_its_share_back() {
        let mut p2c = PowerOfTwo::new(5);
        let mut s = servers(&[1_000.0, 10_000.0, 1_000.0]);
        counts(&mut p2c, &s, 1_000);
        s[1].latency_us = 1_000.0;
        let counts = counts(&mut p2c, &s, 9_000);
        assert!((2_700..=3_300).contains(&counts[1]), "{counts:?}");
    }

    #[test]
    fn load_counts_not_latency_alone() {
        // 1 ms with 5 waiting is worse than 2 ms idle.
        let mut p2c = PowerOfTwo::new(9);
        let mut s = servers(&[1_000.0, 2_000.0]);
        s[0].in_flight = 5;
        assert_eq!(counts(&mut p2c, &s, 100), vec![0, 100]);
    }
}
