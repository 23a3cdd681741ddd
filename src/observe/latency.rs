//! A per-server latency histogram cheap enough for the request path: fixed,
//! log-spaced buckets of relaxed atomic counters (one increment per
//! request, no lock, no allocation). Percentiles are worked out from the
//! counts when someone reads them (the admin API and dashboard).
//!
//! Bucket layout (as in HdrHistogram, with 3 bits of precision): values
//! below 8 µs get a bucket each; above, every power of two is split into 8
//! equal buckets, so a bucket is at most 1/8 of its lower bound wide and a
//! percentile read at a bucket's midpoint is within about 6 % of the truth.
//! Values beyond the top bucket (about 134 s) count in the top bucket.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bits of each value kept below its leading one: 8 sub-buckets per octave.
const SUB_BITS: u32 = 3;
const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Values are tracked up to 2^27 µs ≈ 134 s.
const MAX_BITS: u32 = 27;
/// 8 linear buckets for 0..8 µs, then 8 per octave from 2^3 to 2^27.
pub const BUCKET_COUNT: usize = (SUB_BUCKETS + (MAX_BITS - SUB_BITS) as u64 * SUB_BUCKETS) as usize;

/// Response latencies of one server, in microseconds.
#[derive(Debug)]
pub struct LatencyHistogram {
    counts: [AtomicU64; BUCKET_COUNT],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl LatencyHistogram {
    /// Counts one sample: one relaxed increment.
    pub fn record(&self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counts as they are now (each read on its own: a sample landing
    /// meanwhile may or may not be in it).
    pub fn counts(&self) -> [u64; BUCKET_COUNT] {
        std::array::from_fn(|i| self.counts[i].load(Ordering::Relaxed))
    }
}

/// The bucket a value of `micros` counts in.
pub fn bucket_index(micros: u64) -> usize {
    if micros < SUB_BUCKETS {
        return micros as usize;
    }
    let top = (63 - micros.leading_zeros()).min(MAX_BITS - 1);
    if top == MAX_BITS - 1 && micros >> top >= 2 {
        return BUCKET_COUNT - 1;
    }
    let shift = top - SUB_BITS;
    let sub = (micros >> shift) & (SUB_BUCKETS - 1);
    (SUB_BUCKETS + u64::from(shift) * SUB_BUCKETS + sub) as usize
}

/// The values bucket `index` holds: `lower..upper` in µs.
pub fn bucket_bounds(index: usize) -> (u64, u64) {
    let index = index as u64;
    if index < SUB_BUCKETS {
        return (index, index + 1);
    }
    let shift = (index - SUB_BUCKETS) / SUB_BUCKETS;
    let sub = (index - SUB_BUCKETS) % SUB_BUCKETS;
    let lower = (SUB_BUCKETS + sub) << shift;
    (lower, lower + (1 << shift))
}

/// The `q` quantile (0 < q ≤ 1) of the samples counted in `counts`, in µs:
/// the midpoint of the bucket holding the sample of rank ⌈q·n⌉. `None`
/// without samples.
pub fn quantile_us(counts: &[u64; BUCKET_COUNT], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (index, count) in counts.iter().enumerate() {
        seen += count;
        if seen >= rank {
            let (lower, upper) = bucket_bounds(index);
            return Some((lower + upper) as f64 / 2.0);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn histogram_of(samples_us: &[u64]) -> LatencyHistogram {
        let h = LatencyHistogram::default();
        for &us in samples_us {
            h.record(Duration::from_micros(us));
        }
        h
    }

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        assert_eq!(BUCKET_COUNT, 200);
        assert_eq!(bucket_bounds(0), (0, 1));
        for i in 1..BUCKET_COUNT {
            assert_eq!(bucket_bounds(i - 1).1, bucket_bounds(i).0, "bucket {i}");
        }
        assert_eq!(bucket_bounds(BUCKET_COUNT - 1).1, 1 << MAX_BITS);
    }

    #[test]
    fn huge_values_count_in_the_top_bucket() {
        assert_eq!(bucket_index((1 << MAX_BITS) - 1), BUCKET_COUNT - 1);
        assert_eq!(bucket_index(1 << MAX_BITS), BUCKET_COUNT - 1);
        assert_eq!(bucket_index(u64::MAX), BUCKET_COUNT - 1);
        let h = histogram_of(&[]);
        h.record(Duration::from_secs(100_000));
        assert_eq!(h.counts()[BUCKET_COUNT - 1], 1);
    }

    #[test]
    fn median_and_tail_of_a_mixed_load() {
        // 97 fast answers at 1 ms and 3 slow ones at 200 ms.
        let mut samples = vec![1_000; 97];
        samples.extend([200_000; 3]);
        let counts = histogram_of(&samples).counts();
        let p50 = quantile_us(&counts, 0.50).unwrap();
        let p99 = quantile_us(&counts, 0.99).unwrap();
        assert!((p50 - 1_000.0).abs() <= 1_000.0 * 0.07, "p50 {p50}");
        assert!((p99 - 200_000.0).abs() <= 200_000.0 * 0.07, "p99 {p99}");
        assert_eq!(quantile_us(&[0; BUCKET_COUNT], 0.5), None);
    }

    proptest! {
        #[test]
        fn every_value_lands_in_a_bucket_that_holds_it(us in 0u64..(1 << MAX_BITS)) {
            let (lower, upper) = bucket_bounds(bucket_index(us));
            prop_assert!(lower <= us && us < upper, "{us} in {lower}..{upper}");
            // Log spacing: a bucket is at most an eighth of its lower bound wide.
            prop_assert!(upper - lower <= (lower / 8).max(1));
        }

        #[test]
        fn quantiles_are_within_a_bucket_of_the_exact_ones(
            mut samples in proptest::collection::vec(1u64..100_000_000, 1..300),
            q in 0.01f64..=1.0,
        ) {
            let estimate = quantile_us(&histogram_of(&samples).counts(), q).unwrap();
            samples.sort_unstable();
            let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
            let exact = samples[rank - 1] as f64;
            prop_assert!((estimate - exact).abs() <= exact / 16.0 + 0.5, "q {q}: {estimate} vs {exact}");
        }
    }
}
