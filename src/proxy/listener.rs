//! Binding `stream_proxy.tcp` entries and accepting connections.
//!
//! With `enable_reuseport` (APISIX's default) each entry gets one socket per
//! data-plane worker bound with `SO_REUSEPORT`, so the kernel spreads new
//! connections over the workers' accept loops, as nginx does.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{tcp, ProxyCtx};
use crate::config::ListenSpec;

/// Pending-connection queue length (nginx's `backlog` on Linux is 511;
/// a longer queue absorbs connection bursts).
const BACKLOG: i32 = 4096;
/// Socket buffer asked for on UDP listeners, to ride out bursts.
const UDP_SOCKET_BUFFER: usize = 4 << 20;

/// The stream listeners in force: swapped whole by a reload, read by the
/// Control API and the metrics.
#[derive(Debug, Default)]
pub struct ListenerSet {
    /// TCP entries.
    pub tcp: Vec<Arc<ListenerInfo>>,
    /// UDP entries with their counters.
    pub udp: Vec<(Arc<ListenerInfo>, Arc<super::udp::UdpCounters>)>,
}

/// The listener set, shared lock-free.
pub type SharedListeners = Arc<arc_swap::ArcSwap<ListenerSet>>;

/// A bound listener entry.
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

fn bind_one(addr: SocketAddr, ty: Type, reuseport: bool) -> io::Result<Socket> {
    let udp = ty == Type::DGRAM;
    let proto = if udp { Protocol::UDP } else { Protocol::TCP };
    let sock = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuseport {
        sock.set_reuse_port(true)?;
    }
    if udp {
        let _ = sock.set_recv_buffer_size(UDP_SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(UDP_SOCKET_BUFFER);
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    if !udp {
        sock.listen(BACKLOG)?;
    }
    Ok(sock)
}

/// Bind one listener entry as `count` sockets on the same address, one per
/// worker: separate `SO_REUSEPORT` sockets (the kernel spreads new
/// connections and keeps each UDP client on one socket), or without
/// reuseport one socket shared through duplicated descriptors.
pub fn bind_sockets(
    spec: &ListenSpec,
    ty: Type,
    reuseport: bool,
    count: usize,
) -> io::Result<(ListenerInfo, Vec<Socket>)> {
    let first = bind_one(spec.addr, ty, reuseport)?;
    let local = first
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not an IP socket"))?;
    let mut socks = Vec::with_capacity(count.max(1));
    for _ in 1..count.max(1) {
        socks.push(if reuseport {
            bind_one(local, ty, true)?
        } else {
            first.try_clone()?
        });
    }
    socks.insert(0, first);
    let info = ListenerInfo {
        spec: spec.clone(),
        local,
        // An ephemeral port (0) is labelled with the port actually bound.
        label: if spec.addr.port() == 0 {
            local.to_string()
        } else {
            spec.listen_addr()
        },
        stats: Default::default(),
    };
    Ok((info, socks))
}

/// Bind a `stream_proxy.tcp` entry (see [`bind_sockets`]).
pub fn bind_tcp(
    spec: &ListenSpec,
    reuseport: bool,
    count: usize,
) -> io::Result<(ListenerInfo, Vec<std::net::TcpListener>)> {
    let (info, socks) = bind_sockets(spec, Type::STREAM, reuseport, count)?;
    Ok((info, socks.into_iter().map(Into::into).collect()))
}

/// Bind a `stream_proxy.udp` entry (see [`bind_sockets`]).
pub fn bind_udp(
    spec: &ListenSpec,
    reuseport: bool,
    count: usize,
) -> io::Result<(ListenerInfo, Vec<std::net::UdpSocket>)> {
    let (info, socks) = bind_sockets(spec, Type::DGRAM, reuseport, count)?;
    Ok((info, socks.into_iter().map(Into::into).collect()))
}

/// Errors that mean "out of resources": back off instead of spinning.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == libc_errno::EMFILE || code == libc_errno::ENFILE
            || code == libc_errno::ENOBUFS || code == libc_errno::ENOMEM
    )
}

mod libc_errno {
    pub const EMFILE: i32 = rustix::io::Errno::MFILE.raw_os_error();
    pub const ENFILE: i32 = rustix::io::Errno::NFILE.raw_os_error();
    pub const ENOBUFS: i32 = rustix::io::Errno::NOBUFS.raw_os_error();
    pub const ENOMEM: i32 = rustix::io::Errno::NOMEM.raw_os_error();
}

/// Accept until `stop`, handing each connection to [`tcp::handle`].
pub async fn accept_loop(
    listener: TcpListener,
    info: Arc<ListenerInfo>,
    ctx: Arc<ProxyCtx>,
    stop: CancellationToken,
) {
    let stopped = stop.cancelled();
    tokio::pin!(stopped);
    let mut backoff = Duration::from_millis(10);
    let mut quiet_until: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            r = listener.accept() => r,
            () = &mut stopped => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::from_millis(10);
                let Some(permit) = ctx.limits.try_acquire() else {
                    // At the cap: close now (the client sees it at once).
                    drop(stream);
                    if quiet_until.is_none_or(|t| Instant::now() >= t) {
                        tracing::warn!(listen = %info.label, max_sessions = ctx.limits.max_sessions, "session limit reached; closing new connections");
                        quiet_until = Some(Instant::now() + Duration::from_secs(10));
                    }
                    continue;
                };
                let info = info.clone();
                let task_ctx = ctx.clone();
                ctx.connections.spawn(async move {
                    let _permit = permit;
                    tcp::handle(task_ctx, stream, peer, info).await;
                });
            }
            Err(e) if is_resource_error(&e) => {
                // Out of descriptors or memory: retrying at once would spin.
                ctx.limits.accept_errors.fetch_add(1, Ordering::Relaxed);
                if quiet_until.is_none_or(|t| Instant::now() >= t) {
                    tracing::warn!(listen = %info.label, error = %e, "accept failed; backing off");
                    quiet_until = Some(Instant::now() + Duration::from_secs(10));
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(100));
            }
            Err(e) => {
                // Per-connection failures (e.g. aborted before accept).
                ctx.limits.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(listen = %info.label, error = %e, "accept failed");
            }
        }
    }
}
