//! The request pipeline: route, pick a server, forward, and shape the
//! response. Every request gets a response here, errors included.

mod admit;
mod error;
pub mod headers;
mod key;
mod split;
pub mod tunnel;

pub use error::ProxyError;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use http_body::Body as _;

use crate::body::{BodyError, ClientBody, RequestBody, ResponseBody, UpstreamBody};
use crate::compress;
use crate::config::{Listener, ListenerId, Route, RouteAction};
use crate::observe::access_log::{Answer, LoggedBody};
use crate::observe::metrics::FailureKind;
use crate::router::{self, RouteId};
use crate::server::{ListenerSlot, Shared, Snapshot};
use crate::upstream::h1::SendError;
use crate::upstream::{ActiveGuard, ConnectError, NoServer, ServerState, UpstreamPool};

/// What the proxy knows about the client side of a request. One per client
/// connection, shared by its requests and by a tunnel that outlives them.
pub struct ClientInfo {
    /// The running listener the connection came in on.
    pub slot: ListenerSlot,
    pub peer: SocketAddr,
    /// The peer's IP as a header value, made once per connection.
    pub ip_header: HeaderValue,
    /// The connection is TLS (X-Forwarded-Proto: https).
    pub tls: bool,
    /// What the connection holds while it lives (its `max_connections` slot,
    /// its place in the shutdown count...): released when the last holder of
    /// this info is gone, which for an upgraded connection is its tunnel.
    _life: Box<dyn Send + Sync>,
}

impl ClientInfo {
    pub fn new(slot: ListenerSlot, peer: SocketAddr, life: Box<dyn Send + Sync>) -> Self {
        let ip_header =
            HeaderValue::from_maybe_shared(ip_text(peer.ip())).unwrap_or(HeaderValue::from_static("unknown"));
        ClientInfo {
            slot,
            peer,
            ip_header,
            tls: false,
            _life: life,
        }
    }
}

/// An address as text. IPv4 by hand: `to_string` goes through the
/// formatting machinery, ~1.3k instructions, once per client connection.
fn ip_text(ip: std::net::IpAddr) -> bytes::Bytes {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = Vec::with_capacity(15);
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push(b'.');
                }
                if octet >= 100 {
                    text.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    text.push(b'0' + octet / 10 % 10);
                }
                text.push(b'0' + octet % 10);
            }
            bytes::Bytes::from(text)
        }
        v6 => bytes::Bytes::from(v6.to_string()),
    }
}

impl std::fmt::Debug for ClientInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInfo")
            .field("slot", &self.slot)
            .field("peer", &self.peer)
            .finish()
    }
}

/// Which fields the proxy looks up a request may carry. A codec that has
/// read every field knows; looking one up in the map costs hashing its
/// name, which for these custom names is byte by byte. The default: none.
#[derive(Debug, Clone, Copy, Default)]
pub struct Carried {
    pub request_id: bool,
    pub forwarded_for: bool,
}

impl Carried {
    /// For a codec that does not say: any of them may be there.
    pub const MAYBE: Carried = Carried {
        request_id: true,
        forwarded_for: true,
    };
}

/// Answers one client request. The response body writes the request's
/// access-log line when it ends.
pub async fn handle(
    req: Request<ClientBody>,
    carried: Carried,
    client: &Arc<ClientInfo>,
    shared: &Shared,
) -> Response<LoggedBody> {
    let snapshot = shared.snapshot.load_full();
    let request_id = if carried.request_id {
        headers::request_id(req.headers())
    } else {
        headers::fresh_request_id()
    };
    let started = Instant::now();
    let mut entry = shared
        .access_log
        .as_ref()
        .map(|log| log.begin(&req, client.peer.ip(), &request_id, started));
    let mut meta = Meta::default();
    let forwarded = match snapshot.listener_id(client.slot) {
        Some(listener_id) => {
            let listener = &snapshot.config.listeners[listener_id.0];
            let at = (listener_id, listener);
            forward((req, carried), client, at, shared, &snapshot, &request_id, &mut meta).await
        }
        // A reload removed the listener after this connection was accepted:
        // the connection is being closed; answer what is in the pipe.
        None => Err(ProxyError::ListenerClosed),
    };
    let mut response = forwarded.unwrap_or_else(|error| error.into_response(&request_id));
    let status = response.status().as_u16();
    match meta.route.and_then(|r| snapshot.route_stats.get(r.0)) {
        Some(stats) => {
            // When a server answered, the time it did serves: no clock read.
            let took = meta.answered.unwrap_or_else(Instant::now) - started;
            stats.record(meta.upstream, meta.server, status, took, meta.retries);
        }
        None => shared.unrouted.record(status),
    }
    response.headers_mut().insert(headers::X_REQUEST_ID, request_id);
    if let Some(entry) = &mut entry {
        let answer = Answer {
            status,
            route: meta.route,
            upstream: meta.upstream,
            server: meta.server,
            upstream_time: meta.upstream_time,
            retries: meta.retries,
        };
        entry.answered(answer, snapshot);
    }
    response.map(|body| LoggedBody::new(body, entry))
}

