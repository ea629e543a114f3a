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
//!
//! The accept loop takes a session slot under [`Limits`](super::Limits)
//! before spawning [`tcp::handle`]; past the cap, and on descriptor or
//! memory exhaustion, it closes or backs off instead of spinning.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::connect::is_resource_error;
use super::udp::{self, UdpCounters};
use super::{session, tcp, ListenerInfo, ProxyCtx};

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
                tokio::spawn(accept_loop(l, info, ctx.clone(), stop));
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
    tokio::spawn(timer_anchor());
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

/// Keep a timer due within [`ANCHOR_TICK`] on this worker's timer wheel.
///
/// Arming a timer that is due before every other one makes tokio wake its
/// own driver (an eventfd write and one more `epoll_wait`), so that the
/// driver sleeps no longer than the new deadline. A connection arms such
/// timers all the time (its connect timeout is usually the nearest
/// deadline), which cost a wake-up on most new connections. With a tick
/// always due within a second, any deadline a second or more away is never
/// the nearest one, and arming it costs nothing but the wheel insert. The
/// tick itself wakes the worker once a second.
async fn timer_anchor() {
    let mut tick = tokio::time::interval(ANCHOR_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
    }
}

/// Period of [`timer_anchor`].
const ANCHOR_TICK: Duration = Duration::from_secs(1);

/// Accept until `stop`, handing each connection to [`tcp::handle`].
async fn accept_loop(
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
                    session::refuse_at_cap(&ctx, session::Protocol::Tcp, peer, &info);
                    if quiet_until.is_none_or(|t| Instant::now() >= t) {
                        tracing::warn!(listen = %info.label, max_sessions = ctx.limits.max_sessions, "session limit reached; closing new connections");
                        quiet_until = Some(Instant::now() + Duration::from_secs(10));
                    }
                    continue;
                };
                let info = info.clone();
                let task_ctx = ctx.clone();
                ctx.connections
                    .spawn(tcp::handle(task_ctx, stream, peer, info, permit));
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
