//! Addresses of node host names (`nodes: {"db.internal:5432": 1}`), kept
//! current in the background so a connection reads them without asking a
//! resolver.
//!
//! Each name in use has one [`HostAddrs`], shared by every backend naming
//! it, and one task that resolves it again when its answer expires: after
//! the record's TTL with `apisix.dns_resolver` name servers, or after
//! `apisix.dns_resolver_valid` seconds (30 when unset, for the system
//! resolver, which reports no TTL). A failed lookup keeps the addresses
//! known. Only the first connection to a name just configured may wait
//! for its first answer. The task ends when no upstream uses the name.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use super::resolver::{parse_server, Qtype, Record, Resolver};
use super::Runtime;
use crate::config::discovery::ResolverConf;

/// How long an answer of the system resolver is kept without `dns_resolver_valid`.
const SYSTEM_VALID: Duration = Duration::from_secs(30);
/// How soon a failed lookup is retried.
const RETRY: Duration = Duration::from_secs(2);

/// The current addresses of one host name.
#[derive(Debug)]
pub struct HostAddrs {
    host: String,
    addrs: ArcSwapOption<Vec<IpAddr>>,
    ready: Notify,
}

impl HostAddrs {
    /// The host name.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The addresses in the order to try them; waits (at most `wait`) only
    /// before the first answer.
    pub async fn addrs(&self, wait: Duration) -> Result<Arc<Vec<IpAddr>>, String> {
        if let Some(a) = self.addrs.load_full() {
            return nonempty(&self.host, a);
        }
        let ready = self.ready.notified();
        if let Some(a) = self.addrs.load_full() {
            return nonempty(&self.host, a);
        }
        let _ = tokio::time::timeout(wait, ready).await;
        match self.addrs.load_full() {
            Some(a) => nonempty(&self.host, a),
            None => Err(format!("{}: no answer yet", self.host)),
        }
    }

    fn set(&self, addrs: Vec<IpAddr>) -> bool {
        let changed = self.addrs.load().as_deref() != Some(&addrs);
        if changed {
            self.addrs.store(Some(Arc::new(addrs)));
        }
        self.ready.notify_waiters();
        changed
    }
}

fn nonempty(host: &str, a: Arc<Vec<IpAddr>>) -> Result<Arc<Vec<IpAddr>>, String> {
    if a.is_empty() {
        Err(format!("{host}: no address"))
    } else {
        Ok(a)
    }
}

#[derive(Debug)]
enum Source {
    /// The system resolver (getaddrinfo: /etc/hosts, search domains).
    System,
    /// `apisix.dns_resolver`, after /etc/hosts.
    Servers {
        resolver: Resolver,
        etc_hosts: HashMap<String, Vec<IpAddr>>,
    },
}

#[derive(Debug)]
struct Inner {
    source: Source,
    valid: Option<Duration>,
    ipv6: bool,
    rt: Runtime,
}

/// Every host name in use and its addresses.
#[derive(Debug)]
pub struct HostCache {
    inner: Option<Arc<Inner>>,
    names: Mutex<HashMap<String, Weak<HostAddrs>>>,
}

/// The names of an /etc/hosts text and their addresses, in file order.
fn parse_etc_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut out: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in words {
            let list = out.entry(name.to_ascii_lowercase()).or_default();
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
    }
    out
}

impl HostCache {
    /// A cache that resolves nothing ahead (backends then ask the system
    /// resolver on connect); for builds outside a server.
    pub fn unstarted() -> HostCache {
        HostCache {
            inner: None,
            names: Mutex::default(),
        }
    }

    /// A cache resolving as `conf` says, its tasks run by `rt`.
    pub fn start(conf: &ResolverConf, rt: Runtime) -> HostCache {
        let servers: Vec<_> = conf
            .dns_resolver
            .iter()
            .filter_map(|s| parse_server(s))
            .collect();
        let source = if servers.is_empty() {
            Source::System
        } else {
            Source::Servers {
                resolver: Resolver::new(servers, conf.resolver_timeout),
                etc_hosts: std::fs::read_to_string("/etc/hosts")
                    .map(|t| parse_etc_hosts(&t))
                    .unwrap_or_default(),
            }
        };
        HostCache {
            inner: Some(Arc::new(Inner {
                source,
                valid: conf.dns_resolver_valid.map(Duration::from_secs),
                ipv6: conf.enable_ipv6,
                rt,
            })),
            names: Mutex::default(),
        }
    }