/// What metrics and the access log need to know about how a request was
/// answered.
#[derive(Debug, Default)]
struct Meta {
    route: Option<RouteId>,
    /// Index in the route's upstreams (several for a split) of the one used.
    upstream: Option<usize>,
    /// Index in that upstream of the server that answered last.
    server: Option<usize>,
    /// Time to the last try's response head; `None` when it got none.
    upstream_time: Option<Duration>,
    /// When the last try's response head came.
    answered: Option<Instant>,
    retries: u32,
}

async fn forward(
    (mut req, carried): (Request<ClientBody>, Carried),
    client: &Arc<ClientInfo>,
    (listener_id, listener): (ListenerId, &Listener),
    shared: &Shared,
    snapshot: &Snapshot,
    request_id: &HeaderValue,
    meta: &mut Meta,
) -> Result<Response<ResponseBody>, ProxyError> {
    let route_id = {
        let host = router::request_host(req.uri(), req.headers());
        snapshot
            .routes
            .resolve(listener_id, host, req.uri().path(), req.headers())
            .ok_or(ProxyError::NoRoute)?
    };
    meta.route = Some(route_id);
    let route = snapshot.routes.route(route_id);
    admit::admit(&req, client, route, route_id, snapshot).await?;
    if req
        .body()
        .size_hint()
        .exact()
        .is_some_and(|len| len > listener.max_body_bytes)
    {
        return Err(ProxyError::BodyTooLarge);
    }
    let upstream_id = match &route.action {
        RouteAction::Respond { status, body } => return Ok(respond(route, *status, body.clone())),
        RouteAction::Upstream(id) => {
            meta.upstream = Some(0);
            *id
        }
        RouteAction::Split(targets) => {
            let i = split::choose(targets, snapshot, &req);
            meta.upstream = Some(i);
            targets[i].upstream
        }
    };
    let upstream = snapshot.upstream(upstream_id);
    let key = key::request_key(upstream, &req, client);
    let pinned = upstream
        .sticky
        .as_ref()
        .and_then(|sticky| key::cookie(&req, &sticky.cookie))
        .and_then(|token| upstream.sticky_server(token));
    let idempotent = is_idempotent(req.method());
    let compress = compress::Plan::for_request(route.compress, &req);
    let upgrade = tunnel::requested(req.headers()).map(|protocol| (protocol, tunnel::client_side(&mut req)));
    let (mut parts, body) = req.into_parts();
    let body = request_body(body, listener, route, idempotent).await?;
    let forwarding = upstream_head(&mut parts, carried.forwarded_for, client, route, request_id)?;
    let mut upstream_req = Request::from_parts(parts, body);
    if let Some((protocol, _)) = &upgrade {
        tunnel::ask_upstream(upstream_req.headers_mut(), protocol.clone());
    }
    let sending = (&mut upstream_req, forwarding.fields());
    let (mut response, server, index) = try_servers(sending, upstream, route, key, pinned, idempotent, meta).await?;
    // Sent: its header map can serve a later message.
    crate::http1::recycle(std::mem::take(upstream_req.headers_mut()));
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let protocol = switched
        .then(|| response.headers().get(header::UPGRADE).cloned())
        .flatten();
    finish_response(&mut response, route, listener, &server);
    if switched {
        let upstream_side = response.extensions_mut().remove::<tunnel::Pending>();
        match (upgrade, upstream_side) {
            (Some((_, client_side)), Some(upstream_side)) => {
                tunnel::answer_client(response.headers_mut(), protocol);
                tunnel::spawn(
                    client_side,
                    upstream_side,
                    server.clone(),
                    client.clone(),
                    shared.tunnels.clone(),
                    route.read_timeout,
                );
            }
            // A switch nobody asked for cannot be passed on.
            _ => return Err(ProxyError::UpstreamFailed),
        }
    }
    // A 101 never qualifies: a tunnel is not compressed.
    compress::apply(compress, &mut response);
    if let Some(sticky) = &upstream.sticky
        && pinned != Some(index)
    {
        set_affinity_cookie(&mut response, sticky, upstream.sticky_token(index));
    }
    Ok(response)
}

