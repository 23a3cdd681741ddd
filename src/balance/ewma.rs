//! `ewma`: peak-EWMA latency × (in-flight + 1) / weight, the cost that power
//! of two choices minimises (Linkerd's balancer). The latency estimate itself
//! is kept per server by `upstream::health::PeakEwma`.

use super::Candidate;

pub fn cost(c: &Candidate) -> f64 {
    c.latency_us * f64::from(c.in_flight.saturating_add(1)) / f64::from(c.weight.max(1))
}

#[cfg(test)]
mod tests {
    use super::super::PowerOfTwo;
    use super::*;

    #[test]
    fn a_ten_times_slower_server_gets_little_traffic() {
        let mut p2c = PowerOfTwo::new(42);
        let mut servers = vec![
            Candidate {
                weight: 1,
                eligible: true,
                in_flight: 0,
                latency_us: 1_000.0
            };
            3
        ];
        servers[1].latency_us = 10_000.0;
        let mut counts = [0; 3];
        for _ in 0..10_000 {
            counts[p2c.pick(&servers, cost).unwrap()] += 1;
        }
        assert!(counts[1] < 1_500, "{counts:?}");
    }
}
