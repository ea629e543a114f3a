//! The data plane's view of the configuration: one immutable [`Snapshot`] of
//! routes, upstreams and SSL objects, compiled from the store and swapped
//! atomically.
//!
//! Why a snapshot: a connection loads the current `Arc<Snapshot>` once and
//! keeps it, so it never sees half of an update, and established
//! connections keep the upstream they started with while new connections
//! see the change. Building happens off the traffic path ([`publish`]); a bad
//! object is logged, left out and listed in [`Snapshot::rejected`], never
//! taking the others down. What must outlive a snapshot (counters, plugin
//! runtime, health checkers) is in [`Carry`]; health checkers are attached
//! while building, so nothing writes a snapshot once it is published.
//!
//! Files: [`conn`] (connection variables) and [`upstream`] (compiled
//! upstreams) import nothing of the plugins, which use them; this module
//! compiles routes with their plugin chains; [`matcher`] indexes routes;
//! [`carry`] and [`publish`] keep snapshots coming. Certificates are
//! compiled by [`crate::tls`].

pub mod carry;
pub mod conn;
pub mod matcher;
pub mod publish;
pub mod upstream;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use ipnet::IpNet;
use serde_json::Value;

use crate::health::Checker;
use crate::model::{Kind, StreamRoute};
use crate::plugins;
use crate::stats::{NodeStats, RouteStats};
use crate::store::Dump;
use crate::tls;

pub use carry::Carry;
pub use conn::{canonical_ip, expand_template, ConnInfo};
pub use upstream::{HashKey, UpstreamRt, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT};

/// A compiled stream route.
#[derive(Debug)]
pub struct RouteRt {
    /// Route id.
    pub id: String,
    /// `remote_addr` filter.
    pub remote_addr: Option<IpNet>,
    /// `server_addr` filter.
    pub server_addr: Option<IpNet>,
    /// `server_port` filter.
    pub server_port: Option<u16>,
    /// `sni` filter (lower-case).
    pub sni: Option<String>,
    /// The upstream in force (`upstream_id` wins over inline), or why none.
    pub upstream: Result<Arc<UpstreamRt>, String>,
    /// `plugins` as stored.
    pub plugins: serde_json::Map<String, Value>,
    /// The plugins compiled for the data plane, in run order.
    pub chain: plugins::Chain,
    /// The route's live counters.
    pub stats: Arc<RouteStats>,
    /// Counters of each node of the upstream (same order as its backends).
    pub node_stats: Vec<Arc<NodeStats>>,
}

impl RouteRt {
    /// The route's filters in one line (for `top` and `route test`).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(a) = &self.server_addr {
            parts.push(format!("server_addr={a}"));
        }
        if let Some(p) = self.server_port {
            parts.push(format!("server_port={p}"));
        }
        if let Some(r) = &self.remote_addr {
            parts.push(format!("remote_addr={r}"));
        }
        if let Some(n) = &self.sni {
            parts.push(format!("sni={n}"));
        }
        if parts.is_empty() {
            "any".to_string()
        } else {
            parts.join(" ")
        }
    }
}

// These two read a route, which sits above the plugins; they live here so
// that `plugins` never imports this module.
impl plugins::Session {
    /// The upstream this session uses: the split choice, else the route's.
    pub fn upstream_for<'a>(
        &'a self,
        route: &'a RouteRt,
    ) -> Result<&'a Arc<UpstreamRt>, &'a String> {
        match &self.upstream {
            Some(t) => Ok(&t.upstream),
            None => route.upstream.as_ref(),
        }
    }

    /// Node counters matching [`plugins::Session::upstream_for`]'s backends.
    pub fn node_stats_for<'a>(&'a self, route: &'a RouteRt) -> &'a [Arc<NodeStats>] {
        match &self.upstream {
            Some(t) => &t.node_stats,
            None => &route.node_stats,
        }
    }
}

/// One immutable, compiled configuration.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Store revision it was built from.
    pub revision: u64,
    routes: Vec<Arc<RouteRt>>,
    index: matcher::RouteIndex,
    upstreams: HashMap<String, Arc<UpstreamRt>>,
    /// Server certificates by SNI and client certificates by id.
    pub tls: tls::TlsCerts,
    rejected: BTreeMap<(Kind, String), String>,
}