/// Pins the client to the server that answered: the cookie names it
/// opaquely, so any instance with the same config honours it.
fn set_affinity_cookie(response: &mut Response<ResponseBody>, sticky: &crate::config::Sticky, token: &str) {
    let mut cookie = format!("{}={token}; Path=/; HttpOnly; SameSite=Lax", sticky.cookie);
    if let Some(max_age) = sticky.max_age {
        cookie.push_str(&format!("; Max-Age={}", max_age.as_secs()));
    }
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Methods that may be sent twice (RFC 9110 §9.2.2).
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// A response and the server that gave it, or why there is none.
type Outcome = Result<(Response<ResponseBody>, Arc<ServerState>, usize), ProxyError>;

/// Most tries a route can ask for (`retry.tries` is validated to 1..=10).
const MAX_TRIES: usize = 10;

/// Sends the request (with the fields added to its head) to one server after
/// another until one answers well, within the route's `retry` policy and the
/// upstream's retry budget. Each try goes to a server this request has not
/// used.
async fn try_servers(
    (req, added): (&mut Request<RequestBody>, &[(HeaderName, HeaderValue)]),
    upstream: &UpstreamPool,
    route: &Route,
    key: Option<u64>,
    pinned: Option<usize>,
    idempotent: bool,
    meta: &mut Meta,
) -> Outcome {
    upstream.retry_budget.deposit();
    let retry = route.retry.as_ref().filter(|_| idempotent);
    let max_tries = retry.map_or(1, |r| r.tries as usize).min(MAX_TRIES);
    let on = retry.map(|r| r.on).unwrap_or_default();
    // A try only borrows the request, and never consumes a body held in
    // memory (the upstream client writes it from where it is): such a
    // request, or one without a body, is still whole after any try. One whose
    // body has streamed upstream cannot go again.
    let replayable = matches!(req.body(), RequestBody::Full(_)) || req.body().is_end_stream();
    let deadline = retry.and_then(|r| r.timeout).map(|t| Instant::now() + t);
    let mut tried = [0usize; MAX_TRIES];
    let mut tries = 0;
    // What the client gets if no other server is left to try.
    let mut last: Option<Outcome> = None;
    loop {
        // One clock read per try: the pick, the pool and the upstream time
        // all take it.
        let started = Instant::now();
        let picked = match pinned {
            Some(index) if tries == 0 => Ok((index, &upstream.servers[index])),
            _ => upstream.pick(key, &tried[..tries], started),
        };
        let (index, server) = match picked {
            Ok((index, server)) => (index, server.clone()),
            Err(_) if last.is_some() => return last.unwrap_or(Err(ProxyError::NoServer)),
            Err(NoServer::Busy) => return Err(ProxyError::AllBusy),
            Err(NoServer::Down) => return Err(ProxyError::NoServer),
        };
        tried[tries] = index;
        tries += 1;
        meta.server = Some(index);
        meta.retries = tries as u32 - 1;
        // Each try goes to another server.
        let may_retry = tries < max_tries && tries < upstream.servers.len() && deadline.is_none_or(|d| started < d);
        let sent = send(req, added, &server, route, started).await;
        let now = match &sent {
            Ok((_, answered)) => *answered,
            Err(_) => Instant::now(),
        };
        let took = now - started;
        meta.upstream_time = sent.is_ok().then_some(took);
        meta.answered = sent.is_ok().then_some(now);
        match sent {
            Ok((response, _)) => {
                let status = response.status().as_u16();
                if !on.status(status) {
                    server.record_success(took, status, now);
                    return Ok((response, server, index));
                }
                server.record_failure(&upstream.name, FailureKind::Status);
                if !(may_retry && replayable && upstream.retry_budget.try_withdraw()) {
                    return Ok((response, server, index));
                }
                last = Some(Ok((response, server, index)));
            }
            Err(failed) => {
                let kind = match failed.error {
                    ProxyError::ConnectFailed => FailureKind::Connect,
                    ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => FailureKind::Timeout,
                    _ => FailureKind::Reset,
                };
                server.record_failure(&upstream.name, kind);
                let retryable = match failed.error {
                    ProxyError::ConnectTimeout | ProxyError::UpstreamTimeout => on.timeout,
                    ProxyError::ConnectFailed | ProxyError::UpstreamFailed => on.error,
                    _ => false,
                };
                if !(retryable && may_retry && (failed.unsent || replayable) && upstream.retry_budget.try_withdraw()) {
                    return Err(failed.error);
                }
                last = Some(Err(failed.error));
            }
        }
    }
}

fn respond(route: &Route, status: http::StatusCode, body: bytes::Bytes) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers::apply_edits(response.headers_mut(), &route.response_headers);
    response
}

