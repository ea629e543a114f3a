//! A session's end: the one place where a TCP connection or UDP session is
//! turned into its status and written out.
//!
//! Whatever ended a session — both sides closed, the idle timeout, an
//! operator, a refusal, a failure anywhere on the way — arrives here as a
//! [`SessionEnd`]. [`finish`] derives the one status (nginx stream rules:
//! 200 served, also after an idle timeout; 400 bad client data; 403 refused
//! by a plugin; 500 internal; 502 no node reachable; 503 refused by a limit
//! or no route) and writes it, once, to the access log, the route's log
//! plugins (syslog, prometheus), the upstream's passive health check and
//! the listener's counters, followed by one tracing line. No step before it
//! logs its own end.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::copy::End;
use super::error::{Kind, ProxyError, Source};
use super::{ListenerInfo, ProxyCtx};
use crate::access_log::Record;
use crate::plugins::Finished;
use crate::snapshot::{ConnInfo, RouteRt, UpstreamRt};

/// The transport of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// A TCP connection.
    Tcp,
    /// A UDP session (one client address on one listener).
    Udp,
}

impl Protocol {
    /// `TCP` or `UDP`, as `$protocol` prints it.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum SessionEnd {
    /// Both sides finished.
    Closed,
    /// Nothing moved for the upstream's idle timeout (nginx's
    /// `proxy_timeout`): a normal end.
    IdleTimeout,
    /// An operator closed it (Control API).
    ByOperator,
    /// The server is shutting down and the upstream had finished: its
    /// bytes were delivered, so the session did not wait for the client.
    Drained,
    /// The client reset its connection after its whole reply: served.
    ClientReset,
    /// It could not be served, or failed mid-way.
    Failed(ProxyError),
}

impl From<End> for SessionEnd {
    fn from(end: End) -> SessionEnd {
        match end {
            End::Clean => SessionEnd::Closed,
            End::IdleTimeout => SessionEnd::IdleTimeout,
            End::Closed => SessionEnd::ByOperator,
            End::Drained => SessionEnd::Drained,
            End::ClientReset => SessionEnd::ClientReset,
            End::Client(e) => SessionEnd::Failed(Kind::ClientIo(e).into()),
            End::Upstream(e) => SessionEnd::Failed(Kind::UpstreamIo(e).into()),
        }
    }
}

impl From<ProxyError> for SessionEnd {
    fn from(e: ProxyError) -> SessionEnd {
        SessionEnd::Failed(e)
    }
}

impl From<Kind> for SessionEnd {
    fn from(kind: Kind) -> SessionEnd {
        SessionEnd::Failed(kind.into())
    }
}

impl SessionEnd {
    /// The session's `$status`.
    pub fn status(&self) -> u16 {
        match self {
            SessionEnd::Failed(e) => e.status(),
            _ => 200,
        }
    }

    /// The failure, when it was one.
    pub fn error(&self) -> Option<&ProxyError> {
        match self {
            SessionEnd::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Short label of a normal end; `None` for a failure (its message
    /// says it).
    fn label(&self) -> Option<&'static str> {
        Some(match self {
            SessionEnd::Closed => "closed",
            SessionEnd::IdleTimeout => "idle timeout",
            SessionEnd::ByOperator => "closed by operator",
            SessionEnd::Drained => "closed at shutdown",
            SessionEnd::ClientReset => "reset by client after its reply",
            SessionEnd::Failed(_) => return None,
        })
    }
}

/// The node a session used: its backend index in the upstream and its
/// `host:port`.
#[derive(Debug, Clone, Copy)]
pub struct NodeUsed<'a> {
    /// Backend index in the upstream's balancer, when known.
    pub index: Option<usize>,
    /// `host:port`.
    pub label: &'a str,
}

/// What is known of a session when it ends.
#[derive(Debug)]
pub struct Facts<'a> {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// The client (after a trusted PROXY protocol header).
    pub client: SocketAddr,
    /// The listener it came through.
    pub listener: &'a ListenerInfo,
    /// When it was accepted.
    pub started: Instant,
    /// Its stream variables, once known.
    pub conn: Option<&'a ConnInfo>,
    /// The route it matched.
    pub route: Option<&'a RouteRt>,
    /// The upstream it used.
    pub upstream: Option<&'a UpstreamRt>,
    /// The node it used.
    pub node: Option<NodeUsed<'a>>,
    /// Bytes from the client, bytes to the client.
    pub bytes: (u64, u64),
    /// How long connecting the node took, once connected.
    pub connect_time: Option<std::time::Duration>,
}

impl<'a> Facts<'a> {
    /// A session known only by its client and listener.
    pub fn new(
        protocol: Protocol,
        client: SocketAddr,
        listener: &'a ListenerInfo,
        started: Instant,
    ) -> Facts<'a> {
        Facts {
            protocol,
            client,
            listener,
            started,
            conn: None,
            route: None,
            upstream: None,
            node: None,
            bytes: (0, 0),
            connect_time: None,
        }
    }
}

