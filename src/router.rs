//! The route table: which route answers a request, by listener, host, path
//! prefix and headers. Pure: no I/O, no clock.
//!
//! Precedence (SPEC §2): exact host, then wildcard host (longer suffix first),
//! then any host; within that the longest `path_prefix`; a route with
//! `headers` beats one without; ties go to the first in the file.

use http::HeaderMap;

use crate::config::{HostMatch, ListenerId, Route};

/// Index into the config's route list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteId(pub usize);

/// Routes ordered by precedence, one list per listener.
#[derive(Debug)]
pub struct RouteTable {
    routes: Vec<Route>,
    by_listener: Vec<Vec<RouteId>>,
}

impl RouteTable {
    /// Builds the table for `listener_count` listeners.
    pub fn new(routes: Vec<Route>, listener_count: usize) -> Self {
        let mut order: Vec<RouteId> = (0..routes.len()).map(RouteId).collect();
        // A stable sort keeps file order for ties.
        order.sort_by_key(|id| precedence_key(&routes[id.0]));
        let by_listener = (0..listener_count)
            .map(|l| {
                order
                    .iter()
                    .copied()
                    .filter(|id| routes[id.0].listeners.contains(&ListenerId(l)))
                    .collect()
            })
            .collect();
        RouteTable { routes, by_listener }
    }

    pub fn route(&self, id: RouteId) -> &Route {
        &self.routes[id.0]
    }

