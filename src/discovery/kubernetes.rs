//! The `kubernetes` registry, as APISIX's: Endpoints (or EndpointSlices
//! with `watch_endpoint_slices: true`) listed from the API server, then
//! watched (`watch=true&resourceVersion=...`, one JSON event per line);
//! when the watch ends it lists again. `service_name` is
//! `namespace/name:port` (`id/namespace/name:port` when `discovery.kubernetes`
//! is a list), where `port` is the port's name, else its number. Only ready
//! addresses are nodes, sorted by host then port, each with
//! `default_weight`. The token is `client.token` or read from
//! `client.token_file` (the service account's by default) before every
//! request; `${VAR}` in host, port and token reads the environment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{Nodes, Registry, Runtime};
use crate::config::discovery::KubernetesConf;
use crate::model::Node;

/// Delay before listing again after a failure.
const RETRY: Duration = Duration::from_secs(2);
/// The service account's CA, trusted with `ssl_verify: true`.
const SA_CA: &str = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt";

/// Port name -> nodes, for one service.
type Ports = HashMap<String, Vec<Node>>;

/// The `kubernetes` registry.
#[derive(Debug)]
pub struct KubeRegistry {
    multi: bool,
    /// `[id/]namespace/name:port` -> nodes, as handed out.
    published: Mutex<HashMap<String, Nodes>>,
    rt: Runtime,
}

impl Registry for KubeRegistry {
    fn nodes(&self, service_name: &str, _args: Option<&Value>) -> Result<Nodes, String> {
        let well_formed = match service_name.rsplit_once(':') {
            Some((path, _)) => path.split('/').count() == if self.multi { 3 } else { 2 },
            None => false,
        };
        if !well_formed {
            return Err(format!(
                "get unexpected upstream service_name: {service_name}"
            ));
        }
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        Ok(published.get(service_name).cloned().unwrap_or_default())
    }
}

/// One API server being followed.
struct Informer {
    conf: KubernetesConf,
    prefix: String,
    base: String,
    path: &'static str,
    list_kind: &'static str,
    client: reqwest::Client,
    namespace_match: Option<(bool, Vec<regex::Regex>)>,
    field_selector: Option<String>,
}

/// `${VAR}` -> the variable's value; anything else as is.
fn read_env(v: &str) -> Result<String, String> {
    match v.strip_prefix("${").and_then(|r| r.strip_suffix('}')) {
        Some(name) => {
            std::env::var(name).map_err(|_| format!("not found environment variable {name}"))
        }
        None => Ok(v.to_string()),
    }
}

impl KubeRegistry {
    /// Start following every API server of `confs`.
    pub fn start(confs: &[KubernetesConf], multi: bool, rt: Runtime) -> Arc<KubeRegistry> {
        let reg = Arc::new(KubeRegistry {
            multi,
            published: Mutex::default(),
            rt: rt.clone(),
        });
        for conf in confs {
            match Informer::new(conf, multi) {
                Ok(inf) => {
                    let reg = reg.clone();
                    rt.spawn(async move { reg.follow(inf).await });
                }
                Err(e) => tracing::error!(error = %e, "kubernetes discovery: not started"),
            }
        }
        reg
    }

    async fn follow(&self, inf: Informer) {
        let mut services: HashMap<String, Ports> = HashMap::new();
        // EndpointSlices: service key -> slice name -> ports.
        let mut slices: HashMap<String, HashMap<String, Ports>> = HashMap::new();
        loop {
            let version = match inf.list(&mut services, &mut slices).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!(server = %inf.base, error = %e, "kubernetes discovery: list failed; keeping the nodes known");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            };
            self.publish(&inf.prefix, &services);
            let started = tokio::time::Instant::now();
            let watched = inf
                .watch(version, &mut services, &mut slices, &|s| {
                    self.publish(&inf.prefix, s)
                })
                .await;
            if let Err(e) = &watched {
                tracing::warn!(server = %inf.base, error = %e, "kubernetes discovery: watch ended");
            }
            // A watch that failed, or ended at once, is not retried in a loop.
            if watched.is_err() || started.elapsed() < RETRY {
                tokio::time::sleep(RETRY).await;
            }
        }
    }

    /// Put one API server's services in force.
    fn publish(&self, prefix: &str, services: &HashMap<String, Ports>) {
        let mut fresh: HashMap<String, Vec<Node>> = HashMap::new();
        for (svc, ports) in services {
            for (port, nodes) in ports {
                fresh.insert(format!("{prefix}{svc}:{port}"), nodes.clone());
            }
        }
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        let before = published.len();
        published.retain(|k, _| !k.starts_with(prefix) || fresh.contains_key(k));
        let mut changed = published.len() != before;
        for (k, nodes) in fresh {
            if published.get(&k).is_none_or(|old| **old != nodes) {
                published.insert(k, Arc::new(nodes));
                changed = true;
            }
        }
        drop(published);
        if changed {
            tracing::info!("kubernetes discovery: nodes changed");
            self.rt.bump();
        }
    }
}

