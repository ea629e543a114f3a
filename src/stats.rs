//! Live counters fed by the data plane, read by the Control API, the
//! Prometheus endpoint and `top`.
//!
//! Lock-free on the hot path: every route and (route, node) pair has its
//! counters in an `Arc` of atomics that the snapshot hands to connections
//! when it is built, so a connection never looks anything up; the
//! registry's locks are taken only when a snapshot is built or stats are
//! read. Counters live as long as the registry (held by the snapshot's
//! `Carry`), so a route that is updated keeps counting where it was. The list of live connections is sharded so
//! registering one touches one small lock.
//!
//! Counters only: this module imports nothing of the crate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use serde::Serialize;
use tokio::sync::oneshot;

fn add(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Counters of one stream route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Sessions open now.
    pub active: AtomicI64,
    /// Sessions started.
    pub total: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// UDP sessions started.
    pub udp_sessions: AtomicU64,
    /// UDP datagrams from clients forwarded.
    pub datagrams_in: AtomicU64,
    /// UDP datagrams to clients forwarded.
    pub datagrams_out: AtomicU64,
    /// Tries to reach a node that failed.
    pub connect_failures: AtomicU64,
    /// Sessions that reached a node only after retrying.
    pub retries: AtomicU64,
    /// Requests decoded on a protocol (xRPC) route.
    pub requests: AtomicU64,
    /// Protocol sessions closed because the client sent malformed bytes.
    pub protocol_errors: AtomicU64,
    /// Per-command counts and latencies of a protocol route that enables
    /// its metrics.
    pub commands: Mutex<HashMap<String, CommandStats>>,
}

/// Upper bounds (seconds) of the command latency histogram: 1 ms to 1 s.
pub const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];

/// Count and latency histogram of one command on one route.
#[derive(Debug, Default, Clone)]
pub struct CommandStats {
    /// Requests finished.
    pub count: u64,
    /// Requests at or under each of [`LATENCY_BUCKETS`] (not cumulative).
    pub buckets: [u64; 10],
    /// Sum of the latencies in seconds.
    pub sum: f64,
}

impl RouteStats {
    /// Count one finished request of `command` that took `secs`.
    pub fn observe_command(&self, command: &str, secs: f64) {
        let Ok(mut m) = self.commands.lock() else {
            return;
        };
        let c = match m.get_mut(command) {
            Some(c) => c,
            None => m.entry(command.to_string()).or_default(),
        };
        c.count += 1;
        c.sum += secs;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            c.buckets[i] += 1;
        }
    }

    /// Every command's counters, by name.
    pub fn command_stats(&self) -> Vec<(String, CommandStats)> {
        let mut v: Vec<_> = self.commands.lock().map_or_else(
            |_| Vec::new(),
            |m| m.iter().map(|(k, c)| (k.clone(), c.clone())).collect(),
        );
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// Counters of one node as used by one route.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Sessions open now.
    pub active: AtomicI64,
    /// Sessions started.
    pub total: AtomicU64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Failed tries to reach this node.
    pub connect_failures: AtomicU64,
    /// The last failure, for operators.
    pub last_error: Mutex<Option<String>>,
}

impl NodeStats {
    /// Record a failed try.
    pub fn failed(&self, why: String) {
        add(&self.connect_failures);
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(why);
        }
    }
}

/// Counters of one listener entry.
#[derive(Debug, Default)]
pub struct ListenerStats {
    /// Sessions open now (TCP and UDP).
    pub active: AtomicI64,
    /// Bytes received from clients.
    pub bytes_in: AtomicU64,
    /// Bytes sent to clients.
    pub bytes_out: AtomicU64,
    /// Connections closed before routing: a missing or bad PROXY protocol
    /// header, a failed TLS handshake or ClientHello.
    pub rejected: AtomicU64,
}

/// Decrements an active gauge when dropped (sessions end on every path).
#[derive(Debug)]
pub struct ActiveGuard<'a>(&'a AtomicI64);

