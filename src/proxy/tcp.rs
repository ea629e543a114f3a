//! One TCP connection, top to bottom:
//! admit → route → preread → connect → relay → finish.
//!
//! - **admit**: the PROXY protocol header (trusted peers may name the
//!   client), the local address, TLS termination or the passthrough
//!   ClientHello's SNI;
//! - **route**: match a route from the snapshot taken at accept, without
//!   waiting for client bytes (server-speaks-first protocols such as MySQL
//!   and SMTP must work);
//! - **preread**: the route's stream plugins, which may refuse the session,
//!   delay it, read the client or choose another upstream;
//! - **connect**: pick a node and connect with retries, then the PROXY
//!   header and TLS to it;
//! - **relay**: bytes both ways until the session ends;
//! - **finish**: [`session::finish`] writes the end once, whichever step
//!   ended it.
//!
//! Every step returns a [`ProxyError`] instead of logging; all of it runs
//! in one `conn` tracing span (client, listener, route) at debug level, so
//! a connection costs nothing for logging unless debug is on.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{Instrument, Span};

use super::connect::{connect_tcp, Connected};
use super::copy::{self, Counters, ResetTarget, Stops};
use super::error::{Kind, ProxyError};
use super::session::{self, Facts, NodeUsed, Protocol, SessionEnd};
use super::{proxy_protocol, ListenerInfo, ProxyCtx};
use crate::balancer::Pick;
use crate::plugins;
use crate::snapshot::{canonical_ip, ConnInfo, RouteRt, Snapshot, UpstreamRt};
use crate::stats::{ActiveGuard, NewConn, NodeStats};
use crate::tls;

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
    fn is_tls(&self) -> bool {
        matches!(self, Side::Tls(_))
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

/// Handle one accepted connection to its end: the future a worker spawns.
/// `slot` (the session's place under the session cap) is held until then.
///
/// Built as one `async move` block inside its span, so the task stores
/// the session's state once (awaiting an inner future from an `async fn`
/// would keep a second copy of it for the whole session).
pub fn handle<S: Send + 'static>(
    ctx: Arc<ProxyCtx>,
    client: TcpStream,
    peer: SocketAddr,
    listener: Arc<ListenerInfo>,
    slot: S,
) -> impl std::future::Future<Output = ()> + Send {
    let span = tracing::debug_span!(
        "conn",
        client = %peer,
        listen = %listener.label,
        route = tracing::field::Empty
    );
    let own = span.clone();
    let session = async move {
        let _slot = slot;
        let mut tcp = Tcp::new(&ctx, &listener, &own, peer);
        let end = match tcp.run(client).await {
            Ok(end) => end,
            Err(e) => SessionEnd::Failed(e),
        };
        tcp.finish(&end);
    };
    session.instrument(span)
}

/// A connection's node once reached: the upstream side, the pick (held
/// for the session: least_conn counts it in flight), the node's counters
/// and the idle timeout.
struct Reached {
    side: Side,
    pick: Pick,
    node_stats: Arc<NodeStats>,
    idle: Duration,
}

/// What a connection has learned so far, for its finish.
struct Tcp<'a> {
    ctx: &'a ProxyCtx,
    listener: &'a ListenerInfo,
    span: &'a Span,
    /// The client (after a trusted PROXY protocol header).
    peer: SocketAddr,
    started: Instant,
    conn: ConnInfo,
    route: Option<Arc<RouteRt>>,
    upstream: Option<Arc<UpstreamRt>>,
    /// Backend index and `host:port` of the node connected.
    node: Option<(usize, String)>,
    bytes: (u64, u64),
    connect_time: Option<Duration>,
}