    /// The route that answers a request on `listener` for `host` (without
    /// port, any case) and `path`, or `None` (404).
    pub fn resolve(
        &self,
        listener: ListenerId,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<RouteId> {
        let candidates = self.by_listener.get(listener.0)?;
        candidates.iter().copied().find(|id| {
            let route = &self.routes[id.0];
            host_matches(&route.host, host)
                && path.starts_with(route.path_prefix.as_str())
                && route
                    .headers
                    .iter()
                    .all(|(name, value)| headers.get(name) == Some(value))
        })
    }
}

/// Smaller sorts first.
fn precedence_key(route: &Route) -> (u8, std::cmp::Reverse<usize>, std::cmp::Reverse<usize>, bool) {
    let (class, host_len) = match &route.host {
        HostMatch::Exact(h) => (0, h.len()),
        HostMatch::Wildcard(suffix) => (1, suffix.len()),
        HostMatch::Any => (2, 0),
    };
    (
        class,
        std::cmp::Reverse(host_len),
        std::cmp::Reverse(route.path_prefix.len()),
        route.headers.is_empty(),
    )
}

fn host_matches(pattern: &HostMatch, host: Option<&str>) -> bool {
    match pattern {
        HostMatch::Any => true,
        HostMatch::Exact(want) => host.is_some_and(|h| h.eq_ignore_ascii_case(want)),
        HostMatch::Wildcard(suffix) => host.is_some_and(|h| {
            h.len() > suffix.len()
                && h.is_char_boundary(h.len() - suffix.len())
                && h[h.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        }),
    }
}

/// The host a request names, without port: the `Host` header, else the URI
/// authority (HTTP/2 `:authority`).
pub fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    let raw = match headers.get(http::header::HOST) {
        Some(v) => v.to_str().ok()?,
        None => uri.authority()?.as_str(),
    };
    Some(strip_port(raw))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // IPv6 literal: "[::1]:8080" → "[::1]"
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(i) if host[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..i],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{HeaderEdits, RouteAction, UpstreamId};
    use http::{HeaderName, HeaderValue};
    use std::time::Duration;

    fn route(name: &str, host: HostMatch, prefix: &str, headers: &[(&str, &str)]) -> Route {
        Route {
            name: name.to_string(),
            listeners: vec![ListenerId(0)],
            host,
            path_prefix: prefix.to_string(),
            headers: headers
                .iter()
                .map(|(n, v)| {
                    (
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    )
                })
                .collect(),
            action: RouteAction::Upstream(UpstreamId(0)),
            rewrite_prefix: None,
            rate_limit: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            retry: None,
            request_headers: HeaderEdits::default(),
            response_headers: HeaderEdits::default(),
            compress: crate::config::Compress::default(),
        }
    }

    fn resolve(table: &RouteTable, host: Option<&str>, path: &str, hdrs: &[(&str, &str)]) -> Option<String> {
        let mut map = HeaderMap::new();
        for (n, v) in hdrs {
            map.insert(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        table
            .resolve(ListenerId(0), host, path, &map)
            .map(|id| table.route(id).name.clone())
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let table = RouteTable::new(
            vec![
                route("any", HostMatch::Any, "/", &[]),
                route("wild", HostMatch::Wildcard(".example.com".into()), "/", &[]),
                route("exact", HostMatch::Exact("api.example.com".into()), "/", &[]),
            ],
            1,
        );
        assert_eq!(
            resolve(&table, Some("api.example.com"), "/x", &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(
            resolve(&table, Some("API.Example.com"), "/x", &[]).as_deref(),
            Some("exact")
        );
        assert_eq!(
            resolve(&table, Some("www.example.com"), "/x", &[]).as_deref(),
            Some("wild")
        );
        assert_eq!(resolve(&table, Some("example.com"), "/x", &[]).as_deref(), Some("any"));
        assert_eq!(resolve(&table, None, "/x", &[]).as_deref(), Some("any"));
    }

    #[test]
    fn longest_prefix_then_headers_then_file_order() {
        let table = RouteTable::new(
            vec![
                route("root", HostMatch::Any, "/", &[]),
                route("api", HostMatch::Any, "/api/", &[]),
                route("api-canary", HostMatch::Any, "/api/", &[("x-canary", "1")]),
                route("api-again", HostMatch::Any, "/api/", &[]),
                route("api-v2", HostMatch::Any, "/api/v2/", &[]),
            ],
            1,
        );
        assert_eq!(resolve(&table, None, "/", &[]).as_deref(), Some("root"));
        assert_eq!(resolve(&table, None, "/api/x", &[]).as_deref(), Some("api"));
        assert_eq!(
            resolve(&table, None, "/api/x", &[("x-canary", "1")]).as_deref(),
            Some("api-canary")
        );
        assert_eq!(
            resolve(&table, None, "/api/x", &[("x-canary", "2")]).as_deref(),
            Some("api")
        );
        assert_eq!(
            resolve(&table, None, "/api/v2/y", &[("x-canary", "1")]).as_deref(),
            Some("api-v2")
        );
    }

    #[test]
    fn no_match_and_other_listener() {
        let mut only_other = route("other", HostMatch::Any, "/", &[]);
        only_other.listeners = vec![ListenerId(1)];
        let table = RouteTable::new(vec![route("api", HostMatch::Any, "/api/", &[]), only_other], 2);
        assert_eq!(resolve(&table, None, "/web", &[]), None);
        let map = HeaderMap::new();
        assert!(table.resolve(ListenerId(1), None, "/web", &map).is_some());
        assert!(table.resolve(ListenerId(7), None, "/web", &map).is_none());
    }

    #[test]
    fn wildcard_needs_a_label_in_front() {
        let table = RouteTable::new(
            vec![route("w", HostMatch::Wildcard(".example.com".into()), "/", &[])],
            1,
        );
        assert_eq!(resolve(&table, Some(".example.com"), "/", &[]), None);
        assert_eq!(resolve(&table, Some("a.b.example.com"), "/", &[]).as_deref(), Some("w"));
        assert_eq!(resolve(&table, Some("badexample.com"), "/", &[]), None);
    }

    #[test]
    fn host_comes_from_header_without_port() {
        let mut headers = HeaderMap::new();
        let uri: http::Uri = "/x".parse().unwrap();
        headers.insert(http::header::HOST, HeaderValue::from_static("api.example.com:8080"));
        assert_eq!(request_host(&uri, &headers), Some("api.example.com"));
        headers.insert(http::header::HOST, HeaderValue::from_static("[::1]:8080"));
        assert_eq!(request_host(&uri, &headers), Some("[::1]"));
        let abs: http::Uri = "http://h2.example.com:443/x".parse().unwrap();
        assert_eq!(request_host(&abs, &HeaderMap::new()), Some("h2.example.com"));
    }
}
