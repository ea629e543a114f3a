//! Stream plugins at run time: each route's `plugins` block compiled once,
//! when a snapshot is built, into a [`Chain`] the data plane runs per session.
//!
//! Two phases, as APISIX's stream subsystem has (apisix/plugin.lua):
//! - **preread**, after the route matched and before any upstream is
//!   contacted: `ip-restriction`, `limit-conn`, `mqtt-proxy` and
//!   `traffic-split` may reject the session (`limit-bandwidth` hands the
//!   session its pacing) (it is closed without a byte
//!   sent, the status code is kept for logs and metrics), delay it, read the
//!   client's first packet or replace the route's upstream;
//! - **log**, when the session has ended: `prometheus` and `syslog`.
//!
//! Plugins run in descending priority. A plugin that config's
//! `stream_plugins` does not enable is ignored (logged once), one whose
//! conf carries `_meta.disable: true` is skipped, and a route naming a
//! plugin this build does not implement is not compiled: it refuses its
//! connections (fail closed). A route without plugins
//! has an empty chain, and the data plane checks [`Chain::is_empty`] before
//! doing anything else, so it costs nothing per connection.
//!
//! State that outlives a snapshot (limit-conn counters, Prometheus counters,
//! syslog senders) lives in [`Shared`], one per process, held by the
//! snapshot's [`Carry`](crate::snapshot::Carry) so every snapshot build and
//! the metrics endpoint reach the same instance.
//!
//! Of the snapshot this module uses only its leaves ([`conn`](crate::snapshot::conn)
//! and [`upstream`](crate::snapshot::upstream)), which import nothing of the
//! plugins: the snapshot compiles chains, chains never see a snapshot.

pub mod expr;
pub mod ip_restriction;
pub mod limit_bandwidth;
pub mod limit_conn;
pub mod mqtt_proxy;
pub mod prometheus;
pub mod syslog;
pub mod traffic_split;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::io::AsyncRead;

use crate::model::{EnabledPlugins, NotEnabled};
use crate::snapshot::conn::{expand_template, ConnInfo};
use crate::snapshot::upstream::UpstreamRt;
use crate::stats::NodeStats;

pub use crate::model::plugins::DEFAULT_ENABLED;

/// Run order: APISIX's plugin priorities (higher runs first).
pub fn priority(name: &str) -> Option<i32> {
    Some(match name {
        "ip-restriction" => 3000,
        "limit-conn" => 1003,
        "limit-bandwidth" => 1002,
        "mqtt-proxy" => 1000,
        "traffic-split" => 966,
        "prometheus" => 500,
        "syslog" => 401,
        _ => return None,
    })
}

/// Stored plugin metadata the plugins read at run time (a change applies
/// to every route at once, without recompiling them).
#[derive(Debug, Default)]
pub struct Metadata {
    /// syslog's `log_format`, for routes whose syslog conf has none.
    syslog_log_format: arc_swap::ArcSwapOption<Map<String, Value>>,
}

impl Metadata {
    /// Put syslog's stored metadata (or none) in force.
    pub fn set_syslog(&self, metadata: Option<&Value>) {
        let format = metadata
            .and_then(|m| m.get("log_format"))
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty());
        let current = self.syslog_log_format.load();
        if current.as_deref() != format {
            self.syslog_log_format.store(format.cloned().map(Arc::new));
        }
    }

    /// syslog's `log_format` from its metadata, if set.
    pub fn syslog_log_format(&self) -> Option<Arc<Map<String, Value>>> {
        self.syslog_log_format.load_full()
    }
}