/// The client's body as it will go upstream: streamed (with the size limit
/// enforced as it flows), or read whole first when it is small and the
/// request may be retried.
async fn request_body(
    body: ClientBody,
    listener: &Listener,
    route: &Route,
    idempotent: bool,
) -> Result<RequestBody, ProxyError> {
    // Bodies up to `replay_max_bytes` are held in memory when the route may
    // retry, so that a retry can send them again; larger ones stream.
    let replay_max = match &route.retry {
        Some(r) if idempotent && r.tries > 1 => r.replay_max_bytes,
        _ => 0,
    };
    // The codec knows the declared length: no header lookup and parse.
    match body.size_hint().exact() {
        Some(len) if len > 0 && len <= replay_max => {
            // Boxed: only retrying routes collect, and the request's future
            // should not carry room for it otherwise.
            let collect = Box::pin(http_body_util::BodyExt::collect(body));
            let collected = tokio::time::timeout(route.read_timeout, collect)
                .await
                .map_err(|_| ProxyError::BadRequest)?
                .map_err(|_| ProxyError::BadRequest)?;
            Ok(RequestBody::Full(Some(collected.to_bytes())))
        }
        _ => Ok(RequestBody::limited(body, listener.max_body_bytes)),
    }
}

/// The request's head as the upstream sees it: origin-form URI (prefix
/// rewritten), HTTP/1.1, hop-by-hop headers gone, the route's edits made;
/// and the forwarding fields to add to it.
fn upstream_head(
    parts: &mut http::request::Parts,
    may_have_forwarded_for: bool,
    client: &ClientInfo,
    route: &Route,
    request_id: &HeaderValue,
) -> Result<headers::Forwarding, ProxyError> {
    let mut host = parts.headers.get(header::HOST).cloned();
    if host.is_none() {
        // HTTP/2 clients send :authority instead (read before the URI
        // becomes the upstream's origin-form, which has none).
        if let Some(authority) = parts.uri.authority()
            && let Ok(value) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, value.clone());
            host = Some(value);
        }
    }
    if let Some(uri) = upstream_uri(&parts.uri, route)? {
        parts.uri = uri;
    }
    // Hop-by-hop fields never get this far from HTTP/1 clients: the codec
    // reads and drops them (`Upgrade` stays when the client asks to switch).
    // HTTP/2 has none (RFC 9113 §8.2.2) but `TE: trailers`.
    if parts.version == Version::HTTP_2 {
        headers::join_cookies(&mut parts.headers);
        parts.headers.remove(header::TE);
    }
    parts.version = Version::HTTP_11;
    let proto = if client.tls { "https" } else { "http" };
    let prior = if may_have_forwarded_for {
        Some(&parts.headers)
    } else {
        None
    };
    let mut forwarding = headers::Forwarding::new(prior, host, &client.ip_header, proto, request_id);
    let edits = &route.request_headers;
    if !(edits.set.is_empty() && edits.remove.is_empty()) {
        headers::apply_edits(&mut parts.headers, edits);
        forwarding.apply_edits(edits);
    }
    Ok(forwarding)
}

/// The URI the upstream gets, when it is not the client's as it is (an
/// origin-form path with no prefix to rewrite, the usual case, is kept).
fn upstream_uri(uri: &Uri, route: &Route) -> Result<Option<Uri>, ProxyError> {
    let path_and_query = uri.path_and_query().map_or("/", |pq| pq.as_str());
    match &route.rewrite_prefix {
        None => {
            if uri.authority().is_none() {
                return Ok(None);
            }
            Uri::try_from(path_and_query)
                .map(Some)
                .map_err(|_| ProxyError::BadRequest)
        }
        Some(rewrite) => {
            // Plain prefix replacement, as nginx's `proxy_pass` with a URI:
            // "/api/" → "/v1/" turns "/api/users?x" into "/v1/users?x".
            let rest = path_and_query.get(route.path_prefix.len()..).unwrap_or("");
            let mut rewritten = String::with_capacity(rewrite.len() + rest.len());
            rewritten.push_str(rewrite);
            rewritten.push_str(rest);
            Uri::try_from(rewritten).map(Some).map_err(|_| ProxyError::BadRequest)
        }
    }
}

/// A try that got no response; `unsent`: the request is still whole (it
/// never left, or its body was held in memory) and can go again as it is.
struct Failed {
    error: ProxyError,
    unsent: bool,
}

