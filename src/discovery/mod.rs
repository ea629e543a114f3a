//! Service discovery: upstream nodes taken from a registry (`dns`, `consul`,
//! `kubernetes`, configured under `discovery:` with APISIX's keys), and the
//! cache that resolves node host names.
//!
//! Each registry follows its source in background tasks and keeps, per
//! service, the current node list as one shared value. An upstream with
//! `discovery_type` + `service_name` is compiled with that list; when a
//! registry's list changes it bumps [`Discovery::subscribe`]'s counter and
//! the publisher rebuilds the snapshot, so new connections use the new
//! nodes while established ones keep the snapshot they started with.
//! A snapshot build only reads what the tasks have found: it never waits
//! for a registry.

pub mod consul;
pub mod dns;
pub mod hosts;
pub mod kubernetes;
pub mod resolver;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::discovery::DiscoveryConf;
use crate::model::Node;

pub use hosts::{HostAddrs, HostCache};

/// A service's nodes as a registry last saw them (shared, never changed:
/// a new list is a new value).
pub type Nodes = Arc<Vec<Node>>;

/// One kind of registry.
pub trait Registry: Send + Sync + fmt::Debug {
    /// The nodes of `service_name` as known now (empty while unknown), and
    /// from now on follow that service. Never blocks.
    fn nodes(&self, service_name: &str, args: Option<&Value>) -> Result<Nodes, String>;
}

/// What background tasks need: where to run, when to stop, whom to tell.
#[derive(Clone, Debug)]
pub struct Runtime {
    /// Runs the registries' tasks.
    pub handle: tokio::runtime::Handle,
    /// Server shutdown.
    pub cancel: CancellationToken,
    /// Tasks the server waits for on shutdown.
    pub tasks: TaskTracker,
    /// Bumped whenever a registry's node list changes.
    pub changed: Arc<watch::Sender<u64>>,
}

impl Runtime {
    /// Tell the publisher a node list changed.
    pub fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Run `f` in the background until shutdown.
    pub fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let cancel = self.cancel.clone();
        self.tasks.spawn_on(
            async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = f => {}
                }
            },
            &self.handle,
        );
    }
}

/// The configured registries and the node host-name cache.
pub struct Discovery {
    registries: BTreeMap<String, Arc<dyn Registry>>,
    unsupported: Vec<String>,
    /// Addresses of node host names.
    pub hosts: Arc<HostCache>,
    changed: Arc<watch::Sender<u64>>,
    /// The counter's value the last build saw.
    applied: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for Discovery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discovery")
            .field("registries", &self.registries.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for Discovery {
    /// No registry; node host names resolved by the system on connect.
    fn default() -> Self {
        Discovery {
            registries: BTreeMap::new(),
            unsupported: Vec::new(),
            hosts: Arc::new(HostCache::unstarted()),
            changed: Arc::new(watch::channel(0).0),
            applied: Default::default(),
        }
    }
}

impl Discovery {
    /// Start the registries of `conf` (their tasks run on the current
    /// runtime until `cancel`) and the node host-name cache.
    pub fn start(
        conf: &DiscoveryConf,
        cancel: &CancellationToken,
        tasks: &TaskTracker,
    ) -> Discovery {
        let changed = Arc::new(watch::channel(0).0);
        let rt = Runtime {
            handle: tokio::runtime::Handle::current(),
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            changed: changed.clone(),
        };
        let mut registries: BTreeMap<String, Arc<dyn Registry>> = BTreeMap::new();
        if let Some(c) = &conf.dns {
            registries.insert("dns".into(), Arc::new(dns::DnsRegistry::new(c, rt.clone())));
        }
        if let Some(c) = &conf.consul {
            registries.insert(
                "consul".into(),
                consul::ConsulRegistry::start(c, rt.clone()),
            );
        }
        if let Some(list) = &conf.kubernetes {
            registries.insert(
                "kubernetes".into(),
                kubernetes::KubeRegistry::start(list, conf.kubernetes_multi, rt.clone()),
            );
        }
        for name in &conf.unsupported {
            tracing::warn!(discovery = %name, "discovery type not supported for stream; upstreams naming it are refused");
        }
        Discovery {
            registries,
            unsupported: conf.unsupported.clone(),
            hosts: Arc::new(HostCache::start(&conf.resolver, rt)),
            changed,
            applied: Default::default(),
        }
    }

    /// Counter bumped on every node list change (the publisher rebuilds).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Whether a node list changed since the last call (the build that
    /// calls it compiles discovered upstreams again).
    pub fn take_moved(&self) -> bool {
        let now = *self.changed.borrow();
        self.applied.swap(now, std::sync::atomic::Ordering::AcqRel) != now
    }

    /// The nodes an upstream's JSON asks for: `None` without
    /// `discovery_type`, an error when its type is not configured.
    pub fn nodes_for(&self, upstream: &Value) -> Option<Result<Nodes, String>> {
        let ty = upstream.get("discovery_type")?.as_str()?;
        let name = upstream
            .get("service_name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        Some(match self.registries.get(ty) {
            Some(r) => r.nodes(name, upstream.get("discovery_args")),
            None => Err(uninitialized(ty)),
        })
    }

    /// Registry names configured and served.
    pub fn types(&self) -> Vec<String> {
        self.registries.keys().cloned().collect()
    }

    /// Registry names configured but not served.
    pub fn unsupported(&self) -> &[String] {
        &self.unsupported
    }
}

/// APISIX's message for an upstream whose registry is not configured.
pub fn uninitialized(ty: &str) -> String {
    format!("discovery {ty} is uninitialized")
}

/// Every `discovery_type` in `conf` (at any depth: an upstream, a route's
/// inline upstream, traffic-split's upstreams) must be one of `types`;
/// the error is APISIX's message.
pub fn check_types(conf: &Value, types: &[String]) -> Result<(), String> {
    match conf {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("discovery_type", Value::String(t)) if !types.iter().any(|x| x == t) => {
                        return Err(uninitialized(t));
                    }
                    _ => check_types(v, types)?,
                }
            }
            Ok(())
        }
        Value::Array(items) => items.iter().try_for_each(|v| check_types(v, types)),
        _ => Ok(()),
    }
}