/// Process-wide plugin state shared by every snapshot.
#[derive(Debug)]
pub struct Shared {
    enabled: RwLock<EnabledPlugins>,
    /// Bumped whenever `enabled` changes: snapshots compiled under an older
    /// generation are not reused, and the publisher rebuilds on a bump.
    generation: tokio::sync::watch::Sender<u64>,
    /// Stored plugin metadata.
    pub metadata: Arc<Metadata>,
    prefix: RwLock<String>,
    /// limit-conn's concurrent-session counters.
    pub limit_conn: Arc<limit_conn::Counters>,
    /// limit-bandwidth's per-route rates and shared buckets.
    pub bandwidth: Arc<limit_bandwidth::Registry>,
    /// The `prometheus` plugin's counters.
    pub metrics: Arc<prometheus::Metrics>,
    syslog: syslog::Registry,
    warned: Mutex<HashSet<String>>,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            enabled: RwLock::new(EnabledPlugins::default()),
            generation: tokio::sync::watch::Sender::new(0),
            metadata: Arc::default(),
            prefix: RwLock::new("/apisix".to_string()),
            limit_conn: Arc::default(),
            bandwidth: Arc::default(),
            metrics: Arc::default(),
            syslog: syslog::Registry::default(),
            warned: Mutex::default(),
        }
    }
}

impl Shared {
    /// Take config's `stream_plugins` and the storage key prefix (used in
    /// limit-conn keys). Call before the first snapshot is built.
    pub fn configure(&self, stream_plugins: &[String], prefix: &str) {
        let wanted = EnabledPlugins::new(stream_plugins);
        let missing: Vec<&String> = stream_plugins
            .iter()
            .filter(|p| !crate::model::plugins::implemented(p))
            .collect();
        if !missing.is_empty() {
            tracing::warn!(
                plugins = ?missing,
                "stream_plugins names plugins this build does not implement; routes naming them refuse their clients"
            );
        }
        if let Ok(mut e) = self.enabled.write() {
            if *e != wanted {
                *e = wanted;
                self.generation.send_modify(|g| *g += 1);
            }
        }
        if let Ok(mut p) = self.prefix.write() {
            *p = prefix.trim_end_matches('/').to_string();
        }
    }

    /// A syslog sender for a validated `conf` outside a plugin chain (a
    /// protocol route's logger), sharing the senders of the plugin.
    pub fn syslog_logger(&self, conf: &Value) -> Result<syslog::Syslog, String> {
        syslog::Syslog::build(&resolve_env(conf), &self.syslog, Arc::clone(&self.metadata))
    }

    /// The plugin names config enables.
    pub fn enabled(&self) -> EnabledPlugins {
        self.enabled
            .read()
            .map(|e| e.clone())
            .unwrap_or_else(|_| EnabledPlugins::new::<&str>([]))
    }

    /// How many times the enabled plugins changed.
    pub fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// Wakes whenever the enabled plugins change (the publisher then
    /// compiles every route again).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    fn prefix(&self) -> String {
        self.prefix
            .read()
            .map(|p| p.clone())
            .unwrap_or_else(|_| "/apisix".to_string())
    }

    /// Log `message` for `what` only the first time (snapshots are rebuilt
    /// on every change; a standing condition is reported once).
    fn warn_once(&self, what: &str, message: &str) {
        let first = self
            .warned
            .lock()
            .map(|mut w| w.insert(what.to_string()))
            .unwrap_or(false);
        if first {
            tracing::warn!(plugin = what, "{message}");
        }
    }
}

/// Why a session was closed in preread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The plugin that rejected it.
    pub plugin: &'static str,
    /// The status code kept for logs and metrics.
    pub code: u16,
    /// Why, for the debug log and the access log.
    pub reason: String,
}

impl Rejected {
    fn new(plugin: &'static str, code: u16, reason: impl Into<String>) -> Rejected {
        Rejected {
            plugin,
            code,
            reason: reason.into(),
        }
    }
}

/// An upstream chosen by `traffic-split` instead of the route's own, with
/// the counters of its nodes (in backend order) under this route.
#[derive(Debug)]
pub struct Target {
    /// The upstream.
    pub upstream: Arc<UpstreamRt>,
    /// Counters per backend of `upstream`.
    pub node_stats: Vec<Arc<NodeStats>>,
}

