//! UDP proxying: one session per client address and listener socket.
//!
//! The first datagram of a client opens a session: the UDP share of the
//! session budget and the client address's share of it, a route
//! (`server_addr`, `server_port`, `remote_addr`), the route's preread
//! plugins, then a node picked by the route's balancer (with retries, as
//! TCP). The session then owns a socket connected to that node, so later
//! datagrams of the client go to the same node and the node's replies come
//! back to that client only, sent from the listener's own socket. A session
//! ends after the upstream's idle timeout without datagrams either way
//! (nginx's `proxy_timeout`: status 200), and ends with 502 when the node is
//! unreachable (an ICMP error before its first reply). A refused first
//! datagram is a session too: it is written with its status and dropped.
//!
//! Sessions run on the drain tracker: at shutdown the listener stops
//! reading, and each session ends once every datagram its client sent has
//! been answered (or at its idle timeout), so a reply already on its way
//! still reaches the client.
//!
//! Memory stays bounded with many clients: a session holds a socket and a
//! small task, no buffer; replies are read into one per-thread buffer and
//! sent on at once. A datagram is forwarded whole or counted as dropped
//! (never truncated: buffers hold the largest UDP payload).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::connect::{connect_udp, Connected};
use super::copy::End;
use super::error::{Kind, ProxyError};
use super::session::{self, Facts, NodeUsed, Protocol, SessionEnd};
use super::{ListenerInfo, ProxyCtx, UdpRefusal};
use crate::balancer::Pick;
use crate::plugins;
use crate::plugins::limit_bandwidth::{Dir, Pacing};
use crate::snapshot::{canonical_ip, ConnInfo, RouteRt, UpstreamRt};
use crate::stats::{ActiveGuard, ConnHandle, NewConn, NodeStats};

/// Largest datagram handled (the IPv4 UDP payload limit rounded up).
const MAX_DATAGRAM: usize = 65_536;
/// Most sessions one listener socket keeps; new clients past it are dropped.
pub const MAX_SESSIONS: usize = 100_000;

thread_local! {
    static REPLY_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0u8; MAX_DATAGRAM]);
}

/// Counters of one listener socket (datagrams and sessions).
#[derive(Debug, Default)]
pub struct UdpCounters {
    /// Sessions created.
    pub sessions_total: AtomicU64,
    /// Sessions open now.
    pub sessions_active: AtomicU64,
    /// Datagrams from clients forwarded to nodes.
    pub datagrams_in: AtomicU64,
    /// Datagrams from nodes forwarded to clients.
    pub datagrams_out: AtomicU64,
    /// Datagrams dropped (no route, no node, send failure, session cap).
    pub dropped: AtomicU64,
}

/// One open session on [`UdpCounters::sessions_active`], released when
/// dropped (whichever way the session's task ends).
struct OpenSession(Arc<UdpCounters>);

impl OpenSession {
    fn new(counters: &Arc<UdpCounters>) -> OpenSession {
        counters.sessions_total.fetch_add(1, Ordering::Relaxed);
        counters.sessions_active.fetch_add(1, Ordering::Relaxed);
        OpenSession(counters.clone())
    }
}

