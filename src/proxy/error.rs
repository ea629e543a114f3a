//! Why a session could not be served, classified by where the fault lies.
//!
//! Every early end of a TCP connection or UDP session is a [`ProxyError`]:
//! a [`Kind`] (what happened, with the underlying error) and the [`Source`]
//! it is blamed on. The source alone decides the session's `$status`, as
//! nginx's stream module sets it, so the access log, syslog, Prometheus and
//! the passive health report can never disagree about one session.

use std::io;

use super::connect::ConnectError;
use super::proxy_protocol::ReadError;
use crate::plugins::Rejected;

/// Who a session's failure is blamed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The client sent bad data or failed mid-session (400).
    Client,
    /// No node could be reached, or the node failed mid-session (502).
    Upstream,
    /// A plugin refused the session (its code: 403 for ip-restriction).
    Plugin,
    /// limit-conn or the process-wide session cap refused it (503).
    Limit,
    /// Nothing is configured to serve it: no route matched, or the route
    /// has no usable upstream (503, as APISIX answers).
    Route,
    /// This host failed (no socket to open, ...) (500).
    Internal,
}

impl Source {
    /// Short name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Client => "client",
            Source::Upstream => "upstream",
            Source::Plugin => "plugin",
            Source::Limit => "limit",
            Source::Route => "route",
            Source::Internal => "internal",
        }
    }
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Kind {
    /// A missing or malformed PROXY protocol header.
    #[error("bad PROXY protocol header: {0}")]
    ProxyHeader(#[from] ReadError),
    /// The client's TLS handshake failed.
    #[error("tls handshake failed: {0}")]
    TlsHandshake(String),
    /// A passthrough listener found no usable ClientHello.
    #[error("no usable ClientHello: {0}")]
    ClientHello(String),
    /// The client's socket failed before the session was routed.
    #[error("connection gone before routing: {0}")]
    ClientGone(io::Error),
    /// Reading from or writing to the client failed while relaying.
    #[error("client error: {0}")]
    ClientIo(io::Error),
    /// The process-wide session cap was reached.
    #[error("session limit reached")]
    SessionCap,
    /// No route matched.
    #[error("not hit any route")]
    NoRoute,
    /// The route's upstream cannot be used (why).
    #[error("{0}")]
    NoUpstream(String),
    /// A preread plugin closed the session.
    #[error("refused by {}: {}", .0.plugin, .0.reason)]
    Refused(Rejected),
    /// No node could be connected.
    #[error(transparent)]
    Connect(ConnectError),
    /// The PROXY protocol header could not be sent to the node.
    #[error("cannot send PROXY protocol header: {0}")]
    ProxyHeaderToUpstream(io::Error),
    /// The upstream's TLS client configuration is unusable.
    #[error("cannot speak TLS to upstream: {0}")]
    UpstreamTlsConfig(String),
    /// The TLS handshake with the node failed.
    #[error("{0}")]
    UpstreamTls(String),
    /// Bytes a plugin read in preread could not be sent to the node.
    #[error("cannot send preread bytes upstream: {0}")]
    SendFirst(io::Error),
    /// Reading from or writing to the node failed while relaying.
    #[error("upstream error: {0}")]
    UpstreamIo(io::Error),
}

/// A session's failure: what happened and who it is blamed on.
#[derive(Debug)]
pub struct ProxyError {
    /// Who it is blamed on (decides the status).
    pub source: Source,
    /// What happened.
    pub kind: Kind,
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.kind)
    }
}

impl From<Kind> for ProxyError {
    fn from(kind: Kind) -> ProxyError {
        let source = match &kind {
            Kind::ProxyHeader(_)
            | Kind::TlsHandshake(_)
            | Kind::ClientHello(_)
            | Kind::ClientGone(_)
            | Kind::ClientIo(_) => Source::Client,
            Kind::SessionCap => Source::Limit,
            Kind::NoRoute | Kind::NoUpstream(_) => Source::Route,
            Kind::Refused(r) if r.plugin == "limit-conn" => Source::Limit,
            Kind::Refused(_) => Source::Plugin,
            Kind::Connect(ConnectError::Local { .. }) => Source::Internal,
            Kind::Connect(_)
            | Kind::ProxyHeaderToUpstream(_)
            | Kind::UpstreamTlsConfig(_)
            | Kind::UpstreamTls(_)
            | Kind::SendFirst(_)
            | Kind::UpstreamIo(_) => Source::Upstream,
        };
        ProxyError { source, kind }
    }
}

impl ProxyError {
    /// The session status nginx's stream module would log for it.
    pub fn status(&self) -> u16 {
        match self.source {
            Source::Client => 400,
            Source::Upstream => 502,
            Source::Plugin => match &self.kind {
                Kind::Refused(r) => r.code,
                _ => 403,
            },
            Source::Limit | Source::Route => 503,
            Source::Internal => 500,
        }
    }

    /// True when the node this session used is to blame (a passive health
    /// failure for it).
    pub fn blames_node(&self) -> bool {
        self.source == Source::Upstream && !matches!(self.kind, Kind::UpstreamTlsConfig(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(plugin: &'static str, code: u16) -> ProxyError {
        Kind::Refused(Rejected {
            plugin,
            code,
            reason: "no".into(),
        })
        .into()
    }

    #[test]
    fn statuses_follow_nginx_stream_rules() {
        let io = || io::Error::from(io::ErrorKind::ConnectionReset);
        let cases: Vec<(ProxyError, u16)> = vec![
            (Kind::ProxyHeader(ReadError::Eof).into(), 400),
            (Kind::TlsHandshake("bad".into()).into(), 400),
            (Kind::ClientHello("bad".into()).into(), 400),
            (Kind::ClientIo(io()).into(), 400),
            (rejected("ip-restriction", 403), 403),
            (rejected("mqtt-proxy", 503), 503),
            (rejected("limit-conn", 503), 503),
            (Kind::SessionCap.into(), 503),
            (Kind::NoRoute.into(), 503),
            (Kind::NoUpstream("gone".into()).into(), 503),
            (Kind::Connect(ConnectError::NoNode).into(), 502),
            (Kind::UpstreamTls("bad".into()).into(), 502),
            (Kind::UpstreamIo(io()).into(), 502),
            (
                Kind::Connect(ConnectError::Local {
                    node: "n".into(),
                    error: io(),
                })
                .into(),
                500,
            ),
        ];
        for (e, status) in cases {
            assert_eq!(e.status(), status, "{e} ({})", e.source.as_str());
            assert_eq!(e.blames_node(), status == 502, "{e}");
        }
        assert_eq!(rejected("limit-conn", 503).source, Source::Limit);
        assert_eq!(rejected("ip-restriction", 403).source, Source::Plugin);
    }
}
