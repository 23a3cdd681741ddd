//! The rate limiter's decision: the pure GCRA step, and the local store
//! (hash with the secret, shard lock, map lookup, GCRA) for one hot key and
//! for many distinct keys that already have buckets. Time is simulated, so
//! every run does the same work.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fulcrum::limit::{Decision, Gcra, LocalStore};

const SEC: u64 = 1_000_000_000;
/// Simulated time between two requests.
const STEP_NS: u64 = 1_000;
/// Clients for the many-keys case: more than fit in the CPU caches.
const CLIENTS: usize = 100_000;

/// `rate = "100/s", burst = 200`, as in `examples/ratelimit.toml`.
fn gcra() -> Gcra {
    Gcra::new(100.0, 200)
}

fn gcra_check(c: &mut Criterion) {
    let gcra = gcra();
    let mut tat = 0;
    let mut now = SEC;
    c.bench_function("limit/gcra_check", |b| {
        b.iter(|| {
            now += STEP_NS;
            let decision = gcra.check(black_box(tat), black_box(now));
            if let Decision::Allow { tat: next } = decision {
                tat = next;
            }
            decision
        })
    });
}

fn local_store(c: &mut Criterion) {
    let gcra = gcra();
    let mut group = c.benchmark_group("limit/local_store");

    // One client hammering: mostly refused once its burst is spent.
    let store = LocalStore::new(200_000, 1);
    let mut now = SEC;
    group.bench_function("hot_key", |b| {
        b.iter(|| {
            now += STEP_NS;
            store.check(&gcra, black_box(Some(b"203.0.113.7".as_slice())), now)
        })
    });

    // Many clients, each with a bucket already, visited in turn.
    let keys: Vec<String> = (0..CLIENTS)
        .map(|i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 255, i & 255))
        .collect();
    let store = LocalStore::new(200_000, 1);
    let mut now = SEC;
    for key in &keys {
        store.check(&gcra, Some(key.as_bytes()), now);
    }
    assert_eq!(store.bucket_count(), CLIENTS, "every client has its own bucket");
    let mut next = 0;
    group.bench_function("100k_keys", |b| {
        b.iter(|| {
            now += STEP_NS;
            next = (next + 1) % CLIENTS;
            store.check(&gcra, black_box(Some(keys[next].as_bytes())), now)
        })
    });
    group.finish();
}

criterion_group!(benches, gcra_check, local_store);
criterion_main!(benches);
