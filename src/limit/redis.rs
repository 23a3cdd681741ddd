//! The Redis store: every client's TAT in one Redis key, so that every
//! Fulcrum instance pointing at the same Redis enforces one limit together.
//!
//! One round trip per request: a Lua script (EVALSHA, EVAL when Redis
//! answers NOSCRIPT, as after a restart) reads the TAT, decides on Redis's
//! own clock (so instances need no clock agreement) and writes the new TAT
//! with a TTL that ends when the bucket would be full again. Each worker has
//! its own multiplexed connection (requests of one worker pipeline on it),
//! made lazily on that worker's runtime and re-made by the connection
//! manager after a failure.
//!
//! Failure: a request waits at most `[redis] timeout`; then `on_error`
//! applies. A worker that saw a failure stops asking Redis (its requests get
//! `on_error` at once) and probes it with PING in the background until it
//! answers. The first worker to go down and the last to come back log the
//! transition.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::config::RedisOnError;
use crate::server::worker::{self, PerWorker};

/// How often a worker that lost Redis tries it again.
const PROBE_INTERVAL: Duration = Duration::from_millis(250);
/// Client values longer than this are hashed into the Redis key.
const MAX_RAW_KEY_BYTES: usize = 64;

/// KEYS[1]: the client's bucket. ARGV[1]: the interval, ARGV[2]: burst ×
/// interval, both in microseconds. Returns 0 when the request is admitted,
/// else the microseconds to wait. A Lua number holds microseconds since
/// the epoch exactly (below 2^53).
const SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local ahead = tat + interval - now
if ahead > tolerance then return ahead - tolerance end
redis.call('SET', KEYS[1], string.format('%.0f', tat + interval), 'PX', math.ceil(ahead / 1000))
return 0
";

/// One `[redis]`: its connections (one per worker) and health.
#[derive(Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// As written in the config (it may hold a password: never logged).
    url: String,
    client: redis::Client,
    on_error: RedisOnError,
    timeout: Duration,
    script_sha: String,
    workers: Box<[PerWorker<WorkerRedis>]>,
    /// Workers that currently consider Redis down.
    down_workers: AtomicUsize,
}

#[derive(Debug, Default)]
struct WorkerRedis {
    conn: OnceLock<ConnectionManager>,
    down: AtomicBool,
    /// Requests this worker answered by `on_error`.
    errors: AtomicU64,
}

/// Redis could not decide: timed out, failed, or is known to be down.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A rate limit's parameters in the script's units.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisRate {
    interval_us: u64,
    tolerance_us: u64,
}

impl RedisRate {
    pub fn new(gcra: &super::Gcra, burst: u32) -> RedisRate {
        let interval_us = gcra.interval_ns().div_ceil(1000).max(1);
        RedisRate {
            interval_us,
            tolerance_us: interval_us.saturating_mul(u64::from(burst.max(1))),
        }
    }
}

impl RedisStore {
    /// A store for `url` (validated by the config); connects on first use.
    pub fn new(
        url: &str,
        on_error: RedisOnError,
        timeout: Duration,
        workers: usize,
    ) -> Result<RedisStore, redis::RedisError> {
        Ok(RedisStore {
            inner: Arc::new(Inner {
                url: url.to_string(),
                client: redis::Client::open(url)?,
                on_error,
                timeout,
                script_sha: redis::Script::new(SCRIPT).get_hash().to_string(),
                workers: (0..workers.max(1))
                    .map(|_| PerWorker::new(WorkerRedis::default()))
                    .collect(),
                down_workers: AtomicUsize::new(0),
            }),
        })
    }

    /// What it was built from: url, on_error, timeout, workers.
    pub fn settings(&self) -> (&str, RedisOnError, Duration, usize) {
        let inner = &self.inner;
        (&inner.url, inner.on_error, inner.timeout, inner.workers.len())
    }

    pub fn on_error(&self) -> RedisOnError {
        self.inner.on_error
    }

    /// Whether every worker that has used Redis can reach it.
    pub fn is_up(&self) -> bool {
        self.inner.down_workers.load(Ordering::Relaxed) == 0
    }

    /// Requests answered by `on_error` so far.
    pub fn errors(&self) -> u64 {
        self.inner
            .workers
            .iter()
            .map(|w| w.errors.load(Ordering::Relaxed))
            .sum()
    }

    /// Decides a request in bucket `key` (a full Redis key): `Ok(None)` to
    /// admit, `Ok(Some(wait))` to refuse. Must run on a tokio runtime: the
    /// connection's tasks live on the runtime of the worker that made it.
    pub async fn check(&self, key: &[u8], rate: RedisRate) -> Result<Option<Duration>, Unavailable> {
        let inner = &self.inner;
        let index = worker::current() % inner.workers.len();
        let slot = &inner.workers[index];
        if slot.down.load(Ordering::Relaxed) {
            slot.errors.fetch_add(1, Ordering::Relaxed);
            return Err(Unavailable);
        }
        let mut conn = match slot.conn.get() {
            Some(conn) => conn.clone(),
            None => match inner.connect() {
                Ok(conn) => slot.conn.get_or_init(|| conn).clone(),
                Err(error) => {
                    inner.went_down(index, &error.to_string());
                    return Err(Unavailable);
                }
            },
        };
        let attempts = async {
            match inner.run_script(&mut conn, key, rate).await {
                // A connection Redis closed (a restart) fails the first
                // request that uses it; the manager is reconnecting by now,
                // so one more try, within the same timeout, goes through.
                // (Should Redis have run the first, the client is charged
                // twice: rare, and on the strict side.)
                Err(e) if e.is_unrecoverable_error() => inner.run_script(&mut conn, key, rate).await,
                outcome => outcome,
            }
        };
        let outcome = tokio::time::timeout(inner.timeout, attempts).await;
        match outcome {
            Ok(Ok(0)) => Ok(None),
            Ok(Ok(wait_us)) => Ok(Some(Duration::from_micros(wait_us.unsigned_abs()))),
            Ok(Err(error)) => {
                inner.went_down(index, &error.to_string());
                Err(Unavailable)
            }
            Err(_elapsed) => {
                inner.went_down(index, &format!("no answer within {:?}", inner.timeout));
                Err(Unavailable)
            }
        }
    }
}

