//! Reaching a node: pick with the upstream's balancer, resolve, connect,
//! and retry other nodes on failure, as APISIX does (only before any byte
//! is forwarded; each node at most once; at most `retries + 1` tries
//! within `retry_timeout`). TCP connects a stream; UDP opens a socket
//! connected to the node. Both share the one retry loop.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};

use crate::balancer::{Backend, Pick};
use crate::snapshot::{ConnInfo, UpstreamRt};
use crate::stats::{NodeStats, RouteStats};

/// Why no upstream connection could be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The balancer had no node left to try.
    #[error("no valid upstream node")]
    NoNode,
    /// Every try failed; the last error is kept.
    #[error("all {tries} tries failed, last: {last}")]
    AllFailed {
        /// Nodes tried.
        tries: usize,
        /// Backend index of the last node tried.
        index: usize,
        /// `host:port` of the last node tried.
        node: String,
        /// The last failure.
        last: String,
    },
    /// This host could not open a socket (out of descriptors or memory).
    #[error("cannot open a socket to {node}: {error}")]
    Local {
        /// `host:port` of the node.
        node: String,
        /// The failure.
        error: io::Error,
    },
}

impl ConnectError {
    /// `host:port` of the last node tried, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            ConnectError::NoNode => None,
            ConnectError::AllFailed { node, .. } | ConnectError::Local { node, .. } => Some(node),
        }
    }

    /// Backend index of the node that failed last (the one a passive
    /// health check blames).
    pub fn failed_index(&self) -> Option<usize> {
        match self {
            ConnectError::AllFailed { index, .. } => Some(*index),
            _ => None,
        }
    }
}

/// A connected node and the pick that chose it (held for the session:
/// least_conn counts it as in flight until it is dropped).
pub struct Connected<S> {
    /// The socket.
    pub stream: S,
    /// The balancer's choice.
    pub pick: Pick,
    /// `host:port` of the node.
    pub node: String,
}

/// Why one try failed.
#[derive(Debug)]
pub enum TryError {
    /// The node refused or failed (why).
    Node(String),
    /// The node did not answer within the connect timeout.
    TimedOut,
    /// This host could not open a socket: retrying elsewhere cannot help.
    Local(io::Error),
}

/// Errors that mean this host is out of resources, not that a node failed.
pub fn is_resource_error(e: &io::Error) -> bool {
    use rustix::io::Errno;
    let local = [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM];
    e.raw_os_error()
        .is_some_and(|code| local.iter().any(|l| l.raw_os_error() == code))
}

