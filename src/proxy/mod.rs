//! The data plane: TCP and UDP listeners, per-connection handling and the
//! byte relay. It sees only the current [`Snapshot`](crate::snapshot::Snapshot),
//! never the store or the Admin API.
//!
//! - [`listeners`]: binding `stream_proxy` entries, the accept loop, and
//!   listener reload as a pure plan applied by a thin function.
//! - [`worker`]: one thread per core running accept loops and sessions.
//! - [`tcp`], [`udp`]: one session each; [`connect`] reaches a node with
//!   retries; [`copy`] relays the bytes; [`proxy_protocol`] reads and
//!   writes PROXY headers.
//! - [`session`]: a session's end ([`error::ProxyError`] or a normal end)
//!   turned into its one status and written once.
//!
//! Imports go one way: `listeners` and `worker` start `tcp` and `udp`
//! sessions, and the sessions see only what this module defines
//! ([`ProxyCtx`], [`ListenerInfo`], [`Limits`]).

pub mod connect;
pub mod copy;
pub mod error;
pub mod listeners;
pub mod proxy_protocol;
pub mod session;
pub mod tcp;
pub mod udp;
pub mod worker;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::access_log::AccessLog;
use crate::config::{Config, ListenSpec};
use crate::snapshot::publish::SharedSnapshot;
use crate::snapshot::Snapshot;
use crate::stats::Stats;
use crate::tls::{CertSource, TlsCerts};

/// A bound `stream_proxy` entry, shared by its accept loops and sessions.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The config entry.
    pub spec: ListenSpec,
    /// Address actually bound (the real port when the entry asked for 0).
    pub local: SocketAddr,
    /// `listen_addr` label as APISIX prints it (the configured address).
    pub label: String,
    /// Sessions and bytes through this entry.
    pub stats: crate::stats::ListenerStats,
}

/// The settings a [`ProxyCtx`] is built from, all from `config.yaml`.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The process-wide session cap and its counters.
    pub limits: Arc<Limits>,
    /// Where finished sessions are logged, when the access log is on.
    pub access_log: Option<AccessLog>,
    /// `apisix.ssl.fallback_sni`: the SNI assumed when a TLS client sends none.
    pub fallback_sni: Option<String>,
    /// `nginx_config.stream.real_ip_from`: peers whose PROXY protocol
    /// header may replace the client address.
    pub real_ip_from: Arc<[ipnet::IpNet]>,
}

/// Why the data plane's settings could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyConfigError {
    /// The access log file could not be opened.
    #[error("cannot open nginx_config.stream.access_log {path}: {error}")]
    AccessLog {
        /// The configured target.
        path: String,
        /// The OS error.
        error: std::io::Error,
    },
}

impl ProxyConfig {
    /// The settings `config` asks for under a cap of `max_sessions`;
    /// starts the access log writer when the access log is on.
    pub fn from_config(config: &Config, max_sessions: usize) -> Result<Self, ProxyConfigError> {
        let stream = &config.nginx_config.stream;
        let access_log = if stream.enable_access_log {
            let log = AccessLog::start(&stream.access_log).map_err(|error| {
                ProxyConfigError::AccessLog {
                    path: stream.access_log.clone(),
                    error,
                }
            })?;
            Some(log)
        } else {
            None
        };
        Ok(ProxyConfig {
            limits: Arc::new(Limits::new(max_sessions)),
            access_log,
            fallback_sni: config.apisix.ssl.fallback_sni.clone(),
            real_ip_from: Arc::from(stream.real_ip_from.clone()),
        })
    }
}

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
    /// Cancelled when the server starts draining (SIGTERM): a session whose
    /// upstream has finished then ends once its bytes are delivered, and a
    /// UDP session once its client's datagrams are answered.
    pub draining: CancellationToken,
    /// The process-wide session cap and its counters.
    pub limits: Arc<Limits>,
}

impl ProxyCtx {
    /// A context over `snapshot` and `stats` with the settings of `config`.
    pub fn new(snapshot: SharedSnapshot, stats: Arc<Stats>, config: ProxyConfig) -> ProxyCtx {
        let ProxyConfig {
            limits,
            access_log,
            fallback_sni,
            real_ip_from,
        } = config;
        ProxyCtx {
            snapshot,
            connections: TaskTracker::new(),
            stats,
            access_log,
            fallback_sni,
            real_ip_from,
            force_close: CancellationToken::new(),
            draining: CancellationToken::new(),
            limits,
        }
    }

    /// Number of connections being handled right now.
    pub fn active(&self) -> usize {
        self.connections.len()
    }
}

/// A TLS listener terminates with the certificates of the snapshot the
/// connection holds.
impl CertSource for Snapshot {
    fn certs(&self) -> &TlsCerts {
        &self.tls
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

    #[test]
    fn a_context_takes_every_setting_from_its_config() {
        let config = Config::from_yaml(
            "apisix:\n  ssl: {fallback_sni: a.example}\nnginx_config:\n  stream: {real_ip_from: [10.0.0.0/8]}\n",
        )
        .expect("config");
        let pc = ProxyConfig::from_config(&config, 7).expect("settings");
        let ctx = ProxyCtx::new(Default::default(), Arc::default(), pc);
        assert_eq!(ctx.limits.max_sessions, 7);
        assert_eq!(ctx.fallback_sni.as_deref(), Some("a.example"));
        assert_eq!(ctx.real_ip_from.len(), 1);
        assert!(ctx.access_log.is_none());
    }

    #[test]
    fn an_access_log_that_cannot_open_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        // A directory where the log file should be.
        let path = dir.path().display().to_string();
        let config = Config::from_yaml(&format!(
            "nginx_config:\n  stream: {{enable_access_log: true, access_log: '{path}'}}\n"
        ))
        .expect("config");
        let e = ProxyConfig::from_config(&config, 1).expect_err("a directory");
        assert!(
            e.to_string().starts_with(&format!(
                "cannot open nginx_config.stream.access_log {path}: "
            )),
            "{e}"
        );
    }
}