impl<'a> ActiveGuard<'a> {
    /// Count one more active session on `gauge` until the guard drops.
    pub fn new(gauge: &'a AtomicI64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(gauge)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A live connection or UDP session, as listed by the Control API.
#[derive(Debug)]
pub struct ConnEntry {
    /// Who, where and through what.
    pub meta: NewConn,
    /// Bytes from the client.
    pub bytes_in: AtomicU64,
    /// Bytes to the client.
    pub bytes_out: AtomicU64,
    /// When it started.
    pub started: Instant,
    close: Mutex<Option<oneshot::Sender<()>>>,
}

const SHARDS: usize = 16;

/// The live connections, sharded by id.
#[derive(Debug)]
pub struct Connections {
    next: AtomicU64,
    shards: Vec<Mutex<HashMap<u64, Arc<ConnEntry>>>>,
}

impl Default for Connections {
    fn default() -> Self {
        Connections {
            next: AtomicU64::new(1),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

/// A connection's registration; removes it from the list when dropped.
#[derive(Debug)]
pub struct ConnHandle {
    stats: Arc<Stats>,
    /// The connection's id.
    pub id: u64,
    /// Its entry (for live byte counts).
    pub entry: Arc<ConnEntry>,
    /// Fires when an operator closes the connection.
    pub closed: oneshot::Receiver<()>,
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        let shards = &self.stats.connections.shards;
        if let Ok(mut shard) = shards[self.id as usize % SHARDS].lock() {
            shard.remove(&self.id);
        }
    }
}

/// What is known of a connection when it is registered.
#[derive(Debug)]
pub struct NewConn {
    /// `tcp` or `udp`.
    pub protocol: &'static str,
    /// Client address.
    pub client: SocketAddr,
    /// Listener label.
    pub listener: String,
    /// Route id.
    pub route_id: String,
    /// Node `host:port`.
    pub node: String,
    /// TLS SNI.
    pub sni: Option<String>,
}

impl Stats {
    /// Add a live connection; it stays listed until the handle drops.
    pub fn register(self: &Arc<Self>, c: NewConn) -> ConnHandle {
        let list = &self.connections;
        let id = list.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let entry = Arc::new(ConnEntry {
            meta: c,
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            started: Instant::now(),
            close: Mutex::new(Some(tx)),
        });
        if let Ok(mut shard) = list.shards[id as usize % SHARDS].lock() {
            shard.insert(id, entry.clone());
        }
        ConnHandle {
            stats: self.clone(),
            id,
            entry,
            closed: rx,
        }
    }
}

impl Connections {
    /// Ask a connection to close; false when no such connection is live.
    pub fn close(&self, id: u64) -> bool {
        let entry = self.shards[id as usize % SHARDS]
            .lock()
            .ok()
            .and_then(|s| s.get(&id).cloned());
        let Some(entry) = entry else { return false };
        let sender = entry.close.lock().ok().and_then(|mut s| s.take());
        if let Some(tx) = sender {
            let _ = tx.send(());
        }
        true
    }

    /// Every live connection, newest first.
    pub fn list(&self) -> Vec<(u64, Arc<ConnEntry>)> {
        let mut all: Vec<(u64, Arc<ConnEntry>)> = self
            .shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .flat_map(|s| s.iter().map(|(id, e)| (*id, e.clone())).collect::<Vec<_>>())
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.0));
        all
    }

    /// Number of live connections.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .filter_map(|s| s.lock().ok())
            .map(|s| s.len())
            .sum()
    }

    /// Whether no connection is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The registry.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    routes: RwLock<HashMap<String, Arc<RouteStats>>>,
    nodes: RwLock<HashMap<(String, String), Arc<NodeStats>>>,
    /// Live connections and UDP sessions.
    pub connections: Connections,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            started: Instant::now(),
            routes: RwLock::default(),
            nodes: RwLock::default(),
            connections: Connections::default(),
        }
    }
}

impl Stats {
    /// Seconds since the registry was created (process start).
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Sessions started and open now, over every route ever counted.
    /// Summed when read, so the hot path has no process-wide counter that
    /// every worker would contend on.
    pub fn totals(&self) -> (u64, i64) {
        self.routes.read().map_or((0, 0), |m| {
            m.values().fold((0, 0), |(t, a), r| {
                (
                    t + r.total.load(Ordering::Relaxed),
                    a + r.active.load(Ordering::Relaxed).max(0),
                )
            })
        })
    }

