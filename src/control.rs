//! The Control API (`apisix.control`, default 127.0.0.1:9090) and the
//! Prometheus export server (`plugin_attr.prometheus.export_addr`).
//!
//! Both only read: the live counters of [`crate::stats`], the snapshot in
//! force and the listeners. The one write is closing a live connection.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use crate::health::Checker;
use crate::proxy::listeners::SharedListeners;
use crate::proxy::ListenerInfo;
use crate::snapshot::publish::SharedSnapshot;
use crate::snapshot::{Carry, Snapshot};
use crate::stats::{memory_rss_bytes, NodeReport, RouteReport};

/// What the Control API and the metrics endpoint read.
#[derive(Debug, Clone)]
pub struct ControlState {
    /// Live counters, connections and plugin metrics.
    pub carry: Arc<Carry>,
    /// The routes in force.
    pub snapshot: SharedSnapshot,
    /// The stream listeners in force.
    pub listeners: SharedListeners,
    /// Storage key prefix (`/apisix`).
    pub prefix: String,
    /// The session cap and its counters.
    pub limits: Arc<crate::proxy::Limits>,
    /// The etcd endpoints' state (etcd back-end only).
    pub etcd: Option<crate::store::etcd::EtcdStatus>,
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error_msg": "not found"})),
    )
        .into_response()
}

/// The Control API router.
pub fn router(state: ControlState) -> Router {
    Router::new()
        .route("/v1/healthcheck", get(healthcheck))
        .route("/v1/healthcheck/{src_type}", get(healthcheck_missing_id))
        .route("/v1/healthcheck/{src_type}/", get(healthcheck_missing_id))
        .route("/v1/healthcheck/{src_type}/{src_id}", get(healthcheck_one))
        .route("/v1/stream/stats", get(stream_stats))
        .route("/v1/stream/connections", get(connections))
        .route("/v1/stream/skipped", get(skipped))
        .route("/v1/etcd", get(etcd_status))
        .route(
            "/v1/stream/connections/{id}",
            axum::routing::delete(close_connection),
        )
        .fallback(|| async { not_found() })
        .with_state(Arc::new(state))
}

/// Every health checker in force: those of stream routes' inline upstreams
/// (route order), then those of stored upstreams (id order), as APISIX
/// lists them.
fn checkers(snap: &Snapshot) -> Vec<Arc<Checker>> {
    let mut inline = Vec::new();
    let mut stored = BTreeMap::new();
    for r in snap.routes() {
        let Ok(up) = &r.upstream else { continue };
        let Some(c) = up.health().cloned() else {
            continue;
        };
        match &up.upstream_id {
            Some(id) => {
                stored.insert(id.clone(), c);
            }
            None => inline.push(c),
        }
    }
    inline.extend(stored.into_values());
    inline
}

/// The HTML page APISIX serves to browsers (`Accept: text/html`).
fn healthcheck_html(reports: &[Arc<Checker>], prefix: &str) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let mut rows = String::new();
    let mut index = 0;
    for c in reports {
        for n in c.nodes() {
            index += 1;
            let k = n.state.counter;
            rows.push_str(&format!(
                "<tr><td>{index}</td><td>{}</td><td>{}</td><td>{}({}:{})</td><td>{}</td>\
                 <td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&format!("{prefix}/{}", c.name())),
                c.checks().kind(),
                esc(&n.hostname),
                esc(&n.ip),
                n.port,
                n.state.status.as_str(),
                k.success,
                k.tcp_failure,
                k.http_failure,
                k.timeout_failure,
            ));
        }
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">\
         <title>APISIX upstream check status</title></head><body>\
         <h1>APISIX upstream check status</h1><table border=\"1\">\
         <tr><th>Index</th><th>Upstream</th><th>Check type</th><th>Host</th><th>Status</th>\
         <th>Success counts</th><th>TCP Failures</th><th>HTTP Failures</th>\
         <th>TIMEOUT Failures</th></tr>\n{rows}</table></body></html>\n"
    )
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// Health checker reports: an array, or APISIX's `{}` when no checker runs.
async fn healthcheck(State(state): State<Arc<ControlState>>, headers: HeaderMap) -> Response {
    let all = checkers(&state.snapshot.load());
    if wants_html(&headers) {
        return Html(healthcheck_html(&all, &state.prefix)).into_response();
    }
    if all.is_empty() {
        return Json(json!({})).into_response();
    }
    let reports: Vec<Value> = all.iter().map(|c| c.report(&state.prefix)).collect();
    Json(Value::Array(reports)).into_response()
}

