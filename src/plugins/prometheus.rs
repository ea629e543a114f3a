//! `prometheus`: count finished sessions of the routes that enable it.
//!
//! `apisix_stream_connection_total{route}` (route id, or its `name` with
//! `prefer_name`) and `apisix_stream_status{code,listen_addr,node}`. The
//! counters live in [`Metrics`], one per process, and are exported by
//! [`crate::control`] on the Prometheus export server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::{fold_code, Finished};

/// Labels of one `stream_status` series: code, listen_addr, node.
pub type StatusKey = (u16, String, String);

/// The plugin's counters.
///
/// Per-route counters are handed to the compiled plugin as `Arc`s, so the
/// log phase adds to an atomic. Status series are keyed by the node, known
/// only when a session ends: one short lock per finished session of a
/// route with the plugin.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: Mutex<HashMap<String, Arc<AtomicU64>>>,
    status: Mutex<HashMap<StatusKey, u64>>,
}

impl Metrics {
    /// The connection counter of a `route` label (created on first use).
    pub fn connection_counter(&self, route: &str) -> Arc<AtomicU64> {
        match self.connections.lock() {
            Ok(mut m) => Arc::clone(m.entry(route.to_string()).or_default()),
            Err(_) => Arc::default(),
        }
    }

    /// `stream_connection_total` per route label.
    pub fn connection_totals(&self) -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = self.connections.lock().map_or(Vec::new(), |m| {
            m.iter()
                .map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed)))
                .collect()
        });
        v.sort();
        v
    }

    /// `stream_status` per (code, listen_addr, node).
    pub fn status_totals(&self) -> Vec<(StatusKey, u64)> {
        let mut v: Vec<(StatusKey, u64)> = self.status.lock().map_or(Vec::new(), |m| {
            m.iter().map(|(k, n)| (k.clone(), *n)).collect()
        });
        v.sort();
        v
    }

    fn add_status(&self, key: StatusKey) {
        if let Ok(mut m) = self.status.lock() {
            *m.entry(key).or_default() += 1;
        }
    }
}

/// A compiled prometheus conf.
#[derive(Debug)]
pub struct Prometheus {
    connections: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Prometheus {
    /// Compile for a route (`prefer_name` picks the `route` label).
    pub fn build(
        conf: &Value,
        route_id: &str,
        route_name: Option<&str>,
        metrics: &Arc<Metrics>,
    ) -> Prometheus {
        let prefer_name = conf
            .get("prefer_name")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let label = match route_name {
            Some(n) if prefer_name && !n.is_empty() => n,
            _ => route_id,
        };
        Prometheus {
            connections: metrics.connection_counter(label),
            metrics: Arc::clone(metrics),
        }
    }

    /// Log phase: count the session.
    pub fn log(&self, end: &Finished<'_>) {
        self.connections.fetch_add(1, Ordering::Relaxed);
        let node = if end.node == "-" { "" } else { end.node };
        self.metrics.add_status((
            fold_code(end.status),
            end.listen.to_string(),
            node.to_string(),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counts_per_route_label_and_status() {
        let m = Arc::new(Metrics::default());
        let by_id = Prometheus::build(&serde_json::json!({}), "1", Some("mqtt"), &m);
        let by_name = Prometheus::build(
            &serde_json::json!({"prefer_name": true}),
            "2",
            Some("mqtt"),
            &m,
        );
        let end = |status, node| Finished {
            protocol: "TCP",
            status,
            listen: "0.0.0.0:1985",
            node,
            bytes_in: 0,
            bytes_out: 0,
            duration: Duration::ZERO,
        };
        by_id.log(&end(200, "127.0.0.1:1995"));
        by_name.log(&end(403, "-"));
        by_name.log(&end(429, ""));
        assert_eq!(
            m.connection_totals(),
            vec![("1".to_string(), 1), ("mqtt".to_string(), 2)]
        );
        let st = m.status_totals();
        assert!(st.contains(&((200, "0.0.0.0:1985".into(), "127.0.0.1:1995".into()), 1)));
        assert!(st.contains(&((403, "0.0.0.0:1985".into(), String::new()), 1)));
        assert!(st.contains(&((400, "0.0.0.0:1985".into(), String::new()), 1)));
    }
}
