//! A compiled upstream ([`UpstreamRt`]): node selection, timeouts, retries,
//! the chash key source, TLS to the nodes, and the health checker attached
//! when the snapshot was built.
//!
//! It imports nothing of the plugins, so `traffic-split` can hold compiled
//! upstreams while the snapshot holds the plugin chains.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::conn::{expand_template, ConnInfo};
use crate::balancer::Balancer;
use crate::discovery::{Discovery, Nodes};
use crate::health::Checker;
use crate::model::duration::secs;
use crate::model::{LbType, Upstream};
use crate::tls;

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

/// The JSON an upstream was compiled from, shared with the stored object
/// where it can be instead of copied.
#[derive(Debug, Clone)]
pub enum UpstreamSource {
    /// A stored upstream's whole value.
    Stored(Arc<Value>),
    /// The `upstream` object inside a stored stream route's value.
    Inline(Arc<Value>),
    /// A copy (an upstream nested deeper, e.g. in a plugin's configuration).
    Owned(Value),
}

/// What [`UpstreamSource::Inline`] reads when the route has no `upstream`.
static NO_UPSTREAM: Value = Value::Null;

impl std::ops::Deref for UpstreamSource {
    type Target = Value;

    fn deref(&self) -> &Value {
        match self {
            UpstreamSource::Stored(v) => v,
            UpstreamSource::Inline(v) => v.get("upstream").unwrap_or(&NO_UPSTREAM),
            UpstreamSource::Owned(v) => v,
        }
    }
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
    pub source: UpstreamSource,
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
    /// The health checker, attached before the upstream is shared and
    /// never changed afterwards.
    checker: Option<Arc<Checker>>,
    /// The registry's node list it was built with (`discovery_type`).
    discovered: Option<Nodes>,
}

impl UpstreamRt {
    /// Compile an upstream from its validated JSON, without a health
    /// checker. (Client certificates of `tls.client_cert_id` come from
    /// `certs`; `tls.verify` checks nodes against `trust`.)
    pub fn build(
        origin: String,
        upstream_id: Option<String>,
        source: &Value,
        certs: &tls::TlsCerts,
        trust: &tls::Trust,
    ) -> Result<Self, String> {
        Self::build_shared(
            origin,
            upstream_id,
            UpstreamSource::Owned(source.clone()),
            certs,
            trust,
            &Discovery::default(),
        )
    }

    /// Compile an upstream from its validated JSON, keeping `source`
    /// (shared with the store's value where it is one) instead of a copy.
    /// Nodes of `discovery_type` upstreams and the addresses of node host
    /// names come from `discovery`.
    pub fn build_shared(
        origin: String,
        upstream_id: Option<String>,
        source: UpstreamSource,
        certs: &tls::TlsCerts,
        trust: &tls::Trust,
        discovery: &Discovery,
    ) -> Result<Self, String> {
        let mut up = Upstream::from_value(&source)?;
        let discovered = discovery.nodes_for(&source).transpose()?;
        if let Some(nodes) = &discovered {
            up.nodes = nodes.to_vec();
        }
        let mut rt = Self::from_model(origin, upstream_id, source, &up, certs, trust);
        rt.discovered = discovered;
        rt.balancer.attach_hosts(|h| discovery.hosts.entry(h));
        Ok(rt)
    }

    /// Whether the nodes it was built with are still the registry's (always
    /// true without `discovery_type`).
    pub(crate) fn nodes_current(&self, discovery: &Discovery) -> bool {
        match (&self.discovered, discovery.nodes_for(&self.source)) {
            (None, None) => true,
            (Some(old), Some(Ok(now))) => Arc::ptr_eq(old, &now),
            _ => false,
        }
    }

    fn from_model(
        origin: String,
        upstream_id: Option<String>,
        source: UpstreamSource,
        up: &Upstream,
        certs: &tls::TlsCerts,
        trust: &tls::Trust,
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
            tls: (up.scheme == "tls").then(|| upstream_tls(up, certs, trust)),
            checker: None,
            discovered: None,
        }
    }

    /// The `checks` object, when the upstream has one.
    pub fn checks(&self) -> Option<&Value> {
        self.source.get("checks").filter(|c| c.is_object())
    }

    /// Attach a health checker when the upstream has `checks`. Targets of
    /// `prev` (the checker of the upstream this one replaces) are shared,
    /// state and counters included, when its `checks` are the same.
    /// `https` probes verify node certificates against `trust`.
    pub fn with_checker(mut self, prev: Option<&Checker>, trust: &tls::Trust) -> Self {
        self.checker = self
            .checks()
            .and_then(|checks| {
                Checker::build(&self.origin, checks, self.balancer.backends(), prev, trust)
            })
            .map(Arc::new);
        self
    }

    /// Whether this upstream depends on an SSL object (so it must be rebuilt
    /// whenever SSL objects change).
    pub(crate) fn uses_ssl_object(&self) -> bool {
        self.source
            .get("tls")
            .and_then(|t| t.get("client_cert_id"))
            .is_some()
    }

    /// The health checker, for picking a node; warns (rate-limited) when it
    /// finds every node unhealthy, as APISIX does. The proxy reads an
    /// upstream's health only through this.
    pub fn checker(&self) -> Option<&Arc<Checker>> {
        let checker = self.checker.as_ref();
        if let Some(c) = checker {
            c.warn_if_all_unhealthy();
        }
        checker
    }

    /// The health checker, for reports (no warning).
    pub fn health(&self) -> Option<&Arc<Checker>> {
        self.checker.as_ref()
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

fn upstream_tls(
    up: &Upstream,
    certs: &tls::TlsCerts,
    trust: &tls::Trust,
) -> Result<Arc<rustls::ClientConfig>, String> {
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
    let verify = up.tls.as_ref().is_some_and(|t| t.verify).then_some(trust);
    tls::client_config(client_cert, verify)
}