impl Informer {
    fn new(conf: &KubernetesConf, multi: bool) -> Result<Informer, String> {
        let host = read_env(&conf.service.host)?;
        let port = read_env(&conf.service.port)?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("invalid port value: {port}"))?;
        let mut builder = reqwest::Client::builder().connect_timeout(Duration::from_secs(5));
        if conf.service.schema == "https" {
            if conf.service.ssl_verify {
                if let Ok(pem) = std::fs::read(SA_CA) {
                    let ca = reqwest::Certificate::from_pem(&pem).map_err(|e| e.to_string())?;
                    builder = builder.add_root_certificate(ca);
                }
            } else {
                builder = builder.danger_accept_invalid_certs(true);
            }
        }
        let ns = conf.namespace_selector.as_ref();
        let text = |k: &str| {
            ns.and_then(|m| m.get(k))
                .and_then(|v| v.as_str())
                .map(String::from)
        };
        let list = |k: &str| -> Result<Option<Vec<regex::Regex>>, String> {
            let Some(items) = ns.and_then(|m| m.get(k)).and_then(|v| v.as_sequence()) else {
                return Ok(None);
            };
            items
                .iter()
                .filter_map(|i| i.as_str())
                .map(|p| regex::Regex::new(&format!("^(?:{p})$")).map_err(|e| e.to_string()))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        let field_selector = match (text("equal"), text("not_equal")) {
            (Some(e), _) => Some(format!("metadata.namespace={e}")),
            (None, Some(n)) => Some(format!("metadata.namespace!={n}")),
            _ => None,
        };
        let namespace_match = match (list("match")?, list("not_match")?) {
            (Some(m), _) => Some((true, m)),
            (None, Some(n)) => Some((false, n)),
            _ => None,
        };
        let (path, list_kind) = if conf.watch_endpoint_slices {
            (
                "/apis/discovery.k8s.io/v1/endpointslices",
                "EndpointSliceList",
            )
        } else {
            ("/api/v1/endpoints", "EndpointsList")
        };
        Ok(Informer {
            conf: conf.clone(),
            prefix: if multi {
                format!("{}/", conf.id)
            } else {
                String::new()
            },
            base: format!("{}://{host}:{port}", conf.service.schema),
            path,
            list_kind,
            client: builder.build().map_err(|e| e.to_string())?,
            namespace_match,
            field_selector,
        })
    }

    fn token(&self) -> Result<String, String> {
        if let Some(t) = &self.conf.client.token {
            return Ok(read_env(t)?.trim().to_string());
        }
        let file = read_env(self.conf.client.token_file.as_deref().unwrap_or_default())?;
        std::fs::read_to_string(&file)
            .map(|t| t.trim().to_string())
            .map_err(|e| format!("failed to read token from file {file}: {e}"))
    }

    fn request(&self, query: &[(&str, String)]) -> Result<reqwest::RequestBuilder, String> {
        let mut q: Vec<(&str, String)> = query.to_vec();
        if let Some(l) = self.conf.label_selector.as_ref().filter(|l| !l.is_empty()) {
            q.push(("labelSelector", l.clone()));
        }
        if let Some(f) = &self.field_selector {
            q.push(("fieldSelector", f.clone()));
        }
        Ok(self
            .client
            .get(format!("{}{}", self.base, self.path))
            .query(&q)
            .bearer_auth(self.token()?)
            .header("Accept", "application/json"))
    }