/// Dial a host-name node: each of its cached addresses in order until one
/// answers (one try of the node, whatever the number of addresses).
async fn dial_each<S, D, F>(backend: &Backend, wait: Duration, dial: &mut D) -> Result<S, TryError>
where
    D: FnMut(SocketAddr) -> F,
    F: Future<Output = Result<S, TryError>>,
{
    let addrs = backend
        .addrs(wait)
        .await
        .map_err(|e| TryError::Node(format!("cannot resolve: {e}")))?;
    let mut last = TryError::Node("cannot resolve: no address".into());
    for addr in addrs {
        match dial(addr).await {
            Ok(s) => return Ok(s),
            Err(e @ TryError::Local(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Pick and reach a node with `dial`, retrying others on failure. Failed
/// tries are counted on `node_stats` (per backend index) and `route_stats`,
/// and reported to the upstream's health checker, whose unhealthy nodes are
/// skipped. The session's own end (a passive failure when it ends with
/// 502) is reported by [`super::session::finish`].
pub async fn connect_with<S, D, F>(
    up: &UpstreamRt,
    conn: &ConnInfo,
    route_stats: &RouteStats,
    node_stats: &[Arc<NodeStats>],
    mut dial: D,
) -> Result<Connected<S>, ConnectError>
where
    D: FnMut(SocketAddr) -> F,
    F: Future<Output = Result<S, TryError>>,
{
    let failed = |index: usize, why: String| {
        route_stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = node_stats.get(index) {
            n.failed(why);
        }
    };
    let key = (up.balancer.lb_name() == "chash").then(|| up.key_for(conn));
    let started = Instant::now();
    let mut tried: Vec<usize> = Vec::new();
    let mut last: Option<String> = None;
    let checker = up.checker();
    let healthy = |i: usize| checker.as_ref().is_none_or(|c| c.healthy(i));
    // The try that just failed: (node, timed out).
    let mut failed_try: Option<(usize, bool)> = None;
    for attempt in 0..=up.retries {
        if attempt > 0 && up.retry_timeout.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        // As APISIX, a failed try reaches the health checker when the
        // balancer picks again (with or without `checks.passive`).
        if let (Some(c), Some((i, timed_out))) = (&checker, failed_try.take()) {
            c.report_try_failure(i, timed_out);
        }
        let Some(pick) = up
            .balancer
            .pick(key.as_deref().map(str::as_bytes), &tried, &healthy)
        else {
            break;
        };
        tried.push(pick.index);
        let backend = &up.balancer.backends()[pick.index];
        let dialed = match backend.addr {
            Some(addr) => dial(addr).await,
            None => Box::pin(dial_each(backend, up.connect_timeout, &mut dial)).await,
        };
        match dialed {
            Ok(stream) => {
                if attempt > 0 {
                    route_stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Connected {
                    stream,
                    node: backend.label.clone(),
                    pick,
                });
            }
            Err(TryError::Node(why)) => {
                tracing::debug!(node = %backend.label, error = %why, "upstream connect failed");
                last = Some(format!("{}: {why}", backend.label));
                failed(pick.index, why);
                failed_try = Some((pick.index, false));
            }
            Err(TryError::TimedOut) => {
                tracing::debug!(node = %backend.label, "upstream connect timed out");
                last = Some(format!("{}: connect timed out", backend.label));
                failed(pick.index, "connect timed out".to_string());
                failed_try = Some((pick.index, true));
            }
            Err(TryError::Local(error)) => {
                return Err(ConnectError::Local {
                    node: backend.label.clone(),
                    error,
                })
            }
        }
    }
    match (last, tried.last()) {
        (Some(last), Some(&index)) => Err(ConnectError::AllFailed {
            tries: tried.len(),
            index,
            node: up
                .balancer
                .backends()
                .get(index)
                .map(|b| b.label.clone())
                .unwrap_or_default(),
            last,
        }),
        _ => {
            // No node at all (e.g. a registry that has none yet): the
            // session fails at once, counted as a connect failure.
            route_stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            Err(ConnectError::NoNode)
        }
    }
}

/// Connect a TCP stream to a node of `up` (see [`connect_with`]).
pub async fn connect_tcp(
    up: &UpstreamRt,
    conn: &ConnInfo,
    route_stats: &RouteStats,
    node_stats: &[Arc<NodeStats>],
) -> Result<Connected<TcpStream>, ConnectError> {
    let timeout = up.connect_timeout;
    let dial = |addr: SocketAddr| async move {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) if is_resource_error(&e) => Err(TryError::Local(e)),
            Ok(Err(e)) => Err(TryError::Node(e.to_string())),
            Err(_) => Err(TryError::TimedOut),
        }
    };
    connect_with(up, conn, route_stats, node_stats, dial).await
}

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// Open a UDP socket connected to a node of `up` (see [`connect_with`]):
/// later datagrams go to that node, and only its replies are received.
pub async fn connect_udp(
    up: &UpstreamRt,
    conn: &ConnInfo,
    route_stats: &RouteStats,
    node_stats: &[Arc<NodeStats>],
) -> Result<Connected<UdpSocket>, ConnectError> {
    let dial = |addr: SocketAddr| async move {
        let sock = UdpSocket::bind(unspecified_for(&addr))
            .await
            .map_err(TryError::Local)?;
        match sock.connect(addr).await {
            Ok(()) => Ok(sock),
            Err(e) => Err(TryError::Node(e.to_string())),
        }
    };
    connect_with(up, conn, route_stats, node_stats, dial).await
}