/// What the plugins decided for one session; dropping it ends the
/// session's limit-conn counts.
#[derive(Debug, Default)]
pub struct Session {
    /// Client bytes read in preread (the MQTT CONNECT packet and anything
    /// after it), to be sent to the upstream before relaying.
    pub forward: Vec<u8>,
    /// The upstream `traffic-split` chose, if any.
    pub upstream: Option<Arc<Target>>,
    /// The pacing `limit-bandwidth` gives the session's TCP relay.
    pub bandwidth: Option<limit_bandwidth::Pacing>,
    limits: Vec<limit_conn::Guard>,
}

/// A finished session as the log phase sees it.
#[derive(Debug, Clone)]
pub struct Finished<'a> {
    /// `TCP` or `UDP`.
    pub protocol: &'static str,
    /// Session status (200, 400, 403, 502, 503, ...).
    pub status: u16,
    /// The listener's `listen_addr` label.
    pub listen: &'a str,
    /// `host:port` of the last node tried; empty or `-` when none.
    pub node: &'a str,
    /// Bytes received from the client.
    pub bytes_in: u64,
    /// Bytes sent to the client.
    pub bytes_out: u64,
    /// Session duration.
    pub duration: Duration,
}

/// The status code of the metrics: 200, 400, 403, 500, 502 and 503 are kept,
/// other 4xx become 400, anything else 500.
pub fn fold_code(code: u16) -> u16 {
    match code {
        200 | 400 | 403 | 500 | 502 | 503 => code,
        400..=499 => 400,
        _ => 500,
    }
}

/// Stream variables of a session (`remote_addr`, `server_port`,
/// `mqtt_client_id`, `route_id`, `status`, ...), as `$name` templates,
/// limit-conn keys and expressions read them.
pub struct Vars<'a> {
    conn: &'a ConnInfo,
    chain: &'a Chain,
    end: Option<&'a Finished<'a>>,
}

impl Vars<'_> {
    /// The value of a variable; `None` when unset.
    pub fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.conn.var(name) {
            return Some(v);
        }
        let v = match name {
            "route_id" => self.chain.route_id.clone(),
            "route_name" => self.chain.route_name.clone()?,
            "service_id" => self.chain.service_id.clone()?,
            "pid" => std::process::id().to_string(),
            "time_iso8601" => crate::timefmt::rfc3339(std::time::SystemTime::now()),
            "msec" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                format!("{:.3}", now.as_secs_f64())
            }
            _ => {
                let e = self.end?;
                match name {
                    "status" => e.status.to_string(),
                    "protocol" => e.protocol.to_string(),
                    "bytes_received" => e.bytes_in.to_string(),
                    "bytes_sent" => e.bytes_out.to_string(),
                    "session_time" => format!("{:.3}", e.duration.as_secs_f64()),
                    "upstream_addr" if !e.node.is_empty() && e.node != "-" => e.node.to_string(),
                    _ => return None,
                }
            }
        };
        Some(v)
    }

    /// Replace each `$name` in `template` by its value (unset: nothing).
    /// Returns the text and how many variables had a value.
    pub fn expand(&self, template: &str) -> (String, usize) {
        expand_template(template, &|name| self.get(name))
    }
}

/// One compiled plugin.
#[derive(Debug)]
enum Plugin {
    IpRestriction(ip_restriction::IpRestriction),
    LimitConn(limit_conn::LimitConn),
    LimitBandwidth(limit_bandwidth::LimitBandwidth),
    MqttProxy(mqtt_proxy::MqttProxy),
    TrafficSplit(traffic_split::TrafficSplit),
    Prometheus(prometheus::Prometheus),
    Syslog(syslog::Syslog),
}

impl Plugin {
    fn name(&self) -> &'static str {
        match self {
            Plugin::IpRestriction(_) => "ip-restriction",
            Plugin::LimitConn(_) => "limit-conn",
            Plugin::LimitBandwidth(_) => "limit-bandwidth",
            Plugin::MqttProxy(_) => "mqtt-proxy",
            Plugin::TrafficSplit(_) => "traffic-split",
            Plugin::Prometheus(_) => "prometheus",
            Plugin::Syslog(_) => "syslog",
        }
    }
}