/// Write a session's end, once: its status to the access log, the route's
/// log plugins, the passive health check and the counters, then one
/// tracing line.
pub fn finish(ctx: &ProxyCtx, facts: &Facts<'_>, end: &SessionEnd) {
    let status = end.status();
    let error = end.error();
    // A session that failed to connect names the node it tried last.
    let node = facts.node.or_else(|| match error.map(|e| &e.kind) {
        Some(Kind::Connect(c)) => c.node().map(|label| NodeUsed {
            index: c.failed_index(),
            label,
        }),
        _ => None,
    });
    let node_label = node.map_or("-", |n| n.label);
    let route_id = facts.route.map_or("-", |r| r.id.as_str());

    if let Some(e) = error {
        if matches!(
            e.kind,
            Kind::ProxyHeader(_) | Kind::TlsHandshake(_) | Kind::ClientHello(_)
        ) {
            facts
                .listener
                .stats
                .rejected
                .fetch_add(1, Ordering::Relaxed);
        }
        if e.blames_node() {
            if let (Some(up), Some(index)) = (facts.upstream, node.and_then(|n| n.index)) {
                if let Some(checker) = up.checker() {
                    checker.report_session_failure(index);
                }
            }
        }
    }
    if let Some(log) = &ctx.access_log {
        // The error's text is made only for the access log (tracing
        // formats its own fields only when their level is on).
        let message;
        let end_text = match end.label() {
            Some(l) => l,
            None => {
                message = error.map(ToString::to_string).unwrap_or_default();
                message.as_str()
            }
        };
        log.record(&Record {
            client: facts.client,
            server: facts.conn.map_or(facts.listener.local, |c| {
                SocketAddr::new(c.server_addr, c.server_port)
            }),
            sni: facts.conn.and_then(|c| c.sni.as_deref()),
            connect_time: facts.connect_time,
            protocol_name: facts
                .route
                .and_then(|r| r.protocol.as_deref())
                .map(|p| p.name.as_str()),
            protocol: facts.protocol.as_str(),
            status,
            listener: &facts.listener.label,
            route_id,
            node: node_label,
            bytes_in: facts.bytes.0,
            bytes_out: facts.bytes.1,
            duration: facts.started.elapsed(),
            end: end_text,
        });
    }
    if let (Some(route), Some(conn)) = (facts.route, facts.conn) {
        if route.chain.has_log() {
            route.chain.log(
                conn,
                &Finished {
                    protocol: facts.protocol.as_str(),
                    status,
                    listen: &facts.listener.label,
                    node: node_label,
                    bytes_in: facts.bytes.0,
                    bytes_out: facts.bytes.1,
                    duration: facts.started.elapsed(),
                },
            );
        }
    }
    match error {
        // An operator wants to hear about nodes that cannot be reached and
        // about this host failing; the rest is the clients' business.
        Some(e) if loud(e) => tracing::warn!(
            client = %facts.client,
            listen = %facts.listener.label,
            route_id,
            node = node_label,
            status,
            source = e.source.as_str(),
            error = %e,
            "session failed"
        ),
        Some(e) => tracing::debug!(
            node = node_label,
            status,
            source = e.source.as_str(),
            error = %e,
            bytes_in = facts.bytes.0,
            bytes_out = facts.bytes.1,
            "session refused or failed"
        ),
        None => tracing::debug!(
            node = node_label,
            status,
            end = end.label().unwrap_or_default(),
            bytes_in = facts.bytes.0,
            bytes_out = facts.bytes.1,
            "session finished"
        ),
    }
}

/// Failures worth a warning: no node reachable, or this host failing.
fn loud(e: &ProxyError) -> bool {
    match e.source {
        Source::Internal => true,
        Source::Upstream => matches!(
            e.kind,
            Kind::Connect(_) | Kind::UpstreamTls(_) | Kind::UpstreamTlsConfig(_)
        ),
        _ => false,
    }
}

/// A session refused at the process-wide session cap (TCP connection or a
/// UDP client's first datagram): written as any other end, with 503.
pub fn refuse_at_cap(
    ctx: &ProxyCtx,
    protocol: Protocol,
    client: SocketAddr,
    listener: &ListenerInfo,
) {
    let facts = Facts::new(protocol, client, listener, Instant::now());
    finish(ctx, &facts, &Kind::SessionCap.into());
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    #[test]
    fn normal_ends_are_200_and_failures_carry_their_status() {
        assert_eq!(SessionEnd::from(End::Clean).status(), 200);
        assert_eq!(SessionEnd::from(End::IdleTimeout).status(), 200);
        assert_eq!(SessionEnd::from(End::Closed).status(), 200);
        assert_eq!(SessionEnd::from(End::Drained).status(), 200);
        assert_eq!(SessionEnd::from(End::ClientReset).status(), 200);
        let reset = || io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(SessionEnd::from(End::Client(reset())).status(), 400);
        assert_eq!(SessionEnd::from(End::Upstream(reset())).status(), 502);
        assert_eq!(SessionEnd::from(Kind::NoRoute).status(), 503);
        assert_eq!(
            SessionEnd::from(End::IdleTimeout).label(),
            Some("idle timeout")
        );
        assert_eq!(SessionEnd::from(Kind::SessionCap).label(), None);
    }
}
