//! The validated configuration the program runs on: every reference resolved to
//! an index, every duration and size parsed, every default filled in.
//!
//! Built only by `config::parse`/`config::load`; the rest of the program never
//! sees the user-facing schema.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// A whole, valid configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub global: Global,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub rate_limits: Vec<RateLimit>,
    /// Needed when a rate limit has `store = "redis"`.
    pub redis: Option<Redis>,
    /// Where it was read from (`None` for the embedded demo config or a test string).
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Global {
    /// Worker threads; 0 in the file is resolved to the number of cores here.
    pub workers: usize,
    pub shutdown_grace: Duration,
    /// `global.log_level`, used when `RUST_LOG` is not set.
    pub log_level: Option<String>,
    pub access_log: AccessLog,
    pub access_log_format: AccessLogFormat,
    pub admin_listen: Option<SocketAddr>,
    pub admin_token: Option<String>,
    /// The DNS server to ask for host names in `servers`; `None`: the
    /// system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub resolver: Option<SocketAddr>,
    /// A host name is resolved again when its TTL runs out, but at least
    /// this often (and at most once a second).
    pub dns_refresh: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    Off,
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    Combined,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub name: String,
    pub listen: SocketAddr,
    pub max_connections: usize,
    /// 0 = unlimited.
    pub max_connections_per_ip: usize,
    pub request_header_timeout: Duration,
    pub keepalive_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_body_bytes: u64,
    pub expose_upstream: bool,
    pub proxy_protocol: bool,
    /// Terminate TLS on this listener.
    pub tls: Option<ListenerTls>,
}

/// `[listeners.tls]`: certificates already loaded and checked.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    /// Certificate and key files as resolved (relative paths are relative
    /// to the config file's directory), in file order: the first is the
    /// default for clients that send no SNI.
    pub certificates: Vec<CertificateFiles>,
    /// A plain listener answering every request with a 308 to https.
    pub redirect_http_from: Option<SocketAddr>,
    /// What connections are accepted with, built from `certificates` when
    /// the config was loaded.
    pub server_config: std::sync::Arc<rustls::ServerConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Index into `Config::listeners`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerId(pub usize);

/// Index into `Config::upstreams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpstreamId(pub usize);

/// Index into `Config::rate_limits`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimitId(pub usize);

#[derive(Debug, Clone)]
pub struct Route {
    /// `name` from the file, or `route<N>` (N = position, from 0) when omitted.
    pub name: String,
    /// The listeners this route serves; every listener when the file names none.
    pub listeners: Vec<ListenerId>,
    pub host: HostMatch,
    /// Always starts with `/`.
    pub path_prefix: String,
    /// Every header must be present with exactly this value (name case-insensitive).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub action: RouteAction,
    /// Replaces the matched `path_prefix` before forwarding.
    pub rewrite_prefix: Option<String>,
    /// Requests beyond this limit are answered 429 here.
    pub rate_limit: Option<RateLimitId>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// `None`: one try only.
    pub retry: Option<Retry>,
    pub request_headers: HeaderEdits,
    pub response_headers: HeaderEdits,
    /// Encodings responses may be compressed with; empty = never.
    pub compress: Compress,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    Any,
    /// Lower-case host, without port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com` (lower-case); matches any
    /// host that ends with it and has at least one more label in front.
    Wildcard(String),
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    Upstream(UpstreamId),
    /// Weighted between upstreams (canary, blue-green).
    Split(Vec<SplitTarget>),
    Respond {
        status: StatusCode,
        body: Bytes,
    },
}

impl RouteAction {
    /// The upstreams this route may forward to, in config order.
    pub fn upstream_ids(&self) -> Vec<UpstreamId> {
        match self {
            RouteAction::Upstream(id) => vec![*id],
            RouteAction::Split(targets) => targets.iter().map(|t| t.upstream).collect(),
            RouteAction::Respond { .. } => Vec::new(),
        }
    }
}

