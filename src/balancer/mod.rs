//! Node selection for one upstream: priority groups, then `roundrobin`, `chash` or
//! `least_conn` inside a group (spec: balancing.md).
//!
//! A [`Balancer`] is built once per upstream version, away from traffic, and shared by every
//! connection through an `Arc`. The proxy calls [`Balancer::pick`] for the first try and again
//! for every retry, passing the nodes already tried so that each node is used at most once per
//! session (DESIGN invariant 4).
//!
//! Why the hot path is (nearly) lock-free: every connection of an upstream goes through the
//! same `Balancer`, so a mutex there would serialise accepts across all cores. Round robin walks
//! a precomputed cycle with one atomic cursor, chash only reads its immutable ring, and
//! least_conn keeps one atomic counter per node. Only round robin over very large weight sums
//! (a cycle longer than 4096 picks) falls back to a short mutex-protected step.

mod chash;
mod least_conn;
mod roundrobin;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::discovery::HostAddrs;
use crate::model::{LbType, Node};

use chash::Ring;
use roundrobin::RoundRobin;

/// One backend of an upstream.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Host name or IP (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight (0 = never chosen by roundrobin/chash).
    pub weight: u32,
    /// Priority group (higher tried first).
    pub priority: i32,
    /// Set when host is an IP literal (no DNS needed).
    pub addr: Option<SocketAddr>,
    /// "host:port" as APISIX prints nodes ("[::1]:80" for IPv6).
    pub label: String,
    /// For a host name: its addresses, kept current in the background.
    pub resolved: Option<Arc<HostAddrs>>,
}

impl Backend {
    fn from_node(node: &Node) -> Backend {
        let ip = node.host.parse::<IpAddr>().ok();
        let label = match ip {
            Some(IpAddr::V6(_)) => format!("[{}]:{}", node.host, node.port),
            _ => format!("{}:{}", node.host, node.port),
        };
        Backend {
            host: node.host.clone(),
            port: node.port,
            weight: node.weight,
            priority: node.priority,
            addr: ip.map(|ip| SocketAddr::new(ip, node.port)),
            label,
            resolved: None,
        }
    }

    /// The addresses to try, in order: the IP itself, or the host name's
    /// cached addresses (asking the system resolver only when there is no
    /// cache, or waiting up to `wait` for the first answer of a new name).
    pub async fn addrs(&self, wait: Duration) -> Result<Vec<SocketAddr>, String> {
        if let Some(a) = self.addr {
            return Ok(vec![a]);
        }
        let ips: Vec<IpAddr> = match &self.resolved {
            Some(h) => h.addrs(wait).await?.to_vec(),
            None => {
                let mut ips: Vec<IpAddr> = Vec::new();
                for a in tokio::net::lookup_host((self.host.as_str(), self.port))
                    .await
                    .map_err(|e| e.to_string())?
                {
                    if !ips.contains(&a.ip()) {
                        ips.push(a.ip());
                    }
                }
                ips
            }
        };
        Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.port))
            .collect())
    }
}

/// The algorithm state of one priority group.
#[derive(Debug)]
enum GroupPicker {
    RoundRobin(RoundRobin),
    Chash(Ring),
    LeastConn,
}

/// Nodes sharing one `priority`, with their algorithm state.
#[derive(Debug)]
struct Group {
    /// The group's `priority`.
    priority: i32,
    /// Node indexes in configuration order.
    members: Vec<usize>,
    picker: GroupPicker,
}

/// Node selection state for one upstream version. Built once when the config changes, shared
/// by all connections (Send + Sync), lock-free or nearly so on the hot path.
pub struct Balancer {
    lb: LbType,
    backends: Vec<Backend>,
    /// Priority groups, highest priority first.
    groups: Vec<Group>,
    /// In-flight sessions per node (least_conn only; zeros otherwise).
    in_flight: Arc<[AtomicUsize]>,
}

impl fmt::Debug for Balancer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balancer")
            .field("lb", &lb_name(&self.lb))
            .field(
                "backends",
                &self.backends.iter().map(|b| &b.label).collect::<Vec<_>>(),
            )
            .field("groups", &self.groups.len())
            .finish()
    }
}