impl Drop for OpenSession {
    fn drop(&mut self) {
        self.0.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What both directions of a session share.
struct SessionRt {
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    idle: Duration,
    base: Instant,
    last: AtomicU64,
    /// Client datagrams not answered yet (never below 0): a draining
    /// server ends the session once it is 0.
    owed: AtomicI64,
    route: Arc<RouteRt>,
    node: Arc<NodeStats>,
    info: Arc<ListenerInfo>,
    conn: ConnHandle,
    /// `limit-bandwidth`'s budget: datagrams over it are dropped.
    pace: Option<Pacing>,
}

impl SessionRt {
    /// Count one datagram of `n` bytes from the client.
    fn inbound(&self, n: usize) {
        let n = n as u64;
        for c in [
            &self.conn.entry.bytes_in,
            &self.route.stats.bytes_in,
            &self.node.bytes_in,
            &self.info.stats.bytes_in,
        ] {
            c.fetch_add(n, Ordering::Relaxed);
        }
        self.route
            .stats
            .datagrams_in
            .fetch_add(1, Ordering::Relaxed);
        self.last.store(stamp(self.base), Ordering::Relaxed);
    }

    /// A client datagram is about to go to the node: one more reply owed
    /// (counted first, so a reply that overtakes the count still pays it).
    fn owe(&self) {
        self.owed.fetch_add(1, Ordering::Relaxed);
    }

    /// One reply fewer owed (a reply arrived, or the datagram was dropped).
    fn settle(&self) {
        let _ = self
            .owed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |o| {
                (o > 0).then_some(o - 1)
            });
    }

    /// Count one datagram of `n` bytes to the client.
    fn outbound(&self, n: usize) {
        let n = n as u64;
        for c in [
            &self.conn.entry.bytes_out,
            &self.route.stats.bytes_out,
            &self.node.bytes_out,
            &self.info.stats.bytes_out,
        ] {
            c.fetch_add(n, Ordering::Relaxed);
        }
        self.route
            .stats
            .datagrams_out
            .fetch_add(1, Ordering::Relaxed);
        self.settle();
        self.last.store(stamp(self.base), Ordering::Relaxed);
    }

    /// True when every client datagram has had a reply.
    fn answered(&self) -> bool {
        self.owed.load(Ordering::Relaxed) <= 0
    }

    /// Bytes from and to the client so far.
    fn bytes(&self) -> (u64, u64) {
        let e = &self.conn.entry;
        (
            e.bytes_in.load(Ordering::Relaxed),
            e.bytes_out.load(Ordering::Relaxed),
        )
    }
}

/// A live session as the listener loop sees it.
struct Session {
    rt: Arc<SessionRt>,
    task: JoinHandle<()>,
    generation: u64,
}

/// Milliseconds since `base`, for cheap shared activity stamps.
fn stamp(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// The route a new session takes and the socket to the node its balancer
/// picked.
struct Opened {
    route: Arc<RouteRt>,
    upstream: Arc<UpstreamRt>,
    socket: Arc<UdpSocket>,
    pick: Pick,
    node: String,
    /// The plugins' decisions (limit-conn counts end when it drops).
    plugins: plugins::Session,
}

/// What opening a session has found so far, for the finish of a refusal.
#[derive(Default)]
struct Opening {
    route: Option<Arc<RouteRt>>,
    upstream: Option<Arc<UpstreamRt>>,
}

impl Opening {
    /// Route, preread plugins, then a node.
    async fn open(&mut self, ctx: &ProxyCtx, conn: &ConnInfo) -> Result<Opened, ProxyError> {
        let snapshot = ctx.snapshot.load_full();
        let route = snapshot.match_route(conn).ok_or(Kind::NoRoute)?.clone();
        self.route = Some(route.clone());
        let mut plugins = plugins::Session::default();
        if route.chain.has_preread() {
            route
                .chain
                .admit(&mut plugins, conn)
                .map_err(Kind::Refused)?;
        }
        let upstream = plugins
            .upstream_for(&route)
            .map_err(|why| Kind::NoUpstream(why.clone()))?
            .clone();
        self.upstream = Some(upstream.clone());
        let Connected { stream, pick, node } = connect_udp(
            &upstream,
            conn,
            &route.stats,
            plugins.node_stats_for(&route),
        )
        .await
        .map_err(Kind::Connect)?;
        Ok(Opened {
            route,
            upstream,
            socket: Arc::new(stream),
            pick,
            node,
            plugins,
        })
    }
}

/// Relay a session's replies to its client until it has been idle long
/// enough, its node turns out unreachable, an operator closes it, or the
/// server drains and every client datagram has been answered.
async fn reply_loop(
    s: &SessionRt,
    counters: &UdpCounters,
    closed: &mut oneshot::Receiver<()>,
    drain: &CancellationToken,
) -> End {
    let mut close_armed = true;
    let mut draining = false;
    let mut replied = false;
    let drained = drain.cancelled();
    tokio::pin!(drained);
    loop {
        let deadline = s.base + Duration::from_millis(s.last.load(Ordering::Relaxed)) + s.idle;
        tokio::select! {
            r = &mut *closed, if close_armed => match r {
                Ok(()) => return End::Closed,
                Err(_) => close_armed = false,
            },
            () = &mut drained, if !draining => {
                draining = true;
                if s.answered() {
                    return End::Drained;
                }
            }
            () = tokio::time::sleep_until(deadline) => {
                // Idle only if nothing moved meanwhile.
                let now_deadline = s.base + Duration::from_millis(s.last.load(Ordering::Relaxed)) + s.idle;
                if Instant::now() >= now_deadline {
                    return End::IdleTimeout;
                }
            }
            // An ICMP error from the node is reported as an error event
            // only, not as readable.
            ready = s.upstream.ready(Interest::READABLE | Interest::ERROR) => {
                let ready = match ready {
                    Ok(r) => r,
                    Err(e) => return End::Upstream(e),
                };
                if ready.is_error() {
                    match s.upstream.take_error() {
                        // Before the node ever answered: it cannot be
                        // reached (nginx: 502).
                        Ok(Some(e)) | Err(e) if !replied => return End::Upstream(e),
                        Ok(Some(e)) | Err(e) => {
                            tracing::debug!(client = %s.client, error = %e, "udp: node reported an error");
                        }
                        Ok(None) => {}
                    }
                    // The error is taken: clear the event so the next wait
                    // sleeps until something new happens.
                    let _ = s.upstream.try_io(Interest::ERROR, || {
                        Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
                    });
                    if !ready.is_readable() {
                        continue;
                    }
                }
                let forwarded = REPLY_BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    match s.upstream.try_recv(&mut buf) {
                        Ok(n) if s.pace.as_ref().is_some_and(|p| !p.pacer(Dir::Down).admit(n)) => {
                            Some(Ok(Err(io::Error::other("over the route's download rate"))))
                        }
                        Ok(n) => Some(Ok(s.listener.try_send_to(&buf[..n], s.client).map(|_| n))),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        Err(e) => Some(Err(e)),
                    }
                });
                match forwarded {
                    None => {}
                    Some(Ok(Ok(n))) => {
                        replied = true;
                        counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
                        s.outbound(n);
                        if draining && s.answered() {
                            return End::Drained;
                        }
                    }
                    // An ICMP error before the node ever answered: it
                    // cannot be reached (nginx: 502).
                    Some(Err(e)) if !replied => return End::Upstream(e),
                    Some(Ok(Err(e))) => {
                        // A full send buffer towards the client: the node
                        // answered, this reply is lost, the session goes on.
                        replied = true;
                        s.settle();
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client = %s.client, error = %e, "udp: reply dropped");
                        if draining && s.answered() {
                            return End::Drained;
                        }
                    }
                    Some(Err(e)) => {
                        // A late ICMP error: the session and listener go on.
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client = %s.client, error = %e, "udp: node reported an error");
                    }
                }
            }
        }
    }
}