    /// The shared addresses of `host`, resolved from now on in the
    /// background; `None` when this cache does not run.
    pub fn entry(&self, host: &str) -> Option<Arc<HostAddrs>> {
        let inner = self.inner.as_ref()?;
        let key = host.to_ascii_lowercase();
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(h) = names.get(&key).and_then(Weak::upgrade) {
            return Some(h);
        }
        names.retain(|_, w| w.strong_count() > 0);
        let h = Arc::new(HostAddrs {
            host: key.clone(),
            addrs: ArcSwapOption::empty(),
            ready: Notify::new(),
        });
        names.insert(key, Arc::downgrade(&h));
        drop(names);
        let (weak, inner2) = (Arc::downgrade(&h), inner.clone());
        inner.rt.spawn(async move {
            let mut failing = false;
            loop {
                let Some(h) = weak.upgrade() else {
                    return;
                };
                let wait = match inner2.resolve(&h.host).await {
                    Ok((addrs, ttl)) => {
                        failing = false;
                        if h.set(addrs) {
                            tracing::debug!(host = %h.host, "node host name resolved");
                        }
                        ttl
                    }
                    Err(e) => {
                        if !failing {
                            tracing::warn!(host = %h.host, error = %e, "cannot resolve upstream node host name; keeping the addresses known");
                        }
                        failing = true;
                        if h.addrs.load().is_none() {
                            h.set(Vec::new());
                        }
                        RETRY
                    }
                };
                drop(h);
                tokio::time::sleep(wait).await;
            }
        });
        Some(h)
    }
}

impl Inner {
    async fn resolve(&self, host: &str) -> Result<(Vec<IpAddr>, Duration), String> {
        let keep = |ip: &IpAddr| self.ipv6 || ip.is_ipv4();
        match &self.source {
            Source::System => {
                let mut out: Vec<IpAddr> = Vec::new();
                for a in tokio::net::lookup_host((host, 0))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    if keep(&a.ip()) && !out.contains(&a.ip()) {
                        out.push(a.ip());
                    }
                }
                Ok((out, self.valid.unwrap_or(SYSTEM_VALID)))
            }
            Source::Servers {
                resolver,
                etc_hosts,
            } => {
                if let Some(ips) = etc_hosts.get(host) {
                    let ips: Vec<IpAddr> = ips.iter().copied().filter(keep).collect();
                    return Ok((ips, self.valid.unwrap_or(SYSTEM_VALID)));
                }
                let mut out = Vec::new();
                let mut ttl: Option<u32> = None;
                let types: &[Qtype] = if self.ipv6 {
                    &[Qtype::A, Qtype::Aaaa]
                } else {
                    &[Qtype::A]
                };
                for q in types {
                    let a = resolver.query(host, *q).await?;
                    ttl = match (ttl, a.ttl) {
                        (Some(x), Some(y)) => Some(x.min(y)),
                        (x, y) => x.or(y),
                    };
                    out.extend(a.records.into_iter().filter_map(|r| match r {
                        Record::Addr(ip) => Some(ip),
                        Record::Srv { .. } => None,
                    }));
                }
                let ttl = ttl.map_or(RETRY, |t| Duration::from_secs(u64::from(t)));
                Ok((out, self.valid.unwrap_or(ttl).max(Duration::from_secs(1))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etc_hosts_keeps_file_order() {
        let h = parse_etc_hosts("127.0.0.1 localhost a\n::1 localhost # v6\n# 1.2.3.4 x\n");
        assert_eq!(
            h.get("localhost").cloned().unwrap_or_default(),
            vec![
                "127.0.0.1".parse::<IpAddr>().unwrap(),
                "::1".parse().unwrap()
            ]
        );
        assert!(!h.contains_key("x"));
    }

    #[tokio::test]
    async fn first_answer_wakes_the_waiting_connection() {
        let h = Arc::new(HostAddrs {
            host: "a".into(),
            addrs: ArcSwapOption::empty(),
            ready: Notify::new(),
        });
        let waiter = {
            let h = h.clone();
            tokio::spawn(async move { h.addrs(Duration::from_secs(5)).await })
        };
        tokio::task::yield_now().await;
        h.set(vec!["127.0.0.1".parse().unwrap()]);
        let got = waiter.await.expect("join").expect("addresses");
        assert_eq!(got.len(), 1);
        assert!(
            !h.set(vec!["127.0.0.1".parse().unwrap()]),
            "same answer is no change"
        );
        h.set(Vec::new());
        assert!(h.addrs(Duration::ZERO).await.is_err());
    }
}