/// Releases a least_conn in-flight slot when dropped.
struct InFlight {
    counts: Arc<[AtomicUsize]>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(c) = self.counts.get(self.index) {
            // Never wraps below zero: each guard matches exactly one earlier increment.
            c.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// A chosen backend. For least_conn it holds the node's in-flight count until dropped
/// (drop it when the session ends, or before trying another node on retry).
pub struct Pick {
    /// Index into [`Balancer::backends`].
    pub index: usize,
    _guard: Option<InFlight>,
}

impl fmt::Debug for Pick {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pick")
            .field("index", &self.index)
            .field("counted", &self._guard.is_some())
            .finish()
    }
}

fn lb_name(lb: &LbType) -> &str {
    match lb {
        LbType::RoundRobin => "roundrobin",
        LbType::Chash => "chash",
        LbType::LeastConn => "least_conn",
        LbType::Other(name) => name,
    }
}

impl Balancer {
    /// Builds the selection state for `nodes` (configuration order is kept for indexes).
    pub fn new(lb: &LbType, nodes: &[Node]) -> Balancer {
        let backends: Vec<Backend> = nodes.iter().map(Backend::from_node).collect();
        if let LbType::Other(name) = lb {
            tracing::warn!(
                lb = %name,
                "unsupported balancer type for stream; connections to this upstream will fail"
            );
        }
        // Group by priority, highest first; members keep configuration order.
        let mut priorities: Vec<i32> = backends.iter().map(|b| b.priority).collect();
        priorities.sort_unstable_by(|a, b| b.cmp(a));
        priorities.dedup();
        let groups = match lb {
            LbType::Other(_) => Vec::new(),
            _ => priorities
                .into_iter()
                .map(|p| {
                    let members: Vec<usize> = backends
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| b.priority == p)
                        .map(|(i, _)| i)
                        .collect();
                    let picker = match lb {
                        LbType::Chash => GroupPicker::Chash(Ring::new(&members, &backends)),
                        LbType::LeastConn => GroupPicker::LeastConn,
                        _ => GroupPicker::RoundRobin(RoundRobin::new(&members, &backends)),
                    };
                    Group {
                        priority: p,
                        members,
                        picker,
                    }
                })
                .collect(),
        };
        let in_flight: Arc<[AtomicUsize]> = backends.iter().map(|_| AtomicUsize::new(0)).collect();
        Balancer {
            lb: lb.clone(),
            backends,
            groups,
            in_flight,
        }
    }

    /// The nodes, in configuration order (a [`Pick::index`] points here).
    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// Give each host-name node its shared addresses from `entry`.
    pub fn attach_hosts(&mut self, entry: impl Fn(&str) -> Option<Arc<HostAddrs>>) {
        for b in self.backends.iter_mut().filter(|b| b.addr.is_none()) {
            b.resolved = entry(&b.host);
        }
    }

    /// The algorithm name as configured (`roundrobin`, `chash`, `least_conn`, or the unknown
    /// name).
    pub fn lb_name(&self) -> &str {
        lb_name(&self.lb)
    }

    /// Choose a node. `key`: the chash key bytes (ignored by other types; None => caller had
    /// no key, hashed as an empty key). `tried`: indexes already tried in this session (never
    /// returned again). `healthy(i)`: node health; unhealthy nodes are skipped unless every
    /// node of the upstream is unhealthy, then all are used (APISIX: "all upstream nodes is
    /// unhealthy, use default"). None when nothing is left (all tried, no nodes, or only
    /// weight-0 nodes for rr/chash).
    pub fn pick(
        &self,
        key: Option<&[u8]>,
        tried: &[usize],
        healthy: &dyn Fn(usize) -> bool,
    ) -> Option<Pick> {
        if matches!(self.lb, LbType::Other(_)) {
            return None;
        }
        // APISIX skips the algorithm for a single node (not for least_conn, which counts).
        if self.backends.len() == 1 && self.lb != LbType::LeastConn {
            return (!tried.contains(&0)).then_some(Pick {
                index: 0,
                _guard: None,
            });
        }
        // Every node unhealthy: use them all, as APISIX does (the checker
        // warns about it, rate-limited).
        let use_health = (0..self.backends.len()).any(healthy);
        let eligible = |i: usize| !tried.contains(&i) && (!use_health || healthy(i));
        let hash = match self.lb {
            LbType::Chash => crc32fast::hash(key.unwrap_or_default()),
            _ => 0,
        };
        for group in &self.groups {
            let found = match &group.picker {
                GroupPicker::RoundRobin(rr) => rr.pick(&eligible),
                GroupPicker::Chash(ring) => ring.pick(hash, &eligible),
                GroupPicker::LeastConn => {
                    least_conn::pick(&group.members, &self.backends, &self.in_flight, &eligible)
                }
            };
            if let Some(index) = found {
                let guard = matches!(group.picker, GroupPicker::LeastConn).then(|| {
                    // The in-flight count is taken after choosing: two racing picks may both
                    // see the same minimum, which only costs a little balance, never a lock.
                    if let Some(c) = self.in_flight.get(index) {
                        c.fetch_add(1, Ordering::Relaxed);
                    }
                    InFlight {
                        counts: Arc::clone(&self.in_flight),
                        index,
                    }
                });
                return Some(Pick {
                    index,
                    _guard: guard,
                });
            }
            tracing::trace!(
                lb = %self.lb_name(),
                priority = group.priority,
                "failed to get server from current priority, try next one"
            );
        }
        None
    }

    /// In-flight sessions per node as counted by least_conn (0s for other types) — for
    /// stats/tests.
    pub fn in_flight(&self, index: usize) -> usize {
        self.in_flight
            .get(index)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Greatest common divisor (0 when both are 0).
fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

/// The gcd of the non-zero weights of `members` (1 when all are 0).
fn weight_gcd(members: &[usize], backends: &[Backend]) -> u64 {
    let g = members
        .iter()
        .filter_map(|&i| backends.get(i))
        .fold(0, |g, b| gcd(g, u64::from(b.weight)));
    g.max(1)
}

#[cfg(test)]
mod tests;
