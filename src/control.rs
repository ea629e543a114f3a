//! The Control API (`apisix.control`, default 127.0.0.1:9090); the
//! Prometheus export server reads the same state ([`crate::metrics`]).
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
use serde_json::{json, Value};

use crate::health::Checker;
use crate::proxy::listeners::SharedListeners;
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
pub(crate) fn checkers(snap: &Snapshot) -> Vec<Arc<Checker>> {
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
        if let Some(p) = &r.protocol {
            report.protocol = Some(p.name.clone());
            report.requests = Some(r.stats.requests.load(Ordering::Relaxed));
            report.protocol_errors = Some(r.stats.protocol_errors.load(Ordering::Relaxed));
        }
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
