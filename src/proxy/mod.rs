//! The data plane: TCP and UDP listeners, per-connection handling and the
//! byte relay. It sees only the current [`Snapshot`](crate::snapshot::Snapshot),
//! never the store or the Admin API.

pub mod clienthello;
pub mod copy;
pub mod listener;
pub mod proxy_protocol;
pub mod tcp;
pub mod tls;
pub mod udp;
pub mod worker;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::snapshot::publish::SharedSnapshot;
use crate::stats::Stats;

/// What every connection handler shares.
#[derive(Debug, Clone)]
pub struct ProxyCtx {
    /// The routes in force.
    pub snapshot: SharedSnapshot,
    /// Every live connection task (for draining at shutdown).
    pub connections: TaskTracker,
    /// Live counters and the connection list.
    pub stats: Arc<Stats>,
    /// Where finished sessions are logged, when the access log is on.
    pub access_log: Option<AccessLog>,
    /// `apisix.ssl.fallback_sni`: the SNI assumed when a TLS client sends none.
    pub fallback_sni: Option<String>,
    /// `nginx_config.stream.real_ip_from`: peers whose PROXY protocol
    /// header may replace the client address.
    pub real_ip_from: Arc<[ipnet::IpNet]>,
    /// Cancelled when open connections must close now (grace period over):
    /// each worker then drops its runtime, and with it every connection task.
    pub force_close: CancellationToken,
}

impl ProxyCtx {
    /// A context over `snapshot`.
    pub fn new(snapshot: SharedSnapshot) -> ProxyCtx {
        ProxyCtx {
            snapshot,
            stats: Arc::default(),
            access_log: None,
            fallback_sni: None,
            real_ip_from: Arc::from(Vec::new()),
            connections: TaskTracker::new(),
            force_close: CancellationToken::new(),
        }
    }

    /// Number of connections being handled right now.
    pub fn active(&self) -> usize {
        self.connections.len()
    }
}
