//! The data plane's view of the configuration: one immutable [`Snapshot`] of
//! routes and upstreams, compiled from the store and swapped atomically.
//!
//! Why a snapshot: a connection loads the current `Arc<Snapshot>` once and
//! keeps it, so it never sees half of an update, and established
//! connections keep the upstream they started with while new connections
//! see the change. Building happens off the traffic path ([`publish`]); a bad
//! object is logged and left out, never taking the others down.

pub mod matcher;
pub mod publish;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde_json::Value;

use crate::balancer::Balancer;
use crate::health::Checker;
use crate::model::{Kind, LbType, StreamRoute, Upstream};
use crate::stats::{NodeStats, RouteStats, Stats};
use crate::store::Dump;
use crate::tls;
use arc_swap::ArcSwapOption;

/// APISIX's default connect timeout (seconds).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(60);
/// APISIX's default idle timeout: `max(send, read)` of 600 s each.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(600);

/// What the chash key of an upstream is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// `remote_addr` (also the fallback for unknown or empty keys).
    RemoteAddr,
    /// `remote_port`.
    RemotePort,
    /// `server_addr`.
    ServerAddr,
    /// `server_port`.
    ServerPort,
    /// `vars_combinations` template such as `$remote_addr$remote_port`.
    Template(String),
    /// `mqtt_client_id`, set by the mqtt-proxy plugin (unset: `remote_addr`).
    MqttClientId,
    /// A variable this proxy does not know: falls back to `remote_addr`.
    Unknown(String),
}

/// A compiled upstream, shared by every route using it.
#[derive(Debug)]
pub struct UpstreamRt {
    /// Where it came from: `upstreams/<id>` or `stream_routes/<id>` (inline).
    pub origin: String,
    /// The `upstreams` id when it is a stored upstream.
    pub upstream_id: Option<String>,
    /// The source JSON, to reuse this object (and its balancer state)
    /// when a rebuild finds it unchanged.
    pub source: Value,
    /// Node selection.
    pub balancer: Balancer,
    /// Per-try connect timeout.
    pub connect_timeout: Duration,
    /// Session idle timeout.
    pub idle_timeout: Duration,
    /// Extra tries after the first.
    pub retries: usize,
    /// Budget for retries, measured from the first pick.
    pub retry_timeout: Option<Duration>,
    /// chash key source.
    pub hash_key: HashKey,
    /// `scheme: tls`: the client configuration to speak TLS to the node
    /// (or why it cannot be built, e.g. a missing `client_cert_id`).
    pub tls: Option<Result<Arc<rustls::ClientConfig>, String>>,
    /// The health checker of this upstream, hung here by
    /// [`crate::health::manager`] when it has `checks` (read lock-free).
    pub health: ArcSwapOption<Checker>,
}

fn secs(v: f64) -> Option<Duration> {
    (v.is_finite() && v > 0.0).then(|| Duration::from_secs_f64(v))
}

impl UpstreamRt {
    /// Compile an upstream from its validated JSON.
    /// (Client certificates of `tls.client_cert_id` come from `certs`.)
    pub fn build(
        origin: String,
        upstream_id: Option<String>,
        source: &Value,
        certs: &tls::TlsCerts,
    ) -> Result<Self, String> {
        let up = Upstream::from_value(source)?;
        Ok(Self::from_model(
            origin,
            upstream_id,
            source.clone(),
            &up,
            certs,
        ))
    }

