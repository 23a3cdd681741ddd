//! The config file as users write it (SPEC §2): serde structs, every key
//! known, nothing unknown accepted. Validation into the model is elsewhere.

// Sections of features not built yet are parsed and type-checked (so a typo
// is caught today) but not read until their feature lands.
#![allow(dead_code)]

use serde::Deserialize;
use serde_spanned::Spanned;

use super::units::{
    AccessLogStr, DurationStr, HashKeySpec, HeaderMapSpec, HeaderNameStr, HostPattern, LimitKeySpec, ListenAddr,
    RateStr, ResolverAddr, ServerAddr, SizeStr, StatusRange,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalSpec {
    pub workers: Option<Spanned<usize>>,
    pub admin_listen: Option<Spanned<ListenAddr>>,
    pub admin_token: Option<Spanned<String>>,
    pub shutdown_grace: Option<DurationStr>,
    pub access_log: Option<Spanned<AccessLogStr>>,
    pub access_log_format: Option<Spanned<AccessLogFormatSpec>>,
    pub log_level: Option<Spanned<String>>,
    /// The DNS server for host names in `servers` (beyond SPEC §2).
    pub resolver: Option<Spanned<ResolverAddr>>,
    /// Longest time between two resolutions of a host name (beyond SPEC §2).
    pub dns_refresh: Option<Spanned<DurationStr>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormatSpec {
    Json,
    Combined,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    pub name: Spanned<String>,
    pub listen: Spanned<ListenAddr>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_connections_per_ip: Option<Spanned<usize>>,
    pub request_header_timeout: Option<Spanned<DurationStr>>,
    pub keepalive_timeout: Option<DurationStr>,
    pub max_header_size: Option<Spanned<SizeStr>>,
    pub max_body_size: Option<SizeStr>,
    pub expose_upstream: Option<bool>,
    pub proxy_protocol: Option<Spanned<bool>>,
    pub tls: Option<Spanned<TlsSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSpec {
    pub certificates: Spanned<Vec<CertificateSpec>>,
    pub redirect_http_from: Option<Spanned<ListenAddr>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSpec {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub name: Option<Spanned<String>>,
    pub listeners: Option<Vec<Spanned<String>>>,
    pub host: Option<HostPattern>,
    pub path_prefix: Option<Spanned<String>>,
    #[serde(default)]
    pub headers: HeaderMapSpec,
    pub upstream: Option<Spanned<String>>,
    pub split: Option<Spanned<Vec<SplitSpec>>>,
    pub respond: Option<Spanned<RespondSpec>>,
    pub rewrite_prefix: Option<Spanned<String>>,
    pub rate_limit: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<DurationStr>>,
    pub read_timeout: Option<Spanned<DurationStr>>,
    pub retry: Option<Spanned<RetrySpec>>,
    pub request_headers: Option<HeaderEditsSpec>,
    pub response_headers: Option<HeaderEditsSpec>,
    pub compress: Option<Spanned<Vec<Spanned<CompressSpec>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    pub upstream: Spanned<String>,
    pub weight: Spanned<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RespondSpec {
    pub status: Spanned<u16>,
    #[serde(default)]
    pub body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySpec {
    pub tries: Option<Spanned<u32>>,
    pub on: Option<Vec<RetryOnSpec>>,
    pub timeout: Option<Spanned<DurationStr>>,
    /// Bodies up to this size are kept to be sent again (default 64k).
    pub replay_body: Option<SizeStr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetryOnSpec {
    Error,
    Timeout,
    #[serde(rename = "http_502")]
    Http502,
    #[serde(rename = "http_503")]
    Http503,
    #[serde(rename = "http_504")]
    Http504,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressSpec {
    Gzip,
    Br,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderEditsSpec {
    #[serde(default)]
    pub set: HeaderMapSpec,
    #[serde(default)]
    pub remove: Vec<HeaderNameStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSpec {
    pub balance: Option<Spanned<BalanceSpec>>,
    pub hash_key: Option<Spanned<HashKeySpec>>,
    pub sticky: Option<Spanned<StickySpec>>,
    pub keepalive: Option<usize>,
    pub keepalive_timeout: Option<DurationStr>,
    /// Retries allowed as a share of requests, like "20%".
    pub retry_budget: Option<Spanned<String>>,
    pub max_fails: Option<Spanned<u32>>,
    pub fail_timeout: Option<Spanned<DurationStr>>,
    pub slow_start: Option<Spanned<DurationStr>>,
    pub servers: Spanned<Vec<ServerSpec>>,
    pub health_check: Option<Spanned<HealthCheckSpec>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BalanceSpec {
    RoundRobin,
    LeastConn,
    IpHash,
    Hash,
    Random,
    Ewma,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickySpec {
    pub cookie: Spanned<String>,
    pub max_age: Option<DurationStr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSpec {
    pub address: Spanned<ServerAddr>,
    pub weight: Option<Spanned<u32>>,
    pub backup: Option<Spanned<bool>>,
    pub max_requests: Option<Spanned<u32>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSpec {
    pub path: Option<Spanned<String>>,
    pub interval: Option<Spanned<DurationStr>>,
    pub timeout: Option<Spanned<DurationStr>>,
    pub healthy_threshold: Option<Spanned<u32>>,
    pub unhealthy_threshold: Option<Spanned<u32>>,
    pub expect_status: Option<StatusRange>,
    pub host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub rate: Spanned<RateStr>,
    pub burst: Option<Spanned<u32>>,
    pub key: Option<LimitKeySpec>,
    pub store: Option<Spanned<StoreSpec>>,
    /// Local store: the most clients tracked at once (default 100000).
    pub max_keys: Option<Spanned<usize>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreSpec {
    Local,
    Redis,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    pub url: Spanned<String>,
    pub on_error: Option<OnErrorSpec>,
    /// How long a request waits for Redis (default 100ms).
    pub timeout: Option<Spanned<DurationStr>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnErrorSpec {
    Allow,
    Deny,
}
