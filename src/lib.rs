//! Fulcrum: a layer-7 HTTP load balancer and reverse proxy.
//!
//! A request's life is charted in `docs/architecture.md`.

pub mod admin;
pub mod backend;
pub mod balance;
pub mod body;
pub mod compress;
pub mod config;
pub mod http1;
pub mod limit;
pub mod observe;
pub mod proxy;
pub mod router;
pub mod server;
pub mod tls;
pub mod upstream;