    /// The counters of a route (created on first use).
    pub fn route(&self, id: &str) -> Arc<RouteStats> {
        if let Some(r) = self.routes.read().ok().and_then(|m| m.get(id).cloned()) {
            return r;
        }
        match self.routes.write() {
            Ok(mut m) => m.entry(id.to_string()).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }

    /// The counters of a node under a route (created on first use).
    pub fn node(&self, route_id: &str, node: &str) -> Arc<NodeStats> {
        let key = (route_id.to_string(), node.to_string());
        if let Some(n) = self.nodes.read().ok().and_then(|m| m.get(&key).cloned()) {
            return n;
        }
        match self.nodes.write() {
            Ok(mut m) => m.entry(key).or_default().clone(),
            Err(_) => Arc::default(),
        }
    }
}

/// `/v1/stream/stats` route entry.
#[derive(Debug, Serialize)]
pub struct RouteReport {
    /// Route id.
    pub id: String,
    /// Sessions open.
    pub active: i64,
    /// Sessions started.
    pub total: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// UDP sessions started.
    pub udp_sessions: u64,
    /// UDP datagrams from clients.
    pub datagrams_in: u64,
    /// UDP datagrams to clients.
    pub datagrams_out: u64,
    /// Failed tries to reach nodes.
    pub connect_failures: u64,
    /// Sessions that needed a retry.
    pub retries: u64,
    /// The route's filters in one line.
    pub summary: String,
    /// Requests decoded, on a protocol (xRPC) route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Sessions closed for malformed client bytes, on a protocol route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol_errors: Option<u64>,
    /// The protocol of a protocol (xRPC) route.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// limit-bandwidth's rates and whether it throttles now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_bandwidth: Option<serde_json::Value>,
}

impl RouteReport {
    /// Read a route's counters.
    pub fn new(id: &str, s: &RouteStats, summary: String) -> RouteReport {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        RouteReport {
            id: id.to_string(),
            active: s.active.load(Ordering::Relaxed).max(0),
            total: r(&s.total),
            bytes_in: r(&s.bytes_in),
            bytes_out: r(&s.bytes_out),
            udp_sessions: r(&s.udp_sessions),
            datagrams_in: r(&s.datagrams_in),
            datagrams_out: r(&s.datagrams_out),
            connect_failures: r(&s.connect_failures),
            retries: r(&s.retries),
            summary,
            requests: None,
            protocol_errors: None,
            protocol: None,
            limit_bandwidth: None,
        }
    }
}

/// `/v1/stream/stats` node entry.
#[derive(Debug, Serialize)]
pub struct NodeReport {
    /// Route id.
    pub route_id: String,
    /// Upstream id when the route uses a stored upstream.
    pub upstream_id: Option<String>,
    /// `host:port`.
    pub node: String,
    /// Sessions open.
    pub active: i64,
    /// Sessions started.
    pub total: u64,
    /// Bytes from clients.
    pub bytes_in: u64,
    /// Bytes to clients.
    pub bytes_out: u64,
    /// Failed tries.
    pub connect_failures: u64,
    /// The last failure.
    pub last_error: Option<String>,
    /// Health as the upstream's checker sees it (None without a checker).
    pub healthy: Option<bool>,
}

impl NodeReport {
    /// Read a node's counters.
    pub fn new(
        route_id: &str,
        upstream_id: Option<String>,
        node: &str,
        s: &NodeStats,
        healthy: Option<bool>,
    ) -> Self {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NodeReport {
            route_id: route_id.to_string(),
            upstream_id,
            node: node.to_string(),
            active: s.active.load(Ordering::Relaxed).max(0),
            total: r(&s.total),
            bytes_in: r(&s.bytes_in),
            bytes_out: r(&s.bytes_out),
            connect_failures: r(&s.connect_failures),
            last_error: s.last_error.lock().ok().and_then(|l| l.clone()),
            healthy,
        }
    }
}

/// Resident memory of this process in bytes (Linux), if known.
pub fn memory_rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_and_connections_listed_until_dropped() {
        let s = Arc::new(Stats::default());
        let a = s.route("1");
        let b = s.route("1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(Arc::ptr_eq(&s.node("1", "n:1"), &s.node("1", "n:1")));
        assert!(!Arc::ptr_eq(&s.node("1", "n:1"), &s.node("2", "n:1")));
        {
            let _g = ActiveGuard::new(&a.active);
            assert_eq!(a.active.load(Ordering::Relaxed), 1);
        }
        assert_eq!(a.active.load(Ordering::Relaxed), 0);
        let conn = |route: &str| NewConn {
            protocol: "tcp",
            client: "127.0.0.1:5000".parse().expect("addr"),
            listener: "0.0.0.0:9100".into(),
            route_id: route.into(),
            node: "127.0.0.1:1995".into(),
            sni: None,
        };
        let mut h1 = s.register(conn("1"));
        let h2 = s.register(conn("2"));
        let ids: Vec<u64> = s.connections.list().iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, vec![h2.id, h1.id], "newest first");
        assert!(s.connections.close(h1.id));
        assert!(h1.closed.try_recv().is_ok(), "close signal delivered");
        drop(h1);
        assert_eq!(s.connections.len(), 1);
        assert!(!s.connections.close(9999));
        drop(h2);
        assert!(s.connections.is_empty());
    }
}
