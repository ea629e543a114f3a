//! Route matching: which stream route a connection takes.
//!
//! Precedence (INTERFACE.md), among the routes whose filters all pass:
//! SNI routes first (exact name, then the longest wildcard, then `*`), then
//! the most specific: `server_port` set beats unset, then the longer
//! `server_addr` prefix, then the longer `remote_addr` prefix; a remaining
//! tie goes to the smallest id in key order.
//!
//! Routes are indexed by `server_port` so the cost of matching depends only
//! on the routes of the connection's port plus the port-less ones, never on
//! routes of other ports. Each list is kept sorted by precedence, so plain
//! matching is "first route whose filters pass", and a changed route is
//! taken out and put back in its lists without touching the others.

use std::cmp::Reverse;
use std::net::IpAddr;
use std::sync::Arc;

use imbl::{OrdMap, OrdSet};
use ipnet::IpNet;

use super::{ConnInfo, RouteRt};

/// A route ordered by its id (so a list holds no copy of the id).
#[derive(Debug, Clone)]
struct ById(Arc<RouteRt>);

impl PartialEq for ById {
    fn eq(&self, other: &Self) -> bool {
        self.0.id == other.0.id
    }
}

impl Eq for ById {}

impl PartialOrd for ById {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ById {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.id.cmp(&other.0.id)
    }
}

/// Where a route sorts in its list: the most specific first, then id order.
type Rank = (Reverse<(bool, i16, i16)>, ById);

/// Routes of one list, in precedence order.
type List = OrdSet<Rank>;

/// Per-port lists of routes, each in precedence order. The lists are
/// persistent maps: a snapshot's index is its predecessor's with the
/// changed routes removed and inserted, sharing everything else.
#[derive(Debug, Default, Clone)]
pub struct RouteIndex {
    by_port_plain: OrdMap<u16, List>,
    by_port_sni: OrdMap<u16, List>,
    any_plain: List,
    any_sni: List,
}

fn prefix(net: &Option<IpNet>) -> i16 {
    net.map_or(-1, |n| i16::from(n.prefix_len()))
}

/// Specificity of the address filters, larger = more specific.
fn specificity(r: &RouteRt) -> (bool, i16, i16) {
    (
        r.server_port.is_some(),
        prefix(&r.server_addr),
        prefix(&r.remote_addr),
    )
}

/// How well a route's `sni` pattern matches a name: exact beats wildcard
/// (longer suffix first), which beats `*`. Route wildcards match any number
/// of labels (`*.test.com` matches `a.b.test.com`), as APISIX's router does.
pub fn sni_rank(pattern: &str, name: &str) -> Option<(u8, usize)> {
    if pattern == name {
        Some((2, pattern.len()))
    } else if pattern == "*" {
        Some((0, 0))
    } else if let Some(suffix) = pattern.strip_prefix('*') {
        name.ends_with(suffix).then_some((1, suffix.len()))
    } else {
        None
    }
}

fn net_check(what: &str, net: &Option<IpNet>, ip: IpAddr) -> Result<(), String> {
    match net {
        Some(n) if !n.contains(&ip) => Err(format!("{what} {n} does not contain {ip}")),
        _ => Ok(()),
    }
}

/// Why a route's filters reject a connection (None = they all pass).
pub fn reject_reason(r: &RouteRt, conn: &ConnInfo) -> Option<String> {
    if let Some(p) = r.server_port {
        if p != conn.server_port {
            return Some(format!("server_port {p} is not {}", conn.server_port));
        }
    }
    if let Some(pattern) = &r.sni {
        match &conn.sni {
            None => return Some(format!("sni {pattern} needs a TLS connection with SNI")),
            Some(name) if sni_rank(pattern, name).is_none() => {
                return Some(format!("sni {pattern} does not match {name}"))
            }
            _ => {}
        }
    }
    net_check("server_addr", &r.server_addr, conn.server_addr)
        .and_then(|()| net_check("remote_addr", &r.remote_addr, conn.remote_addr))
        .err()
}

fn rank(r: &Arc<RouteRt>) -> Rank {
    (Reverse(specificity(r)), ById(Arc::clone(r)))
}

