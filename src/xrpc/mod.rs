//! Protocol-aware stream routes (APISIX's xRPC): a route with
//! `protocol: {name, conf, logger, metric}` has its client's bytes decoded
//! into requests and its upstream's into replies, which gives per-request
//! fault injection, metrics and logs, and the routing of single requests
//! to subordinate routes (`protocol.superior_id`).
//!
//! The parts:
//! - a [`Protocol`] compiles a route's `conf` and opens a [`Codec`] per
//!   connection; the codec decodes requests from the client's bytes and
//!   makes a [`ReplyDecoder`] per upstream connection, both incremental
//!   over the relay's buffers. A second protocol is one more file beside
//!   [`redis`] and one line in [`find`];
//! - [`RouteProtocol`] is a route's compiled `protocol` block with the
//!   hooks run per request ([`RouteProtocol::finish`]: metrics, loggers);
//! - [`relay`] moves the bytes: requests go out whole, in order, each to
//!   its route's upstream, and replies come back to the client in request
//!   order whichever upstream answered.
//!
//! Plain TCP routes never come here: they keep the splice relay.

pub mod logger;
pub mod redis;
mod relay;

use std::borrow::Cow;
use std::fmt::Debug;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::plugins;
use crate::snapshot::{ConnInfo, UpstreamRt};
use crate::stats::RouteStats;

pub use relay::{relay, Session};

/// A request decoded from the client.
#[derive(Debug, Default)]
pub struct Request {
    /// Its length in bytes (it is forwarded whole, unchanged).
    pub len: usize,
    /// The command (lower case), for metrics and subordinate routes; a
    /// known name is borrowed, not allocated.
    pub command: Cow<'static, str>,
    /// Its words for logs (long values cut), when loggers asked for them.
    pub line: Vec<String>,
    /// How long a fault holds it before it is forwarded.
    pub delay: Option<Duration>,
    /// It must go where the previous request went (inside a transaction).
    pub pinned: bool,
}

/// Which request an upstream frame answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The oldest request sent to this upstream and not yet answered.
    Oldest,
    /// That request when its command is this one; otherwise no request
    /// (a pub/sub message).
    IfCommand(String),
}

/// What a [`ReplyDecoder`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyStep {
    /// These many bytes consumed; the frame needs more.
    More(usize),
    /// A frame ended after these many bytes.
    Frame(usize, Answer),
}

/// Decodes one client connection's requests.
pub trait Codec: Send {
    /// Read on in `buf`, which starts at the current request and keeps
    /// every byte given before; `Ok(None)` until the request is complete,
    /// `Err(reason)` when the bytes are not this protocol.
    fn decode_request(&mut self, buf: &[u8], want_line: bool) -> Result<Option<Request>, String>;

    /// A decoder for the replies of one upstream connection.
    fn reply_decoder(&self) -> Box<dyn ReplyDecoder>;
}

/// Finds the frames of one upstream connection.
pub trait ReplyDecoder: Send {
    /// `req` was sent on this connection (some protocols change mode).
    fn sent(&mut self, req: &Request);

    /// Read on in `buf` (the bytes after those consumed so far).
    fn decode(&mut self, buf: &[u8]) -> Result<ReplyStep, String>;
}

/// A protocol compiled for one route.
pub trait Protocol: Send + Sync + Debug {
    /// A codec for a new client connection.
    fn codec(self: Arc<Self>) -> Box<dyn Codec>;

    /// Whether this (subordinate) route takes `req`.
    fn takes(&self, req: &Request) -> bool;

    /// The name of the variable holding a request's words for log formats.
    fn line_var(&self) -> &'static str;
}

/// The protocol named `name` compiled with its `conf`; `None` when this
/// build does not implement it.
pub fn find(name: &str, conf: Option<&Value>) -> Option<Result<Arc<dyn Protocol>, String>> {
    match name {
        "redis" => Some(redis::Redis::compile(conf).map(|r| Arc::new(r) as Arc<dyn Protocol>)),
        _ => None,
    }
}

/// A route's compiled `protocol` block.
#[derive(Debug)]
pub struct RouteProtocol {
    /// The protocol name (`$protocol_name`).
    pub name: String,
    /// The protocol with the route's `conf`.
    pub proto: Arc<dyn Protocol>,
    /// `logger` entries.
    pub loggers: Vec<logger::Logger>,
    /// `metric.enable`, with `prometheus` among the stream plugins.
    pub metrics: bool,
}

impl RouteProtocol {
    /// Compile a validated `protocol` block.
    pub fn compile(p: &Value, shared: &plugins::Shared) -> Result<RouteProtocol, String> {
        let name = p
            .get("name")
            .and_then(Value::as_str)
            .ok_or("protocol without a name")?;
        let proto =
            find(name, p.get("conf")).ok_or_else(|| format!("unknown protocol [{name}]"))??;
        let loggers = p
            .get("logger")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|l| logger::Logger::compile(l, shared))
            .collect::<Result<Vec<_>, _>>()?;
        let metric = p
            .get("metric")
            .and_then(|m| m.get("enable"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        Ok(RouteProtocol {
            name: name.to_string(),
            proto,
            loggers,
            metrics: metric && shared.enabled().contains("prometheus"),
        })
    }

    /// The end of one request (answered, or unanswered at the session's
    /// end): count it, observe its latency, run the loggers.
    pub fn finish(&self, stats: &RouteStats, route_id: &str, conn: &ConnInfo, done: &Done<'_>) {
        stats.requests.fetch_add(1, Ordering::Relaxed);
        let secs = done.rpc_time.as_secs_f64();
        if self.metrics {
            stats.observe_command(&done.req.command, secs);
        }
        if self.loggers.is_empty() {
            return;
        }
        let line_var = self.proto.line_var();
        let get = |name: &str| -> Option<String> {
            match name {
                "rpc_time" => Some(format!("{secs:.3}")),
                "route_id" => Some(route_id.to_string()),
                "protocol_name" => Some(self.name.clone()),
                n if n == line_var => Some(done.req.line.join(" ")),
                _ => conn.var(name),
            }
        };
        for l in &self.loggers {
            l.log(&get);
        }
    }

    /// Whether requests need their words (a logger will print them).
    pub fn wants_line(&self) -> bool {
        !self.loggers.is_empty()
    }
}

/// A finished request, for [`RouteProtocol::finish`].
#[derive(Debug)]
pub struct Done<'a> {
    /// The request.
    pub req: &'a Request,
    /// From decoded to answered (a fault's delay included).
    pub rpc_time: Duration,
}

/// A subordinate route: requests its protocol takes go to its upstream.
#[derive(Debug)]
pub struct Subordinate {
    /// Route id.
    pub id: String,
    /// Its compiled `protocol` block.
    pub protocol: RouteProtocol,
    /// Its upstream, or why none.
    pub upstream: Result<Arc<UpstreamRt>, String>,
}
