//! `Balancer::pick` for every algorithm over 3 and 32 servers, all eligible,
//! with mixed weights, in-flight counts and latencies, as `UpstreamPool`
//! hands them over. The hash algorithms get a different key each pick.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use fulcrum::balance::{Balancer, Candidate, hash_key};
use fulcrum::config::Balance;

const KINDS: [(&str, Balance); 5] = [
    ("round_robin", Balance::RoundRobin),
    ("least_conn", Balance::LeastConn),
    // `ip_hash` and `hash` are the same ring; only the key's source differs.
    ("hash_ring", Balance::Hash),
    ("random_p2c", Balance::Random),
    ("ewma_p2c", Balance::Ewma),
];

/// Distinct client keys, cycled through so the ring lookup is not always
/// the same cache line.
const KEYS: usize = 1024;

fn servers(n: usize) -> (Vec<String>, Vec<Candidate>) {
    let ids = (0..n)
        .map(|i| format!("10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .collect();
    let candidates = (0..n)
        .map(|i| Candidate {
            weight: 1 + (i % 3) as u32,
            eligible: true,
            in_flight: (i * 7 % 5) as u32,
            latency_us: 800.0 + (i * 131 % 400) as f64,
        })
        .collect();
    (ids, candidates)
}

fn pick(c: &mut Criterion) {
    let keys: Vec<u64> = (0..KEYS)
        .map(|i| hash_key(format!("192.168.{}.{}", i / 256, i % 256).as_bytes()))
        .collect();
    let mut group = c.benchmark_group("balance/pick");
    for n in [3, 32] {
        let (ids, candidates) = servers(n);
        let identities: Vec<(&str, u32)> = ids
            .iter()
            .zip(&candidates)
            .map(|(id, c)| (id.as_str(), c.weight))
            .collect();
        for (name, kind) in KINDS {
            let mut balancer = Balancer::new(kind, &identities, 42);
            let mut next = 0;
            group.bench_with_input(BenchmarkId::new(name, n), &candidates, |b, candidates| {
                b.iter(|| {
                    next = (next + 1) % KEYS;
                    balancer.pick(black_box(candidates), Some(keys[next]))
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