impl RouteIndex {
    /// Index `routes`.
    pub fn build<'a>(routes: impl IntoIterator<Item = &'a Arc<RouteRt>>) -> RouteIndex {
        let mut idx = RouteIndex::default();
        for r in routes {
            idx.insert(r);
        }
        idx
    }

    /// Add a route (one with the same id and filters is replaced).
    pub fn insert(&mut self, r: &Arc<RouteRt>) {
        let list = match (r.server_port, r.sni.is_some()) {
            (Some(p), false) => self.by_port_plain.entry(p).or_default(),
            (Some(p), true) => self.by_port_sni.entry(p).or_default(),
            (None, false) => &mut self.any_plain,
            (None, true) => &mut self.any_sni,
        };
        list.insert(rank(r));
    }

    /// Take a route out (found by its id and filters).
    pub fn remove(&mut self, r: &Arc<RouteRt>) {
        let key = rank(r);
        let (by_port, any) = if r.sni.is_some() {
            (&mut self.by_port_sni, &mut self.any_sni)
        } else {
            (&mut self.by_port_plain, &mut self.any_plain)
        };
        match r.server_port {
            Some(p) => {
                let emptied = by_port.get_mut(&p).is_some_and(|list| {
                    list.remove(&key);
                    list.is_empty()
                });
                if emptied {
                    by_port.remove(&p);
                }
            }
            None => {
                any.remove(&key);
            }
        }
    }

    fn lists(
        &self,
        port: u16,
    ) -> (
        impl Iterator<Item = &Arc<RouteRt>> + '_,
        impl Iterator<Item = &Arc<RouteRt>> + '_,
    ) {
        let sni = self
            .by_port_sni
            .get(&port)
            .into_iter()
            .flat_map(|l| l.iter())
            .chain(self.any_sni.iter())
            .map(|(_, r)| &r.0);
        let plain = self
            .by_port_plain
            .get(&port)
            .into_iter()
            .flat_map(|l| l.iter())
            .chain(self.any_plain.iter())
            .map(|(_, r)| &r.0);
        (sni, plain)
    }

    /// The winning route.
    pub fn find(&self, conn: &ConnInfo) -> Option<&Arc<RouteRt>> {
        let (sni_list, mut plain_list) = self.lists(conn.server_port);
        if let Some(name) = &conn.sni {
            // The largest sni rank and specificity win, then the smallest id.
            type Candidate<'a> = ((u8, usize), (bool, i16, i16), &'a Arc<RouteRt>);
            let mut best: Option<Candidate<'_>> = None;
            for r in sni_list {
                let Some(rank) = r.sni.as_deref().and_then(|p| sni_rank(p, name)) else {
                    continue;
                };
                if reject_reason(r, conn).is_some() {
                    continue;
                }
                let spec = specificity(r);
                let better = match &best {
                    None => true,
                    Some((br, bs, b)) => {
                        (rank, spec) > (*br, *bs) || ((rank, spec) == (*br, *bs) && r.id < b.id)
                    }
                };
                if better {
                    best = Some((rank, spec, r));
                }
            }
            if let Some((_, _, r)) = best {
                return Some(r);
            }
        }
        plain_list.find(|r| reject_reason(r, conn).is_none())
    }

    /// Every route of the connection's port (and the port-less ones), the
    /// winner first, each loser with the reason it lost.
    pub fn explain(&self, conn: &ConnInfo) -> Vec<(Arc<RouteRt>, Option<String>)> {
        let winner = self.find(conn);
        let (sni_list, plain_list) = self.lists(conn.server_port);
        let mut out: Vec<(Arc<RouteRt>, Option<String>)> = Vec::new();
        if let Some(w) = winner {
            out.push((w.clone(), None));
        }
        for r in sni_list.chain(plain_list) {
            if winner.is_some_and(|w| Arc::ptr_eq(w, r)) {
                continue;
            }
            let why = reject_reason(r, conn).unwrap_or_else(|| match winner {
                Some(w) => format!("matches, but route {} takes precedence", w.id),
                None => "matches".to_string(),
            });
            out.push((r.clone(), Some(why)));
        }
        out
    }
}
