//! Data-plane workers: one OS thread per core, each running its own
//! single-threaded runtime with its own `SO_REUSEPORT` sockets.
//!
//! Why: like nginx's worker processes, a connection is accepted, routed,
//! relayed and closed on one thread, with one epoll instance and no
//! cross-thread wake-ups or work stealing on the hot path. Only the
//! snapshot (an `ArcSwap`), the drain tracker and a few counters are shared.

use std::io;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::listener::{self, ListenerInfo};
use super::udp::{self, UdpCounters};
use super::ProxyCtx;

/// The sockets one worker serves.
#[derive(Debug, Default)]
pub struct WorkerSockets {
    /// TCP listeners with their entries.
    pub tcp: Vec<(Arc<ListenerInfo>, std::net::TcpListener)>,
    /// UDP sockets with their entries and counters.
    pub udp: Vec<(Arc<ListenerInfo>, Arc<UdpCounters>, std::net::UdpSocket)>,
}

/// Running worker threads.
#[derive(Debug, Default)]
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Workers {
    /// Start one thread per element of `sockets`.
    pub fn spawn(
        sockets: Vec<WorkerSockets>,
        ctx: &ProxyCtx,
        stop: &CancellationToken,
    ) -> io::Result<Workers> {
        let mut threads = Vec::new();
        for (i, socks) in sockets.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (ctx, stop) = (ctx.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || runtime.block_on(run(socks, ctx, stop)))?;
            threads.push(thread);
        }
        Ok(Workers { threads })
    }

    /// Wait for every worker thread to end (after the drain).
    pub fn join(self) {
        for t in self.threads {
            if t.join().is_err() {
                tracing::error!("a proxy worker thread panicked");
            }
        }
    }
}

async fn run(socks: WorkerSockets, ctx: ProxyCtx, stop: CancellationToken) {
    // A child token per worker keeps the stop signal's waiter list local to
    // this thread's loops.
    let stop = stop.child_token();
    for (info, l) in socks.tcp {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(listener::accept_loop(l, info, ctx.clone(), stop.clone()));
            }
            Err(e) => {
                tracing::error!(listen = %info.label, error = %e, "cannot serve tcp listener")
            }
        }
    }
    for (info, counters, s) in socks.udp {
        match tokio::net::UdpSocket::from_std(s) {
            Ok(s) => {
                tokio::spawn(udp::serve(s, info, ctx.clone(), counters, stop.clone()));
            }
            Err(e) => {
                tracing::error!(listen = %info.label, error = %e, "cannot serve udp listener")
            }
        }
    }
    stop.cancelled().await;
    // Keep running this thread's connections until the drain is over: all
    // connections finished, or the grace period ended. Returning then drops
    // this runtime with every connection task still on it, which closes
    // their sockets.
    tokio::select! {
        () = ctx.connections.wait() => {}
        () = ctx.force_close.cancelled() => {}
    }
}
