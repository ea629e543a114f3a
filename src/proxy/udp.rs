//! UDP proxying: one session per client address and listener socket.
//!
//! The first datagram of a client matches a route (`server_addr`,
//! `server_port`, `remote_addr`) and picks a node with the route's balancer;
//! the session then owns a socket connected to that node, so later datagrams
//! of the client go to the same node and the node's replies come back to
//! that client only, sent from the listener's own socket. A session ends
//! after the upstream's idle timeout without datagrams either way (nginx's
//! `proxy_timeout`) and its socket is closed.
//!
//! Memory stays bounded with many clients: a session holds a socket and a
//! small task, no buffer; replies are read into one per-thread buffer and
//! sent on at once. A datagram is forwarded whole or counted as dropped
//! (never truncated: buffers hold the largest UDP payload). An ICMP
//! unreachable from a node surfaces as an error on that session's socket
//! only; the listener carries on.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::copy::End;
use super::{ListenerInfo, ProxyCtx};
use crate::access_log::Record;
use crate::balancer::Pick;
use crate::snapshot::RouteRt;
use crate::snapshot::{canonical_ip, ConnInfo};
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

/// What both directions of a session share.
struct SessionRt {
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    idle: Duration,
    base: Instant,
    last: AtomicU64,
    route: Arc<RouteRt>,
    node: Arc<NodeStats>,
    info: Arc<ListenerInfo>,
    conn: ConnHandle,
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
        self.last.store(stamp(self.base), Ordering::Relaxed);
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

fn unspecified_for(addr: &SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    }
}

/// The route a new session takes and the socket to the node its balancer
/// picked.
struct Opened {
    route: Arc<RouteRt>,
    upstream: Arc<UdpSocket>,
    pick: Pick,
    idle: Duration,
    node: String,
    /// The plugins' decisions (limit-conn counts end when it drops).
    plugins: crate::plugins::Session,
}

/// Open the session's socket to the node the route's balancer picks.
async fn open_upstream(ctx: &ProxyCtx, conn: &ConnInfo) -> Option<Opened> {
    let snapshot = ctx.snapshot.load_full();
    let Some(route) = snapshot.match_route(conn).cloned() else {
        tracing::debug!(client = %conn.remote_addr, "udp: not hit any route");
        return None;
    };
    let mut plugins = crate::plugins::Session::default();
    if route.chain.has_preread() {
        if let Err(r) = route.chain.admit(&mut plugins, conn) {
            tracing::debug!(client = %conn.remote_addr, route_id = %route.id, plugin = r.plugin, code = r.code, reason = %r.reason, "udp: session refused by plugin");
            return None;
        }
    }
    let up = match plugins.upstream_for(&route) {
        Ok(u) => u.clone(),
        Err(why) => {
            tracing::debug!(route_id = %route.id, reason = %why, "udp: route has no usable upstream");
            return None;
        }
    };
    let key = (up.balancer.lb_name() == "chash").then(|| up.key_for(conn));
    let mut tried = Vec::new();
    let checker = up.checker();
    let healthy = |i: usize| checker.as_ref().is_none_or(|c| c.healthy(i));
    for _ in 0..=up.retries {
        let pick = up
            .balancer
            .pick(key.as_deref().map(str::as_bytes), &tried, &healthy)?;
        tried.push(pick.index);
        let backend = &up.balancer.backends()[pick.index];
        let fail = |why: String| {
            route.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
            if let Some(n) = plugins.node_stats_for(&route).get(pick.index) {
                n.failed(why);
            }
        };
        let addr = match backend.addr {
            Some(a) => a,
            None => match tokio::net::lookup_host((backend.host.as_str(), backend.port))
                .await
                .ok()
                .and_then(|mut it| it.next())
            {
                Some(a) => a,
                None => {
                    tracing::debug!(node = %backend.label, "udp: cannot resolve node");
                    fail("cannot resolve".into());
                    continue;
                }
            },
        };
        let sock = match UdpSocket::bind(unspecified_for(&addr)).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "udp: cannot open a session socket");
                return None;
            }
        };
        if let Err(e) = sock.connect(addr).await {
            tracing::debug!(node = %backend.label, error = %e, "udp: cannot use node");
            fail(e.to_string());
            continue;
        }
        let node = backend.label.clone();
        return Some(Opened {
            route,
            upstream: Arc::new(sock),
            pick,
            idle: up.idle_timeout,
            node,
            plugins,
        });
    }
    None
}

