//! The HTTP front of the Admin API, the Control API and the metrics
//! endpoint, with the limits a server facing untrusted clients needs.
//!
//! Each API gets its own accept loop over hyper's HTTP/1 connection driver:
//! - at most [`MAX_CONNECTIONS`] open connections per API. When they are all
//!   taken, a new connection takes the slot of the connection that has been
//!   silent longest (one that never sent a byte first, then one idle between
//!   requests); only when every slot is in the middle of a request is the
//!   new connection closed at once. A flood of idle sockets can neither
//!   starve the process of descriptors nor lock a working client out;
//! - a connection that sends nothing is closed after [`FIRST_BYTE_TIMEOUT`]
//!   (or `client_header_timeout` when shorter);
//! - a request head must arrive within `client_header_timeout`, and the
//!   same timer closes a keep-alive connection that sits idle between requests;
//! - on the Admin API, a peer outside `allow_admin` is told so at accept:
//!   it never takes one of the slots above. It gets its 403 (with the
//!   reason) on one of [`OUTSIDER_CONNECTIONS`] separate slots, one request
//!   per connection, or a closed connection when those are taken;
//! - bodies are bounded in size and time by the handlers themselves.
//!
//! The peer's socket address is attached to every request as axum's
//! `ConnectInfo`, so `allow_admin` sees the real TCP peer and never a header.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Open connections one API accepts at once.
pub const MAX_CONNECTIONS: usize = 256;
/// Connections from peers outside `allow_admin` served at once (each only
/// gets its 403); past that they are closed at accept.
pub const OUTSIDER_CONNECTIONS: usize = 16;
/// Longest a new connection may stay silent before it is closed.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(5);

/// The limits one API server applies.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest wait for a request head; hyper restarts the same timer when a
    /// keep-alive connection turns idle, so it also bounds idle gaps.
    pub header_timeout: Duration,
    /// Longest a new connection may stay silent.
    pub first_byte_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
    /// Peers that may take a slot (`allow_admin`); `None` = every peer.
    pub allow: Option<Arc<[IpNet]>>,
}

impl Limits {
    /// From `nginx_config.http` (the idle gap is the smaller of
    /// `client_header_timeout` and `keepalive_timeout`), open to every peer.
    pub fn from_config(http: &crate::config::NginxHttp) -> Limits {
        let header_timeout = http.client_header_timeout.min(http.keepalive_timeout);
        Limits {
            header_timeout,
            first_byte_timeout: FIRST_BYTE_TIMEOUT.min(header_timeout),
            max_connections: MAX_CONNECTIONS,
            allow: None,
        }
    }

    /// The same limits, with slots only for peers in `allow` (`None` = all).
    pub fn only_for(mut self, allow: Option<Vec<IpNet>>) -> Limits {
        self.allow = allow.map(Arc::from);
        self
    }

    /// Whether `peer` may take a slot.
    fn allows(&self, peer: IpAddr) -> bool {
        let ip = match peer {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
            v4 => v4,
        };
        self.allow
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
    }
}

/// What the accept loop knows of one open connection.
#[derive(Debug)]
struct ConnState {
    /// When it was accepted.
    opened: Instant,
    /// Whether it has sent a byte.
    spoken: AtomicBool,
    /// Requests being handled now.
    busy: AtomicUsize,
    /// When its last request was answered, in milliseconds since `opened`.
    idle_since_ms: AtomicU64,
    /// Cancelled when a new connection takes its slot.
    evict: CancellationToken,
}

impl ConnState {
    fn new() -> ConnState {
        ConnState {
            opened: Instant::now(),
            spoken: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
            evict: CancellationToken::new(),
        }
    }

    /// When it turned idle last (or was opened).
    fn idle_since(&self) -> Instant {
        self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Relaxed))
    }
}

/// The open connections of one API, at most `max`.
#[derive(Debug)]
struct Slots {
    max: usize,
    open: Mutex<(u64, HashMap<u64, Arc<ConnState>>)>,
}

/// How a new connection was let in.
enum Admitted {
    /// A free slot.
    Free(Slot),
    /// The slot of an idle connection, which is closing.
    Evicted(Slot),
}

