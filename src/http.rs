//! The HTTP front of the Admin API, the Control API and the metrics
//! endpoint, with the limits a server facing untrusted clients needs.
//!
//! Each API gets its own accept loop over hyper's HTTP/1 connection driver:
//! - at most [`MAX_CONNECTIONS`] open connections per API; past that a new
//!   connection is closed at once (a flood of idle sockets cannot starve the
//!   process of descriptors or memory);
//! - a request head must arrive within `client_header_timeout`, and the
//!   same timer closes a keep-alive connection that sits idle between requests;
//! - bodies are bounded in size and time by the handlers themselves.
//!
//! The peer's socket address is attached to every request as axum's
//! `ConnectInfo`, so `allow_admin` sees the real TCP peer and never a header.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Open connections one API accepts at once.
pub const MAX_CONNECTIONS: usize = 256;

/// The limits one API server applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest wait for a request head; hyper restarts the same timer when a
    /// keep-alive connection turns idle, so it also bounds idle gaps.
    pub header_timeout: Duration,
    /// Open connections at once.
    pub max_connections: usize,
}

impl Limits {
    /// From `nginx_config.http` (the idle gap is the smaller of
    /// `client_header_timeout` and `keepalive_timeout`).
    pub fn from_config(http: &crate::config::NginxHttp) -> Limits {
        Limits {
            header_timeout: http.client_header_timeout.min(http.keepalive_timeout),
            max_connections: MAX_CONNECTIONS,
        }
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
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    tasks.spawn(async move {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let builder = Arc::new(builder);
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
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                tracing::debug!(%peer, "{what}: too many open connections; closing a new one");
                drop(stream);
                continue;
            };
            let app = app.clone();
            let builder = builder.clone();
            let stop = stop.clone();
            conns.spawn(async move {
                let _slot = slot;
                let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                    req.extensions_mut().insert(ConnectInfo(peer));
                    let app = app.clone();
                    async move {
                        let resp = app.oneshot(req.map(axum::body::Body::new)).await;
                        Ok::<_, Infallible>(match resp {
                            Ok(r) => r,
                            Err(never) => match never {},
                        })
                    }
                });
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                tokio::select! {
                    r = conn.as_mut() => {
                        if let Err(e) = r {
                            tracing::debug!(%peer, error = %e, "{what}: connection ended");
                        }
                    }
                    () = stop.cancelled() => {
                        conn.as_mut().graceful_shutdown();
                        let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
                    }
                }
            });
        }
    });
}
