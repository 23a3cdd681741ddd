//! The generic cell rate algorithm: one number per client, its theoretical
//! arrival time (TAT), decides every request. Pure: time comes in as an
//! argument, in nanoseconds on any clock that does not go backwards.
//!
//! A request at `now` is admitted when `max(tat, now) + interval - now` stays
//! within `burst × interval`; the client's TAT then moves one interval on.
//! So `burst` requests pass at once, then one per `interval`, the behaviour of
//! nginx `limit_req ... nodelay` (whose `burst=N` admits N + 1 at once; here
//! `burst` is the whole allowance). A TAT at or before `now` is the same as no
//! state at all, which is what lets idle buckets be forgotten.

use std::time::Duration;

const NANOS_PER_SEC: f64 = 1e9;

/// One rate limit's parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gcra {
    /// Time between requests at the sustained rate, at least 1 ns.
    interval_ns: u64,
    /// `burst × interval`: how far ahead of `now` a TAT may run.
    tolerance_ns: u64,
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Admitted; store `tat` for the client.
    Allow { tat: u64 },
    /// Refused; the client's state is unchanged. A request sent `wait` later
    /// (and nothing admitted for this client meanwhile) is admitted.
    Deny { wait: Duration },
}

impl Gcra {
    /// `rate_per_sec` above 0, `burst` at least 1 (both clamped).
    pub fn new(rate_per_sec: f64, burst: u32) -> Gcra {
        let interval_ns = (NANOS_PER_SEC / rate_per_sec).round();
        let interval_ns = if interval_ns.is_finite() && interval_ns >= 1.0 {
            // Saturates at u64::MAX for absurdly slow rates.
            interval_ns as u64
        } else if interval_ns.is_nan() || interval_ns < 1.0 {
            1
        } else {
            u64::MAX
        };
        Gcra {
            interval_ns,
            tolerance_ns: interval_ns.saturating_mul(u64::from(burst.max(1))),
        }
    }

    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance_ns
    }

    /// Decides a request at `now` for a client whose stored TAT is `tat`
    /// (0 for a client with no state).
    pub fn check(&self, tat: u64, now: u64) -> Decision {
        let next = tat.max(now).saturating_add(self.interval_ns);
        let ahead = next - now;
        if ahead <= self.tolerance_ns {
            Decision::Allow { tat: next }
        } else {
            Decision::Deny {
                wait: Duration::from_nanos(ahead - self.tolerance_ns),
            }
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, so a client that waits it is
/// never early, and at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_at_once_then_the_rate() {
        let gcra = Gcra::new(10.0, 5);
        let now = 7 * SEC;
        let mut tat = 0;
        let mut admitted = 0;
        for _ in 0..50 {
            if let Decision::Allow { tat: next } = gcra.check(tat, now) {
                tat = next;
                admitted += 1;
            }
        }
        assert_eq!(admitted, 5);
        // 100 ms later exactly one more fits, and then none.
        let later = now + SEC / 10;
        let Decision::Allow { tat: next } = gcra.check(tat, later) else {
            panic!("one request per interval is admitted");
        };
        assert!(matches!(gcra.check(next, later), Decision::Deny { .. }));
    }

    #[test]
    fn the_wait_is_the_time_to_the_next_free_slot() {
        let gcra = Gcra::new(6.0 / 60.0, 1);
        let Decision::Allow { tat } = gcra.check(0, SEC) else {
            panic!("a fresh client is admitted");
        };
        let Decision::Deny { wait } = gcra.check(tat, SEC + SEC / 4) else {
            panic!("a second request within 10 s is refused");
        };
        assert_eq!(wait, Duration::from_millis(9_750));
        assert_eq!(retry_after_secs(wait), 10);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn extreme_parameters_do_not_overflow() {
        let fast = Gcra::new(1e12, u32::MAX);
        assert_eq!(fast.interval_ns(), 1);
        assert!(matches!(fast.check(u64::MAX - 1, u64::MAX), Decision::Allow { .. }));
        let slow = Gcra::new(1e-30, u32::MAX);
        assert_eq!(slow.tolerance_ns(), u64::MAX);
        assert!(matches!(slow.check(0, 5), Decision::Allow { .. }));
    }

    /// Runs `times` (sorted) through one client's bucket; returns, per
    /// request, `None` when admitted or the wait when refused, and the TAT
    /// before each request (plus the last one after them all).
    fn run(gcra: &Gcra, times: &[u64]) -> (Vec<Option<Duration>>, Vec<u64>) {
        let mut tat = 0;
        let mut out = Vec::new();
        let mut tats = Vec::new();
        for &t in times {
            tats.push(tat);
            match gcra.check(tat, t) {
                Decision::Allow { tat: next } => {
                    tat = next;
                    out.push(None);
                }
                Decision::Deny { wait } => out.push(Some(wait)),
            }
        }
        tats.push(tat);
        (out, tats)
    }

    fn admits(decision: Decision) -> bool {
        matches!(decision, Decision::Allow { .. })
    }

    fn arrivals() -> impl Strategy<Value = (f64, u32, Vec<u64>)> {
        (
            prop_oneof![0.5f64..5.0, 5.0f64..200.0, 200.0f64..100_000.0],
            1u32..20,
            // Gaps from 0 (bursts) to several seconds.
            prop::collection::vec(prop_oneof![Just(0u64), 0u64..SEC / 50, 0u64..3 * SEC], 1..300),
        )
            .prop_map(|(rate, burst, gaps)| {
                let mut t = 1_000 * SEC;
                let times = gaps
                    .into_iter()
                    .map(|g| {
                        t += g;
                        t
                    })
                    .collect();
                (rate, burst, times)
            })
    }

    proptest! {
        /// In every window [a, b] the admitted requests number at most
        /// burst + rate × (b − a).
        #[test]
        fn never_admits_more_than_burst_plus_rate_times_t((rate, burst, times) in arrivals()) {
            let gcra = Gcra::new(rate, burst);
            let (decisions, _) = run(&gcra, &times);
            let admitted: Vec<u64> = times
                .iter()
                .zip(&decisions)
                .filter(|(_, d)| d.is_none())
                .map(|(t, _)| *t)
                .collect();
            for (i, start) in admitted.iter().enumerate() {
                for (j, end) in admitted.iter().enumerate().skip(i) {
                    let count = (j - i + 1) as u64;
                    // In exact integer terms: (count − burst) intervals fit in the window.
                    let allowed = u64::from(burst) + (end - start) / gcra.interval_ns();
                    prop_assert!(
                        count <= allowed,
                        "{count} admitted in {} ns at {rate}/s burst {burst}", end - start
                    );
                }
            }
        }

        /// A refused client that comes back after `Retry-After` seconds, or
        /// after the exact wait, is admitted; a moment earlier it is not.
        #[test]
        fn retry_after_is_never_early((rate, burst, times) in arrivals()) {
            let gcra = Gcra::new(rate, burst);
            let (decisions, tats) = run(&gcra, &times);
            for ((t, d), tat) in times.iter().zip(&decisions).zip(&tats) {
                let Some(wait) = d else { continue };
                let exact = t + wait.as_nanos() as u64;
                prop_assert!(admits(gcra.check(*tat, exact)));
                prop_assert!(!admits(gcra.check(*tat, exact - 1)));
                let header = t + retry_after_secs(*wait) * SEC;
                prop_assert!(admits(gcra.check(*tat, header)));
            }
        }

        /// A burst after a long enough pause is always admitted whole.
        #[test]
        fn an_idle_client_gets_its_whole_burst_back((rate, burst, times) in arrivals()) {
            let gcra = Gcra::new(rate, burst);
            let (_, tats) = run(&gcra, &times);
            let mut tat = *tats.last().unwrap_or(&0);
            let rested = times.last().unwrap() + gcra.tolerance_ns() + gcra.interval_ns();
            for _ in 0..burst {
                match gcra.check(tat, rested) {
                    Decision::Allow { tat: next } => tat = next,
                    Decision::Deny { .. } => prop_assert!(false, "burst not restored"),
                }
            }
            prop_assert!(!admits(gcra.check(tat, rested)));
        }
    }
}
