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
//! routes of other ports. Each list is pre-sorted by precedence, so plain
//! matching is "first route whose filters pass".

use std::cmp::Reverse;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::{ConnInfo, RouteRt};

/// Per-port lists of route positions, each sorted by precedence.
#[derive(Debug, Default)]
pub struct RouteIndex {
    by_port_plain: HashMap<u16, Vec<usize>>,
    by_port_sni: HashMap<u16, Vec<usize>>,
    any_plain: Vec<usize>,
    any_sni: Vec<usize>,
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

impl RouteIndex {
    /// Index `routes` (given in id key order).
    pub fn build(routes: &[Arc<RouteRt>]) -> RouteIndex {
        let mut idx = RouteIndex::default();
        for (i, r) in routes.iter().enumerate() {
            idx.list_mut(r).push(i);
        }
        let order = |list: &mut Vec<usize>| {
            list.sort_by_key(|&i| (Reverse(specificity(&routes[i])), i));
        };
        idx.by_port_plain.values_mut().for_each(order);
        idx.by_port_sni.values_mut().for_each(order);
        order(&mut idx.any_plain);
        order(&mut idx.any_sni);
        idx
    }

    /// The index of `routes` made from `prev`, the index of the previous
    /// route list: `remap[i]` is the new position of the previous route at
    /// `i` when it is still there with the same filters, and `added` holds
    /// the positions of the routes that are new or whose filters changed.
    /// Positions keep their order under `remap` (both lists are in id
    /// order), so the kept lists stay sorted and only `added` is placed.
    pub fn update(
        prev: &RouteIndex,
        remap: &[Option<usize>],
        added: &[usize],
        routes: &[Arc<RouteRt>],
    ) -> RouteIndex {
        let map = |list: &Vec<usize>| -> Vec<usize> {
            list.iter()
                .filter_map(|&i| remap.get(i).copied().flatten())
                .collect()
        };
        let map_ports = |by_port: &HashMap<u16, Vec<usize>>| -> HashMap<u16, Vec<usize>> {
            by_port
                .iter()
                .map(|(p, list)| (*p, map(list)))
                .filter(|(_, list)| !list.is_empty())
                .collect()
        };
        let mut idx = RouteIndex {
            by_port_plain: map_ports(&prev.by_port_plain),
            by_port_sni: map_ports(&prev.by_port_sni),
            any_plain: map(&prev.any_plain),
            any_sni: map(&prev.any_sni),
        };
        let key = |i: usize| (Reverse(specificity(&routes[i])), i);
        for &i in added {
            let list = idx.list_mut(&routes[i]);
            let at = list.partition_point(|&j| key(j) < key(i));
            list.insert(at, i);
        }
        idx
    }

    fn list_mut(&mut self, r: &RouteRt) -> &mut Vec<usize> {
        match (r.server_port, r.sni.is_some()) {
            (Some(p), false) => self.by_port_plain.entry(p).or_default(),
            (Some(p), true) => self.by_port_sni.entry(p).or_default(),
            (None, false) => &mut self.any_plain,
            (None, true) => &mut self.any_sni,
        }
    }

    fn lists(
        &self,
        port: u16,
    ) -> (
        impl Iterator<Item = usize> + '_,
        impl Iterator<Item = usize> + '_,
    ) {
        let sni = self
            .by_port_sni
            .get(&port)
            .into_iter()
            .flatten()
            .chain(self.any_sni.iter())
            .copied();
        let plain = self
            .by_port_plain
            .get(&port)
            .into_iter()
            .flatten()
            .chain(self.any_plain.iter())
            .copied();
        (sni, plain)
    }

    /// Position of the winning route in `routes`.
    pub fn find(&self, routes: &[Arc<RouteRt>], conn: &ConnInfo) -> Option<usize> {
        let (sni_list, plain_list) = self.lists(conn.server_port);
        if let Some(name) = &conn.sni {
            // (sni rank, specificity, position): the largest rank and
            // specificity win, then the smallest position (id order).
            type Candidate = ((u8, usize), (bool, i16, i16), usize);
            let mut best: Option<Candidate> = None;
            for i in sni_list {
                let r = &routes[i];
                let Some(rank) = r.sni.as_deref().and_then(|p| sni_rank(p, name)) else {
                    continue;
                };
                if reject_reason(r, conn).is_some() {
                    continue;
                }
                let cand = (rank, specificity(r), i);
                let better = match &best {
                    None => true,
                    Some((br, bs, bi)) => (rank, cand.1, Reverse(i)) > (*br, *bs, Reverse(*bi)),
                };
                if better {
                    best = Some(cand);
                }
            }
            if let Some((_, _, i)) = best {
                return Some(i);
            }
        }
        plain_list
            .into_iter()
            .find(|&i| reject_reason(&routes[i], conn).is_none())
    }

    /// Every route of the connection's port (and the port-less ones), the
    /// winner first, each loser with the reason it lost.
    pub fn explain(
        &self,
        routes: &[Arc<RouteRt>],
        conn: &ConnInfo,
    ) -> Vec<(Arc<RouteRt>, Option<String>)> {
        let winner = self.find(routes, conn);
        let (sni_list, plain_list) = self.lists(conn.server_port);
        let mut out: Vec<(Arc<RouteRt>, Option<String>)> = Vec::new();
        if let Some(w) = winner {
            out.push((routes[w].clone(), None));
        }
        let win_id = winner.map(|w| routes[w].id.clone());
        for i in sni_list.chain(plain_list) {
            if Some(i) == winner {
                continue;
            }
            let r = &routes[i];
            let why = reject_reason(r, conn).unwrap_or_else(|| match &win_id {
                Some(w) => format!("matches, but route {w} takes precedence"),
                None => "matches".to_string(),
            });
            out.push((r.clone(), Some(why)));
        }
        out
    }
}
