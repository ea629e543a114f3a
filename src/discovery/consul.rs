//! The `consul` registry, as APISIX's: every service of the catalog
//! (`/v1/catalog/services`) with its passing instances
//! (`/v1/health/service/<name>?passing=true`), fetched again whenever the
//! catalog's or the health state's `X-Consul-Index` moves. With
//! `keepalive: true` (the default) both are blocking queries (`index` and
//! `wait`), so a change arrives as soon as Consul has it; otherwise they are
//! polled every `fetch_interval` seconds. `service_name` is the Consul
//! service name; a service with no instance gets `default_service` when
//! configured. The `consul` service itself and `skip_services` are left out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{Nodes, Registry, Runtime};
use crate::config::discovery::ConsulConf;
use crate::model::{duration, Node};

/// First delay after a failed request; it grows fourfold up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Longest delay between tries while Consul fails.
const MAX_RETRY: Duration = Duration::from_secs(64);

/// The `consul` registry.
#[derive(Debug)]
pub struct ConsulRegistry {
    /// Per server, per service: the nodes it reports.
    per_server: Mutex<Vec<HashMap<String, Vec<Node>>>>,
    /// Merged over servers, as handed out (an unchanged list keeps its `Arc`).
    merged: Mutex<HashMap<String, Nodes>>,
    default: Option<Nodes>,
    rt: Runtime,
}

impl Registry for ConsulRegistry {
    fn nodes(&self, service_name: &str, _args: Option<&Value>) -> Result<Nodes, String> {
        let merged = self.merged.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match (merged.get(service_name), &self.default) {
            (Some(n), _) => n.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => Arc::default(),
        })
    }
}

/// One Consul server as the watch loop sees it.
struct Server {
    base: String,
    conf: ConsulConf,
    client: reqwest::Client,
    skip: Vec<String>,
}

impl ConsulRegistry {
    /// Start following every server of `conf`.
    pub fn start(conf: &ConsulConf, rt: Runtime) -> Arc<ConsulRegistry> {
        let reg = Arc::new(ConsulRegistry {
            per_server: Mutex::new(vec![HashMap::new(); conf.servers.len()]),
            merged: Mutex::default(),
            default: conf.default_service.as_ref().map(|d| {
                Arc::new(vec![Node {
                    host: d.host.clone(),
                    port: d.port,
                    weight: conf.weight,
                    priority: 0,
                }])
            }),
            rt: rt.clone(),
        });
        let mut skip = conf.skip_services.clone();
        skip.push("consul".into());
        for (i, base) in conf.servers.iter().enumerate() {
            let client = match reqwest::Client::builder()
                .connect_timeout(duration::millis(conf.timeout.connect))
                .build()
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(server = %base, error = %e, "consul discovery: cannot build a client");
                    continue;
                }
            };
            let server = Server {
                base: format!("{}/v1", base.trim_end_matches('/')),
                conf: conf.clone(),
                client,
                skip: skip.clone(),
            };
            let reg = reg.clone();
            rt.spawn(async move { reg.follow(i, server).await });
        }
        reg
    }

    async fn follow(&self, i: usize, server: Server) {
        let mut retry = FIRST_RETRY;
        let (mut catalog, mut health): (u64, u64);
        loop {
            match server.fetch_all().await {
                Ok((services, c, h)) => {
                    retry = FIRST_RETRY;
                    (catalog, health) = (c, h);
                    self.update(i, services);
                }
                Err(e) => {
                    tracing::warn!(server = %server.base, error = %e, "consul discovery: fetch failed; keeping the nodes known");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 4).min(MAX_RETRY);
                    continue;
                }
            }
            if !server.conf.keepalive {
                tokio::time::sleep(Duration::from_secs(server.conf.fetch_interval)).await;
                continue;
            }
            // Whichever index moves first brings a full fetch.
            let moved = tokio::select! {
                r = server.wait_change("catalog/services", catalog) => r,
                r = server.wait_change("health/state/any", health) => r,
            };
            if let Err(e) = moved {
                tracing::warn!(server = %server.base, error = %e, "consul discovery: blocking query failed");
                tokio::time::sleep(retry).await;
                retry = (retry * 4).min(MAX_RETRY);
            }
        }
    }

    /// Put server `i`'s services in force; tell the publisher when a
    /// merged list changed.
    fn update(&self, i: usize, services: HashMap<String, Vec<Node>>) {
        let mut per = self.per_server.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = per.get_mut(i) {
            *slot = services;
        }
        let mut fresh: HashMap<String, Vec<Node>> = HashMap::new();
        for server in per.iter() {
            for (name, nodes) in server {
                fresh
                    .entry(name.clone())
                    .or_default()
                    .extend(nodes.iter().cloned());
            }
        }
        drop(per);
        let mut merged = self.merged.lock().unwrap_or_else(|p| p.into_inner());
        let mut changed = merged.len() != fresh.len();
        let mut next = HashMap::with_capacity(fresh.len());
        for (name, nodes) in fresh {
            let kept = merged.get(&name).filter(|old| ***old == nodes).cloned();
            changed |= kept.is_none();
            next.insert(name, kept.unwrap_or_else(|| Arc::new(nodes)));
        }
        *merged = next;
        drop(merged);
        if changed {
            tracing::info!("consul discovery: nodes changed");
            self.rt.bump();
        }
    }
}

