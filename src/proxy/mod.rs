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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
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
    /// The process-wide session cap and its counters.
    pub limits: Arc<Limits>,
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
            limits: Arc::new(Limits::new(usize::MAX)),
        }
    }

    /// Number of connections being handled right now.
    pub fn active(&self) -> usize {
        self.connections.len()
    }
}

/// The cap on concurrent sessions (TCP connections and UDP sessions) and
/// what happened at it. Past the cap a new connection is closed at once
/// rather than left waiting in the backlog: a client learns immediately, and
/// the process never runs out of file descriptors for the sessions it has.
#[derive(Debug)]
pub struct Limits {
    /// Most sessions at once.
    pub max_sessions: usize,
    live: AtomicUsize,
    /// Connections and UDP sessions refused at the cap.
    pub refused: AtomicU64,
    /// Failed `accept` calls (EMFILE, ENFILE, ENOMEM, ...).
    pub accept_errors: AtomicU64,
}

impl Limits {
    /// A cap of `max_sessions`.
    pub fn new(max_sessions: usize) -> Limits {
        Limits {
            max_sessions,
            live: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }

    /// A slot for one more session, or `None` (counted) at the cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SessionPermit> {
        let taken = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_sessions).then_some(n + 1)
            });
        match taken {
            Ok(_) => Some(SessionPermit(self.clone())),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Sessions holding a slot now.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }
}

/// One session's slot under [`Limits`]; released when dropped.
#[derive(Debug)]
pub struct SessionPermit(Arc<Limits>);

impl Drop for SessionPermit {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_refuses_and_releases() {
        let l = Arc::new(Limits::new(2));
        let a = l.try_acquire().expect("first");
        let b = l.try_acquire().expect("second");
        assert!(l.try_acquire().is_none());
        assert_eq!(l.refused.load(Ordering::Relaxed), 1);
        assert_eq!(l.live(), 2);
        drop(a);
        let c = l.try_acquire().expect("a slot came back");
        drop((b, c));
        assert_eq!(l.live(), 0);
    }
}
