//! The `dns` registry: `service_name` is `host:port` (A/AAAA records, every
//! address a node on that port) or a name with SRV records (each target's
//! addresses on the record's port, weight as given, priority negated so the
//! lowest SRV priority is tried first, as APISIX does). Record types are
//! tried in `order` (APISIX's default `last, SRV, A, AAAA, CNAME`; `last` is
//! the type that answered last time). Each name is re-resolved when its
//! answer's TTL runs out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::resolver::{parse_server, resolv_conf_servers, Qtype, Record, Resolver};
use super::{split_host_port, Nodes, Registry, Runtime};
use crate::config::discovery::DnsConf;
use crate::model::Node;

/// Shortest time an answer is kept (a TTL of 0 would re-ask in a loop).
const MIN_TTL: Duration = Duration::from_secs(1);
/// Longest time an answer is kept.
const MAX_TTL: Duration = Duration::from_secs(3600);
/// How soon a name with no record, or a failed query, is asked again.
const RETRY: Duration = Duration::from_secs(2);
/// Per name server.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// The `dns` registry.
#[derive(Debug)]
pub struct DnsRegistry {
    resolver: Arc<Resolver>,
    order: Arc<Vec<String>>,
    services: Arc<Mutex<HashMap<String, Nodes>>>,
    rt: Runtime,
}

impl DnsRegistry {
    /// A registry asking `conf.servers` (or `conf.resolv_conf`'s name servers).
    pub fn new(conf: &DnsConf, rt: Runtime) -> DnsRegistry {
        let mut servers: Vec<_> = conf
            .servers
            .iter()
            .filter_map(|s| parse_server(s))
            .collect();
        if let Some(path) = &conf.resolv_conf {
            match std::fs::read_to_string(path) {
                Ok(text) => servers.extend(resolv_conf_servers(&text)),
                Err(e) => {
                    tracing::error!(path = %path, error = %e, "cannot read discovery.dns.resolv_conf")
                }
            }
        }
        let order = conf.order.clone().unwrap_or_else(|| {
            ["last", "SRV", "A", "AAAA", "CNAME"]
                .map(String::from)
                .to_vec()
        });
        DnsRegistry {
            resolver: Arc::new(Resolver::new(servers, QUERY_TIMEOUT)),
            order: Arc::new(order),
            services: Arc::default(),
            rt,
        }
    }

    fn follow(&self, service_name: &str) {
        let (resolver, order, services, rt) = (
            self.resolver.clone(),
            self.order.clone(),
            self.services.clone(),
            self.rt.clone(),
        );
        let name = service_name.to_string();
        self.rt.spawn(async move {
            let mut last: Option<Qtype> = None;
            let mut failing = false;
            loop {
                let wait = match lookup(&resolver, &order, &name, &mut last).await {
                    Ok((nodes, ttl)) => {
                        failing = false;
                        let changed = {
                            let mut map = services.lock().unwrap_or_else(|p| p.into_inner());
                            let old = map.get(&name);
                            if old.is_none_or(|o| **o != nodes) {
                                map.insert(name.clone(), Arc::new(nodes));
                                true
                            } else {
                                false
                            }
                        };
                        if changed {
                            tracing::info!(service_name = %name, "dns discovery: nodes changed");
                            rt.bump();
                        }
                        ttl
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(service_name = %name, error = %e, "dns discovery: cannot resolve; keeping the nodes known");
                        }
                        failing = true;
                        RETRY
                    }
                };
                tokio::time::sleep(wait).await;
            }
        });
    }
}

impl Registry for DnsRegistry {
    fn nodes(&self, service_name: &str, _args: Option<&Value>) -> Result<Nodes, String> {
        let mut map = self.services.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get(service_name) {
            return Ok(n.clone());
        }
        let empty: Nodes = Arc::default();
        map.insert(service_name.to_string(), empty.clone());
        drop(map);
        self.follow(service_name);
        Ok(empty)
    }
}

fn ttl_of(ttl: Option<u32>) -> Duration {
    ttl.map_or(RETRY, |t| Duration::from_secs(u64::from(t)))
        .clamp(MIN_TTL, MAX_TTL)
}

/// The addresses of `host` (A then AAAA), with their smallest TTL.
async fn addresses(
    resolver: &Resolver,
    host: &str,
) -> Result<(Vec<std::net::IpAddr>, Option<u32>), String> {
    let mut out = Vec::new();
    let mut ttl: Option<u32> = None;
    for q in [Qtype::A, Qtype::Aaaa] {
        let a = resolver.query(host, q).await?;
        ttl = match (ttl, a.ttl) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        };
        out.extend(a.records.into_iter().filter_map(|r| match r {
            Record::Addr(ip) => Some(ip),
            Record::Srv { .. } => None,
        }));
    }
    Ok((out, ttl))
}

/// Resolve `service_name` by `order`: the nodes and how long they hold.
async fn lookup(
    resolver: &Resolver,
    order: &[String],
    service_name: &str,
    last: &mut Option<Qtype>,
) -> Result<(Vec<Node>, Duration), String> {
    let (host, port) = split_host_port(service_name);
    let mut tried: Vec<Qtype> = Vec::new();
    for o in order {
        let q = match o.as_str() {
            "last" => match *last {
                Some(q) => q,
                None => continue,
            },
            "SRV" => Qtype::Srv,
            "A" => Qtype::A,
            "AAAA" => Qtype::Aaaa,
            // Name servers follow CNAMEs while answering A/AAAA questions.
            _ => continue,
        };
        if tried.contains(&q) {
            continue;
        }
        tried.push(q);
        let answer = resolver.query(&host, q).await?;
        if answer.records.is_empty() {
            continue;
        }
        let mut ttl = answer.ttl;
        let mut nodes = Vec::new();
        for r in answer.records {
            match r {
                Record::Addr(ip) => {
                    if let Some(port) = port {
                        nodes.push(node(ip.to_string(), port, 1, 0));
                    }
                }
                Record::Srv {
                    priority,
                    weight,
                    port: srv_port,
                    target,
                } => {
                    let Some(p) = port.or((srv_port != 0).then_some(srv_port)) else {
                        continue;
                    };
                    let (ips, t) = addresses(resolver, &target).await?;
                    ttl = match (ttl, t) {
                        (Some(x), Some(y)) => Some(x.min(y)),
                        (x, y) => x.or(y),
                    };
                    for ip in ips {
                        // SRV weight 0 means "no preference": it still serves.
                        nodes.push(node(
                            ip.to_string(),
                            p,
                            u32::from(weight.max(1)),
                            -i32::from(priority),
                        ));
                    }
                }
            }
        }
        *last = Some(q);
        return Ok((nodes, ttl_of(ttl)));
    }
    // No record of any type: asked again soon.
    Ok((Vec::new(), RETRY))
}

fn node(host: String, port: u16, weight: u32, priority: i32) -> Node {
    Node {
        host,
        port,
        weight,
        priority,
    }
}