/// What a synchronous preread step asks of the caller.
enum Step<'a> {
    Next,
    Delay(Duration),
    ReadMqtt(&'a mqtt_proxy::MqttProxy),
}

/// A route's compiled plugins, in run order.
#[derive(Debug, Default)]
pub struct Chain {
    plugins: Vec<Plugin>,
    preread: bool,
    log: bool,
    route_id: String,
    route_name: Option<String>,
    service_id: Option<String>,
}

/// Compiles an inline upstream from its origin label and JSON (reusing an
/// unchanged one from the previous snapshot).
pub type CompileUpstream<'a> = dyn Fn(String, &Value) -> Result<Arc<UpstreamRt>, String> + 'a;

/// What compiling a route's plugins needs from the snapshot build.
pub struct BuildCtx<'a> {
    /// Route id.
    pub route_id: &'a str,
    /// Route `name`.
    pub route_name: Option<&'a str>,
    /// Route `service_id`.
    pub service_id: Option<&'a str>,
    /// Store revision of the route's last write (its conf version).
    pub version: u64,
    /// Process-wide plugin state.
    pub shared: &'a Shared,
    /// Stored upstreams by id.
    pub upstreams: &'a imbl::OrdMap<String, Arc<UpstreamRt>>,
    /// Compile an inline upstream (origin, JSON).
    pub compile: &'a CompileUpstream<'a>,
    /// The counters of a node (by label) under this route.
    pub node_stats: &'a dyn Fn(&str) -> Arc<NodeStats>,
}

impl Chain {
    /// Compile a route's `plugins`. An error leaves the route out of the
    /// snapshot (a plugin that cannot run must not be skipped silently:
    /// ip-restriction would open the route).
    pub fn build(plugins: &Map<String, Value>, ctx: &BuildCtx<'_>) -> Result<Chain, String> {
        let mut chain = Chain {
            route_id: ctx.route_id.to_string(),
            route_name: ctx.route_name.map(str::to_string),
            service_id: ctx.service_id.map(str::to_string),
            ..Chain::default()
        };
        if plugins.is_empty() {
            return Ok(chain);
        }
        let enabled = ctx.shared.enabled();
        let mut active = Map::new();
        for (name, conf) in plugins {
            if !crate::model::plugins::implemented(name) {
                if crate::model::plugins::is_disabled(conf) {
                    continue;
                }
                // Fail closed: the route must not run without it.
                return Err(format!("unknown plugin [{name}]"));
            }
            if !enabled.contains(name) {
                ctx.shared.warn_once(
                    name,
                    "plugin is not enabled by stream_plugins; ignored on every route",
                );
                continue;
            }
            if !crate::model::plugins::is_disabled(conf) {
                active.insert(name.clone(), conf.clone());
            }
        }
        crate::model::plugins::check_plugins(&active, &enabled, NotEnabled::Refuse)?;
        for (name, conf) in &active {
            let conf = resolve_env(conf);
            let plugin = match name.as_str() {
                "ip-restriction" => {
                    Plugin::IpRestriction(ip_restriction::IpRestriction::build(&conf)?)
                }
                "limit-conn" => Plugin::LimitConn(limit_conn::LimitConn::build(
                    &conf,
                    format!(
                        "{}/stream_routes/{}:{}",
                        ctx.shared.prefix(),
                        ctx.route_id,
                        ctx.version
                    ),
                    Arc::clone(&ctx.shared.limit_conn),
                )?),
                "limit-bandwidth" => {
                    Plugin::LimitBandwidth(limit_bandwidth::LimitBandwidth::build(
                        &conf,
                        &format!("{}/stream_routes/{}", ctx.shared.prefix(), ctx.route_id),
                        Arc::clone(&ctx.shared.bandwidth),
                    )?)
                }
                "mqtt-proxy" => Plugin::MqttProxy(mqtt_proxy::MqttProxy::build(&conf)?),
                "traffic-split" => {
                    Plugin::TrafficSplit(traffic_split::TrafficSplit::build(&conf, ctx)?)
                }
                "prometheus" => Plugin::Prometheus(prometheus::Prometheus::build(
                    &conf,
                    ctx.route_id,
                    ctx.route_name,
                    &ctx.shared.metrics,
                )),
                "syslog" => Plugin::Syslog(syslog::Syslog::build(
                    &conf,
                    &ctx.shared.syslog,
                    Arc::clone(&ctx.shared.metadata),
                )?),
                other => return Err(format!("unknown plugin [{other}]")),
            };
            chain.plugins.push(plugin);
        }
        chain
            .plugins
            .sort_by_key(|p| std::cmp::Reverse(priority(p.name()).unwrap_or(0)));
        chain.preread = chain.plugins.iter().any(|p| {
            matches!(
                p,
                Plugin::IpRestriction(_)
                    | Plugin::LimitConn(_)
                    | Plugin::LimitBandwidth(_)
                    | Plugin::MqttProxy(_)
                    | Plugin::TrafficSplit(_)
            )
        });
        chain.log = chain
            .plugins
            .iter()
            .any(|p| matches!(p, Plugin::Prometheus(_) | Plugin::Syslog(_)));
        Ok(chain)
    }

