//! Rate limiting: `[rate_limits.*]` as GCRA buckets keyed by client, kept in
//! this process (`local`) or in Redis (`redis`, shared by every instance).
//! The algorithm (`gcra`) is pure; the stores hold one number per client.

pub mod gcra;
mod local;
mod redis;

pub use gcra::{Decision, Gcra, retry_after_secs};
pub use local::LocalStore;
pub use redis::{RedisRate, RedisStore, bucket_key};

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::config::{Config, LimitKey, LimitStore, RateLimit, RateLimitId, RedisOnError};

/// What a request gets from its route's rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// 429; the request is admitted if sent again `retry_after` later.
    Limited {
        retry_after: Duration,
    },
    /// 503: Redis cannot decide and `on_error = "deny"`.
    Unavailable,
}

/// Every rate limit of a config, by `RateLimitId`.
#[derive(Debug, Default)]
pub struct Limits {
    limiters: Vec<Limiter>,
    redis: Option<Arc<RedisStore>>,
}

/// One `[rate_limits.NAME]` and where its buckets live.
#[derive(Debug)]
pub struct Limiter {
    spec: RateLimit,
    gcra: Gcra,
    store: Store,
}

#[derive(Debug)]
enum Store {
    Local(Arc<LocalStore>),
    Redis { store: Arc<RedisStore>, rate: RedisRate },
}

impl Limits {
    /// The limiters of `config`. Building connects to nothing. With
    /// `previous` (the running snapshot's, on a reload), a limit whose
    /// settings did not change keeps its clients' buckets, and an unchanged
    /// `[redis]` keeps its connections.
    pub fn build(config: &Config, previous: Option<&Limits>) -> Limits {
        let workers = config.global.workers.max(1);
        let redis = config.redis.as_ref().and_then(|r| {
            let same = previous
                .and_then(|p| p.redis.clone())
                .filter(|old| old.matches(r, workers));
            same.or_else(|| match RedisStore::new(&r.url, r.on_error, r.timeout, workers) {
                Ok(store) => Some(Arc::new(store)),
                // The config validated this URL with the same parser.
                Err(error) => {
                    tracing::error!(%error, "invalid redis url");
                    None
                }
            })
        });
        let limiters = config
            .rate_limits
            .iter()
            .map(|spec| {
                let gcra = Gcra::new(spec.rate_per_sec, spec.burst);
                let store = match spec.store {
                    LimitStore::Local => Store::Local(
                        previous
                            .and_then(|p| p.local_store(spec))
                            .unwrap_or_else(|| Arc::new(LocalStore::new(spec.max_keys, workers))),
                    ),
                    LimitStore::Redis => match &redis {
                        Some(store) => Store::Redis {
                            store: store.clone(),
                            rate: RedisRate::new(&gcra, spec.burst),
                        },
                        // Unreachable with a validated config; never unlimited.
                        None => Store::Local(Arc::new(LocalStore::new(spec.max_keys, workers))),
                    },
                };
                Limiter {
                    spec: spec.clone(),
                    gcra,
                    store,
                }
            })
            .collect();
        Limits { limiters, redis }
    }

    pub fn get(&self, id: RateLimitId) -> Option<&Limiter> {
        self.limiters.get(id.0)
    }

    /// The `[redis]` store, when the config has one.
    pub fn redis(&self) -> Option<&RedisStore> {
        self.redis.as_deref()
    }

    fn local_store(&self, spec: &RateLimit) -> Option<Arc<LocalStore>> {
        self.limiters.iter().find_map(|l| match &l.store {
            Store::Local(store) if l.spec == *spec => Some(store.clone()),
            _ => None,
        })
    }
}

impl Limiter {
    /// What the limit counts requests by.
    pub fn key(&self) -> &LimitKey {
        &self.spec.key
    }

    /// Decides a request whose key is `key` (`None`: the request lacks it;
    /// every such request shares one bucket).
    pub async fn check(&self, key: Option<&[u8]>) -> Verdict {
        match &self.store {
            Store::Local(store) => match store.check(&self.gcra, key, now_ns()) {
                Decision::Allow { .. } => Verdict::Allow,
                Decision::Deny { wait } => Verdict::Limited { retry_after: wait },
            },
            Store::Redis { store, rate } => {
                let bucket = bucket_key(&self.spec.name, key);
                // Boxed: the Redis exchange is a large future, and every
                // request's future would otherwise carry room for it.
                match Box::pin(store.check(&bucket, *rate)).await {
                    Ok(None) => Verdict::Allow,
                    Ok(Some(wait)) => Verdict::Limited { retry_after: wait },
                    Err(_) => match store.on_error() {
                        RedisOnError::Allow => Verdict::Allow,
                        RedisOnError::Deny => Verdict::Unavailable,
                    },
                }
            }
        }
    }
}

impl RedisStore {
    fn matches(&self, redis: &crate::config::Redis, workers: usize) -> bool {
        self.settings() == (redis.url.as_str(), redis.on_error, redis.timeout, workers)
    }
}

/// Nanoseconds on a monotonic clock that starts with the process.
pub fn now_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}
