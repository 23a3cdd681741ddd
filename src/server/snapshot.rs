//! A snapshot: everything a request needs from the configuration, immutable
//! and swapped whole. A request loads one snapshot and keeps it for its life.

use std::sync::Arc;

use crate::config::{Config, Route, RouteAction, UpstreamId};
use crate::limit::Limits;
use crate::observe::metrics::RouteStats;
use crate::router::RouteTable;
use crate::upstream::UpstreamPool;

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: Vec<UpstreamPool>,
    /// Per route, in config order.
    pub route_stats: Vec<RouteStats>,
    /// The rate limits, by `RateLimitId`.
    pub limits: Limits,
}

impl Snapshot {
    /// Builds a snapshot from a validated config. No side effects: nothing is
    /// bound or connected, so building one can never hurt a running one.
    pub fn build(config: Arc<Config>) -> Self {
        let workers = config.global.workers;
        let upstreams = config.upstreams.iter().map(|u| UpstreamPool::new(u, workers)).collect();
        let routes = RouteTable::new(config.routes.clone(), config.listeners.len());
        let route_stats = config
            .routes
            .iter()
            .map(|r| match r.action {
                RouteAction::Upstream(id) => RouteStats::new(config.upstreams[id.0].servers.len()),
                RouteAction::Respond { .. } => RouteStats::new(0),
            })
            .collect();
        let limits = Limits::build(&config, None);
        Snapshot {
            config,
            routes,
            upstreams,
            route_stats,
            limits,
        }
    }

    pub fn upstream(&self, id: UpstreamId) -> &UpstreamPool {
        &self.upstreams[id.0]
    }

    /// The upstream a route forwards to, if it forwards at all.
    pub fn route_upstream(&self, route: &Route) -> Option<&UpstreamPool> {
        match route.action {
            RouteAction::Upstream(id) => self.upstreams.get(id.0),
            RouteAction::Respond { .. } => None,
        }
    }
}
