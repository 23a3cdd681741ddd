//! The live dashboard at `GET /`: one self-contained HTML page (inline CSS
//! and JS, compiled into the binary) that polls `GET /api/upstreams` and
//! works out rates and recent percentiles from the counters' deltas; plus
//! the per-server latency fields that endpoint exposes for it.

use bytes::Bytes;
use http::{HeaderValue, Response, header};
use http_body_util::Full;

use crate::observe::latency;
use crate::observe::metrics::ServerStats;

const PAGE: &str = include_str!("dashboard.html");

/// The page. It loads nothing from elsewhere, so the policy allows only its
/// own inline code and calls back to this listener; it may not be framed,
/// so its buttons cannot be clickjacked.
pub(super) fn page() -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The `q` quantile of the server's answer latency since it started
/// counting, in milliseconds; `null` before its first answer.
pub(super) fn quantile_ms(stats: &ServerStats, q: f64) -> Option<f64> {
    latency::quantile_us(&stats.latency.counts(), q).map(|us| us / 1000.0)
}

/// The histogram's non-empty buckets as `[lower_us, upper_us, count]`, so
/// that a client can take the difference of two reads and find the
/// percentiles of just the requests in between.
pub(super) fn histogram(stats: &ServerStats) -> serde_json::Value {
    let buckets: Vec<serde_json::Value> = stats
        .latency
        .counts()
        .iter()
        .enumerate()
        .filter(|(_, count)| **count > 0)
        .map(|(index, count)| {
            let (lower, upper) = latency::bucket_bounds(index);
            serde_json::json!([lower, upper, count])
        })
        .collect();
    serde_json::Value::Array(buckets)
}