impl Server {
    fn get(&self, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.client.get(format!("{}/{path}", self.base));
        if !self.conf.token.is_empty() {
            req = req.header("X-Consul-Token", &self.conf.token);
        }
        req.timeout(duration::millis(self.conf.timeout.read))
    }

    /// GET `path`: its JSON body and `X-Consul-Index`.
    async fn fetch(&self, req: reqwest::RequestBuilder) -> Result<(Value, u64), String> {
        let res = req.send().await.map_err(|e| e.to_string())?;
        if !res.status().is_success() {
            return Err(format!("status {}", res.status()));
        }
        let index = res
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let body = res.json::<Value>().await.map_err(|e| e.to_string())?;
        Ok((body, index))
    }

    /// Every service's passing nodes, the catalog index and the health index.
    async fn fetch_all(&self) -> Result<(HashMap<String, Vec<Node>>, u64, u64), String> {
        let (catalog, catalog_index) = self.fetch(self.get("catalog/services")).await?;
        let (_, health_index) = self.fetch(self.get("health/state/any")).await?;
        let mut out = HashMap::new();
        let names = catalog
            .as_object()
            .map(|m| m.keys().cloned().collect::<Vec<_>>());
        for name in names.unwrap_or_default() {
            if self.skip.contains(&name) {
                continue;
            }
            let req = self
                .get(&format!("health/service/{name}"))
                .query(&[("passing", "true")]);
            let (entries, _) = match self.fetch(req).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(service = %name, error = %e, "consul discovery: cannot read the service's nodes");
                    continue;
                }
            };
            let nodes = nodes_of(&entries, self.conf.weight, &self.conf.sort_type);
            if !nodes.is_empty() {
                out.insert(name, nodes);
            }
        }
        Ok((out, catalog_index, health_index))
    }

    /// Block on `path` until its index differs from `index`.
    async fn wait_change(&self, path: &str, index: u64) -> Result<(), String> {
        let wait = self.conf.timeout.wait;
        loop {
            let req = self
                .get(path)
                .query(&[("index", index.to_string()), ("wait", format!("{wait}s"))])
                .timeout(
                    duration::whole_secs(wait)
                        .saturating_add(duration::millis(self.conf.timeout.read)),
                );
            let (_, now) = self.fetch(req).await?;
            if now == 0 {
                // No index: this server cannot block; poll instead.
                tokio::time::sleep(Duration::from_secs(self.conf.fetch_interval)).await;
                return Ok(());
            }
            if now != index {
                return Ok(());
            }
        }
    }
}

/// The nodes of a `/v1/health/service/<name>` answer: `Service.Address`
/// (the node's `Address` when empty) and `Service.Port` (80 when 0 or
/// absent), each address:port once, sorted as `sort_type` says.
pub fn nodes_of(entries: &Value, weight: u32, sort_type: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    for e in entries.as_array().map(Vec::as_slice).unwrap_or_default() {
        let Some(svc) = e.get("Service") else {
            tracing::warn!("consul discovery: entry without Service skipped");
            continue;
        };
        let host = svc
            .get("Address")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .or_else(|| {
                e.get("Node")
                    .and_then(|n| n.get("Address"))
                    .and_then(Value::as_str)
            })
            .unwrap_or_default();
        if host.is_empty() {
            continue;
        }
        let port = svc
            .get("Port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .unwrap_or(80);
        if nodes.iter().any(|n| n.host == host && n.port == port) {
            continue;
        }
        nodes.push(Node {
            host: host.to_string(),
            port,
            weight,
            priority: 0,
        });
    }
    match sort_type {
        "host_sort" => nodes.sort_by(|a, b| a.host.cmp(&b.host)),
        "port_sort" => nodes.sort_by_key(|n| n.port),
        "combine_sort" => nodes.sort_by(|a, b| (&a.host, a.port).cmp(&(&b.host, b.port))),
        _ => {}
    }
    nodes
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn health_entries_become_nodes() {
        let body = json!([
            {"Node": {"Address": "10.0.0.9"}, "Service": {"Address": "10.0.0.2", "Port": 8002}},
            {"Node": {"Address": "10.0.0.1"}, "Service": {"Address": "", "Port": 8001}},
            {"Node": {"Address": "10.0.0.3"}, "Service": {"Address": "10.0.0.3"}},
            {"Node": {"Address": "10.0.0.2"}, "Service": {"Address": "10.0.0.2", "Port": 8002}},
            {"Node": {}}
        ]);
        let nodes = nodes_of(&body, 3, "origin");
        let got: Vec<_> = nodes
            .iter()
            .map(|n| (n.host.as_str(), n.port, n.weight))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.2", 8002, 3),
                ("10.0.0.1", 8001, 3),
                ("10.0.0.3", 80, 3)
            ]
        );
        let sorted = nodes_of(&body, 1, "host_sort");
        assert_eq!(sorted[0].host, "10.0.0.1");
        let by_port = nodes_of(&body, 1, "port_sort");
        assert_eq!(by_port[0].port, 80);
    }
}
