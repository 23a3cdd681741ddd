//! Shared end-to-end test harness: in-process backends, a small HTTP client,
//! the real `fulcrum` binary under test and the config it usually runs
//! (`Config`), and waiting on conditions with a deadline instead of sleeping.

// Each test file uses a different part of the harness.
#![allow(dead_code)]

pub mod browser;
mod client;
mod config;
pub mod dns;
mod process;
mod redis;
pub mod tls;

use std::future::Future;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use fulcrum::backend::{self, BackendHandle};

// Re-exported for whichever test files need them.
#[allow(unused_imports)]
pub use client::{Conn, Resp, get, get_with, raw_exchange, request};
#[allow(unused_imports)]
pub use config::Config;
#[allow(unused_imports)]
pub use process::{Fulcrum, log_field, parse_listening_line, strip_ansi};
#[allow(unused_imports)]
pub use redis::RedisServer;

/// A TCP server on an ephemeral port of 127.0.0.1: each connection it
/// accepts is handed to `serve`, whose future runs on a task of its own.
/// For upstreams scripted byte by byte.
pub async fn tcp_server<F, Fut>(mut serve: F) -> std::net::SocketAddr
where
    F: FnMut(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream));
        }
    });
    addr
}

/// How often `wait_until` re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(5);

/// Polls `f` until it holds; panics naming `what` once `deadline` passes.
pub async fn wait_until<F: FnMut() -> bool>(what: &str, deadline: Duration, mut f: F) {
    let started = Instant::now();
    loop {
        if f() {
            return;
        }
        if started.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Like [`wait_until`], for a condition that has to do I/O to be checked
/// (a request, a connect). A check that hangs counts against the deadline.
pub async fn wait_until_async<F, Fut>(what: &str, deadline: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        if tokio::time::timeout(left, f()).await == Ok(true) {
            return;
        }
        if started.elapsed() >= deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Starts one in-process backend per name, each on its own ephemeral port of
/// 127.0.0.1. Dropping a handle stops that backend.
///
/// The backends run on a runtime of their own, so a test that blocks its
/// thread (starting the balancer, waiting for it to exit) never stalls them.
pub async fn backends(names: &[&str]) -> Vec<BackendHandle> {
    names.iter().map(|name| spawn_backend(name)).collect()
}

fn spawn_backend(name: &str) -> BackendHandle {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a backend port");
    serve_backend(listener, name)
}

/// Starts an in-process backend on `addr` (any address of 127/8), or says
/// why it cannot bind there.
pub fn backend_at(addr: std::net::SocketAddr, name: &str) -> std::io::Result<BackendHandle> {
    Ok(serve_backend(std::net::TcpListener::bind(addr)?, name))
}

fn serve_backend(listener: std::net::TcpListener, name: &str) -> BackendHandle {
    listener
        .set_nonblocking(true)
        .expect("make the backend listener non-blocking");
    // The listener must belong to the runtime whose tasks poll it.
    let _runtime = backend_runtime().enter();
    let listener = tokio::net::TcpListener::from_std(listener).expect("register the backend listener");
    backend::spawn(listener, name)
}

fn backend_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("test-backends")
            .enable_all()
            .build()
            .expect("start the test backends' runtime")
    })
}