    fn namespace_wanted(&self, ns: &str) -> bool {
        match &self.namespace_match {
            None => true,
            Some((want, res)) => res.iter().any(|r| r.is_match(ns)) == *want,
        }
    }

    /// List everything (following `continue`): the resource version to watch from.
    async fn list(
        &self,
        services: &mut HashMap<String, Ports>,
        slices: &mut HashMap<String, HashMap<String, Ports>>,
    ) -> Result<String, String> {
        services.clear();
        slices.clear();
        let mut cont = String::new();
        loop {
            let mut q = vec![("limit", "500".to_string())];
            if !cont.is_empty() {
                q.push(("continue", cont.clone()));
            }
            let res = self.request(&q)?.send().await.map_err(|e| e.to_string())?;
            if !res.status().is_success() {
                return Err(format!("list answered {}", res.status()));
            }
            let body: Value = res.json().await.map_err(|e| e.to_string())?;
            if body.get("kind").and_then(Value::as_str) != Some(self.list_kind) {
                return Err(format!(
                    "list answered a body that is not an {}",
                    self.list_kind
                ));
            }
            for item in body
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                self.apply("ADDED", item, services, slices);
            }
            let meta = body.get("metadata");
            let version = meta
                .and_then(|m| m.get("resourceVersion"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            cont = meta
                .and_then(|m| m.get("continue"))
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if cont.is_empty() {
                return Ok(version);
            }
        }
    }

    /// Watch from `version`, applying each event and publishing; returns
    /// when the API server ends the watch.
    async fn watch(
        &self,
        mut version: String,
        services: &mut HashMap<String, Ports>,
        slices: &mut HashMap<String, HashMap<String, Ports>>,
        publish: &(dyn Fn(&HashMap<String, Ports>) + Sync),
    ) -> Result<(), String> {
        let seconds: u64 = 1800 + rand::random_range(9..999);
        let q = vec![
            ("watch", "true".to_string()),
            ("allowWatchBookmarks", "true".to_string()),
            ("timeoutSeconds", seconds.to_string()),
            ("resourceVersion", version.clone()),
        ];
        let mut res = self
            .request(&q)?
            .timeout(Duration::from_secs(seconds + 120))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("watch answered {}", res.status()));
        }
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = res.chunk().await.map_err(|e| e.to_string())? {
            buf.extend_from_slice(&chunk);
            let mut changed = false;
            while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=nl).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let event: Value = serde_json::from_slice(&line)
                    .map_err(|e| format!("unexpected watch event: {e}"))?;
                let ty = event
                    .get("type")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let object = event.get("object").unwrap_or(&Value::Null);
                if ty == "ERROR" {
                    return Err(format!("watch error event: {object}"));
                }
                if let Some(v) = object
                    .get("metadata")
                    .and_then(|m| m.get("resourceVersion"))
                    .and_then(Value::as_str)
                {
                    version = v.to_string();
                }
                changed |= self.apply(ty, object, services, slices);
            }
            if changed {
                publish(services);
            }
        }
        tracing::debug!(version = %version, "kubernetes discovery: watch finished");
        Ok(())
    }

    /// Apply one object (`ADDED`, `MODIFIED`, `DELETED`); whether it applied.
    fn apply(
        &self,
        ty: &str,
        object: &Value,
        services: &mut HashMap<String, Ports>,
        slices: &mut HashMap<String, HashMap<String, Ports>>,
    ) -> bool {
        let meta = object.get("metadata");
        let field = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
        let (Some(ns), Some(name)) = (field("namespace"), field("name")) else {
            tracing::warn!("kubernetes discovery: object without metadata skipped");
            return false;
        };
        if !self.namespace_wanted(ns) || !matches!(ty, "ADDED" | "MODIFIED" | "DELETED") {
            return false;
        }
        let weight = self.conf.default_weight;
        if !self.conf.watch_endpoint_slices {
            let key = format!("{ns}/{name}");
            if ty == "DELETED" {
                services.remove(&key);
            } else {
                services.insert(key, endpoints_ports(object, weight));
            }
            return true;
        }
        let Some(svc) = meta
            .and_then(|m| m.get("labels"))
            .and_then(|l| l.get("kubernetes.io/service-name"))
            .and_then(Value::as_str)
        else {
            tracing::warn!(slice = %name, "kubernetes discovery: endpoint_slice has no service-name");
            return false;
        };
        let key = format!("{ns}/{svc}");
        let per = slices.entry(key.clone()).or_default();
        if ty == "DELETED" {
            per.remove(name);
        } else {
            per.insert(name.to_string(), slice_ports(object, weight));
        }
        let mut merged: Ports = HashMap::new();
        for ports in per.values() {
            for (p, nodes) in ports {
                merged
                    .entry(p.clone())
                    .or_default()
                    .extend(nodes.iter().cloned());
            }
        }
        for nodes in merged.values_mut() {
            sort_nodes(nodes);
        }
        services.insert(key, merged);
        true
    }
}

