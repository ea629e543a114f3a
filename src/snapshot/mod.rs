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

pub mod build;
pub mod carry;
pub mod conn;
pub mod matcher;
pub mod publish;
pub mod service;
pub mod upstream;

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use ipnet::IpNet;
use serde_json::Value;

use crate::health::Checker;
use crate::model::Kind;
use crate::plugins;
use crate::stats::{NodeStats, RouteStats};
use crate::store::index::Key;
use crate::store::{Dump, Entry};
use crate::tls;

pub use carry::Carry;
pub use conn::{canonical_ip, expand_template, ConnInfo};
pub use upstream::{
    HashKey, UpstreamRt, UpstreamSource, DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT,
};

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
    /// The plugins compiled for the data plane, in run order.
    pub chain: plugins::Chain,
    /// The route's live counters.
    pub stats: Arc<RouteStats>,
    /// Counters of each node of the upstream (same order as its backends).
    pub node_stats: Vec<Arc<NodeStats>>,
    /// Its xRPC `protocol`, when it is a protocol route.
    pub protocol: Option<Arc<crate::xrpc::RouteProtocol>>,
    /// What it was compiled from, to reuse it while that is unchanged.
    source: build::RouteSource,
}

impl RouteRt {
    /// The route's filters in one line, and the service it runs under (for
    /// `top` and `route test`).
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
            parts.push("any".to_string());
        }
        if let Some(s) = self.chain.service_id() {
            parts.push(format!("service={s}"));
        }
        parts.join(" ")
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
///
/// Its collections are persistent maps: a snapshot built from another
/// shares every part that did not change, so building one costs what the
/// change touches, not what the configuration holds.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Store revision it was built from.
    pub revision: u64,
    routes: OrdMap<String, Arc<RouteRt>>,
    index: Arc<matcher::RouteIndex>,
    upstreams: OrdMap<String, Arc<UpstreamRt>>,
    /// Server certificates by SNI and client certificates by id.
    pub tls: Arc<tls::TlsCerts>,
    rejected: OrdMap<(Kind, String), String>,
    /// Stream routes left out (failed, or xRPC subordinates), by id.
    left_out: OrdMap<String, build::RouteSource>,
    /// Stored upstreams as stored (values opened), by id.
    stored_upstreams: OrdMap<String, Entry>,
    /// How many stream routes name each stored upstream by `upstream_id`.
    named: OrdMap<String, usize>,
    /// (upstream id, stream route id) for every upstream a route names,
    /// its plugins' included: the routes to recompile when it changes.
    users: OrdSet<(String, String)>,
    /// Stream routes that name an SSL object (`client_cert_id`).
    ssl_users: OrdSet<String>,
    /// The SSL objects the certificates were compiled from.
    ssl_sources: OrdMap<String, Arc<Value>>,
    /// Whether compiling the certificates failed (retried on an SSL change).
    ssl_failed: bool,
    /// Whether its health checkers may differ from the previous snapshot's.
    checkers_changed: bool,
    /// Routes merged with their service, and the plugin generation.
    services: service::Services,
    /// xRPC subordinate routes by the id of their superior.
    subordinates: OrdMap<String, Arc<[Arc<crate::xrpc::Subordinate>]>>,
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
    pub fn routes(&self) -> Vec<Arc<RouteRt>> {
        self.routes.values().cloned().collect()
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

    /// Whether [`Snapshot::checkers`] may differ from those of the snapshot
    /// it was built from (when not, the probes running stay as they are).
    pub fn checkers_changed(&self) -> bool {
        self.checkers_changed
    }

    /// Every health checker this snapshot holds (stored upstreams, then
    /// routes' inline upstreams): the ones whose probes must run.
    pub fn checkers(&self) -> impl Iterator<Item = &Arc<Checker>> + '_ {
        let stored = self.upstreams.values().filter_map(|u| u.health());
        let inline = self
            .routes
            .values()
            .filter_map(|r| r.upstream.as_ref().ok())
            .filter(|u| u.upstream_id.is_none())
            .filter_map(|u| u.health());
        stored.chain(inline)
    }

    /// Compile everything in `dump`, taking counters, plugin state and
    /// health settings from `carry`, and reusing what `prev` compiled for
    /// the objects that did not change (see [`build`]). Objects that do not
    /// compile are logged, left out and listed in [`Snapshot::rejected`].
    /// Upstreams reused keep their balancer state (least_conn counts,
    /// round-robin position) and health checker; an upstream that a stream
    /// route names and that has `checks` gets a checker (sharing the targets
    /// of the one it replaces), unless health checks are off.
    pub fn build(dump: &Dump, prev: Option<&Snapshot>, carry: &Carry) -> Snapshot {
        let empty = Snapshot::empty();
        // Routes under a service are merged first; a change of the enabled
        // plugins compiles everything again.
        let generation = carry.plugins.generation();
        let prev = prev
            .filter(|p| p.services.generation == generation)
            .unwrap_or(&empty);
        service::apply_metadata(dump, carry);
        let (dump, mut services) = service::resolve(dump, &prev.services);
        services.generation = generation;
        let mut built = build::apply(prev, dump.revision, build::diff(&dump, prev), carry);
        built.services = services;
        built
    }

    /// The plugin generation this snapshot was compiled with.
    pub fn plugin_generation(&self) -> u64 {
        self.services.generation
    }

    /// Whether [`Snapshot::apply`] can take these changes (objects written,
    /// keys removed): not when they touch services or plugin metadata, name
    /// a service, or the snapshot holds routes merged with a service, nor
    /// after a plugin reload; those take a whole [`Snapshot::build`].
    pub fn applies(&self, changed: &[Entry], removed: &[Key], carry: &Carry) -> bool {
        let plain = |k: Kind| matches!(k, Kind::StreamRoute | Kind::Upstream | Kind::Ssl);
        self.services.generation == carry.plugins.generation()
            && self.services.is_empty()
            && removed.iter().all(|(k, _)| plain(*k))
            && changed
                .iter()
                .all(|e| plain(e.kind) && e.value.get("service_id").is_none())
    }

    /// The snapshot `self` becomes with `updates` (each stored object's
    /// new entry, values opened, or None when it was removed) at store
    /// revision `revision`: only the objects changed, and those naming
    /// them, are compiled (see [`build`]).
    pub fn apply(&self, revision: u64, updates: Vec<build::Update>, carry: &Carry) -> Snapshot {
        build::apply(self, revision, updates, carry)
    }

    /// Every object that cannot be served as written, with why, in key
    /// order (for the Control API).
    pub fn skipped(&self) -> impl Iterator<Item = (Kind, &str, &str)> + '_ {
        self.rejected
            .iter()
            .map(|((k, id), why)| (*k, id.as_str(), why.as_str()))
    }

    /// A compiled route by id.
    fn route(&self, id: &str) -> Option<&Arc<RouteRt>> {
        self.routes.get(id)
    }

    /// The compiled upstream of `origin` (`upstreams/<id>` or a route's
    /// inline `stream_routes/<id>`), for reuse.
    fn upstream_by_origin(&self, origin: &str) -> Option<&Arc<UpstreamRt>> {
        if let Some(id) = origin.strip_prefix("upstreams/") {
            return self.upstreams.get(id);
        }
        let id = origin.strip_prefix("stream_routes/")?;
        self.route(id)
            .and_then(|r| r.upstream.as_ref().ok())
            .filter(|u| u.origin == origin)
    }

    /// The route a connection takes, by the precedence of INTERFACE.md.
    pub fn match_route(&self, conn: &ConnInfo) -> Option<&Arc<RouteRt>> {
        self.index.find(conn)
    }

    /// The xRPC subordinate routes of route `superior`, in id order.
    pub fn subordinates(&self, superior: &str) -> Arc<[Arc<crate::xrpc::Subordinate>]> {
        self.subordinates
            .get(superior)
            .cloned()
            .unwrap_or_else(|| Arc::new([]))
    }

    /// Every route considered for `conn` with the reason it lost, the winner
    /// first (for `route test`).
    pub fn explain(&self, conn: &ConnInfo) -> Vec<(Arc<RouteRt>, Option<String>)> {
        self.index.explain(conn)
    }
}

#[cfg(test)]
mod tests;