    fn from_model(
        origin: String,
        upstream_id: Option<String>,
        source: Value,
        up: &Upstream,
        certs: &tls::TlsCerts,
    ) -> Self {
        let (connect_timeout, idle_timeout) = match &up.timeout {
            Some(t) => (
                secs(t.connect).unwrap_or(DEFAULT_CONNECT_TIMEOUT),
                secs(t.send.max(t.read)).unwrap_or(DEFAULT_IDLE_TIMEOUT),
            ),
            None => (DEFAULT_CONNECT_TIMEOUT, DEFAULT_IDLE_TIMEOUT),
        };
        let hash_key = match (&up.lb, up.hash_on.as_str(), up.key.as_deref()) {
            (LbType::Chash, "vars_combinations", Some(t)) => HashKey::Template(t.to_string()),
            (_, _, Some("remote_addr") | None) => HashKey::RemoteAddr,
            (_, _, Some("remote_port")) => HashKey::RemotePort,
            (_, _, Some("server_addr")) => HashKey::ServerAddr,
            (_, _, Some("server_port")) => HashKey::ServerPort,
            (_, _, Some("mqtt_client_id")) => HashKey::MqttClientId,
            (_, _, Some(other)) => HashKey::Unknown(other.to_string()),
        };
        UpstreamRt {
            origin,
            upstream_id,
            source,
            balancer: Balancer::new(&up.lb, &up.nodes),
            connect_timeout,
            idle_timeout,
            retries: up
                .retries
                .map_or(up.nodes.len().saturating_sub(1), |r| r as usize),
            retry_timeout: up.retry_timeout.and_then(secs),
            hash_key,
            tls: (up.scheme == "tls").then(|| upstream_tls(up, certs)),
            health: ArcSwapOption::empty(),
        }
    }

    /// Whether this upstream depends on an SSL object (so it must be rebuilt
    /// whenever SSL objects change).
    fn uses_ssl_object(&self) -> bool {
        self.source
            .get("tls")
            .and_then(|t| t.get("client_cert_id"))
            .is_some()
    }

    /// The health checker in force, for picking a node; warns (rate-limited)
    /// when it finds every node unhealthy, as APISIX does.
    pub fn checker(&self) -> Option<Arc<Checker>> {
        let checker = self.health.load_full();
        if let Some(c) = &checker {
            c.warn_if_all_unhealthy();
        }
        checker
    }

    /// The chash key for a connection.
    pub fn key_for(&self, conn: &ConnInfo) -> String {
        let var = |name: &str| conn.var(name);
        let key = match &self.hash_key {
            HashKey::RemoteAddr | HashKey::Unknown(_) => None,
            HashKey::RemotePort => var("remote_port"),
            HashKey::ServerAddr => var("server_addr"),
            HashKey::ServerPort => var("server_port"),
            HashKey::MqttClientId => var("mqtt_client_id"),
            HashKey::Template(t) => Some(expand_template(t, &var).0),
        };
        key.filter(|k| !k.is_empty())
            .unwrap_or_else(|| conn.remote_addr.to_string())
    }
}

fn upstream_tls(up: &Upstream, certs: &tls::TlsCerts) -> Result<Arc<rustls::ClientConfig>, String> {
    let client_cert = match &up.tls {
        Some(t) => match (&t.client_cert_id, &t.client_cert, &t.client_key) {
            (Some(id), _, _) => Some(
                certs
                    .client_cert(id)
                    .cloned()
                    .ok_or_else(|| format!("ssl id [{id}] not exits or is not of type client"))?,
            ),
            (None, Some(c), Some(k)) => Some(tls::certified_key(c, k, &tls::provider())?),
            _ => None,
        },
        None => None,
    };
    tls::client_config(client_cert)
}

/// Replace each `$name` in a template (`vars_combinations`, limit-conn's
/// `var_combination`) by `var(name)`, unset ones by nothing. Returns the
/// text and how many variables had a value.
pub fn expand_template(t: &str, var: &dyn Fn(&str) -> Option<String>) -> (String, usize) {
    let mut out = String::new();
    let mut found = 0;
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let end = after
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(after.len());
        if let Some(v) = var(&after[..end]) {
            found += 1;
            out.push_str(&v);
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    (out, found)
}

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
    pub chain: crate::plugins::Chain,
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

/// What is known about a connection when it is routed.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Client address (IPv4-mapped IPv6 shown as IPv4).
    pub remote_addr: IpAddr,
    /// Client port.
    pub remote_port: u16,
    /// Local address the connection arrived on.
    pub server_addr: IpAddr,
    /// Local port the connection arrived on.
    pub server_port: u16,
    /// TLS SNI, lower-case without a trailing dot.
    pub sni: Option<String>,
    /// MQTT client id read by the mqtt-proxy plugin (after routing).
    pub mqtt_client_id: Option<String>,
}

