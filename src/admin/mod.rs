//! The admin listener (SPEC §4), read-only part: `/health`, `/ready`,
//! `/api/upstreams` and `/metrics`. It runs on a thread of its own, away
//! from the workers. Mutating calls, `/api/config` and the dashboard come
//! with the operations issue.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::watch;

use crate::server::Shared;
use crate::upstream::health::now_ms;

/// Starts the admin thread serving `listener` until `shutdown`.
pub fn start(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
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
                let shared = shared.clone();
                let draining = draining.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let response = answer(&req, &shared, draining.load(Ordering::Relaxed));
                        async move { Ok::<_, Infallible>(response) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
    })
}

fn answer(req: &Request<Incoming>, shared: &Shared, draining: bool) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/health") => text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/ready") if draining => text(StatusCode::SERVICE_UNAVAILABLE, "shutting down\n"),
        // Serving at all means the config is loaded and every listener bound.
        (&Method::GET, "/ready") => text(StatusCode::OK, "ready\n"),
        (&Method::GET, "/api/upstreams") => json(upstreams(shared)),
        (&Method::GET, "/metrics") => metrics(shared),
        (_, "/health" | "/ready" | "/api/upstreams" | "/metrics") => {
            text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
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
            let servers: Vec<serde_json::Value> = u
                .servers
                .iter()
                .map(|s| {
                    serde_json::json!({
                        "address": s.address,
                        "resolved": s.endpoints.current().iter().map(ToString::to_string).collect::<Vec<_>>(),
                        "weight": s.weight,
                        "backup": s.backup,
                        "max_requests": s.max_requests,
                        "state": if s.is_up(now) { "up" } else { "down" },
                        "health_check": if s.checked_up() { "passing" } else { "failing" },
                        "active_requests": s.active_requests(),
                        "latency_ms": s.latency.latency_us(now) / 1000.0,
                    })
                })
                .collect();
            serde_json::json!({ "name": u.name, "balance": format!("{:?}", u.kind), "servers": servers })
        })
        .collect();
    serde_json::json!({ "upstreams": list })
}

fn metrics(shared: &Shared) -> Response<Full<Bytes>> {
    let snapshot = shared.snapshot.load();
    let body = crate::observe::metrics::render(&snapshot, &shared.listener_stats, &shared.unrouted);
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
