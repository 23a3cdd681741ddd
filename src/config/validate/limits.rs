//! `[rate_limits.*]` and `[redis]` into `RateLimit` and `Redis`: ranges the
//! limiter's integer clock can hold, defaults, and a Redis URL the client
//! library accepts.

use std::time::Duration;

use super::positive;
use crate::config::Sink;
use crate::config::model::*;
use crate::config::schema::{OnErrorSpec, StoreSpec};
use crate::config::sections::Specs;

/// Slowest rate: one request an hour. With `MAX_BURST` this keeps
/// `burst × interval` within the limiter's 64-bit nanosecond clock.
const MIN_RATE_PER_SEC: f64 = 1.0 / 3600.0;
/// Fastest rate: the Redis store counts in microseconds.
const MAX_RATE_PER_SEC: f64 = 1_000_000.0;
const MAX_BURST: u32 = 1_000_000;
const DEFAULT_MAX_KEYS: usize = 100_000;
const MAX_KEYS: usize = 100_000_000;
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(100);

/// Every rate limit that deserialized, in file order.
pub(super) fn rate_limits(specs: &Specs, sink: &mut Sink) -> Vec<RateLimit> {
    specs
        .rate_limits
        .iter()
        .map(|limit| {
            let spec = &limit.spec;
            let rate_per_sec = spec.rate.get_ref().0;
            if !(MIN_RATE_PER_SEC..=MAX_RATE_PER_SEC).contains(&rate_per_sec) {
                sink.error(Some(spec.rate.span()), "rate must be between \"1/h\" and \"1000000/s\"");
            }
            let burst = spec.burst.as_ref().map_or(1, |b| *b.get_ref());
            if let Some(b) = &spec.burst
                && !(1..=MAX_BURST).contains(b.get_ref())
            {
                sink.error(Some(b.span()), format!("burst must be between 1 and {MAX_BURST}"));
            }
            let max_keys = spec.max_keys.as_ref().map_or(DEFAULT_MAX_KEYS, |m| *m.get_ref());
            if let Some(m) = &spec.max_keys
                && !(1..=MAX_KEYS).contains(m.get_ref())
            {
                sink.error(Some(m.span()), format!("max_keys must be between 1 and {MAX_KEYS}"));
            }
            let store = match spec.store.as_ref().map(|s| (*s.get_ref(), s.span())) {
                None | Some((StoreSpec::Local, _)) => LimitStore::Local,
                Some((StoreSpec::Redis, span)) => {
                    if !specs.names.has_redis {
                        sink.error(Some(span), "store = \"redis\" needs a [redis] section");
                    }
                    LimitStore::Redis
                }
            };
            RateLimit {
                name: limit.name.clone(),
                rate_per_sec,
                burst: burst.clamp(1, MAX_BURST),
                key: spec.key.as_ref().map_or(LimitKey::ClientIp, |k| k.0.clone()),
                store,
                max_keys: max_keys.clamp(1, MAX_KEYS),
            }
        })
        .collect()
}

pub(super) fn redis(specs: &Specs, sink: &mut Sink) -> Option<Redis> {
    let spec = &specs.redis.as_ref()?.spec;
    let url = spec.url.get_ref();
    if let Err(e) = redis::Client::open(url.as_str()) {
        sink.error(
            Some(spec.url.span()),
            format!(
                "invalid url {url:?}: {e} (expected redis://[:PASSWORD@]HOST:PORT[/DB]; rediss:// is not supported)"
            ),
        );
    }
    Some(Redis {
        url: url.clone(),
        on_error: match spec.on_error {
            None | Some(OnErrorSpec::Allow) => RedisOnError::Allow,
            Some(OnErrorSpec::Deny) => RedisOnError::Deny,
        },
        timeout: positive(spec.timeout.as_ref(), DEFAULT_REDIS_TIMEOUT, "timeout", sink),
    })
}