/// Relay a session's replies to its client until it has been idle long
/// enough or an operator closes it.
async fn reply_loop(
    s: &SessionRt,
    counters: &UdpCounters,
    closed: &mut oneshot::Receiver<()>,
) -> End {
    let mut close_armed = true;
    loop {
        let deadline = s.base + Duration::from_millis(s.last.load(Ordering::Relaxed)) + s.idle;
        tokio::select! {
            r = &mut *closed, if close_armed => match r {
                Ok(()) => return End::Closed,
                Err(_) => close_armed = false,
            },
            () = tokio::time::sleep_until(deadline) => {
                // Idle only if nothing moved meanwhile.
                let now_deadline = s.base + Duration::from_millis(s.last.load(Ordering::Relaxed)) + s.idle;
                if Instant::now() >= now_deadline {
                    return End::IdleTimeout;
                }
            }
            ready = s.upstream.readable() => {
                if let Err(e) = ready {
                    tracing::debug!(client = %s.client, error = %e, "udp: session socket failed");
                    return End::Upstream(e);
                }
                let forwarded = REPLY_BUF.with(|buf| {
                    let mut buf = buf.borrow_mut();
                    match s.upstream.try_recv(&mut buf) {
                        Ok(n) => Some(s.listener.try_send_to(&buf[..n], s.client).map(|_| n)),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                        Err(e) => Some(Err(e)),
                    }
                });
                match forwarded {
                    None => {}
                    Some(Ok(n)) => {
                        counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
                        s.outbound(n);
                    }
                    Some(Err(e)) => {
                        // ICMP unreachable from the node, or a full send
                        // buffer: this datagram is lost, the session and
                        // listener go on.
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(client = %s.client, error = %e, "udp: reply dropped");
                    }
                }
            }
        }
    }
}

/// Serve one listener socket until `stop`.
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
    let mut sessions: HashMap<SocketAddr, Session> = HashMap::new();
    let (expired_tx, mut expired_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut generation = 0u64;
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
                if sessions.len() >= MAX_SESSIONS {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // A session holds a socket: it counts against the process cap.
                let Some(permit) = ctx.limits.try_acquire() else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let conn = ConnInfo {
                    remote_addr: canonical_ip(client.ip()),
                    remote_port: client.port(),
                    server_addr: canonical_ip(local.ip()),
                    server_port: local.port(),
                    mqtt_client_id: None,
                    sni: None,
                };
                let Some(opened) = open_upstream(&ctx, &conn).await else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                tracing::debug!(%client, node = %opened.node, listen = %info.label, "udp session started");
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
                let mut closed = std::mem::replace(&mut handle.closed, oneshot::channel().1);
                let rt = Arc::new(SessionRt {
                    listener: socket.clone(),
                    upstream: opened.upstream,
                    client,
                    idle: opened.idle,
                    base,
                    last: AtomicU64::new(stamp(base)),
                    route: opened.route,
                    node,
                    info: info.clone(),
                    conn: handle,
                });
                let (tx, task_rt, task_counters, task_ctx) = (
                    expired_tx.clone(),
                    rt.clone(),
                    counters.clone(),
                    ctx.clone(),
                );
                let pick = opened.pick;
                let plugin_session = opened.plugins;
                let task = tokio::spawn(async move {
                    let _permit = permit;
                    let s = &task_rt;
                    let started = Instant::now();
                    s.route.stats.total.fetch_add(1, Ordering::Relaxed);
                    s.route.stats.udp_sessions.fetch_add(1, Ordering::Relaxed);
                    s.node.total.fetch_add(1, Ordering::Relaxed);
                    let end = {
                        let _route = ActiveGuard::new(&s.route.stats.active);
                        let _node = ActiveGuard::new(&s.node.active);
                        let _listener = ActiveGuard::new(&s.info.stats.active);
                        reply_loop(s, &task_counters, &mut closed).await
                    };
                    if let Some(log) = &task_ctx.access_log {
                        log.record(&Record {
                            client: s.client,
                            protocol: "UDP",
                            status: 200,
                            listener: &s.info.label,
                            route_id: &s.route.id,
                            node: &s.conn.entry.meta.node,
                            bytes_in: s.conn.entry.bytes_in.load(Ordering::Relaxed),
                            bytes_out: s.conn.entry.bytes_out.load(Ordering::Relaxed),
                            duration: started.elapsed(),
                            end: end.as_str(),
                        });
                    }
                    if s.route.chain.has_log() {
                        s.route.chain.log(
                            &conn,
                            &crate::plugins::Finished {
                                protocol: "UDP",
                                status: end.status(),
                                listen: &s.info.label,
                                node: &s.conn.entry.meta.node,
                                bytes_in: s.conn.entry.bytes_in.load(Ordering::Relaxed),
                                bytes_out: s.conn.entry.bytes_out.load(Ordering::Relaxed),
                                duration: started.elapsed(),
                            },
                        );
                    }
                    drop(plugin_session);
                    task_counters
                        .sessions_active
                        .fetch_sub(1, Ordering::Relaxed);
                    drop(pick);
                    let _ = tx.send((client, gen));
                });
                counters.sessions_total.fetch_add(1, Ordering::Relaxed);
                counters.sessions_active.fetch_add(1, Ordering::Relaxed);
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
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, error = %e, "udp: datagram to node dropped");
            }
        }
    }
    for (_, s) in sessions {
        if !s.task.is_finished() {
            s.task.abort();
            counters.sessions_active.fetch_sub(1, Ordering::Relaxed);
        }
    }
}
