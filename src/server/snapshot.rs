//! A snapshot: everything a request needs from the configuration, immutable
//! and swapped whole. A request loads one snapshot and keeps it for its life.

use std::sync::Arc;

use crate::config::{Config, ListenerId, Route, RouteAction, UpstreamId};
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
                let upstream = match r.action {
                    RouteAction::Upstream(id) => Some(&upstreams[id.0]),
                    RouteAction::Respond { .. } => None,
                };
                let servers: Vec<&str> = upstream
                    .map(|u| u.servers.iter().map(|s| s.address.as_str()).collect())
                    .unwrap_or_default();
                let upstream_name = upstream.map(|u| u.name.as_str());
                match previous.and_then(|p| p.carried_route_stats(&r.name, upstream_name)) {
                    Some((old, old_servers)) => RouteStats::carried(&servers, old, &old_servers),
                    None => RouteStats::new(servers.len()),
                }
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
        Snapshot {
            config,
            routes,
            upstreams,
            route_stats,
            listener_ids,
        }
    }

    /// The counters of the route of the same name that forwarded to the
    /// same upstream (`None`: answered itself), with the addresses their rows
    /// belong to.
    fn carried_route_stats(&self, name: &str, upstream: Option<&str>) -> Option<(&RouteStats, Vec<&str>)> {
        let index = self.config.routes.iter().position(|r| r.name == name)?;
        let old_upstream = self.route_upstream(&self.config.routes[index]);
        if old_upstream.map(|u| u.name.as_str()) != upstream {
            return None;
        }
        let servers = old_upstream
            .map(|u| u.servers.iter().map(|s| s.address.as_str()).collect())
            .unwrap_or_default();
        Some((&self.route_stats[index], servers))
    }

    /// Which listener of this config a running slot is, if it still is one.
    #[inline]
    pub fn listener_id(&self, slot: ListenerSlot) -> Option<ListenerId> {
        self.listener_ids.get(slot.0 as usize).copied().flatten()
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