async fn healthcheck_missing_id(Path(src_type): Path<String>) -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"error_msg": format!("missing src id for src type {src_type}")})),
    )
        .into_response()
}

async fn healthcheck_one(
    State(state): State<Arc<ControlState>>,
    Path((src_type, src_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if !["routes", "services", "upstreams", "stream_routes"].contains(&src_type.as_str()) {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error_msg": format!("invalid src type {src_type}")})),
        )
            .into_response();
    }
    let snap = state.snapshot.load();
    // A route reports only its inline upstream's checker (APISIX).
    let found: Option<Option<Arc<Checker>>> = match src_type.as_str() {
        "stream_routes" => snap.routes().iter().find(|r| r.id == src_id).map(|r| {
            r.upstream
                .as_ref()
                .ok()
                .filter(|u| u.upstream_id.is_none())
                .and_then(|u| u.health().cloned())
        }),
        "upstreams" => snap.upstream(&src_id).map(|u| u.health().cloned()),
        _ => None,
    };
    let msg = match found {
        Some(Some(c)) => {
            if wants_html(&headers) {
                return Html(healthcheck_html(&[c], &state.prefix)).into_response();
            }
            return Json(c.report(&state.prefix)).into_response();
        }
        Some(None) => format!("no checker for {src_type}[{src_id}]"),
        None => format!("{src_type}[{src_id}] not found"),
    };
    (StatusCode::NOT_FOUND, Json(json!({"error_msg": msg}))).into_response()
}

/// Server TLS handshakes since start, full and resumed.
fn tls_handshakes(state: &ControlState) -> Value {
    let (full, resumed) = state.carry.tls_policy.handshakes();
    json!({"full": full, "resumed": resumed})
}

/// The body of `GET /v1/stream/stats`.
pub fn stats_report(state: &ControlState) -> Value {
    let snap = state.snapshot.load();
    let mut routes = Vec::new();
    let mut nodes = Vec::new();
    for r in snap.routes() {
        let mut report = RouteReport::new(&r.id, &r.stats, r.summary());
        report.limit_bandwidth = r.chain.bandwidth().map(|b| b.report());
        routes.push(report);
        if let Ok(up) = &r.upstream {
            let checker = up.health();
            for (i, (b, s)) in up.balancer.backends().iter().zip(&r.node_stats).enumerate() {
                nodes.push(NodeReport::new(
                    &r.id,
                    up.upstream_id.clone(),
                    &b.label,
                    s,
                    checker.as_ref().map(|c| c.healthy(i)),
                ));
            }
        }
    }
    let set = state.listeners.load();
    let listeners: Vec<Value> = set
        .tcp
        .iter()
        .map(|l| (l, "tcp"))
        .chain(set.udp.iter().map(|(l, _)| (l, "udp")))
        .map(|(l, proto)| {
            json!({
                "listen": l.label, "protocol": proto,
                "active": l.stats.active.load(Ordering::Relaxed).max(0),
                "bytes_in": l.stats.bytes_in.load(Ordering::Relaxed),
                "bytes_out": l.stats.bytes_out.load(Ordering::Relaxed),
                "rejected": l.stats.rejected.load(Ordering::Relaxed),
            })
        })
        .collect();
    let (total, active) = state.carry.stats.totals();
    let (failed, last) = crate::server::upgrade::failures();
    json!({
        "pid": std::process::id(),
        "upgrade": {"failures": failed, "last_failure": last},
        "uptime_s": state.carry.stats.uptime_s(),
        "active": active,
        "total": total,
        "version": env!("CARGO_PKG_VERSION"),
        "memory_rss_bytes": memory_rss_bytes(),
        "connections_open": state.carry.stats.connections.len(),
        "tls_handshakes": tls_handshakes(state),
        "routes": routes,
        "nodes": nodes,
        "listeners": listeners,
        "limits": {
            "max_sessions": state.limits.max_sessions,
            "sessions": state.limits.live(),
            "refused": state.limits.refused.load(Ordering::Relaxed),
            "accept_errors": state.limits.accept_errors.load(Ordering::Relaxed),
            "tcp": {
                "max_sessions": state.limits.max_tcp,
                "sessions": state.limits.live_tcp(),
                "refused": state.limits.refused_tcp.load(Ordering::Relaxed),
            },
            "udp": {
                "max_sessions": state.limits.max_udp,
                "sessions": state.limits.live_udp(),
                "refused": state.limits.refused_udp.load(Ordering::Relaxed),
                "max_sessions_per_source": state.limits.udp_per_source,
                "per_source_above": state.limits.udp_per_source_above,
                "sources": state.limits.udp_sources(),
                "refused_per_source": state.limits.refused_udp_source.load(Ordering::Relaxed),
            },
        },
    })
}

async fn stream_stats(State(state): State<Arc<ControlState>>) -> Json<Value> {
    Json(stats_report(&state))
}

/// `GET /v1/etcd`: every etcd endpoint's state (404 without etcd).
async fn etcd_status(State(state): State<Arc<ControlState>>) -> Response {
    match &state.etcd {
        Some(etcd) => Json(etcd.report()).into_response(),
        None => not_found(),
    }
}

/// `GET /v1/stream/skipped`: every stored object the data plane cannot
/// serve as written (left out, or its upstream unusable), with why.
async fn skipped(State(state): State<Arc<ControlState>>) -> Json<Value> {
    let snap = state.snapshot.load();
    let list: Vec<Value> = snap
        .skipped()
        .map(|(kind, id, reason)| json!({"type": kind.segment(), "id": id, "reason": reason}))
        .collect();
    Json(json!({"revision": snap.revision, "skipped": list}))
}

async fn connections(State(state): State<Arc<ControlState>>) -> Json<Value> {
    let list: Vec<Value> = state
        .carry
        .stats
        .connections
        .list()
        .into_iter()
        .map(|(id, c)| {
            json!({
                "id": id,
                "protocol": c.meta.protocol,
                "client": c.meta.client.to_string(),
                "listener": c.meta.listener,
                "route_id": c.meta.route_id,
                "node": c.meta.node,
                "sni": c.meta.sni,
                "bytes_in": c.bytes_in.load(Ordering::Relaxed),
                "bytes_out": c.bytes_out.load(Ordering::Relaxed),
                "age_s": c.started.elapsed().as_secs_f64(),
            })
        })
        .collect();
    Json(json!({"connections": list}))
}

async fn close_connection(
    State(state): State<Arc<ControlState>>,
    Path(id): Path<String>,
) -> Response {
    match id.parse::<u64>() {
        Ok(n) if state.carry.stats.connections.close(n) => {
            Json(json!({"closed": n})).into_response()
        }
        Ok(n) => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_msg": format!("connection {n} not found")})),
        )
            .into_response(),
        Err(_) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error_msg": format!("invalid connection id {id}")})),
        )
            .into_response(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenLabel {
    listen_addr: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BandwidthLabel {
    listen_addr: String,
    r#type: String,
    side: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    route: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    route: String,
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabel {
    name: String,
    ip: String,
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeInfoLabel {
    hostname: String,
    version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyLabel {
    key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    code: String,
    listen_addr: String,
    node: String,
}

/// Register a family under `name` and fill it.
fn family<L, M>(reg: &mut Registry, name: &str, help: &str, fill: impl FnOnce(&Family<L, M>))
where
    L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    M: prometheus_client::metrics::TypedMetric
        + prometheus_client::encoding::EncodeMetric
        + Default
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let f = Family::<L, M>::default();
    fill(&f);
    reg.register(name, help, f);
}

/// The Prometheus text exposition of the current counters: APISIX's stream
/// metric names and labels (`apisix_stream_connection_total` and
/// `apisix_stream_status`, counted by the `prometheus` plugin for the routes
/// that enable it; `apisix_stream_active_connections`,
/// `apisix_stream_bandwidth`, `apisix_upstream_status`, `apisix_node_info`
/// for everything), plus per-route and per-node figures.
pub fn metrics_text(state: &ControlState, prefix: &str) -> String {
    let mut reg = Registry::with_prefix(prefix.trim_end_matches('_'));
    let snap = state.snapshot.load();
    let set = state.listeners.load();
    let listeners: Vec<&Arc<ListenerInfo>> = set
        .tcp
        .iter()
        .chain(set.udp.iter().map(|(l, _)| l))
        .collect();
    family::<RouteLabel, Counter>(
        &mut reg,
        "stream_connection",
        "Finished stream sessions per route with the prometheus plugin",
        |f| {
            for (route, total) in state.carry.plugins.metrics.connection_totals() {
                f.get_or_create(&RouteLabel { route }).inc_by(total);
            }
        },
    );
    family::<Vec<(String, String)>, Counter>(
        &mut reg,
        "stream_tls_handshakes",
        "Server TLS handshakes by kind (full or resumed)",
        |f| {
            let (full, resumed) = state.carry.tls_policy.handshakes();
            for (kind, n) in [("full", full), ("resumed", resumed)] {
                f.get_or_create(&vec![("kind".to_string(), kind.to_string())])
                    .inc_by(n);
            }
        },
    );
    // Gauge-typed to keep APISIX's name (a counter gains `_total`).
    family::<StatusLabel, Gauge>(
        &mut reg,
        "stream_status",
        "Finished stream sessions per status code, listener and node",
        |f| {
            for ((code, listen_addr, node), n) in state.carry.plugins.metrics.status_totals() {
                f.get_or_create(&StatusLabel {
                    code: code.to_string(),
                    listen_addr,
                    node,
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        },
    );
    family::<ListenLabel, Gauge>(
        &mut reg,
        "stream_active_connections",
        "Live stream sessions per listener",
        |f| {
            for l in &listeners {
                f.get_or_create(&ListenLabel {
                    listen_addr: l.label.clone(),
                })
                .set(l.stats.active.load(Ordering::Relaxed).max(0));
            }
        },
    );
    // A gauge-typed family keeps APISIX's exact name (a counter would gain
    // a `_total` suffix in the exposition).
    family::<BandwidthLabel, Gauge>(
        &mut reg,
        "stream_bandwidth",
        "Stream bytes per listener",
        |f| {
            for l in &listeners {
                let from_clients = l.stats.bytes_in.load(Ordering::Relaxed);
                let to_clients = l.stats.bytes_out.load(Ordering::Relaxed);
                for (ty, side, v) in [
                    ("ingress", "downstream", from_clients),
                    ("egress", "upstream", from_clients),
                    ("egress", "downstream", to_clients),
                    ("ingress", "upstream", to_clients),
                ] {
                    f.get_or_create(&BandwidthLabel {
                        listen_addr: l.label.clone(),
                        r#type: ty.into(),
                        side: side.into(),
                    })
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            }
        },
    );
    family::<RouteLabel, Gauge>(
        &mut reg,
        "stream_route_active_connections",
        "Live sessions per route",
        |f| {
            for r in snap.routes() {
                f.get_or_create(&RouteLabel {
                    route: r.id.clone(),
                })
                .set(r.stats.active.load(Ordering::Relaxed).max(0));
            }
        },
    );
    family::<DirectionLabel, Gauge>(
        &mut reg,
        "stream_route_bandwidth_limit",
        "limit-bandwidth rate per route in bytes/s (in: upload, out: download; 0: unlimited)",
        |f| {
            for r in snap.routes() {
                let Some(b) = r.chain.bandwidth() else {
                    continue;
                };
                let (down, up) = b.limits();
                for (dir, v) in [("in", up), ("out", down)] {
                    f.get_or_create(&DirectionLabel {
                        route: r.id.clone(),
                        direction: dir.into(),
                    })
                    .set(i64::try_from(v).unwrap_or(i64::MAX));
                }
            }
        },
    );
    family::<RouteLabel, Gauge>(
        &mut reg,
        "stream_route_throttled",
        "1 when limit-bandwidth held a session of the route back within the last second",
        |f| {
            for r in snap.routes() {
                if let Some(b) = r.chain.bandwidth() {
                    f.get_or_create(&RouteLabel {
                        route: r.id.clone(),
                    })
                    .set(i64::from(b.throttled()));
                }
            }
        },
    );
    family::<DirectionLabel, Counter>(
        &mut reg,
        "stream_route_bytes",
        "Bytes per route (in: from clients, out: to clients)",
        |f| {
            for r in snap.routes() {
                for (dir, v) in [("in", &r.stats.bytes_in), ("out", &r.stats.bytes_out)] {
                    f.get_or_create(&DirectionLabel {
                        route: r.id.clone(),
                        direction: dir.into(),
                    })
                    .inc_by(v.load(Ordering::Relaxed));
                }
            }
        },
    );
    let routes = snap.routes();
    let node_rows: Vec<(String, String, &Arc<crate::stats::NodeStats>)> = routes
        .iter()
        .filter_map(|r| r.upstream.as_ref().ok().map(|u| (r, u)))
        .flat_map(|(r, u)| {
            u.balancer
                .backends()
                .iter()
                .zip(&r.node_stats)
                .map(move |(b, s)| (r.id.clone(), b.label.clone(), s))
        })
        .collect();
    family::<NodeLabel, Gauge>(
        &mut reg,
        "stream_node_active_connections",
        "Live sessions per route and node",
        |f| {
            for (route, node, s) in &node_rows {
                f.get_or_create(&NodeLabel {
                    route: route.clone(),
                    node: node.clone(),
                })
                .set(s.active.load(Ordering::Relaxed).max(0));
            }
        },
    );
    family::<NodeLabel, Counter>(
        &mut reg,
        "stream_node_connect_failures",
        "Failed tries to reach a node",
        |f| {
            for (route, node, s) in &node_rows {
                f.get_or_create(&NodeLabel {
                    route: route.clone(),
                    node: node.clone(),
                })
                .inc_by(s.connect_failures.load(Ordering::Relaxed));
            }
        },
    );
    family::<UpstreamLabel, Gauge>(
        &mut reg,
        "upstream_status",
        "Upstream node health from the health checkers (1 healthy or mostly_healthy)",
        |f| {
            for c in checkers(&snap) {
                for n in c.nodes() {
                    f.get_or_create(&UpstreamLabel {
                        name: format!("{}/{}", state.prefix, c.name()),
                        ip: n.ip,
                        port: n.port.to_string(),
                    })
                    .set(i64::from(n.state.status.is_up()));
                }
            }
        },
    );
    family::<NodeInfoLabel, Gauge>(&mut reg, "node_info", "Information about this node", |f| {
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        f.get_or_create(&NodeInfoLabel {
            hostname,
            version: env!("CARGO_PKG_VERSION").into(),
        })
        .set(1);
    });
    if let Some(etcd) = &state.etcd {
        let reachable = Gauge::<i64>::default();
        reachable.set(i64::from(etcd.reachable()));
        reg.register(
            "etcd_reachable",
            "Config server etcd reachable from APISIX, 0 is unreachable",
            reachable,
        );
        family::<KeyLabel, Gauge>(
            &mut reg,
            "etcd_modify_indexes",
            "Etcd modify index for APISIX keys",
            |f| {
                for (key, rev) in etcd.modify_indexes() {
                    f.get_or_create(&KeyLabel { key: key.into() })
                        .set(i64::try_from(rev).unwrap_or(i64::MAX));
                }
            },
        );
    }
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &reg) {
        tracing::warn!(error = %e, "cannot encode metrics");
    }
    out
}

/// The Prometheus export server: `GET <export_uri>` only.
pub fn metrics_router(state: ControlState, export_uri: &str, prefix: String) -> Router {
    let state = Arc::new((state, prefix));
    Router::new()
        .route(
            export_uri,
            get(|State(s): State<Arc<(ControlState, String)>>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    metrics_text(&s.0, &s.1),
                )
            }),
        )
        .fallback(|| async { not_found() })
        .with_state(state)
}