impl Inner {
    fn connect(&self) -> redis::RedisResult<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            // One attempt per reconnect: the probe decides when to try again.
            .set_number_of_retries(0);
        ConnectionManager::new_lazy_with_config(self.client.clone(), config)
    }

    /// EVALSHA; EVAL when Redis does not know the script (it then caches it).
    async fn run_script(&self, conn: &mut ConnectionManager, key: &[u8], rate: RedisRate) -> redis::RedisResult<i64> {
        let outcome = redis::cmd("EVALSHA")
            .arg(&self.script_sha)
            .arg(1)
            .arg(key)
            .arg(rate.interval_us)
            .arg(rate.tolerance_us)
            .query_async(conn)
            .await;
        match outcome {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                redis::cmd("EVAL")
                    .arg(SCRIPT)
                    .arg(1)
                    .arg(key)
                    .arg(rate.interval_us)
                    .arg(rate.tolerance_us)
                    .query_async(conn)
                    .await
            }
            other => other,
        }
    }

    /// Counts the request, and on this worker's first failure marks it down
    /// and starts probing.
    fn went_down(self: &Arc<Self>, index: usize, error: &str) {
        let slot = &self.workers[index];
        slot.errors.fetch_add(1, Ordering::Relaxed);
        if slot.down.swap(true, Ordering::Relaxed) {
            return;
        }
        if self.down_workers.fetch_add(1, Ordering::Relaxed) == 0 {
            let addr = self.client.get_connection_info().addr();
            match self.on_error {
                RedisOnError::Allow => tracing::warn!(
                    %addr, %error, on_error = "allow",
                    "redis unreachable; redis rate limits let requests through"
                ),
                RedisOnError::Deny => tracing::warn!(
                    %addr, %error, on_error = "deny",
                    "redis unreachable; requests under redis rate limits get 503"
                ),
            }
        }
        tokio::spawn(probe(Arc::downgrade(self), index));
    }
}

/// Pings Redis from worker `index` until it answers, then puts the worker
/// back in service. Ends early when the store is dropped (a reload).
async fn probe(inner: Weak<Inner>, index: usize) {
    loop {
        tokio::time::sleep(PROBE_INTERVAL).await;
        let Some(inner) = inner.upgrade() else { return };
        let slot = &inner.workers[index];
        let answered = match slot.conn.get() {
            Some(conn) => {
                let mut conn = conn.clone();
                let ping = redis::cmd("PING");
                let answer = tokio::time::timeout(inner.timeout, ping.query_async::<()>(&mut conn)).await;
                matches!(answer, Ok(Ok(())))
            }
            None => match inner.connect() {
                Ok(conn) => {
                    let _ = slot.conn.set(conn);
                    false
                }
                Err(_) => false,
            },
        };
        if answered {
            slot.down.store(false, Ordering::Relaxed);
            if inner.down_workers.fetch_sub(1, Ordering::Relaxed) == 1 {
                let addr = inner.client.get_connection_info().addr();
                tracing::info!(%addr, "redis reachable again");
            }
            return;
        }
    }
}

/// The Redis key of a client's bucket in limit `name`: the value itself when
/// short (readable in `redis-cli`), else its SHA-1; requests without the key
/// share `fulcrum:rl:NAME:none`.
pub fn bucket_key(name: &str, key: Option<&[u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + name.len() + MAX_RAW_KEY_BYTES);
    out.extend_from_slice(b"fulcrum:rl:");
    out.extend_from_slice(name.as_bytes());
    match key {
        None => out.extend_from_slice(b":none"),
        Some(value) if value.len() <= MAX_RAW_KEY_BYTES => {
            out.extend_from_slice(b":v:");
            out.extend_from_slice(value);
        }
        Some(value) => {
            out.extend_from_slice(b":h:");
            out.extend_from_slice(sha1_smol::Sha1::from(value).digest().to_string().as_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_keys_keep_short_values_and_hash_long_ones() {
        assert_eq!(bucket_key("api", None), b"fulcrum:rl:api:none");
        assert_eq!(bucket_key("api", Some(b"10.0.0.1")), b"fulcrum:rl:api:v:10.0.0.1");
        assert_eq!(bucket_key("api", Some(b"none")), b"fulcrum:rl:api:v:none");
        let long = [b'x'; 65];
        let key = bucket_key("api", Some(&long));
        assert!(key.starts_with(b"fulcrum:rl:api:h:"));
        assert_eq!(key.len(), "fulcrum:rl:api:h:".len() + 40);
        assert_ne!(key, bucket_key("api", Some(&[b'x'; 66])));
    }

    #[test]
    fn rates_convert_to_whole_microseconds() {
        let rate = RedisRate::new(&super::super::Gcra::new(10.0, 5), 5);
        assert_eq!(
            rate,
            RedisRate {
                interval_us: 100_000,
                tolerance_us: 500_000
            }
        );
        let fastest = RedisRate::new(&super::super::Gcra::new(1_000_000.0, 1), 1);
        assert_eq!(fastest.interval_us, 1);
    }
}
