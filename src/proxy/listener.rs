//! Binding `stream_proxy.tcp` entries and accepting connections.
//!
//! With `enable_reuseport` (APISIX's default) each entry gets one socket per
//! runtime worker bound with `SO_REUSEPORT`, so the kernel spreads new
//! connections over several accept loops, as nginx does with its workers.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{tcp, ProxyCtx};
use crate::config::ListenSpec;

/// Pending-connection queue length (nginx's `backlog` on Linux is 511;
/// a longer queue absorbs connection bursts).
const BACKLOG: i32 = 4096;

/// A bound listener entry.
#[derive(Debug)]
pub struct ListenerInfo {
    /// The config entry.
    pub spec: ListenSpec,
    /// Address actually bound (the real port when the entry asked for 0).
    pub local: SocketAddr,
    /// `listen_addr` label as APISIX prints it (the configured address).
    pub label: String,
}

fn bind_one(addr: SocketAddr, reuseport: bool) -> io::Result<std::net::TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    #[cfg(unix)]
    if reuseport {
        sock.set_reuse_port(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(BACKLOG)?;
    Ok(sock.into())
}

/// Bind `count` sockets for one entry (all on the same port).
pub fn bind_tcp(
    spec: &ListenSpec,
    reuseport: bool,
    count: usize,
) -> io::Result<(ListenerInfo, Vec<TcpListener>)> {
    let first = bind_one(spec.addr, reuseport)?;
    let local = first.local_addr()?;
    let mut socks = vec![first];
    if reuseport {
        for _ in 1..count.max(1) {
            socks.push(bind_one(local, true)?);
        }
    }
    let listeners = socks
        .into_iter()
        .map(TcpListener::from_std)
        .collect::<io::Result<Vec<_>>>()?;
    let info = ListenerInfo {
        spec: spec.clone(),
        local,
        label: spec.listen_addr(),
    };
    Ok((info, listeners))
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
    ctx: ProxyCtx,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                let info = info.clone();
                let task_ctx = ctx.clone();
                ctx.connections
                    .spawn(tcp::handle(task_ctx, stream, peer, info));
            }
            Err(e) if is_resource_error(&e) => {
                tracing::warn!(listen = %info.label, error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => {
                // Per-connection failures (e.g. aborted before accept).
                tracing::debug!(listen = %info.label, error = %e, "accept failed");
            }
        }
    }
}
