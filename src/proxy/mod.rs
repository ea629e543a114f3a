//! The data plane: TCP and UDP listeners, per-connection handling and the
//! byte relay. It sees only the current [`Snapshot`](crate::snapshot::Snapshot),
//! never the store or the Admin API.

pub mod clienthello;
pub mod copy;
pub mod listener;
pub mod tcp;
pub mod tls;
pub mod udp;
pub mod worker;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::snapshot::publish::SharedSnapshot;

/// What every connection handler shares.
#[derive(Debug, Clone)]
pub struct ProxyCtx {
    /// The routes in force.
    pub snapshot: SharedSnapshot,
    /// Every live connection task (for draining at shutdown).
    pub connections: TaskTracker,
    /// `apisix.ssl.fallback_sni`: the SNI assumed when a TLS client sends none.
    pub fallback_sni: Option<String>,
    /// Cancelled when open connections must close now (grace period over):
    /// each worker then drops its runtime, and with it every connection task.
    pub force_close: CancellationToken,
}

impl ProxyCtx {
    /// A context over `snapshot`.
    pub fn new(snapshot: SharedSnapshot) -> ProxyCtx {
        ProxyCtx {
            snapshot,
            fallback_sni: None,
            connections: TaskTracker::new(),
            force_close: CancellationToken::new(),
        }
    }

    /// Number of connections being handled right now.
    pub fn active(&self) -> usize {
        self.connections.len()
    }
}
