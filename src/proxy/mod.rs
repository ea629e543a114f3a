//! The data plane: TCP and UDP listeners, per-connection handling and the
//! byte relay. It sees only the current [`Snapshot`](crate::snapshot::Snapshot),
//! never the store or the Admin API.
//!
//! - [`listeners`]: binding `stream_proxy` entries, the accept loop, and
//!   listener reload as a pure plan applied by a thin function.
//! - [`worker`]: one thread per core running accept loops and sessions.
//! - [`tcp`], [`udp`]: one session each; [`connect`] reaches a node with
//!   retries; [`copy`] relays the bytes; [`proxy_protocol`] reads and
//!   writes PROXY headers; [`pool`] lends relay buffers and splice pipes
//!   per worker.
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
pub mod pool;
pub mod proxy_protocol;
mod pump;
pub mod session;
pub mod tcp;
pub mod udp;
pub mod worker;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

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
    /// The access log format does not compile.
    #[error("invalid nginx_config.stream.access_log_format: {0}")]
    AccessLogFormat(crate::access_log::TemplateError),
}

impl ProxyConfig {
    /// The settings `config` asks for under a cap of `max_sessions`;
    /// starts the access log writer when the access log is on.
    pub fn from_config(config: &Config, max_sessions: usize) -> Result<Self, ProxyConfigError> {
        let stream = &config.nginx_config.stream;
        let access_log = if stream.enable_access_log {
            let template = crate::access_log::Template::compile(
                &stream.access_log_format,
                stream.access_log_format_escape,
            )
            .map_err(ProxyConfigError::AccessLogFormat)?;
            let log = AccessLog::start(&stream.access_log, template).map_err(|error| {
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

/// The caps on concurrent sessions and what happened at them. Past a cap a
/// new connection is closed at once rather than left waiting in the backlog:
/// a client learns immediately, and the process never runs out of file
/// descriptors for the sessions it has.
///
/// One budget of `max_sessions` covers TCP connections and UDP sessions
/// together. It is sized at two descriptors per session (a TCP connection's
/// two sockets); a UDP session holds one, so the UDP share never needs more
/// descriptors than the TCP sessions it displaces. Two rules on top:
/// - UDP sessions never take more than three quarters of it, so a quarter
///   always stays for TCP. A UDP session opens on one datagram whose source
///   address can be forged; a TCP connection has proved its address with a
///   handshake, so it may use the whole budget.
/// - Once the UDP share is half used, a client address holding
///   [`Limits::udp_per_source`] UDP sessions (a sixteenth of the share) gets
///   no new one, so one host cycling through source ports cannot take the
///   rest of the share alone. Below that, many clients behind one address
///   (a NAT) open sessions freely.
#[derive(Debug)]
pub struct Limits {
    /// Most sessions at once, TCP and UDP together.
    pub max_sessions: usize,
    /// Most TCP connections at once (the whole budget).
    pub max_tcp: usize,
    /// Most UDP sessions at once (three quarters of the budget).
    pub max_udp: usize,
    /// Most UDP sessions one client address holds at once, once
    /// [`Limits::udp_per_source_above`] UDP sessions are open.
    pub udp_per_source: usize,
    /// Open UDP sessions from which the per-address limit applies.
    pub udp_per_source_above: usize,
    live: AtomicUsize,
    live_tcp: AtomicUsize,
    live_udp: AtomicUsize,
    /// Live UDP sessions per client address (touched when a session opens
    /// or ends, never per datagram).
    sources: Mutex<HashMap<IpAddr, usize>>,
    /// Connections and UDP sessions refused at a cap (all reasons).
    pub refused: AtomicU64,
    /// TCP connections refused at the cap.
    pub refused_tcp: AtomicU64,
    /// UDP sessions refused at the budget or the UDP share.
    pub refused_udp: AtomicU64,
    /// UDP sessions refused because their address held its share already.
    pub refused_udp_source: AtomicU64,
    /// Failed `accept` calls (EMFILE, ENFILE, ENOMEM, ...).
    pub accept_errors: AtomicU64,
}

/// Why a UDP session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpRefusal {
    /// The session budget or the UDP share is full.
    Cap,
    /// This client address holds its share of UDP sessions already.
    Source,
}

/// Take one unit of `counter` while it stays at most `max`.
fn take(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl Limits {
    /// A budget of `max_sessions`, split as the type's documentation says.
    pub fn new(max_sessions: usize) -> Limits {
        let max_sessions = max_sessions.max(1);
        let max_udp = (max_sessions - max_sessions / 4).max(1);
        Limits {
            max_sessions,
            max_tcp: max_sessions,
            max_udp,
            udp_per_source: (max_udp / 16).max(1),
            udp_per_source_above: max_udp / 2,
            live: AtomicUsize::new(0),
            live_tcp: AtomicUsize::new(0),
            live_udp: AtomicUsize::new(0),
            sources: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            refused_tcp: AtomicU64::new(0),
            refused_udp: AtomicU64::new(0),
            refused_udp_source: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
        }
    }

    /// A slot for one more TCP connection, or `None` (counted) at the cap.
    pub fn try_acquire(self: &Arc<Self>) -> Option<SessionPermit> {
        if take(&self.live_tcp, self.max_tcp) {
            if take(&self.live, self.max_sessions) {
                return Some(SessionPermit {
                    limits: self.clone(),
                    udp_source: None,
                });
            }
            self.live_tcp.fetch_sub(1, Ordering::AcqRel);
        }
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.refused_tcp.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A slot for one more UDP session of client address `source`, or why
    /// not (counted).
    pub fn try_acquire_udp(self: &Arc<Self>, source: IpAddr) -> Result<SessionPermit, UdpRefusal> {
        let refuse = |why: UdpRefusal| {
            self.refused.fetch_add(1, Ordering::Relaxed);
            match why {
                UdpRefusal::Cap => &self.refused_udp,
                UdpRefusal::Source => &self.refused_udp_source,
            }
            .fetch_add(1, Ordering::Relaxed);
            Err(why)
        };
        {
            let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
            let held = sources.entry(source).or_insert(0);
            let crowded = self.live_udp.load(Ordering::Acquire) >= self.udp_per_source_above;
            if crowded && *held >= self.udp_per_source {
                return refuse(UdpRefusal::Source);
            }
            *held += 1;
        }
        if !take(&self.live_udp, self.max_udp) {
            self.release_source(source);
            return refuse(UdpRefusal::Cap);
        }
        if !take(&self.live, self.max_sessions) {
            self.live_udp.fetch_sub(1, Ordering::AcqRel);
            self.release_source(source);
            return refuse(UdpRefusal::Cap);
        }
        Ok(SessionPermit {
            limits: self.clone(),
            udp_source: Some(source),
        })
    }

    /// Give back one UDP session of `source`.
    fn release_source(&self, source: IpAddr) {
        let mut sources = self.sources.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = sources.get_mut(&source) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                sources.remove(&source);
            }
        }
    }

    /// Sessions holding a slot now, TCP and UDP together.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// TCP connections holding a slot now.
    pub fn live_tcp(&self) -> usize {
        self.live_tcp.load(Ordering::Relaxed)
    }

    /// UDP sessions holding a slot now.
    pub fn live_udp(&self) -> usize {
        self.live_udp.load(Ordering::Relaxed)
    }

    /// Client addresses holding UDP sessions now.
    pub fn udp_sources(&self) -> usize {
        self.sources
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One session's slot under [`Limits`]; released when dropped.
#[derive(Debug)]
pub struct SessionPermit {
    limits: Arc<Limits>,
    /// The client address of a UDP session (`None` for TCP).
    udp_source: Option<IpAddr>,
}

impl Drop for SessionPermit {
    fn drop(&mut self) {
        let l = &self.limits;
        l.live.fetch_sub(1, Ordering::AcqRel);
        if let Some(source) = self.udp_source {
            l.live_udp.fetch_sub(1, Ordering::AcqRel);
            l.release_source(source);
        } else {
            l.live_tcp.fetch_sub(1, Ordering::AcqRel);
        }
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
    fn udp_sessions_leave_a_quarter_for_tcp_and_a_share_per_address() {
        let l = Arc::new(Limits::new(64));
        assert_eq!((l.max_tcp, l.max_udp, l.udp_per_source), (64, 48, 3));
        let ip = |i: u8| IpAddr::from([127, 1, 0, i]);
        // While the UDP share is less than half used, one address (a NAT)
        // opens as many sessions as it needs.
        let mut held: Vec<SessionPermit> = (0..5)
            .map(|_| l.try_acquire_udp(ip(0)).expect("room for everyone"))
            .collect();
        for i in 1..=19 {
            held.push(l.try_acquire_udp(ip(i)).expect("below half"));
        }
        assert_eq!(l.live_udp(), l.udp_per_source_above);
        // Past half, an address holding its sixteenth gets no new one...
        assert_eq!(l.try_acquire_udp(ip(0)).unwrap_err(), UdpRefusal::Source);
        assert_eq!(l.refused_udp_source.load(Ordering::Relaxed), 1);
        // ...while others still do, up to the UDP share and no more.
        for i in 20..=43 {
            held.push(l.try_acquire_udp(ip(i)).expect("within the UDP share"));
        }
        assert_eq!(l.try_acquire_udp(ip(99)).unwrap_err(), UdpRefusal::Cap);
        assert_eq!((l.live_udp(), l.live()), (48, 48));
        // TCP still has its quarter, then the budget is full for both.
        let tcp: Vec<SessionPermit> = (0..16)
            .map(|_| l.try_acquire().expect("the TCP quarter"))
            .collect();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.refused_tcp.load(Ordering::Relaxed), 1);
        drop(tcp);
        drop(held);
        assert_eq!(
            (l.live(), l.live_tcp(), l.live_udp(), l.udp_sources()),
            (0, 0, 0, 0)
        );
        // TCP alone may use the whole budget.
        let all: Vec<SessionPermit> = (0..64).map(|_| l.try_acquire().expect("tcp")).collect();
        assert_eq!(l.try_acquire_udp(ip(1)).unwrap_err(), UdpRefusal::Cap);
        assert_eq!(
            l.udp_sources(),
            0,
            "a refused session leaves no count behind"
        );
        drop(all);
        // The smallest budgets still admit one of each.
        let one = Arc::new(Limits::new(1));
        assert_eq!((one.max_udp, one.udp_per_source), (1, 1));
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
