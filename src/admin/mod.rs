//! The admin listener (SPEC §4): `/health`, `/ready`, `/api/upstreams`,
//! `/metrics`, `/api/config`, the mutating calls of `api` behind the
//! bearer token, and the live dashboard (`dashboard`, at `/`). It runs on a
//! thread of its own, away from the workers.

mod api;
mod config_json;
mod dashboard;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::server::{Control, Shared};
use crate::upstream::health::now_ms;

/// Largest request body the admin API reads (a server to add is a few bytes).
const MAX_BODY: usize = 64 * 1024;

/// Starts the admin thread serving `listener` until `shutdown`.
pub fn start(
    listener: std::net::TcpListener,
    control: Arc<Control>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    std::thread::Builder::new().name("fulcrum-admin".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt,
            Err(error) => {
                tracing::error!(%error, "cannot start the admin runtime");
                return;
            }
        };
        runtime.block_on(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                return;
            };
            let draining = Arc::new(AtomicBool::new(false));
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                    _ = shutdown.changed() => {
                        draining.store(true, Ordering::Relaxed);
                        return;
                    }
                };
                let control = control.clone();
                let draining = draining.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let control = control.clone();
                        let draining = draining.load(Ordering::Relaxed);
                        async move { Ok::<_, Infallible>(answer(req, &control, draining).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    })
}

async fn answer(req: Request<Incoming>, control: &Control, draining: bool) -> Response<Full<Bytes>> {
    let shared = control.shared();
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/health") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") if draining => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        // Serving at all means the config is loaded and every listener bound.
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/") => dashboard::page(),
        (&Method::GET, "/api/upstreams") => json(upstreams(shared)),
        (&Method::GET, "/api/config") => json(config_json::config(&shared.snapshot.load().config)),
        (&Method::GET, "/metrics") => metrics(shared),
        (_, "/health" | "/ready" | "/api/upstreams" | "/metrics" | "/api/config") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ if path.starts_with("/api/") => {
            let (parts, body) = req.into_parts();
            let body = match Limited::new(body, MAX_BODY).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => return api::error(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
            };
            api::mutate(&parts, &body, control)
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// Every upstream with its servers and their state, as `GET /api/upstreams`.
fn upstreams(shared: &Shared) -> serde_json::Value {
    let snapshot = shared.snapshot.load();
    let now = now_ms();
    let list: Vec<serde_json::Value> = snapshot
        .upstreams
        .iter()
        .map(|u| {
            let servers: Vec<serde_json::Value> = u.servers.iter().map(|s| server_json(s, now)).collect();
            serde_json::json!({ "name": u.name, "balance": format!("{:?}", u.kind), "servers": servers })
        })
        .collect();
    serde_json::json!({ "upstreams": list })
}

/// One server as the API shows it.
fn server_json(s: &crate::upstream::ServerState, now: u64) -> serde_json::Value {
    serde_json::json!({
        "address": s.address,
        "resolved": s.endpoints.current().iter().map(ToString::to_string).collect::<Vec<_>>(),
        "weight": s.weight(),
        "backup": s.backup(),
        "max_requests": s.max_requests(),
        "state": server_state(s, now),
        "health_check": if s.checked_up() { "passing" } else { "failing" },
        "active_requests": s.active_requests(),
        "latency_ms": s.latency.latency_us(now) / 1000.0,
        "requests_total": s.stats.requests_total(),
        "errors_total": s.stats.errors_total(),
        "latency_p50_ms": dashboard::quantile_ms(&s.stats, 0.50),
        "latency_p99_ms": dashboard::quantile_ms(&s.stats, 0.99),
        "latency_histogram": dashboard::histogram(&s.stats),
    })
}

/// `up`, `down` (health checks say so) or `draining` (the admin API said so).
fn server_state(server: &crate::upstream::ServerState, now: u64) -> &'static str {
    if server.drained() {
        "draining"
    } else if server.is_healthy(now) {
        "up"
    } else {
        "down"
    }
}

fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let mut body = crate::observe::metrics::render(shared);
    crate::observe::access_log::render_metrics(&mut body, shared.access_log.as_ref());
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json(value: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}
