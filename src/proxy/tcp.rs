//! One TCP connection: match a route, pick and connect a node (with
//! retries), then relay bytes until the session ends.
//!
//! The route is matched as soon as the connection is accepted, without
//! waiting for client bytes: server-speaks-first protocols (MySQL, SMTP)
//! must work. No route, or a route without a usable upstream, closes the
//! connection at once and forwards nothing.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::access_log::Record;
use crate::stats::{ActiveGuard, NewConn, NodeStats, RouteStats};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::copy::{self, Counters, ResetTarget};
use super::{proxy_protocol, ListenerInfo, ProxyCtx};
use crate::balancer::Pick;
use crate::plugins;
use crate::snapshot::{canonical_ip, ConnInfo, UpstreamRt};
use crate::tls;

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
        /// `host:port` of the last node tried.
        node: String,
        /// The last failure.
        last: String,
    },
}

impl ConnectError {
    /// `host:port` of the last node tried, if any.
    pub fn node(&self) -> Option<&str> {
        match self {
            ConnectError::NoNode => None,
            ConnectError::AllFailed { node, .. } => Some(node),
        }
    }
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
/// Failed tries are counted on `node_stats` (per backend index) and
/// `route_stats`, and reported to the upstream's health checker, whose
/// unhealthy nodes are skipped.
pub async fn connect(
    up: &UpstreamRt,
    conn: &ConnInfo,
    route_stats: &RouteStats,
    node_stats: &[Arc<NodeStats>],
) -> Result<Connected, ConnectError> {
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
        let addr = match backend.addr {
            Some(a) => a,
            None => match Box::pin(resolve(&backend.host, backend.port)).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(node = %backend.label, error = %e, "cannot resolve upstream node");
                    last = Some(format!("{}: {e}", backend.label));
                    failed(pick.index, format!("cannot resolve: {e}"));
                    failed_try = Some((pick.index, false));
                    continue;
                }
            },
        };
        match tokio::time::timeout(up.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                if attempt > 0 {
                    route_stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                return Ok(Connected {
                    stream,
                    node: backend.label.clone(),
                    pick,
                });
            }
            Ok(Err(e)) => {
                tracing::debug!(node = %backend.label, error = %e, "upstream connect failed");
                last = Some(format!("{}: {e}", backend.label));
                failed(pick.index, e.to_string());
                failed_try = Some((pick.index, false));
            }
            Err(_) => {
                tracing::debug!(node = %backend.label, "upstream connect timed out");
                last = Some(format!("{}: connect timed out", backend.label));
                failed(pick.index, "connect timed out".to_string());
                failed_try = Some((pick.index, true));
            }
        }
    }
    // The session ends now with 502: a passive failure for the last node.
    if let (Some(c), Some(&i)) = (&checker, tried.last()) {
        c.report_session_failure(i);
    }
    match last {
        None => Err(ConnectError::NoNode),
        Some(last) => Err(ConnectError::AllFailed {
            tries: tried.len(),
            node: tried
                .last()
                .and_then(|&i| up.balancer.backends().get(i))
                .map(|b| b.label.clone())
                .unwrap_or_default(),
            last,
        }),
    }
}

/// A byte stream on a TCP socket: plain, or TLS in either direction.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// The socket underneath (to pass resets on).
    fn tcp(&self) -> &TcpStream;
}

impl Io for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Io for tokio_rustls::server::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl Io for tokio_rustls::client::TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

/// One side of a session: a plain socket (relayed with splice when both
/// sides are plain) or a TLS stream.
enum Side {
    Plain(TcpStream),
    Tls(Box<dyn Io>),
}

impl Side {
    fn tcp(&self) -> &TcpStream {
        match self {
            Side::Plain(s) => s,
            Side::Tls(s) => s.tcp(),
        }
    }

    fn into_io(self) -> Box<dyn Io> {
        match self {
            Side::Plain(s) => Box::new(s),
            Side::Tls(s) => s,
        }
    }

    /// Run the route's preread plugins, which may read from this (client)
    /// side.
    async fn preread(
        &mut self,
        chain: &plugins::Chain,
        session: &mut plugins::Session,
        conn: &mut ConnInfo,
    ) -> Result<(), plugins::Rejected> {
        match self {
            Side::Plain(s) => chain.preread(session, conn, s).await,
            Side::Tls(s) => chain.preread(session, conn, &mut **s).await,
        }
    }

    /// Send bytes read from the client before relaying (by a plugin) to
    /// this (upstream) side, within `timeout`.
    async fn send_first(&mut self, bytes: &[u8], timeout: Duration) -> std::io::Result<()> {
        let write = async {
            match self {
                Side::Plain(s) => s.write_all(bytes).await,
                Side::Tls(s) => {
                    s.write_all(bytes).await?;
                    s.flush().await
                }
            }
        };
        tokio::time::timeout(timeout, write).await.map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream write timed out")
        })?
    }
}

