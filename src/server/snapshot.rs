//! A snapshot: everything a request needs from the configuration, immutable
//! and swapped whole. A request loads one snapshot and keeps it for its life.

use std::sync::Arc;

use crate::config::{Config, ListenerId, Route, UpstreamId};
use crate::limit::Limits;
use crate::observe::metrics::RouteStats;
use crate::router::RouteTable;
use crate::upstream::UpstreamPool;

/// A running listener's identity for as long as its sockets live, across
/// reloads that reorder, add or remove the others. A connection knows its
/// slot; each snapshot says which of its listeners a slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ListenerSlot(pub u32);

#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub routes: RouteTable,
    pub upstreams: Vec<UpstreamPool>,
    /// Per route, in config order.
    pub route_stats: Vec<RouteStats>,
    /// The rate limits, by `RateLimitId`.
    pub limits: Limits,
    /// Indexed by slot number.
    listener_ids: Vec<Option<ListenerId>>,
}

impl Snapshot {
    /// Builds a snapshot from a validated config; `slots` gives each of its
    /// listeners (in config order) its running slot. With `previous`, state
    /// that belongs to servers and routes present in both (health, pooled
    /// connections, counters) carries over. No side effects: nothing is bound
    /// or connected, so building one can never hurt a running one.
    pub fn build(config: Arc<Config>, slots: &[ListenerSlot], previous: Option<&Snapshot>) -> Self {
        debug_assert_eq!(slots.len(), config.listeners.len());
        let workers = config.global.workers;
        let upstreams: Vec<UpstreamPool> = config
            .upstreams
            .iter()
            .map(|u| {
                let old = previous.and_then(|p| p.upstreams.iter().find(|o| o.name == u.name));
                UpstreamPool::new(u, workers, old)
            })
            .collect();
        let routes = RouteTable::new(config.routes.clone(), config.listeners.len());
        let route_stats = config
            .routes
            .iter()
            .map(|r| {
                let targets: Vec<(&str, Vec<&str>)> = r
                    .action
                    .upstream_ids()
                    .into_iter()
                    .map(|id| {
                        let u = &upstreams[id.0];
                        (u.name.as_str(), u.servers.iter().map(|s| s.address.as_str()).collect())
                    })
                    .collect();
                let old = previous.and_then(|p| {
                    let i = p.config.routes.iter().position(|o| o.name == r.name)?;
                    p.route_stats.get(i)
                });
                RouteStats::new(&targets, old)
            })
            .collect();
        let mut listener_ids = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            let at = slot.0 as usize;
            if listener_ids.len() <= at {
                listener_ids.resize(at + 1, None);
            }
            listener_ids[at] = Some(ListenerId(i));
        }
        let limits = Limits::build(&config, previous.map(|p| &p.limits));
        Snapshot {
            config,
            routes,
            upstreams,
            route_stats,
            limits,
            listener_ids,
        }
    }

    /// Which listener of this config a running slot is, if it still is one.
    #[inline]
    pub fn listener_id(&self, slot: ListenerSlot) -> Option<ListenerId> {
        self.listener_ids.get(slot.0 as usize).copied().flatten()
    }

    pub fn upstream(&self, id: UpstreamId) -> &UpstreamPool {
        &self.upstreams[id.0]
    }

    /// The upstreams a route forwards to, in config order (none for a
    /// `respond` route, several for a `split`).
    pub fn route_upstreams(&self, route: &Route) -> Vec<&UpstreamPool> {
        route
            .action
            .upstream_ids()
            .into_iter()
            .filter_map(|id| self.upstreams.get(id.0))
            .collect()
    }
}