impl Slots {
    fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            max: max.max(1),
            open: Mutex::new((0, HashMap::new())),
        })
    }

    /// A slot for a new connection, taken from the connection silent longest
    /// when all are in use, or `None` when every connection is mid-request.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let (next, conns) = &mut *open;
        let mut evicted = false;
        if conns.len() >= self.max {
            // Never spoken first (oldest first), then idle between requests.
            let silent = conns
                .iter()
                .filter(|(_, c)| !c.spoken.load(Ordering::Relaxed))
                .min_by_key(|(_, c)| c.opened);
            let idle = || {
                conns
                    .iter()
                    .filter(|(_, c)| c.busy.load(Ordering::Relaxed) == 0)
                    .min_by_key(|(_, c)| c.idle_since())
            };
            let victim = silent.or_else(idle).map(|(id, _)| *id)?;
            if let Some(c) = conns.remove(&victim) {
                c.evict.cancel();
            }
            evicted = true;
        }
        *next += 1;
        let state = Arc::new(ConnState::new());
        conns.insert(*next, state.clone());
        let slot = Slot {
            slots: self.clone(),
            id: *next,
            state,
        };
        Some(if evicted {
            Admitted::Evicted(slot)
        } else {
            Admitted::Free(slot)
        })
    }
}

/// One connection's place in [`Slots`]; given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self
            .slots
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        open.1.remove(&self.id);
    }
}

/// One request in progress on a connection; marks it idle when dropped.
struct Busy(Arc<ConnState>);

impl Busy {
    fn new(state: &Arc<ConnState>) -> Busy {
        state.busy.fetch_add(1, Ordering::Relaxed);
        Busy(state.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let since = self.0.opened.elapsed().as_millis();
        self.0
            .idle_since_ms
            .store(u64::try_from(since).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Wait for the first byte of `stream` for at most `limit`: whether one came
/// (false on silence, EOF or an error).
async fn first_byte(stream: &TcpStream, limit: Duration) -> bool {
    let mut probe = [0u8; 1];
    let peeked = tokio::time::timeout(limit, stream.peek(&mut probe)).await;
    matches!(peeked, Ok(Ok(n)) if n > 0)
}

/// Everything one connection task needs.
struct ConnCtx {
    app: axum::Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    stop: CancellationToken,
    what: &'static str,
    first_byte: Duration,
}

impl ConnCtx {
    /// Serve one connection: wait for its first byte, then HTTP/1 until it
    /// ends, `stop` (graceful) or `evict` (graceful: an idle one closes now).
    async fn run(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        state: Option<Arc<ConnState>>,
        evict: CancellationToken,
    ) {
        let what = self.what;
        let spoke = tokio::select! {
            spoke = first_byte(&stream, self.first_byte) => spoke,
            () = evict.cancelled() => false,
            () = self.stop.cancelled() => false,
        };
        if !spoke {
            tracing::debug!(%peer, "{what}: closing a connection that sent nothing");
            return;
        }
        if let Some(s) = &state {
            s.spoken.store(true, Ordering::Relaxed);
        }
        let app = self.app;
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            let busy = state.as_ref().map(Busy::new);
            async move {
                let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                drop(busy);
                Ok::<_, Infallible>(match resp {
                    Ok(r) => r,
                    Err(never) => match never {},
                })
            }
        });
        let conn = self.builder.serve_connection(TokioIo::new(stream), svc);
        tokio::pin!(conn);
        let why = tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "{what}: connection ended");
                }
                return;
            }
            () = self.stop.cancelled() => "shutting down",
            () = evict.cancelled() => "its slot went to a new connection",
        };
        tracing::debug!(%peer, why, "{what}: closing a connection");
        conn.as_mut().graceful_shutdown();
        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    }
}