/// Handle one accepted connection to its end.
pub async fn handle(
    ctx: Arc<ProxyCtx>,
    mut client: TcpStream,
    mut peer: SocketAddr,
    listener: Arc<ListenerInfo>,
) {
    if listener.spec.proxy_protocol {
        match proxy_protocol::read_header(&mut client, proxy_protocol::HEADER_TIMEOUT).await {
            Ok(proxy_protocol::Header::Proxy { src, .. }) => {
                // Only trusted peers may speak for someone else.
                if ctx.real_ip_from.iter().any(|n| n.contains(&peer.ip())) {
                    peer = SocketAddr::new(canonical_ip(src.ip()), src.port());
                }
            }
            Ok(proxy_protocol::Header::Local) => {}
            Err(e) => {
                listener.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, listen = %listener.label, error = %e, "bad PROXY protocol header");
                return;
            }
        }
    }
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
    let mut conn = ConnInfo {
        remote_addr: canonical_ip(peer.ip()),
        remote_port: peer.port(),
        server_addr: canonical_ip(local.ip()),
        server_port: local.port(),
        mqtt_client_id: None,
        sni: None,
    };
    let snapshot = ctx.snapshot.load_full();
    let mut client = if listener.spec.tls {
        match Box::pin(tls::terminate(
            client,
            &snapshot,
            ctx.fallback_sni.as_deref(),
        ))
        .await
        {
            Ok((stream, sni)) => {
                conn.sni = Some(sni);
                Side::Tls(Box::new(stream))
            }
            Err(e) => {
                listener.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, listen = %listener.label, error = %e, "tls handshake failed");
                return;
            }
        }
    } else {
        if listener.spec.tls_passthrough {
            match Box::pin(tls::peek_sni(&client)).await {
                Ok(sni) => conn.sni = sni,
                Err(e) => {
                    listener.stats.rejected.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, listen = %listener.label, error = %e, "tls passthrough: no usable ClientHello");
                    return;
                }
            }
        }
        Side::Plain(client)
    };
    let started = Instant::now();
    let stats = &ctx.stats;
    let _listener_active = ActiveGuard::new(&listener.stats.active);
    let access_log = |status: u16, route_id: &str, node: &str, bytes: (u64, u64), end: &str| {
        if let Some(log) = &ctx.access_log {
            log.record(&Record {
                client: peer,
                protocol: "TCP",
                status,
                listener: &listener.label,
                route_id,
                node,
                bytes_in: bytes.0,
                bytes_out: bytes.1,
                duration: started.elapsed(),
                end,
            });
        }
    };
    let Some(route) = snapshot.match_route(&conn) else {
        tracing::debug!(%peer, listen = %listener.label, sni = ?conn.sni, "not hit any route");
        access_log(503, "-", "-", (0, 0), "not hit any route");
        return;
    };
    route.stats.total.fetch_add(1, Ordering::Relaxed);
    let _route_active = ActiveGuard::new(&route.stats.active);
    // Stream plugins: preread may close the session, delay it, read the
    // client or choose another upstream; the log phase runs wherever the
    // session is logged. A route without plugins skips both.
    let mut session = plugins::Session::default();
    let preread = if route.chain.has_preread() {
        client.preread(&route.chain, &mut session, &mut conn).await
    } else {
        Ok(())
    };
    let plugin_log = |status: u16, node: &str, bytes: (u64, u64)| {
        if route.chain.has_log() {
            route.chain.log(
                &conn,
                &plugins::Finished {
                    protocol: "TCP",
                    status,
                    listen: &listener.label,
                    node,
                    bytes_in: bytes.0,
                    bytes_out: bytes.1,
                    duration: started.elapsed(),
                },
            );
        }
    };
    let log = |status: u16, route_id: &str, node: &str, bytes: (u64, u64), end: &str| {
        access_log(status, route_id, node, bytes, end);
        plugin_log(status, node, bytes);
    };
    if let Err(r) = preread {
        tracing::debug!(%peer, route_id = %route.id, plugin = r.plugin, code = r.code, reason = %r.reason, "session closed by plugin");
        let read = session.forward.len() as u64;
        log(r.code, &route.id, "-", (read, 0), &r.reason);
        return;
    }
    let upstream = match session.upstream_for(route) {
        Ok(u) => u.clone(),
        Err(why) => {
            tracing::debug!(%peer, route_id = %route.id, reason = %why, "route has no usable upstream");
            log(503, &route.id, "-", (0, 0), why);
            return;
        }
    };
    let connected = match connect(
        &upstream,
        &conn,
        &route.stats,
        session.node_stats_for(route),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(%peer, route_id = %route.id, error = %e, "cannot connect upstream");
            log(
                502,
                &route.id,
                e.node().unwrap_or("-"),
                (0, 0),
                &e.to_string(),
            );
            return;
        }
    };
    let Connected {
        mut stream,
        pick,
        node,
    } = connected;
    if listener.spec.proxy_protocol_to_upstream {
        let server = SocketAddr::new(conn.server_addr, conn.server_port);
        let client = SocketAddr::new(conn.remote_addr, conn.remote_port);
        if let Err(e) =
            proxy_protocol::write_v1(&mut stream, client, server, upstream.connect_timeout).await
        {
            tracing::debug!(%peer, route_id = %route.id, %node, error = %e, "cannot send PROXY protocol header");
            log(502, &route.id, &node, (0, 0), &e.to_string());
            return;
        }
    }
    let node_stats = session
        .node_stats_for(route)
        .get(pick.index)
        .cloned()
        .unwrap_or_default();
    node_stats.total.fetch_add(1, Ordering::Relaxed);
    let _node_active = ActiveGuard::new(&node_stats.active);
    let _ = client.tcp().set_nodelay(true);
    let _ = stream.set_nodelay(true);
    let mut up_side = match &upstream.tls {
        None => Side::Plain(stream),
        Some(Err(why)) => {
            tracing::warn!(%peer, route_id = %route.id, reason = %why, "cannot speak TLS to upstream");
            log(502, &route.id, &node, (0, 0), why);
            return;
        }
        Some(Ok(config)) => {
            let sni = conn.sni.as_deref().unwrap_or(tls::DEFAULT_UPSTREAM_SNI);
            match Box::pin(tls::connect_upstream(
                stream,
                config.clone(),
                sni,
                upstream.connect_timeout,
            ))
            .await
            {
                Ok(s) => Side::Tls(Box::new(s)),
                Err(e) => {
                    tracing::warn!(%peer, route_id = %route.id, %node, error = %e, "upstream TLS failed");
                    node_stats.failed(e.clone());
                    if let Some(c) = upstream.health.load().as_ref() {
                        c.report_session_failure(pick.index);
                    }
                    log(502, &route.id, &node, (0, 0), &e);
                    return;
                }
            }
        }
    };
    let mut registered = stats.register(NewConn {
        protocol: "tcp",
        client: peer,
        listener: listener.label.clone(),
        route_id: route.id.clone(),
        node: node.clone(),
        sni: conn.sni.clone(),
    });
    let entry = registered.entry.clone();
    let up = [
        &entry.bytes_in,
        &route.stats.bytes_in,
        &node_stats.bytes_in,
        &listener.stats.bytes_in,
    ];
    let down = [
        &entry.bytes_out,
        &route.stats.bytes_out,
        &node_stats.bytes_out,
        &listener.stats.bytes_out,
    ];
    let (up, down) = (Counters(&up), Counters(&down));
    let idle = upstream.idle_timeout;
    let closed = &mut registered.closed;
    if !session.forward.is_empty() {
        let n = session.forward.len();
        if let Err(e) = up_side.send_first(&session.forward, idle).await {
            tracing::debug!(%peer, route_id = %route.id, %node, error = %e, "cannot send preread bytes upstream");
            log(502, &route.id, &node, (n as u64, 0), &e.to_string());
            return;
        }
        for c in up.0 {
            c.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
    let end = match (client, up_side) {
        (Side::Plain(mut c), Side::Plain(mut u)) => {
            let end = copy::relay_tcp(&mut c, &mut u, idle, up, down, closed).await;
            pass_reset(&end, &c, &u);
            end
        }
        (c, u) => {
            let (mut c, mut u) = (c.into_io(), u.into_io());
            let end = Box::pin(copy::relay_io(&mut c, &mut u, idle, up, down, closed)).await;
            pass_reset(&end, c.tcp(), u.tcp());
            end
        }
    };
    let bytes = (
        entry.bytes_in.load(Ordering::Relaxed),
        entry.bytes_out.load(Ordering::Relaxed),
    );
    let status = end.status();
    if status != 200 {
        if let Some(c) = upstream.health.load().as_ref() {
            c.report_session_failure(pick.index);
        }
    }
    access_log(status, &route.id, &node, bytes, end.as_str());
    // An idle timeout is an upstream failure for the metrics.
    let idle = matches!(end, copy::End::IdleTimeout);
    plugin_log(if idle { 502 } else { status }, &node, bytes);
    tracing::debug!(
        %peer,
        route_id = %route.id,
        %node,
        bytes_in = bytes.0,
        bytes_out = bytes.1,
        end = end.as_str(),
        "session finished"
    );
    drop(registered);
    drop(pick);
}

/// An error on one side reaches the other as a reset, never a clean close.
fn pass_reset(end: &copy::End, client: &TcpStream, upstream: &TcpStream) {
    match end.reset_target() {
        Some(ResetTarget::Client) => copy::set_reset_on_close(client),
        Some(ResetTarget::Upstream) => copy::set_reset_on_close(upstream),
        None => {}
    }
}