/// Open a session for a client's first datagram (`len` bytes), or write
/// its refusal and return `None`.
async fn open_session(
    ctx: &ProxyCtx,
    info: &ListenerInfo,
    conn: &ConnInfo,
    client: SocketAddr,
    len: usize,
) -> Option<Opened> {
    let started = std::time::Instant::now();
    let mut opening = Opening::default();
    match opening.open(ctx, conn).await {
        Ok(opened) => Some(opened),
        Err(e) => {
            let mut facts = Facts::new(Protocol::Udp, client, info, started);
            facts.conn = Some(conn);
            facts.route = opening.route.as_deref();
            facts.upstream = opening.upstream.as_deref();
            facts.bytes = (len as u64, 0);
            session::finish(ctx, &facts, &SessionEnd::Failed(e));
            None
        }
    }
}

/// Run one opened session to its end, then write it.
async fn run_session(
    ctx: Arc<ProxyCtx>,
    rt: Arc<SessionRt>,
    opened: Opened,
    conn: ConnInfo,
    counters: Arc<UdpCounters>,
    mut closed: oneshot::Receiver<()>,
    drain: CancellationToken,
) {
    let started = std::time::Instant::now();
    let s = &rt;
    s.route.stats.total.fetch_add(1, Ordering::Relaxed);
    s.route.stats.udp_sessions.fetch_add(1, Ordering::Relaxed);
    s.node.total.fetch_add(1, Ordering::Relaxed);
    let end = {
        let _route = ActiveGuard::new(&s.route.stats.active);
        let _node = ActiveGuard::new(&s.node.active);
        let _listener = ActiveGuard::new(&s.info.stats.active);
        reply_loop(s, &counters, &mut closed, &drain).await
    };
    if matches!(end, End::IdleTimeout) && s.bytes().1 == 0 {
        if let Some(checker) = opened.upstream.checker() {
            checker.report_no_reply(opened.pick.index);
        }
    }
    let facts = Facts {
        protocol: Protocol::Udp,
        client: s.client,
        listener: &s.info,
        started,
        conn: Some(&conn),
        route: Some(&opened.route),
        upstream: Some(&opened.upstream),
        node: Some(NodeUsed {
            index: Some(opened.pick.index),
            label: &opened.node,
        }),
        bytes: s.bytes(),
        // A UDP socket is connected at once, as nginx reports it.
        connect_time: Some(std::time::Duration::ZERO),
    };
    session::finish(&ctx, &facts, &end.into());
}