/// Serve `app` on `listener` until `cancel`; in-flight requests finish first.
pub fn serve(
    tasks: &TaskTracker,
    cancel: &CancellationToken,
    listener: TcpListener,
    app: axum::Router,
    what: &'static str,
    limits: Limits,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "{what} listening");
    }
    let stop = cancel.clone();
    let conns = tasks.clone();
    let slots = Slots::new(limits.max_connections);
    let outsiders = Arc::new(Semaphore::new(OUTSIDER_CONNECTIONS));
    tasks.spawn(async move {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let builder = Arc::new(builder);
        // A refused peer gets its answer and nothing more: one request, and
        // a head that must come as fast as a first byte.
        let mut refused = hyper::server::conn::http1::Builder::new();
        refused
            .timer(TokioTimer::new())
            .header_read_timeout(limits.first_byte_timeout)
            .keep_alive(false);
        let refused = Arc::new(refused);
        let mut quiet_until: Option<Instant> = None;
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors: wait instead of spinning.
                        tracing::debug!(error = %e, "{what}: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let ctx = |builder: &Arc<hyper::server::conn::http1::Builder>| ConnCtx {
                app: app.clone(),
                builder: builder.clone(),
                stop: stop.clone(),
                what,
                first_byte: limits.first_byte_timeout,
            };
            if !limits.allows(peer.ip()) {
                let Ok(permit) = outsiders.clone().try_acquire_owned() else {
                    tracing::debug!(%peer, "{what}: peer outside allow_admin; closed at accept");
                    continue;
                };
                let ctx = ctx(&refused);
                conns.spawn(async move {
                    let _permit = permit;
                    ctx.run(stream, peer, None, CancellationToken::new()).await;
                });
                continue;
            }
            let slot = match slots.admit() {
                Some(Admitted::Free(slot)) => slot,
                Some(Admitted::Evicted(slot)) => {
                    if quiet_until.is_none_or(|t| Instant::now() >= t) {
                        tracing::warn!(max = slots.max, "{what}: connection limit reached; closing the connections silent longest to serve new ones");
                        quiet_until = Some(Instant::now() + Duration::from_secs(10));
                    }
                    slot
                }
                None => {
                    tracing::debug!(%peer, "{what}: every connection is busy; closing a new one");
                    continue;
                }
            };
            let ctx = ctx(&builder);
            conns.spawn(async move {
                let state = slot.state.clone();
                let evict = state.evict.clone();
                ctx.run(stream, peer, Some(state), evict).await;
                drop(slot);
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: Option<Admitted>) -> Slot {
        match a {
            Some(Admitted::Free(s)) | Some(Admitted::Evicted(s)) => s,
            None => panic!("refused"),
        }
    }

    #[test]
    fn a_full_table_gives_the_longest_silent_slot_away() {
        let slots = Slots::new(3);
        let a = slot(slots.admit());
        let b = slot(slots.admit());
        let c = slot(slots.admit());
        // a spoke and is mid-request, b spoke and is idle, c never spoke.
        a.state.spoken.store(true, Ordering::Relaxed);
        let busy = Busy::new(&a.state);
        b.state.spoken.store(true, Ordering::Relaxed);
        drop(Busy::new(&b.state));
        let d = slots.admit();
        assert!(matches!(d, Some(Admitted::Evicted(_))));
        assert!(c.state.evict.is_cancelled(), "the silent one goes first");
        assert!(!b.state.evict.is_cancelled());
        let d = slot(d);
        d.state.spoken.store(true, Ordering::Relaxed);
        let _d_busy = Busy::new(&d.state);
        let e = slot(slots.admit());
        assert!(b.state.evict.is_cancelled(), "then the idle one");
        e.state.spoken.store(true, Ordering::Relaxed);
        let _e_busy = Busy::new(&e.state);
        assert!(slots.admit().is_none(), "all busy: the new one is refused");
        drop(busy);
        assert!(slots.admit().is_some(), "a finished request frees a slot");
        assert!(a.state.evict.is_cancelled());
        drop((a, b, c));
    }

    #[test]
    fn only_allowed_peers_take_slots() {
        let http = crate::config::NginxHttp::default();
        let open = Limits::from_config(&http);
        assert!(open.allows("10.0.0.1".parse().expect("ip")));
        assert!(open.first_byte_timeout <= FIRST_BYTE_TIMEOUT);
        let only = open.only_for(Some(vec!["127.0.0.0/24".parse().expect("net")]));
        assert!(only.allows("127.0.0.9".parse().expect("ip")));
        assert!(only.allows("::ffff:127.0.0.9".parse().expect("ip")));
        assert!(!only.allows("127.0.1.9".parse().expect("ip")));
    }
}
