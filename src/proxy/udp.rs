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
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::listener::ListenerInfo;
use super::ProxyCtx;
use crate::balancer::Pick;
use crate::snapshot::{canonical_ip, ConnInfo};

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

/// A live session as the listener loop sees it.
struct Session {
    upstream: Arc<UdpSocket>,
    last: Arc<AtomicU64>,
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

/// Open the session's socket to the node the route's balancer picks.
async fn open_upstream(
    ctx: &ProxyCtx,
    conn: &ConnInfo,
) -> Option<(Arc<UdpSocket>, Pick, Duration, String)> {
    let snapshot = ctx.snapshot.load_full();
    let Some(route) = snapshot.match_route(conn) else {
        tracing::debug!(client = %conn.remote_addr, "udp: not hit any route");
        return None;
    };
    let up = match &route.upstream {
        Ok(u) => u.clone(),
        Err(why) => {
            tracing::debug!(route_id = %route.id, reason = %why, "udp: route has no usable upstream");
            return None;
        }
    };
    let key = (up.balancer.lb_name() == "chash").then(|| up.key_for(conn));
    let mut tried = Vec::new();
    for _ in 0..=up.retries {
        let pick = up
            .balancer
            .pick(key.as_deref().map(str::as_bytes), &tried, &|_| true)?;
        tried.push(pick.index);
        let backend = &up.balancer.backends()[pick.index];
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
            continue;
        }
        return Some((Arc::new(sock), pick, up.idle_timeout, backend.label.clone()));
    }
    None
}

/// Relay a session's replies to its client until it has been idle long enough.
#[allow(clippy::too_many_arguments)]
async fn reply_loop(
    listener: Arc<UdpSocket>,
    upstream: Arc<UdpSocket>,
    client: SocketAddr,
    idle: Duration,
    base: Instant,
    last: Arc<AtomicU64>,
    counters: Arc<UdpCounters>,
    pick: Pick,
) {
    loop {
        let deadline = base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
        let ready = tokio::time::timeout_at(deadline, upstream.readable()).await;
        match ready {
            Err(_) => {
                // Timer fired: idle only if nothing moved meanwhile.
                let now_deadline =
                    base + Duration::from_millis(last.load(Ordering::Relaxed)) + idle;
                if Instant::now() >= now_deadline {
                    break;
                }
                continue;
            }
            Ok(Err(e)) => {
                tracing::debug!(%client, error = %e, "udp: session socket failed");
                break;
            }
            Ok(Ok(())) => {}
        }
        let forwarded = REPLY_BUF.with(|buf| {
            let mut buf = buf.borrow_mut();
            match upstream.try_recv(&mut buf) {
                Ok(n) => Some(listener.try_send_to(&buf[..n], client).map(|_| ())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => Some(Err(e)),
            }
        });
        match forwarded {
            None => {}
            Some(Ok(())) => {
                counters.datagrams_out.fetch_add(1, Ordering::Relaxed);
                last.store(stamp(base), Ordering::Relaxed);
            }
            Some(Err(e)) => {
                // ICMP unreachable from the node, or a full send buffer:
                // this datagram is lost, the session and listener go on.
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, error = %e, "udp: reply dropped");
            }
        }
    }
    drop(pick);
}

/// Serve one listener socket until `stop`.
pub async fn serve(
    socket: UdpSocket,
    info: Arc<ListenerInfo>,
    ctx: ProxyCtx,
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
        let (upstream, last) = match live {
            Some(s) => (s.upstream.clone(), s.last.clone()),
            None => {
                if sessions.len() >= MAX_SESSIONS {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let conn = ConnInfo {
                    remote_addr: canonical_ip(client.ip()),
                    remote_port: client.port(),
                    server_addr: canonical_ip(local.ip()),
                    server_port: local.port(),
                    sni: None,
                };
                let Some((upstream, pick, idle, node)) = open_upstream(&ctx, &conn).await else {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                tracing::debug!(%client, %node, listen = %info.label, "udp session started");
                generation += 1;
                let last = Arc::new(AtomicU64::new(stamp(base)));
                let tx = expired_tx.clone();
                let gen = generation;
                let task = tokio::spawn({
                    let (listener, upstream, last, counters) = (
                        socket.clone(),
                        upstream.clone(),
                        last.clone(),
                        counters.clone(),
                    );
                    async move {
                        reply_loop(
                            listener,
                            upstream,
                            client,
                            idle,
                            base,
                            last,
                            counters.clone(),
                            pick,
                        )
                        .await;
                        counters.sessions_active.fetch_sub(1, Ordering::Relaxed);
                        let _ = tx.send((client, gen));
                    }
                });
                counters.sessions_total.fetch_add(1, Ordering::Relaxed);
                counters.sessions_active.fetch_add(1, Ordering::Relaxed);
                sessions.insert(
                    client,
                    Session {
                        upstream: upstream.clone(),
                        last: last.clone(),
                        task,
                        generation: gen,
                    },
                );
                (upstream, last)
            }
        };
        last.store(stamp(base), Ordering::Relaxed);
        let sent = match upstream.try_send(&buf[..n]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => upstream.send(&buf[..n]).await,
            other => other,
        };
        match sent {
            Ok(_) => {
                counters.datagrams_in.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, error = %e, "udp: datagram to node dropped");
            }
        }
    }
    for (_, s) in sessions {
        s.task.abort();
        counters.sessions_active.fetch_sub(1, Ordering::Relaxed);
    }
}