/// Serve one listener socket until `stop`. Its sessions carry on after
/// that (on the drain tracker) until they end.
pub async fn serve(
    socket: UdpSocket,
    info: Arc<ListenerInfo>,
    ctx: Arc<ProxyCtx>,
    counters: Arc<UdpCounters>,
    stop: CancellationToken,
) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().unwrap_or(info.local);
    let base = Instant::now();
    // This loop's sessions watch their own child of the drain token, so a
    // reply never touches a lock shared with other workers.
    let drain = ctx.draining.child_token();
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let (expired_tx, mut expired_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut generation = 0u64;
    // Refusals are logged at most every ten seconds per listener socket.
    let mut quiet_until: Option<Instant> = None;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    loop {
        let (n, client) = tokio::select! {
            biased;
            () = &mut stopped => break,
            Some((addr, gen)) = expired_rx.recv() => {
                if sessions.get(&addr).is_some_and(|s| s.generation == gen) {
                    sessions.remove(&addr);
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // Errors here are per-datagram (e.g. a stale ICMP); keep serving.
                    tracing::debug!(listen = %info.label, error = %e, "udp: receive failed");
                    continue;
                }
            },
        };
        let live = sessions.get(&client).filter(|s| !s.task.is_finished());
        let rt = match live {
            Some(s) => s.rt.clone(),
            None => {
                // A session holds a socket: it counts against the UDP share
                // of the session budget and its address's share of that
                // (and each listener socket keeps at most MAX_SESSIONS).
                let permit = if sessions.len() < MAX_SESSIONS {
                    ctx.limits.try_acquire_udp(canonical_ip(client.ip()))
                } else {
                    Err(UdpRefusal::Cap)
                };
                let permit = match permit {
                    Ok(p) => p,
                    Err(why) => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        session::refuse_at_cap(&ctx, Protocol::Udp, client, &info);
                        if quiet_until.is_none_or(|t| Instant::now() >= t) {
                            match why {
                                UdpRefusal::Cap => {
                                    tracing::warn!(listen = %info.label, max_udp = ctx.limits.max_udp, "udp session limit reached; dropping datagrams of new clients")
                                }
                                UdpRefusal::Source => {
                                    tracing::warn!(listen = %info.label, %client, per_source = ctx.limits.udp_per_source, "udp sessions of one client address at their limit; dropping its new sessions")
                                }
                            }
                            quiet_until = Some(Instant::now() + Duration::from_secs(10));
                        }
                        continue;
                    }
                };
                let conn = ConnInfo {
                    remote_addr: canonical_ip(client.ip()),
                    remote_port: client.port(),
                    server_addr: canonical_ip(local.ip()),
                    server_port: local.port(),
                    mqtt_client_id: None,
                    sni: None,
                };
                let Some(opened) = open_session(&ctx, &info, &conn, client, n).await else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                generation += 1;
                let gen = generation;
                let node = opened
                    .plugins
                    .node_stats_for(&opened.route)
                    .get(opened.pick.index)
                    .cloned()
                    .unwrap_or_default();
                let mut handle = ctx.stats.register(NewConn {
                    protocol: "udp",
                    client,
                    listener: info.label.clone(),
                    route_id: opened.route.id.clone(),
                    node: opened.node.clone(),
                    sni: None,
                });
                let closed = std::mem::replace(&mut handle.closed, oneshot::channel().1);
                let rt = Arc::new(SessionRt {
                    listener: socket.clone(),
                    upstream: opened.socket.clone(),
                    client,
                    idle: opened.upstream.idle_timeout,
                    base,
                    last: AtomicU64::new(stamp(base)),
                    owed: AtomicI64::new(0),
                    route: opened.route.clone(),
                    node,
                    info: info.clone(),
                    conn: handle,
                    pace: opened.plugins.bandwidth.clone(),
                });
                let span = tracing::debug_span!(
                    "udp",
                    %client,
                    listen = %info.label,
                    route = %opened.route.id,
                    node = %opened.node
                );
                tracing::debug!(parent: &span, "udp session started");
                let open = OpenSession::new(&counters);
                let (tx, task_rt, task_counters, task_ctx, task_drain) = (
                    expired_tx.clone(),
                    rt.clone(),
                    counters.clone(),
                    ctx.clone(),
                    drain.clone(),
                );
                let session = async move {
                    let _slot = (permit, open);
                    run_session(
                        task_ctx,
                        task_rt,
                        opened,
                        conn,
                        task_counters,
                        closed,
                        task_drain,
                    )
                    .await;
                    let _ = tx.send((client, gen));
                };
                let task = ctx.connections.spawn(session.instrument(span));
                sessions.insert(
                    client,
                    Session {
                        rt: rt.clone(),
                        task,
                        generation: gen,
                    },
                );
                rt
            }
        };
        if rt.pace.as_ref().is_some_and(|p| !p.pacer(Dir::Up).admit(n)) {
            counters.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        rt.owe();
        let sent = match rt.upstream.try_send(&buf[..n]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => rt.upstream.send(&buf[..n]).await,
            other => other,
        };
        match sent {
            Ok(_) => {
                counters.datagrams_in.fetch_add(1, Ordering::Relaxed);
                rt.inbound(n);
            }
            Err(e) => {
                rt.settle();
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, error = %e, "udp: datagram to node dropped");
            }
        }
    }
}
