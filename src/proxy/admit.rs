//! Admission: the route's rate limit, checked before anything is read from
//! the client's body or sent upstream.

use http::Request;

use super::{ClientInfo, ProxyError, key};
use crate::config::{LimitKey, Route};
use crate::limit::{Verdict, retry_after_secs};
use crate::router::RouteId;
use crate::server::Snapshot;

/// `Ok` when the request may go on; 429 when it is over its route's limit;
/// 503 when the limit lives in Redis, Redis cannot answer and
/// `on_error = "deny"`.
pub async fn admit<B>(
    req: &Request<B>,
    client: &ClientInfo,
    route: &Route,
    route_id: RouteId,
    snapshot: &Snapshot,
) -> Result<(), ProxyError> {
    let Some(limiter) = route.rate_limit.and_then(|id| snapshot.limits.get(id)) else {
        return Ok(());
    };
    let key = match limiter.key() {
        LimitKey::ClientIp => Some(client.ip_header.as_bytes()),
        LimitKey::Header(name) => req.headers().get(name).map(|v| v.as_bytes()),
        LimitKey::Cookie(name) => key::cookie(req, name),
    };
    match limiter.check(key).await {
        Verdict::Allow => Ok(()),
        Verdict::Limited { retry_after } => {
            if let Some(stats) = snapshot.route_stats.get(route_id.0) {
                stats.rate_limited();
            }
            Err(ProxyError::RateLimited {
                retry_after_secs: retry_after_secs(retry_after),
            })
        }
        Verdict::Unavailable => Err(ProxyError::LimiterUnavailable),
    }
}
