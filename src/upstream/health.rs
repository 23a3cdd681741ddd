//! Per-server health and latency as seen by requests: passive failure
//! counting (`max_fails` within `fail_timeout`) and the peak-EWMA latency
//! estimate that `balance = "ewma"` uses. Lock-free: every worker updates the
//! same atomics, and a lost race only blurs a statistic.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Milliseconds since the first call in this process: a cheap monotonic clock
/// that fits in an atomic.
pub fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `now_ms` at `instant`, for a caller that has just read the clock.
pub fn ms_at(instant: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    instant
        .saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
}

/// nginx's passive health check: `max_fails` consecutive failures take the
/// server out for `fail_timeout`; after that it gets traffic again.
#[derive(Debug)]
pub struct PassiveHealth {
    max_fails: AtomicU32,
    fail_timeout_ms: AtomicU64,
    fails: AtomicU32,
    down_until_ms: AtomicU64,
}

impl PassiveHealth {
    /// `max_fails = 0` turns passive checks off.
    pub fn new(max_fails: u32, fail_timeout: Duration) -> Self {
        PassiveHealth {
            max_fails: AtomicU32::new(max_fails),
            fail_timeout_ms: AtomicU64::new(fail_timeout.as_millis() as u64),
            fails: AtomicU32::new(0),
            down_until_ms: AtomicU64::new(0),
        }
    }

    /// New settings from a reload; the failure count and verdict stay.
    pub fn reconfigure(&self, max_fails: u32, fail_timeout: Duration) {
        self.max_fails.store(max_fails, Ordering::Relaxed);
        self.fail_timeout_ms
            .store(fail_timeout.as_millis() as u64, Ordering::Relaxed);
    }

    /// Forgets failures and brings the server back now.
    pub fn reset(&self) {
        self.fails.store(0, Ordering::Relaxed);
        if self.down_until_ms.load(Ordering::Relaxed) > now_ms() {
            self.down_until_ms.store(now_ms(), Ordering::Relaxed);
        }
    }

    pub fn is_up(&self, now_ms: u64) -> bool {
        now_ms >= self.down_until_ms.load(Ordering::Relaxed)
    }

    /// When the server last came back from being marked down (0: never down).
    pub fn up_since_ms(&self) -> u64 {
        self.down_until_ms.load(Ordering::Relaxed)
    }

    /// Counts a failure; true when it took the server down.
    pub fn record_failure(&self, now_ms: u64) -> bool {
        let max_fails = self.max_fails.load(Ordering::Relaxed);
        if max_fails == 0 {
            return false;
        }
        let fails = self.fails.fetch_add(1, Ordering::Relaxed) + 1;
        if fails >= max_fails && self.is_up(now_ms) {
            self.fails.store(0, Ordering::Relaxed);
            let fail_timeout_ms = self.fail_timeout_ms.load(Ordering::Relaxed);
            self.down_until_ms.store(now_ms + fail_timeout_ms, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// A good answer resets the count: failures must be consecutive.
    pub fn record_success(&self) {
        if self.fails.load(Ordering::Relaxed) != 0 {
            self.fails.store(0, Ordering::Relaxed);
        }
    }
}

/// Peak-EWMA of response latency (Linkerd's estimator): a slower sample is
/// taken at once, faster ones pull the estimate down with a time constant, so
/// a server that turns slow loses traffic at once and wins it back gradually.
#[derive(Debug)]
pub struct PeakEwma {
    /// f64 microseconds, as bits.
    estimate: AtomicU64,
    updated_ms: AtomicU64,
}

/// What a server with no samples yet is assumed to take.
const DEFAULT_LATENCY_US: f64 = 1_000.0;
const DECAY_MS: f64 = 2_000.0;

impl Default for PeakEwma {
    fn default() -> Self {
        PeakEwma {
            estimate: AtomicU64::new(DEFAULT_LATENCY_US.to_bits()),
            updated_ms: AtomicU64::new(0),
        }
    }
}

impl PeakEwma {
    pub fn observe(&self, sample: Duration, now_ms: u64) {
        let sample_us = sample.as_secs_f64() * 1e6;
        let elapsed = now_ms.saturating_sub(self.updated_ms.load(Ordering::Relaxed)) as f64;
        let keep = (-elapsed / DECAY_MS).exp();
        let current = f64::from_bits(self.estimate.load(Ordering::Relaxed)) * keep;
        let next = if sample_us > current {
            sample_us
        } else {
            current + sample_us * (1.0 - keep)
        };
        self.estimate.store(next.max(1.0).to_bits(), Ordering::Relaxed);
        self.updated_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The estimate as of `now_ms`: it also decays while no samples come in,
    /// so a server that was slow and got no traffic since is tried again.
    pub fn latency_us(&self, now_ms: u64) -> f64 {
        let estimate = f64::from_bits(self.estimate.load(Ordering::Relaxed));
        let idle = now_ms.saturating_sub(self.updated_ms.load(Ordering::Relaxed)) as f64;
        (estimate * (-idle / DECAY_MS).exp()).max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_take_a_server_down_for_fail_timeout() {
        let h = PassiveHealth::new(3, Duration::from_secs(10));
        assert!(!h.record_failure(1_000));
        assert!(!h.record_failure(1_001));
        h.record_success();
        assert!(!h.record_failure(1_002));
        assert!(!h.record_failure(1_003));
        assert!(h.record_failure(1_004), "third consecutive failure");
        assert!(!h.is_up(1_005));
        assert!(!h.is_up(11_003));
        assert!(h.is_up(11_004));
    }

    #[test]
    fn zero_max_fails_never_takes_a_server_down() {
        let h = PassiveHealth::new(0, Duration::from_secs(10));
        for t in 0..100 {
            assert!(!h.record_failure(t));
        }
        assert!(h.is_up(100));
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let e = PeakEwma::default();
        e.observe(Duration::from_millis(50), 0);
        assert!((e.latency_us(0) - 50_000.0).abs() < 1.0);
        e.observe(Duration::from_millis(1), 100);
        assert!(
            e.latency_us(100) > 40_000.0,
            "one fast sample shortly after barely moves it"
        );
        e.observe(Duration::from_millis(1), 10_100);
        assert!(
            e.latency_us(10_100) < 2_000.0,
            "after several time constants it has recovered"
        );
        assert!(
            e.latency_us(30_000) < 1_000.0,
            "an idle estimate decays, so the server is probed again"
        );
    }
}
