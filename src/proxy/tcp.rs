//! One TCP connection: match a route, pick and connect a node (with
//! retries), then relay bytes until the session ends.
//!
//! The route is matched as soon as the connection is accepted, without
//! waiting for client bytes: server-speaks-first protocols (MySQL, SMTP)
//! must work. No route, or a route without a usable upstream, closes the
//! connection at once and forwards nothing.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::copy::{self, Counters};
use super::listener::ListenerInfo;
use super::ProxyCtx;
use crate::balancer::Pick;
use crate::snapshot::{canonical_ip, ConnInfo, UpstreamRt};

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
        /// The last failure.
        last: String,
    },
}

/// A connected upstream and the pick that chose it (held for the session:
/// least_conn counts it as in flight until it is dropped).
pub struct Connected {
    /// The socket.
    pub stream: TcpStream,
    /// The balancer's choice.
    pub pick: Pick,
    /// `host:port` of the node.
    pub node: String,
}

async fn resolve(host: &str, port: u16) -> std::io::Result<SocketAddr> {
    tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))
}

/// Pick and connect a node, retrying other nodes on connect failure as
/// APISIX does (only before any byte is forwarded; each node at most once;
/// at most `retries + 1` tries within `retry_timeout`).
pub async fn connect(up: &UpstreamRt, conn: &ConnInfo) -> Result<Connected, ConnectError> {
    let key = (up.balancer.lb_name() == "chash").then(|| up.key_for(conn));
    let started = Instant::now();
    let mut tried: Vec<usize> = Vec::new();
    let mut last: Option<String> = None;
    for attempt in 0..=up.retries {
        if attempt > 0 && up.retry_timeout.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        let Some(pick) = up
            .balancer
            .pick(key.as_deref().map(str::as_bytes), &tried, &|_| true)
        else {
            break;
        };
        tried.push(pick.index);
        let backend = &up.balancer.backends()[pick.index];
        let addr = match backend.addr {
            Some(a) => a,
            None => match resolve(&backend.host, backend.port).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(node = %backend.label, error = %e, "cannot resolve upstream node");
                    last = Some(format!("{}: {e}", backend.label));
                    continue;
                }
            },
        };
        match tokio::time::timeout(up.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                return Ok(Connected {
                    stream,
                    node: backend.label.clone(),
                    pick,
                })
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %backend.label, error = %e, "upstream connect failed");
                last = Some(format!("{}: {e}", backend.label));
            }
            Err(_) => {
                tracing::debug!(node = %backend.label, "upstream connect timed out");
                last = Some(format!("{}: connect timed out", backend.label));
            }
        }
    }
    match last {
        None => Err(ConnectError::NoNode),
        Some(last) => Err(ConnectError::AllFailed {
            tries: tried.len(),
            last,
        }),
    }
}

/// Handle one accepted connection to its end.
pub async fn handle(
    ctx: ProxyCtx,
    mut client: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerInfo>,
) {
    // A listener bound to one address needs no getsockname per connection.
    let local = if listener.local.ip().is_unspecified() {
        match client.local_addr() {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "connection gone before routing");
                return;
            }
        }
    } else {
        listener.local
    };
    let conn = ConnInfo {
        remote_addr: canonical_ip(peer.ip()),
        remote_port: peer.port(),
        server_addr: canonical_ip(local.ip()),
        server_port: local.port(),
        sni: None,
    };
    let snapshot = ctx.snapshot.load_full();
    let Some(route) = snapshot.match_route(&conn) else {
        tracing::debug!(%peer, listen = %listener.label, "not hit any route");
        return;
    };
    let upstream = match &route.upstream {
        Ok(u) => u.clone(),
        Err(why) => {
            tracing::debug!(%peer, route_id = %route.id, reason = %why, "route has no usable upstream");
            return;
        }
    };
    let mut connected = match connect(&upstream, &conn).await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, route_id = %route.id, error = %e, "cannot connect upstream");
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = connected.stream.set_nodelay(true);
    let bytes_in = AtomicU64::new(0);
    let bytes_out = AtomicU64::new(0);
    let end = copy::relay_tcp(
        &mut client,
        &mut connected.stream,
        upstream.idle_timeout,
        Counters(&[&bytes_in]),
        Counters(&[&bytes_out]),
    )
    .await;
    tracing::debug!(
        %peer,
        route_id = %route.id,
        node = %connected.node,
        bytes_in = bytes_in.into_inner(),
        bytes_out = bytes_out.into_inner(),
        end = end.as_str(),
        "session finished"
    );
    drop(connected.pick);
}
