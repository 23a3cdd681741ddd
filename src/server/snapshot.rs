//! A snapshot: everything a request needs from the configuration, immutable
//! and swapped whole. A request loads one snapshot and keeps it for its life.

use std::sync::Arc;

use crate::config::{Config, UpstreamId};
use crate::router::RouteTable;
use crate::upstream::UpstreamPool;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: Vec<UpstreamPool>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config. No side effects: nothing is
    /// bound or connected, so building one can never hurt a running one.
    pub fn build(config: Arc<Config>) -> Self {
        let workers = config.global.workers;
        let upstreams = config.upstreams.iter().map(|u| UpstreamPool::new(u, workers)).collect();
        let routes = RouteTable::new(config.routes.clone(), config.listeners.len());
        Snapshot {
            config,
            routes,
            upstreams,
        }
    }

    pub fn upstream(&self, id: UpstreamId) -> &UpstreamPool {
        &self.upstreams[id.0]
    }
}