    /// True when the route has no plugin to run.
    pub fn is_empty(&self) -> bool {
        self.plugins.is_empty()
    }

    /// True when a plugin runs in preread.
    pub fn has_preread(&self) -> bool {
        self.preread
    }

    /// True when a plugin runs in the log phase.
    pub fn has_log(&self) -> bool {
        self.log
    }

    /// The service the route runs under, if any.
    pub fn service_id(&self) -> Option<&str> {
        self.service_id.as_deref()
    }

    /// The route's limit-bandwidth state for `/v1/stream/stats` (None
    /// without the plugin).
    pub fn bandwidth(&self) -> Option<&Arc<limit_bandwidth::Rates>> {
        self.plugins.iter().find_map(|p| match p {
            Plugin::LimitBandwidth(b) => Some(b.rates()),
            _ => None,
        })
    }

    /// Names of the compiled plugins, in run order.
    pub fn names(&self) -> Vec<&'static str> {
        self.plugins.iter().map(Plugin::name).collect()
    }

    fn vars<'a>(&'a self, conn: &'a ConnInfo, end: Option<&'a Finished<'a>>) -> Vars<'a> {
        Vars {
            conn,
            chain: self,
            end,
        }
    }

    fn step<'a>(
        &self,
        p: &'a Plugin,
        s: &mut Session,
        conn: &ConnInfo,
    ) -> Result<Step<'a>, Rejected> {
        match p {
            Plugin::IpRestriction(p) => p.check(conn.remote_addr).map(|()| Step::Next),
            Plugin::LimitConn(p) => {
                let (guard, delay) = p.enter(&self.vars(conn, None))?;
                s.limits.push(guard);
                Ok(if delay.is_zero() {
                    Step::Next
                } else {
                    Step::Delay(delay)
                })
            }
            Plugin::LimitBandwidth(p) => {
                s.bandwidth = Some(p.pacing(&self.vars(conn, None)));
                Ok(Step::Next)
            }
            Plugin::MqttProxy(p) => Ok(Step::ReadMqtt(p)),
            Plugin::TrafficSplit(p) => {
                s.upstream = p.choose(&self.vars(conn, None))?;
                Ok(Step::Next)
            }
            Plugin::Prometheus(_) | Plugin::Syslog(_) => Ok(Step::Next),
        }
    }

    /// The preread phase of a TCP session: run every preread plugin in
    /// order, reading the client when `mqtt-proxy` asks (the bytes land in
    /// `s.forward`) and setting `conn.mqtt_client_id`.
    pub async fn preread<R>(
        &self,
        s: &mut Session,
        conn: &mut ConnInfo,
        client: &mut R,
    ) -> Result<(), Rejected>
    where
        R: AsyncRead + Unpin + ?Sized,
    {
        for p in &self.plugins {
            let step = self.step(p, s, conn);
            match step {
                Ok(Step::Next) => {}
                Ok(Step::Delay(d)) => tokio::time::sleep(d).await,
                Ok(Step::ReadMqtt(m)) => match m.preread(client, &mut s.forward).await {
                    Ok(id) => conn.mqtt_client_id = id,
                    Err(r) => return Err(r),
                },
                Err(r) => return Err(r),
            }
        }
        Ok(())
    }

    /// The preread phase of a UDP session, at its first datagram: as
    /// [`Chain::preread`] without reading the client (`mqtt-proxy` is
    /// TCP-only) and without limit-conn's delay (a UDP listener serves
    /// every client from one loop, so a session must not sleep there).
    pub fn admit(&self, s: &mut Session, conn: &ConnInfo) -> Result<(), Rejected> {
        for p in &self.plugins {
            self.step(p, s, conn)?;
        }
        Ok(())
    }

    /// The log phase, once per finished session.
    pub fn log(&self, conn: &ConnInfo, end: &Finished<'_>) {
        if !self.log {
            return;
        }
        let vars = self.vars(conn, Some(end));
        for p in &self.plugins {
            match p {
                Plugin::Prometheus(p) => p.log(end),
                Plugin::Syslog(p) => p.log(&vars),
                _ => {}
            }
        }
    }
}