impl Snapshot {
    /// An empty snapshot (no routes: every connection is closed).
    pub fn empty() -> Snapshot {
        Snapshot::default()
    }

    /// Number of routes that can be matched.
    pub fn route_count(&self) -> usize {
        self.routes.len()
    }

    /// All routes, in id order.
    pub fn routes(&self) -> &[Arc<RouteRt>] {
        &self.routes
    }

    /// A stored upstream by id.
    pub fn upstream(&self, id: &str) -> Option<&Arc<UpstreamRt>> {
        self.upstreams.get(id)
    }

    /// Why a stored object cannot be served as written (it was left out,
    /// or, for an upstream or a route's inline upstream, its TLS settings
    /// cannot be used); None when it is served or not stored.
    pub fn rejected(&self, kind: Kind, id: &str) -> Option<&str> {
        self.rejected
            .get(&(kind, id.to_string()))
            .map(String::as_str)
    }

    /// Every health checker this snapshot holds (stored upstreams, then
    /// routes' inline upstreams): the ones whose probes must run.
    pub fn checkers(&self) -> impl Iterator<Item = &Arc<Checker>> + '_ {
        let stored = self.upstreams.values().filter_map(|u| u.health());
        let inline = self
            .routes
            .iter()
            .filter_map(|r| r.upstream.as_ref().ok())
            .filter(|u| u.upstream_id.is_none())
            .filter_map(|u| u.health());
        stored.chain(inline)
    }

    /// Compile everything in `dump`, taking counters, plugin state and
    /// health settings from `carry`. Objects that do not compile are logged,
    /// left out and listed in [`Snapshot::rejected`]. Upstreams whose JSON
    /// is unchanged since `prev` are reused with their balancer state
    /// (least_conn counts, round-robin position) and health checker; an
    /// upstream that a stream route names and that has `checks` gets a
    /// checker (sharing the targets of the one it replaces), unless health
    /// checks are off.
    pub fn build(dump: &Dump, prev: Option<&Snapshot>, carry: &Carry) -> Snapshot {
        let stats = &carry.stats;
        let mut rejected: BTreeMap<(Kind, String), String> = BTreeMap::new();
        let mut reuse: HashMap<&str, &Arc<UpstreamRt>> = HashMap::new();
        if let Some(p) = prev {
            for u in p.upstreams.values() {
                reuse.insert(&u.origin, u);
            }
            for r in &p.routes {
                if let Ok(u) = &r.upstream {
                    reuse.insert(&u.origin, u);
                }
            }
        }
        let certs = tls::TlsCerts::build(
            dump.entries
                .iter()
                .filter(|e| e.kind == Kind::Ssl)
                .map(|e| (e.id.as_str(), &*e.value)),
            prev.map(|p| &p.tls),
        );
        for (id, why) in certs.rejected() {
            rejected.insert((Kind::Ssl, id.clone()), why.clone());
        }
        let mut parsed = Vec::new();
        for e in dump.entries.iter().filter(|e| e.kind == Kind::StreamRoute) {
            match StreamRoute::from_value(&e.value) {
                // xRPC subordinate routes are never matched directly.
                Ok(r) if r.superior_id.is_some() => {}
                Ok(r) => parsed.push((e, r)),
                Err(err) => {
                    tracing::warn!(route_id = %e.id, error = %err, "stream route skipped");
                    rejected.insert((Kind::StreamRoute, e.id.clone()), err);
                }
            }
        }
        // The upstreams a route names get a checker when they have `checks`.
        let checked: HashSet<String> = if carry.health.enabled() {
            parsed
                .iter()
                .filter_map(|(e, r)| match (&r.upstream_id, e.value.get("upstream")) {
                    (Some(uid), _) => Some(format!("upstreams/{uid}")),
                    (None, Some(_)) => Some(format!("stream_routes/{}", e.id)),
                    (None, None) => None,
                })
                .collect()
        } else {
            HashSet::new()
        };
        let compile =
            |origin: String, id: Option<String>, v: &Value| -> Result<Arc<UpstreamRt>, String> {
                let old = reuse.get(origin.as_str());
                let checked = checked.contains(&origin);
                if let Some(old) = old {
                    if old.source == *v
                        && old.upstream_id == id
                        && !old.uses_ssl_object()
                        && old.health().is_some() == (checked && old.checks().is_some())
                    {
                        return Ok(Arc::clone(old));
                    }
                }
                let up = UpstreamRt::build(origin, id, v, &certs)?;
                Ok(Arc::new(if checked {
                    up.with_checker(old.and_then(|o| o.health()).map(|c| &**c))
                } else {
                    up
                }))
            };

        let mut upstreams = HashMap::new();
        for e in dump.entries.iter().filter(|e| e.kind == Kind::Upstream) {
            match compile(format!("upstreams/{}", e.id), Some(e.id.clone()), &e.value) {
                Ok(u) => {
                    if let Some(Err(why)) = &u.tls {
                        tracing::warn!(upstream_id = %e.id, error = %why, "upstream cannot speak TLS to its nodes");
                        rejected.insert((Kind::Upstream, e.id.clone()), why.clone());
                    }
                    upstreams.insert(e.id.clone(), u);
                }
                Err(err) => {
                    tracing::warn!(upstream_id = %e.id, error = %err, "upstream skipped");
                    rejected.insert((Kind::Upstream, e.id.clone()), err);
                }
            }
        }
        let mut routes = Vec::new();
        for (e, r) in parsed {
            let chain = match plugins::Chain::build(
                &r.plugins,
                &plugins::BuildCtx {
                    route_id: &e.id,
                    route_name: r.name.as_deref(),
                    service_id: r.service_id.as_deref(),
                    version: e.mod_rev,
                    shared: &carry.plugins,
                    upstreams: &upstreams,
                    compile: &|origin, v| compile(origin, None, v),
                    node_stats: &|label| stats.node(&e.id, label),
                },
            ) {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(route_id = %e.id, error = %err, "stream route skipped: bad plugins");
                    rejected.insert((Kind::StreamRoute, e.id.clone()), err);
                    continue;
                }
            };
            let upstream = match (&r.upstream_id, e.value.get("upstream")) {
                (Some(uid), _) => upstreams
                    .get(uid)
                    .cloned()
                    .ok_or_else(|| format!("upstream [{uid}] not found")),
                (None, Some(inline)) => {
                    let up = compile(format!("stream_routes/{}", e.id), None, inline);
                    let unusable = match &up {
                        Err(why) => Some(why),
                        Ok(u) => match &u.tls {
                            Some(Err(why)) => Some(why),
                            _ => None,
                        },
                    };
                    if let Some(why) = unusable {
                        tracing::warn!(route_id = %e.id, error = %why, "stream route's upstream cannot be used");
                        rejected.insert((Kind::StreamRoute, e.id.clone()), why.clone());
                    }
                    up
                }
                (None, None) => Err("missing upstream configuration in Route or Service".into()),
            };
            let node_stats = match &upstream {
                Ok(u) => u
                    .balancer
                    .backends()
                    .iter()
                    .map(|b| stats.node(&e.id, &b.label))
                    .collect(),
                Err(_) => Vec::new(),
            };
            routes.push(Arc::new(RouteRt {
                id: e.id.clone(),
                remote_addr: r.remote_addr,
                server_addr: r.server_addr,
                server_port: r.server_port,
                sni: r.sni.map(|s| s.to_ascii_lowercase()),
                upstream,
                plugins: r.plugins,
                chain,
                stats: stats.route(&e.id),
                node_stats,
            }));
        }
        let index = matcher::RouteIndex::build(&routes);
        Snapshot {
            revision: dump.revision,
            routes,
            index,
            upstreams,
            tls: certs,
            rejected,
        }
    }

    /// The route a connection takes, by the precedence of INTERFACE.md.
    pub fn match_route(&self, conn: &ConnInfo) -> Option<&Arc<RouteRt>> {
        self.index.find(&self.routes, conn).map(|i| &self.routes[i])
    }

    /// Every route considered for `conn` with the reason it lost, the winner
    /// first (for `route test`).
    pub fn explain(&self, conn: &ConnInfo) -> Vec<(Arc<RouteRt>, Option<String>)> {
        self.index.explain(&self.routes, conn)
    }
}

#[cfg(test)]
mod tests;