impl ConnInfo {
    /// The stream variable `name` of this connection (nginx's names), if set.
    pub fn var(&self, name: &str) -> Option<String> {
        match name {
            "remote_addr" => Some(self.remote_addr.to_string()),
            "remote_port" => Some(self.remote_port.to_string()),
            "server_addr" => Some(self.server_addr.to_string()),
            "server_port" => Some(self.server_port.to_string()),
            "ssl_server_name" => self.sni.clone(),
            "mqtt_client_id" => self.mqtt_client_id.clone(),
            _ => None,
        }
    }
}

/// Undo IPv4-mapped IPv6 so filters written as IPv4 match dual-stack sockets.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
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

    /// Compile everything in `dump`. Objects that do not compile are logged
    /// and skipped. Upstreams whose JSON is unchanged since `prev` are reused
    /// with their balancer state (least_conn counts, round-robin position).
    pub fn build(dump: &Dump, prev: Option<&Snapshot>) -> Snapshot {
        Self::build_with(dump, prev, &Stats::default())
    }

    /// [`Snapshot::build`], attaching each route's counters from `stats`.
    pub fn build_with(dump: &Dump, prev: Option<&Snapshot>, stats: &Stats) -> Snapshot {
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
        let compile =
            |origin: String, id: Option<String>, v: &Value| -> Result<Arc<UpstreamRt>, String> {
                if let Some(old) = reuse.get(origin.as_str()) {
                    if old.source == *v && old.upstream_id == id && !old.uses_ssl_object() {
                        return Ok(Arc::clone(old));
                    }
                }
                UpstreamRt::build(origin, id, v, &certs).map(Arc::new)
            };

        let mut upstreams = HashMap::new();
        for e in dump.entries.iter().filter(|e| e.kind == Kind::Upstream) {
            match compile(format!("upstreams/{}", e.id), Some(e.id.clone()), &e.value) {
                Ok(u) => {
                    upstreams.insert(e.id.clone(), u);
                }
                Err(err) => {
                    tracing::warn!(upstream_id = %e.id, error = %err, "upstream skipped")
                }
            }
        }
        let mut routes = Vec::new();
        for e in dump.entries.iter().filter(|e| e.kind == Kind::StreamRoute) {
            let r = match StreamRoute::from_value(&e.value) {
                Ok(r) => r,
                Err(err) => {
                    tracing::warn!(route_id = %e.id, error = %err, "stream route skipped");
                    continue;
                }
            };
            if r.superior_id.is_some() {
                continue; // xRPC subordinate routes are never matched directly
            }
            let upstream = match (&r.upstream_id, e.value.get("upstream")) {
                (Some(uid), _) => upstreams
                    .get(uid)
                    .cloned()
                    .ok_or_else(|| format!("upstream [{uid}] not found")),
                (None, Some(inline)) => compile(format!("stream_routes/{}", e.id), None, inline),
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
            let chain = match crate::plugins::Chain::build(
                &r.plugins,
                &crate::plugins::BuildCtx {
                    route_id: &e.id,
                    route_name: r.name.as_deref(),
                    service_id: r.service_id.as_deref(),
                    version: e.mod_rev,
                    shared: &stats.plugins,
                    upstreams: &upstreams,
                    compile: &|origin, v| compile(origin, None, v),
                    node_stats: &|label| stats.node(&e.id, label),
                },
            ) {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(route_id = %e.id, error = %err, "stream route skipped: bad plugins");
                    continue;
                }
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