/// Whether `conf` has a `discovery_type` at any depth.
pub fn named_in(conf: &Value) -> bool {
    match conf {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "discovery_type" || named_in(v)),
        Value::Array(items) => items.iter().any(named_in),
        _ => false,
    }
}

/// Split `host:port` (`[v6]:port`) into host and port; the port is
/// `None` when absent or not a number.
pub fn split_host_port(s: &str) -> (String, Option<u16>) {
    if let Some(rest) = s.strip_prefix('[') {
        if let Some((host, tail)) = rest.split_once(']') {
            return (
                host.to_string(),
                tail.strip_prefix(':').and_then(|p| p.parse().ok()),
            );
        }
    }
    match s.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') => match port.parse() {
            Ok(p) => (host.to_string(), Some(p)),
            Err(_) => (s.to_string(), None),
        },
        _ => (s.to_string(), None),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn unconfigured_types_are_found_at_any_depth() {
        let types = vec!["dns".to_string()];
        assert!(check_types(
            &json!({"discovery_type": "dns", "service_name": "a:1"}),
            &types
        )
        .is_ok());
        let route = json!({"plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [
            {"upstream": {"discovery_type": "consul", "service_name": "a"}}]}]}}});
        assert_eq!(
            check_types(&route, &types),
            Err("discovery consul is uninitialized".into())
        );
    }

    #[test]
    fn host_and_port() {
        assert_eq!(split_host_port("a.test:80"), ("a.test".into(), Some(80)));
        assert_eq!(split_host_port("a.test"), ("a.test".into(), None));
        assert_eq!(split_host_port("[::1]:53"), ("::1".into(), Some(53)));
        assert_eq!(split_host_port("::1"), ("::1".into(), None));
    }

    #[test]
    fn no_registry_refuses_with_apisix_text() {
        let d = Discovery::default();
        let up = json!({"discovery_type": "dns", "service_name": "a:1"});
        assert_eq!(
            d.nodes_for(&up).map(|r| r.map(|n| n.len())),
            Some(Err("discovery dns is uninitialized".into()))
        );
        assert!(d.nodes_for(&json!({"nodes": []})).is_none());
    }
}