/// Replace `$env://NAME` (or `$ENV://NAME`) strings anywhere in a conf by
/// the environment variable's value (unset: kept, with a warning).
fn resolve_env(v: &Value) -> Value {
    match v {
        Value::String(s) => {
            let name = s
                .strip_prefix("$env://")
                .or_else(|| s.strip_prefix("$ENV://"));
            match name {
                Some(n) => match std::env::var(n) {
                    Ok(val) => Value::String(val),
                    Err(_) => {
                        tracing::warn!(
                            var = n,
                            "plugin conf refers to an unset environment variable"
                        );
                        v.clone()
                    }
                },
                None => v.clone(),
            }
        }
        Value::Array(a) => Value::Array(a.iter().map(resolve_env).collect()),
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, x)| (k.clone(), resolve_env(x))).collect())
        }
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_fold_as_apisix_metrics() {
        assert_eq!(fold_code(200), 200);
        assert_eq!(fold_code(403), 403);
        assert_eq!(fold_code(404), 400);
        assert_eq!(fold_code(429), 400);
        assert_eq!(fold_code(503), 503);
        assert_eq!(fold_code(504), 500);
        assert_eq!(fold_code(301), 500);
    }

    #[test]
    fn priorities_are_unique_and_ordered() {
        let names = crate::model::plugins::IMPLEMENTED;
        let p: Vec<i32> = names.iter().filter_map(|n| priority(n)).collect();
        assert_eq!(p.len(), names.len());
        assert!(p.windows(2).all(|w| w[0] > w[1]), "{p:?}");
    }

    fn snapshot(routes: &[(&str, Value)]) -> crate::snapshot::Snapshot {
        use crate::model::Kind;
        use crate::store::{Dump, Entry};
        let mut entries: Vec<Entry> = routes
            .iter()
            .map(|(id, plugins)| Entry {
                kind: Kind::StreamRoute,
                id: id.to_string(),
                value: Arc::new(serde_json::json!({
                    "plugins": plugins,
                    "upstream": {"nodes": {"127.0.0.1:1995": 1}},
                })),
                create_rev: 1,
                mod_rev: 7,
            })
            .collect();
        entries.push(Entry {
            kind: Kind::Upstream,
            id: "u2".into(),
            value: Arc::new(serde_json::json!({"nodes": {"127.0.0.1:1996": 1}})),
            create_rev: 1,
            mod_rev: 1,
        });
        crate::snapshot::Snapshot::build(
            &Dump {
                revision: 7,
                entries,
            },
            None,
            &crate::snapshot::Carry::default(),
        )
    }

    fn conn() -> ConnInfo {
        ConnInfo {
            remote_addr: "127.0.0.1".parse().unwrap(),
            remote_port: 40000,
            server_addr: "127.0.0.2".parse().unwrap(),
            server_port: 9100,
            mqtt_client_id: None,
            sni: None,
        }
    }

    #[test]
    fn chains_follow_priority_enabling_and_disable() {
        let snap = snapshot(&[
            (
                "1",
                serde_json::json!({
                    "syslog": {"host": "127.0.0.1", "port": 5044, "_meta": {"disable": true}},
                    "prometheus": {},
                    "traffic-split": {"rules": [{"weighted_upstreams": [{"upstream_id": "u2", "weight": 1}]}]},
                    "limit-conn": {"conn": 1, "burst": 0, "default_conn_delay": 0.1, "key": "remote_addr"},
                    "ip-restriction": {"whitelist": ["127.0.0.0/8"]},
                }),
            ),
            ("2", serde_json::json!({"ip-restriction": {}})),
            ("3", serde_json::json!({})),
        ]);
        let routes = snap.routes();
        let ids: Vec<&str> = routes.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            ["1", "2", "3"],
            "a route with a bad plugin conf keeps its filters"
        );
        assert!(
            snap.routes()[1].upstream.is_err(),
            "and refuses its connections"
        );
        let chain = &snap.routes()[0].chain;
        assert_eq!(
            chain.names(),
            ["ip-restriction", "limit-conn", "traffic-split"],
            "prometheus is not enabled by default; syslog is disabled"
        );
        assert!(chain.has_preread() && !chain.has_log());
        assert!(snap.routes()[2].chain.is_empty());
        let mut s = Session::default();
        chain.admit(&mut s, &conn()).unwrap();
        let chosen = s.upstream.as_ref().expect("split upstream");
        assert_eq!(chosen.upstream.upstream_id.as_deref(), Some("u2"));
        assert_eq!(s.node_stats_for(&snap.routes()[0]).len(), 1);
        let mut again = Session::default();
        let r = chain.admit(&mut again, &conn()).unwrap_err();
        assert_eq!((r.plugin, r.code), ("limit-conn", 503));
        drop(s);
        assert!(chain.admit(&mut Session::default(), &conn()).is_ok());
    }

    #[test]
    fn limit_conn_keys() {
        let key = |conf: Value| {
            let snap = snapshot(&[("1", serde_json::json!({ "limit-conn": conf }))]);
            let chain = &snap.routes()[0].chain;
            let Some(Plugin::LimitConn(l)) = chain.plugins.first() else {
                panic!("limit-conn compiled");
            };
            let c = conn();
            l.key_for(&chain.vars(&c, None))
        };
        let base = serde_json::json!({"conn": 1, "burst": 0, "default_conn_delay": 0.1});
        let with = |extra: Value| {
            let mut v = base.clone();
            for (k, x) in extra.as_object().unwrap() {
                v[k] = x.clone();
            }
            v
        };
        assert_eq!(
            key(with(serde_json::json!({"key": "remote_addr"}))),
            "/apisix/stream_routes/1:7:127.0.0.1"
        );
        assert_eq!(
            key(with(
                serde_json::json!({"key": "$remote_addr $server_addr", "key_type": "var_combination"})
            )),
            "/apisix/stream_routes/1:7:127.0.0.1 127.0.0.2"
        );
        assert_eq!(
            key(with(
                serde_json::json!({"key": "$proxy_protocol_addr $proxy_protocol_port", "key_type": "var_combination"})
            )),
            "/apisix/stream_routes/1:7:127.0.0.1",
            "nothing resolved: the client address"
        );
        assert_eq!(
            key(with(serde_json::json!({"key": "mqtt_client_id"}))),
            "/apisix/stream_routes/1:7:127.0.0.1"
        );
    }

    #[test]
    fn env_references_are_resolved() {
        let path = std::env::var("PATH").unwrap_or_default();
        let v = serde_json::json!({"a": "$env://PATH", "b": ["$ENV://PATH", 1], "c": "x"});
        let r = resolve_env(&v);
        assert_eq!(r["a"], path);
        assert_eq!(r["b"][0], path);
        assert_eq!(r["c"], "x");
    }
}
