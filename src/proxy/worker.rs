//! Data-plane workers: one OS thread per core, each running its own
//! single-threaded runtime with its own `SO_REUSEPORT` sockets.
//!
//! Why: like nginx's worker processes, a connection is accepted, routed,
//! relayed and closed on one thread, with one epoll instance and no
//! cross-thread wake-ups or work stealing on the hot path. Only the
//! snapshot (an `ArcSwap`), the drain tracker and a few counters are shared.
//!
//! Listeners can be added and removed while running (SIGHUP): each worker
//! takes new sockets over a channel, and every listener has its own stop
//! token (a child of the server's), so cancelling one stops its accept loop
//! while the connections it accepted carry on to their natural end.

use std::io;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::listener::{self, ListenerInfo};
use super::udp::{self, UdpCounters};
use super::ProxyCtx;

/// The sockets one worker serves, each with the token that stops it.
#[derive(Debug, Default)]
pub struct WorkerSockets {
    /// TCP listeners with their entries.
    pub tcp: Vec<(Arc<ListenerInfo>, std::net::TcpListener, CancellationToken)>,
    /// UDP sockets with their entries and counters.
    pub udp: Vec<(
        Arc<ListenerInfo>,
        Arc<UdpCounters>,
        std::net::UdpSocket,
        CancellationToken,
    )>,
}

/// Running worker threads.
#[derive(Debug, Default)]
pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    add: Vec<mpsc::UnboundedSender<WorkerSockets>>,
}

impl Workers {
    /// Start one thread per element of `sockets`.
    pub fn spawn(
        sockets: Vec<WorkerSockets>,
        ctx: &ProxyCtx,
        stop: &CancellationToken,
    ) -> io::Result<Workers> {
        let mut threads = Vec::new();
        let mut add = Vec::new();
        for (i, socks) in sockets.into_iter().enumerate() {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            // One shared context per worker: a connection takes one
            // reference count, not a clone of every field.
            let (ctx, stop) = (Arc::new(ctx.clone()), stop.clone());
            let (tx, rx) = mpsc::unbounded_channel();
            let thread = std::thread::Builder::new()
                .name(format!("proxy-worker-{i}"))
                .spawn(move || runtime.block_on(run(socks, rx, ctx, stop)))?;
            threads.push(thread);
            add.push(tx);
        }
        Ok(Workers { threads, add })
    }

    /// Number of worker threads (each new listener needs one socket per worker).
    pub fn count(&self) -> usize {
        self.add.len()
    }

    /// Hand each worker its socket of newly bound listeners.
    pub fn add(&self, sockets: Vec<WorkerSockets>) {
        for (tx, socks) in self.add.iter().zip(sockets) {
            if tx.send(socks).is_err() {
                tracing::error!("a proxy worker is gone; cannot add listeners to it");
            }
        }
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

fn serve_sockets(socks: WorkerSockets, ctx: &Arc<ProxyCtx>) {
    for (info, l, stop) in socks.tcp {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => {
                tokio::spawn(listener::accept_loop(l, info, ctx.clone(), stop));
            }
            Err(e) => {
                tracing::error!(listen = %info.label, error = %e, "cannot serve tcp listener")
            }
        }
    }
    for (info, counters, s, stop) in socks.udp {
        match tokio::net::UdpSocket::from_std(s) {
            Ok(s) => {
                tokio::spawn(udp::serve(s, info, ctx.clone(), counters, stop));
            }
            Err(e) => {
                tracing::error!(listen = %info.label, error = %e, "cannot serve udp listener")
            }
        }
    }
}

async fn run(
    socks: WorkerSockets,
    mut added: mpsc::UnboundedReceiver<WorkerSockets>,
    ctx: Arc<ProxyCtx>,
    stop: CancellationToken,
) {
    serve_sockets(socks, &ctx);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            more = added.recv() => match more {
                Some(socks) => serve_sockets(socks, &ctx),
                None => break,
            },
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