/// Sends the request on a pooled (or new) connection and waits for the
/// response head within the route's `read_timeout`, counted from `started`
/// (now, to the microsecond) on a pooled connection and from when a new
/// one is connected.
///
/// The request is borrowed, not moved: it is a few hundred bytes, and each
/// move into a future and back out of a failure is a copy.
async fn send(
    req: &mut Request<RequestBody>,
    added: &[(HeaderName, HeaderValue)],
    server: &Arc<ServerState>,
    route: &Route,
    started: Instant,
) -> Result<(Response<ResponseBody>, Instant), Failed> {
    let active = ActiveGuard::new(server.clone());
    // Only an upgrade request still has `Upgrade` here (hop-by-hop); the
    // switch takes its connection over, so it gets a new one.
    let mut fresh_only = req.headers().contains_key(header::UPGRADE);
    let mut reconnected = false;
    loop {
        let connected = if fresh_only {
            server.connect_fresh(route.connect_timeout).await
        } else {
            server.connect(route.connect_timeout, started).await
        };
        let mut pooled = match connected {
            Ok(pooled) => pooled,
            Err(e) => {
                return Err(Failed {
                    error: connect_error(e, server),
                    unsent: true,
                });
            }
        };
        // One clock read less per request where a pooled connection is ready.
        let sent_at = if pooled.reused { started } else { Instant::now() };
        let deadline = tokio::time::Instant::from_std(sent_at) + route.read_timeout;
        match pooled.conn.send(req, added, deadline).await {
            Err(failed) if matches!(failed.error, SendError::TimedOut) => {
                tracing::debug!(server = %server.address, "upstream response timed out");
                return Err(Failed {
                    error: ProxyError::UpstreamTimeout,
                    unsent: false,
                });
            }
            Ok(head) if head.parts.status == StatusCode::SWITCHING_PROTOCOLS => {
                // The connection now belongs to the tunnel, never the pool.
                let switched = pooled.conn.into_switched();
                let pending = tunnel::Pending::new(async move { Ok(Box::new(switched) as Box<dyn tunnel::TunnelIo>) });
                let mut parts = head.parts;
                parts.extensions.insert(pending);
                return Ok((Response::from_parts(parts, ResponseBody::empty()), Instant::now()));
            }
            Ok(head) => {
                // The one clock read for the answer: upstream time, route
                // stats, and the pool's idle time all count from it.
                let answered = Instant::now();
                let body = UpstreamBody::new(
                    pooled,
                    head.framing,
                    head.reusable,
                    (route.read_timeout, answered),
                    active,
                );
                return Ok((Response::from_parts(head.parts, ResponseBody::Upstream(body)), answered));
            }
            Err(failed) => {
                if let SendError::Body(BodyError::TooLarge { .. }) = failed.error {
                    return Err(Failed {
                        error: ProxyError::BodyTooLarge,
                        unsent: false,
                    });
                }
                // A pooled connection the server closed meanwhile: the one
                // retry on a new connection is safe when the request never
                // reached it, or may be sent twice anyway.
                let again = failed.replayable && (!failed.reached || is_idempotent(req.method()));
                if pooled.reused && again && !reconnected {
                    reconnected = true;
                    fresh_only = true;
                    continue;
                }
                tracing::debug!(server = %server.address, error = %failed.error, "upstream request failed");
                return Err(Failed {
                    error: ProxyError::UpstreamFailed,
                    unsent: failed.replayable,
                });
            }
        }
    }
}

fn connect_error(error: ConnectError, server: &ServerState) -> ProxyError {
    tracing::debug!(server = %server.address, %error, "upstream connect failed");
    match error {
        ConnectError::Timeout { .. } => ProxyError::ConnectTimeout,
        ConnectError::Io { .. } => ProxyError::ConnectFailed,
    }
}

fn finish_response(response: &mut Response<ResponseBody>, route: &Route, listener: &Listener, server: &ServerState) {
    // The upstream client has kept the hop-by-hop fields out already.
    let headers = response.headers_mut();
    headers::apply_edits(headers, &route.response_headers);
    if listener.expose_upstream
        && let Ok(value) = HeaderValue::from_str(&server.address)
    {
        headers.insert(headers::X_UPSTREAM, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_read_as_to_string_writes_them() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut v4s: Vec<std::net::Ipv4Addr> = (0..5000).map(|_| rng.u32(..).into()).collect();
        let edges: [[u8; 4]; 5] = [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [10, 0, 9, 100],
            [127, 0, 0, 1],
            [1, 22, 199, 200],
        ];
        v4s.extend(edges.map(std::net::Ipv4Addr::from));
        for v4 in v4s {
            assert_eq!(ip_text(v4.into()), v4.to_string().as_bytes(), "{v4}");
        }
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_text(v6), "2001:db8::1".as_bytes());
    }
}