/// One upstream of a `split` and its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitTarget {
    pub upstream: UpstreamId,
    pub weight: u32,
}

/// When and how often a failed request is tried again on another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    /// Total tries, the first included (at least 1).
    pub tries: u32,
    pub on: RetryOn,
    /// Bound on the time spent over all tries.
    pub timeout: Option<Duration>,
    /// Request bodies up to this size are held to be sent again.
    pub replay_max_bytes: u64,
}

/// The failures that trigger a retry (and that count as passive failures).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RetryOn {
    pub error: bool,
    pub timeout: bool,
    pub http_502: bool,
    pub http_503: bool,
    pub http_504: bool,
}

impl RetryOn {
    pub fn status(&self, status: u16) -> bool {
        match status {
            502 => self.http_502,
            503 => self.http_503,
            504 => self.http_504,
            _ => false,
        }
    }
}

/// `compress = ["gzip", "br"]`: the content codings a route may apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compress {
    pub gzip: bool,
    pub br: bool,
}

impl Compress {
    /// No encoding listed: responses pass untouched.
    pub fn is_off(self) -> bool {
        !self.gzip && !self.br
    }
}

#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    pub set: Vec<(HeaderName, HeaderValue)>,
    pub remove: Vec<HeaderName>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub balance: Balance,
    /// What `balance = "hash"` hashes; `ip_hash` always uses the client IP.
    pub hash_key: Option<HashKey>,
    /// Passive health: this many failures within `fail_timeout` take a
    /// server out for `fail_timeout`. 0 disables it.
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// Retries may add at most this percentage to the requests sent.
    pub retry_budget_percent: u32,
    /// A server that comes back (or is new) ramps its weight up over this.
    pub slow_start: Option<Duration>,
    pub health_check: Option<HealthCheck>,
    /// Affinity by a cookie the balancer sets.
    pub sticky: Option<Sticky>,
    /// Idle pooled connections kept per server (per worker thread).
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    RoundRobin,
    LeastConn,
    IpHash,
    Hash,
    Random,
    Ewma,
}

/// `sticky = { cookie, max_age }`: the cookie names the server (opaquely).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: String,
    /// `None`: a session cookie.
    pub max_age: Option<Duration>,
}

/// Active health checks: a GET of `path` on every server each `interval`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub path: String,
    /// `Host` header to send; the server's address when `None`.
    pub host: Option<String>,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_threshold: u32,
    pub unhealthy_threshold: u32,
    /// Inclusive range of statuses that count as healthy.
    pub expect_status: (u16, u16),
}

/// Where `balance = "hash"` finds its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
    Path,
    Query(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// `host:port` as written in the file (an IP or a host name).
    pub address: String,
    /// At least 1.
    pub weight: u32,
    /// Used only while no other server is up.
    pub backup: bool,
    /// At most this many requests in flight here (circuit breaker).
    pub max_requests: Option<u32>,
}

/// `[rate_limits.NAME]`: GCRA, like nginx `limit_req` with `nodelay`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub name: String,
    /// Requests per second sustained (validated to 1/h ..= 1,000,000/s).
    pub rate_per_sec: f64,
    /// Requests a client may send at once (at least 1).
    pub burst: u32,
    pub key: LimitKey,
    pub store: LimitStore,
    /// Local store: the most clients tracked at once.
    pub max_keys: usize,
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitStore {
    /// In this process's memory.
    Local,
    /// In `[redis]`, shared by every instance that uses it.
    Redis,
}

/// `[redis]`: where `store = "redis"` rate limits keep their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    pub url: String,
    pub on_error: RedisOnError,
    /// The longest a request waits for Redis before `on_error` applies.
    pub timeout: Duration,
}

/// What a request gets when its limit cannot be checked in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisOnError {
    /// Fail open: the request goes through unlimited.
    Allow,
    /// Fail closed: 503.
    Deny,
}