fn port_name(port: &Value) -> Option<(String, u16)> {
    let number = port
        .get("port")
        .and_then(Value::as_u64)
        .and_then(|p| u16::try_from(p).ok())?;
    let name = match (
        port.get("name").and_then(Value::as_str),
        port.get("targetPort"),
    ) {
        (Some(n), _) if !n.is_empty() => n.to_string(),
        (_, Some(t)) if !t.is_null() => t.as_str().map_or_else(|| t.to_string(), String::from),
        _ => number.to_string(),
    };
    Some((name, number))
}

fn sort_nodes(nodes: &mut [Node]) {
    nodes.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port)));
}

fn node(host: &str, port: u16, weight: u32) -> Node {
    Node {
        host: host.to_string(),
        port,
        weight,
        priority: 0,
    }
}

/// An Endpoints object's ready addresses per port name.
pub fn endpoints_ports(object: &Value, weight: u32) -> Ports {
    let mut out: Ports = HashMap::new();
    for subset in object
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let addrs: Vec<&str> = subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|a| a.get("ip").and_then(Value::as_str))
            .collect();
        for port in subset
            .get("ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some((name, number)) = port_name(port) else {
                continue;
            };
            let nodes = out.entry(name).or_default();
            nodes.extend(addrs.iter().map(|ip| node(ip, number, weight)));
        }
    }
    for nodes in out.values_mut() {
        sort_nodes(nodes);
    }
    out
}

/// An EndpointSlice's ready addresses per port name.
pub fn slice_ports(object: &Value, weight: u32) -> Ports {
    let mut out: Ports = HashMap::new();
    let ports: Vec<(String, u16)> = object
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(port_name)
        .collect();
    for ep in object
        .get("endpoints")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ready = ep
            .get("conditions")
            .and_then(|c| c.get("ready"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        if !ready {
            continue;
        }
        let addrs = ep
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for ip in addrs.filter_map(Value::as_str) {
            for (name, number) in &ports {
                out.entry(name.clone())
                    .or_default()
                    .push(node(ip, *number, weight));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn endpoints_by_port_name_sorted() {
        let ep = json!({"metadata": {"namespace": "ns", "name": "svc"}, "subsets": [{
            "addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}],
            "notReadyAddresses": [{"ip": "10.0.0.9"}],
            "ports": [{"name": "tcp", "port": 9000}, {"port": 81}]}]});
        let p = endpoints_ports(&ep, 50);
        let tcp: Vec<_> = p["tcp"]
            .iter()
            .map(|n| (n.host.as_str(), n.port, n.weight))
            .collect();
        assert_eq!(tcp, vec![("10.0.0.1", 9000, 50), ("10.0.0.2", 9000, 50)]);
        assert_eq!(p["81"].len(), 2);
    }

    #[test]
    fn slices_keep_ready_endpoints_only() {
        let s = json!({"metadata": {"namespace": "ns", "name": "svc-abc",
            "labels": {"kubernetes.io/service-name": "svc"}},
            "ports": [{"name": "tcp", "port": 9000}],
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}]});
        let p = slice_ports(&s, 1);
        assert_eq!(p["tcp"].len(), 1);
        assert_eq!(p["tcp"][0].host, "10.0.0.1");
    }
}