impl<'a> Tcp<'a> {
    fn new(
        ctx: &'a ProxyCtx,
        listener: &'a ListenerInfo,
        span: &'a Span,
        peer: SocketAddr,
    ) -> Tcp<'a> {
        Tcp {
            ctx,
            listener,
            span,
            peer,
            started: Instant::now(),
            conn: conn_info(peer, listener.local),
            route: None,
            upstream: None,
            node: None,
            bytes: (0, 0),
            connect_time: None,
        }
    }

    /// The steps in order; the first error ends the session.
    async fn run(&mut self, client: TcpStream) -> Result<SessionEnd, ProxyError> {
        let listener = self.listener;
        let (mut client, snapshot) = self.admit(client).await?;
        let _listener_active = ActiveGuard::new(&listener.stats.active);
        let route = self.route(&snapshot)?;
        route.stats.total.fetch_add(1, Ordering::Relaxed);
        let _route_active = ActiveGuard::new(&route.stats.active);
        let plugins = self.preread(&route, &mut client).await?;
        // The client socket has TCP_NODELAY from its listener.
        let reached = self.connect(&route, &plugins).await?;
        self.relay(client, reached, &route, &plugins).await
    }

    /// The PROXY protocol header, the local address, then TLS (terminated,
    /// or the passthrough ClientHello's SNI). Returns the client side and
    /// the snapshot this connection keeps.
    async fn admit(&mut self, mut client: TcpStream) -> Result<(Side, Arc<Snapshot>), ProxyError> {
        let spec = &self.listener.spec;
        if spec.proxy_protocol {
            let header =
                proxy_protocol::read_header(&mut client, proxy_protocol::HEADER_TIMEOUT).await;
            match header.map_err(Kind::ProxyHeader)? {
                proxy_protocol::Header::Proxy { src, .. } => {
                    // Only trusted peers may speak for someone else.
                    if self
                        .ctx
                        .real_ip_from
                        .iter()
                        .any(|n| n.contains(&self.peer.ip()))
                    {
                        self.peer = SocketAddr::new(canonical_ip(src.ip()), src.port());
                    }
                }
                proxy_protocol::Header::Local => {}
            }
        }
        // A listener bound to one address needs no getsockname per connection.
        let local = if self.listener.local.ip().is_unspecified() {
            client.local_addr().map_err(Kind::ClientGone)?
        } else {
            self.listener.local
        };
        self.conn = conn_info(self.peer, local);
        let snapshot = self.ctx.snapshot.load_full();
        let client = if spec.tls {
            let fallback = self.ctx.fallback_sni.as_deref();
            let (stream, sni) = Box::pin(tls::terminate(client, &snapshot, fallback))
                .await
                .map_err(Kind::TlsHandshake)?;
            self.conn.sni = Some(sni);
            Side::Tls(Box::new(stream))
        } else {
            if spec.tls_passthrough {
                self.conn.sni = Box::pin(tls::peek_sni(&client))
                    .await
                    .map_err(Kind::ClientHello)?;
            }
            Side::Plain(client)
        };
        Ok((client, snapshot))
    }

    /// The route for this connection.
    fn route(&mut self, snapshot: &Snapshot) -> Result<Arc<RouteRt>, ProxyError> {
        let route = snapshot.match_route(&self.conn).ok_or(Kind::NoRoute)?;
        self.span.record("route", route.id.as_str());
        self.route = Some(route.clone());
        Ok(route.clone())
    }

    /// The route's preread plugins (a route without them skips this).
    async fn preread(
        &mut self,
        route: &RouteRt,
        client: &mut Side,
    ) -> Result<plugins::Session, ProxyError> {
        let mut session = plugins::Session::default();
        if route.chain.has_preread() {
            // Boxed: only routes with preread plugins carry its state.
            if let Err(r) =
                Box::pin(client.preread(&route.chain, &mut session, &mut self.conn)).await
            {
                self.bytes.0 = session.forward.len() as u64;
                return Err(Kind::Refused(r).into());
            }
        }
        Ok(session)
    }

    /// Pick and connect a node, then send it the PROXY header and speak
    /// TLS to it when the listener and upstream ask.
    async fn connect(
        &mut self,
        route: &RouteRt,
        plugins: &plugins::Session,
    ) -> Result<Reached, ProxyError> {
        let upstream = plugins
            .upstream_for(route)
            .map_err(|why| Kind::NoUpstream(why.clone()))?
            .clone();
        self.upstream = Some(upstream.clone());
        let all_node_stats = plugins.node_stats_for(route);
        let connecting = Instant::now();
        let Connected {
            mut stream,
            pick,
            node,
        } = connect_tcp(&upstream, &self.conn, &route.stats, all_node_stats)
            .await
            .map_err(Kind::Connect)?;
        self.connect_time = Some(connecting.elapsed());
        self.node = Some((pick.index, node));
        if self.listener.spec.proxy_protocol_to_upstream {
            let server = SocketAddr::new(self.conn.server_addr, self.conn.server_port);
            let client = SocketAddr::new(self.conn.remote_addr, self.conn.remote_port);
            proxy_protocol::write_v1(&mut stream, client, server, upstream.connect_timeout)
                .await
                .map_err(Kind::ProxyHeaderToUpstream)?;
        }
        let node_stats = all_node_stats.get(pick.index).cloned().unwrap_or_default();
        node_stats.total.fetch_add(1, Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        let side = match &upstream.tls {
            None => Side::Plain(stream),
            Some(Err(why)) => return Err(Kind::UpstreamTlsConfig(why.clone()).into()),
            Some(Ok(config)) => {
                let sni = self
                    .conn
                    .sni
                    .as_deref()
                    .unwrap_or(tls::DEFAULT_UPSTREAM_SNI);
                let handshake =
                    tls::connect_upstream(stream, config.clone(), sni, upstream.connect_timeout);
                match Box::pin(handshake).await {
                    Ok(s) => Side::Tls(Box::new(s)),
                    Err(e) => {
                        node_stats.failed(e.clone());
                        return Err(Kind::UpstreamTls(e).into());
                    }
                }
            }
        };
        Ok(Reached {
            side,
            pick,
            node_stats,
            idle: upstream.idle_timeout,
        })
    }

    /// Register the connection (Control API, `top`), send what preread
    /// read, then relay both ways until the session ends.
    async fn relay(
        &mut self,
        client: Side,
        reached: Reached,
        route: &RouteRt,
        plugins: &plugins::Session,
    ) -> Result<SessionEnd, ProxyError> {
        let Reached {
            side: mut upstream,
            pick,
            node_stats,
            idle,
        } = reached;
        let _node_active = ActiveGuard::new(&node_stats.active);
        let listener = self.listener;
        let mut registered = self.ctx.stats.register(NewConn {
            protocol: "tcp",
            client: self.peer,
            listener: listener.label.clone(),
            route_id: route.id.clone(),
            node: self.node.as_ref().map(|n| n.1.clone()).unwrap_or_default(),
            sni: self.conn.sni.clone(),
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
        if !plugins.forward.is_empty() {
            let n = plugins.forward.len();
            if let Err(e) = Box::pin(upstream.send_first(&plugins.forward, idle)).await {
                self.bytes.0 = n as u64;
                return Err(Kind::SendFirst(e).into());
            }
            for c in up.0 {
                c.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
        let stops = Stops {
            idle,
            closed: &mut registered.closed,
            drain: &self.ctx.draining,
            pace: plugins.bandwidth.as_ref(),
        };
        let end = match (client, upstream, route.protocol.as_deref()) {
            // Protocol routes decode requests: their own relay (never splice).
            (c, u, Some(protocol)) => {
                let subordinates = self.ctx.snapshot.load().subordinates(&route.id);
                let session =
                    crate::xrpc::Session::new(route, protocol, &self.conn, subordinates, up, down);
                Box::pin(crate::xrpc::relay(session, stops, c.into_io(), u.into_io())).await
            }
            (Side::Plain(mut c), Side::Plain(mut u), None) => {
                let end = copy::relay_tcp(&mut c, &mut u, up, down, stops).await;
                pass_reset(&end, &c, &u);
                end
            }
            (c, u, None) => {
                let steps = copy::Steps::tls(c.is_tls(), u.is_tls());
                let (mut c, mut u) = (c.into_io(), u.into_io());
                let end = Box::pin(copy::relay_io(&mut c, &mut u, up, down, stops, steps)).await;
                pass_reset(&end, c.tcp(), u.tcp());
                end
            }
        };
        self.bytes = (
            entry.bytes_in.load(Ordering::Relaxed),
            entry.bytes_out.load(Ordering::Relaxed),
        );
        drop(pick);
        Ok(end.into())
    }

    /// Write the session's end (see [`session::finish`]).
    fn finish(&self, end: &SessionEnd) {
        let facts = Facts {
            protocol: Protocol::Tcp,
            client: self.peer,
            listener: self.listener,
            started: self.started,
            conn: Some(&self.conn),
            route: self.route.as_deref(),
            upstream: self.upstream.as_deref(),
            node: self.node.as_ref().map(|(index, label)| NodeUsed {
                index: Some(*index),
                label,
            }),
            bytes: self.bytes,
            connect_time: self.connect_time,
        };
        session::finish(self.ctx, &facts, end);
    }
}

/// The stream variables of a connection from `peer` to `local`.
fn conn_info(peer: SocketAddr, local: SocketAddr) -> ConnInfo {
    ConnInfo {
        remote_addr: canonical_ip(peer.ip()),
        remote_port: peer.port(),
        server_addr: canonical_ip(local.ip()),
        server_port: local.port(),
        mqtt_client_id: None,
        sni: None,
    }
}

/// An error on one side reaches the other as a reset, never a clean close.
fn pass_reset(end: &copy::End, client: &TcpStream, upstream: &TcpStream) {
    match end.reset_target() {
        Some(ResetTarget::Client) => copy::set_reset_on_close(client),
        Some(ResetTarget::Upstream) => copy::set_reset_on_close(upstream),
        None => {}
    }
}
