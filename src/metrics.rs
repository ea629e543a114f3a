//! The Prometheus export server (`plugin_attr.prometheus.export_addr`):
//! the stream metrics written as APISIX's exporter writes them.
//!
//! The body is the Prometheus text format 0.0.4 with APISIX's names, HELP
//! texts and types: `apisix_stream_connection_total`, `apisix_stream_status`
//! and `apisix_stream_bandwidth` are counters (the last two keep their
//! names without `_total`, as APISIX's Lua library writes them),
//! `apisix_stream_active_connections`, `apisix_upstream_status` and
//! `apisix_node_info` gauges. Families come sorted by name and series by
//! their labels, as APISIX's exporter sorts them. A scraper whose `Accept`
//! asks for `application/openmetrics-text` gets OpenMetrics 1.0 instead
//! (counter families named without `_total`, samples with it, `# EOF`).

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::control::{checkers, ControlState};
use crate::proxy::ListenerInfo;
use crate::stats::{CommandStats, LATENCY_BUCKETS};

/// A metric family's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// Only goes up (resets at restart).
    Counter,
    /// Goes up and down.
    Gauge,
}

impl MetricType {
    fn as_str(self) -> &'static str {
        match self {
            MetricType::Counter => "counter",
            MetricType::Gauge => "gauge",
        }
    }
}

/// One series: label pairs and a value.
pub type Sample = (Vec<(&'static str, String)>, i64);

/// A metric family: its full name (prefix included), HELP text, type and
/// series.
#[derive(Debug, Clone)]
pub struct Family {
    /// Full name as the 0.0.4 text writes it.
    pub name: String,
    /// HELP text.
    pub help: &'static str,
    /// Counter or gauge.
    pub kind: MetricType,
    /// The series.
    pub samples: Vec<Sample>,
}

/// The exposition format a scraper asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (the default, as APISIX).
    Text004,
    /// OpenMetrics 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Text004,
        }
    }

    /// The `Content-Type` of a body in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text004 => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// Label values escaped as both formats want them (`\\`, `\"`, `\n`).
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// HELP text escaped (`\\`, `\n`).
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Write `families` in `format`: sorted by name, series by labels.
pub fn encode(mut families: Vec<Family>, format: Format) -> String {
    families.sort_by(|a, b| a.name.cmp(&b.name));
    let mut out = String::new();
    // A family without series is left out, as APISIX's exporter leaves it.
    for mut f in families.into_iter().filter(|f| !f.samples.is_empty()) {
        f.samples.sort();
        let (family_name, sample_name) = match (format, f.kind) {
            (Format::OpenMetrics, MetricType::Counter) => {
                let base = f.name.strip_suffix("_total").unwrap_or(&f.name).to_string();
                let sample = format!("{base}_total");
                (base, sample)
            }
            _ => (f.name.clone(), f.name.clone()),
        };
        let _ = writeln!(out, "# HELP {family_name} {}", escape_help(f.help));
        let _ = writeln!(out, "# TYPE {family_name} {}", f.kind.as_str());
        for (labels, value) in &f.samples {
            out.push_str(&sample_name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(k);
                    out.push_str("=\"");
                    escape_label(v, &mut out);
                    out.push('"');
                }
                out.push('}');
            }
            let _ = writeln!(out, " {value}");
        }
    }
    if format == Format::OpenMetrics {
        out.push_str("# EOF\n");
    }
    out
}

fn count(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The current metric families: APISIX's stream metrics (the connection
/// total and status counted by the `prometheus` plugin for the routes that
/// enable it; active sessions and bandwidth per listener for everything),
/// upstream health, node info, and per-route and per-node extras.
pub fn families(state: &ControlState, prefix: &str) -> Vec<Family> {
    let snap = state.snapshot.load();
    let set = state.listeners.load();
    let listeners: Vec<&Arc<ListenerInfo>> = set
        .tcp
        .iter()
        .chain(set.udp.iter().map(|(l, _)| l))
        .collect();
    let family = |name: &str, help, kind, samples| Family {
        name: format!("{prefix}{name}"),
        help,
        kind,
        samples,
    };
    let metrics = &state.carry.plugins.metrics;
    let mut out = vec![
        family(
            "stream_connection_total",
            "Total number of connections handled per stream route in APISIX",
            MetricType::Counter,
            metrics
                .connection_totals()
                .into_iter()
                .map(|(route, n)| (vec![("route", route)], count(n)))
                .collect(),
        ),
        family(
            "stream_status",
            "Stream sessions per termination status in APISIX",
            MetricType::Counter,
            metrics
                .status_totals()
                .into_iter()
                .map(|((code, listen_addr, node), n)| {
                    (
                        vec![
                            ("code", code.to_string()),
                            ("listen_addr", listen_addr),
                            ("node", node),
                        ],
                        count(n),
                    )
                })
                .collect(),
        ),
        family(
            "stream_tls_handshakes_total",
            "Server TLS handshakes by kind (full or resumed)",
            MetricType::Counter,
            {
                let (full, resumed) = state.carry.tls_policy.handshakes();
                vec![
                    (vec![("kind", "full".to_string())], count(full)),
                    (vec![("kind", "resumed".to_string())], count(resumed)),
                ]
            },
        ),
        family(
            "stream_active_connections",
            "Number of stream sessions currently being proxied per listening address",
            MetricType::Gauge,
            listeners
                .iter()
                .map(|l| {
                    (
                        vec![("listen_addr", l.label.clone())],
                        l.stats.active.load(Ordering::Relaxed).max(0),
                    )
                })
                .collect(),
        ),
    ];
    let mut bandwidth = Vec::new();
    for l in &listeners {
        let from_clients = l.stats.bytes_in.load(Ordering::Relaxed);
        let to_clients = l.stats.bytes_out.load(Ordering::Relaxed);
        for (ty, side, v) in [
            ("ingress", "downstream", from_clients),
            ("egress", "upstream", from_clients),
            ("egress", "downstream", to_clients),
            ("ingress", "upstream", to_clients),
        ] {
            bandwidth.push((
                vec![
                    ("listen_addr", l.label.clone()),
                    ("type", ty.to_string()),
                    ("side", side.to_string()),
                ],
                count(v),
            ));
        }
    }
    out.push(family(
        "stream_bandwidth",
        "Total bandwidth in bytes proxied by the stream subsystem in APISIX",
        MetricType::Counter,
        bandwidth,
    ));
    let routes = snap.routes();
    out.push(family(
        "stream_route_active_connections",
        "Live sessions per route",
        MetricType::Gauge,
        routes
            .iter()
            .map(|r| {
                (
                    vec![("route", r.id.clone())],
                    r.stats.active.load(Ordering::Relaxed).max(0),
                )
            })
            .collect(),
    ));
    let mut limits = Vec::new();
    let mut throttled = Vec::new();
    for r in routes.iter() {
        let Some(b) = r.chain.bandwidth() else {
            continue;
        };
        let (down, up) = b.limits();
        for (dir, v) in [("in", up), ("out", down)] {
            limits.push((
                vec![("route", r.id.clone()), ("direction", dir.to_string())],
                count(v),
            ));
        }
        throttled.push((vec![("route", r.id.clone())], i64::from(b.throttled())));
    }
    out.push(family(
        "stream_route_bandwidth_limit",
        "limit-bandwidth rate per route in bytes/s (in: upload, out: download; 0: unlimited)",
        MetricType::Gauge,
        limits,
    ));
    out.push(family(
        "stream_route_throttled",
        "1 when limit-bandwidth held a session of the route back within the last second",
        MetricType::Gauge,
        throttled,
    ));
    out.push(family(
        "stream_route_bytes_total",
        "Bytes per route (in: from clients, out: to clients)",
        MetricType::Counter,
        routes
            .iter()
            .flat_map(|r| {
                [("in", &r.stats.bytes_in), ("out", &r.stats.bytes_out)].map(|(dir, v)| {
                    (
                        vec![("route", r.id.clone()), ("direction", dir.to_string())],
                        count(v.load(Ordering::Relaxed)),
                    )
                })
            })
            .collect(),
    ));
    let mut node_active = Vec::new();
    let mut node_failures = Vec::new();
    for r in routes.iter() {
        let Ok(u) = r.upstream.as_ref() else { continue };
        for (b, s) in u.balancer.backends().iter().zip(&r.node_stats) {
            let labels = vec![("route", r.id.clone()), ("node", b.label.clone())];
            node_active.push((labels.clone(), s.active.load(Ordering::Relaxed).max(0)));
            node_failures.push((labels, count(s.connect_failures.load(Ordering::Relaxed))));
        }
    }
    out.push(family(
        "stream_node_active_connections",
        "Live sessions per route and node",
        MetricType::Gauge,
        node_active,
    ));
    out.push(family(
        "stream_node_connect_failures_total",
        "Failed tries to reach a node",
        MetricType::Counter,
        node_failures,
    ));
    let mut upstream = Vec::new();
    for c in checkers(&snap) {
        for n in c.nodes() {
            upstream.push((
                vec![
                    ("name", format!("{}/{}", state.prefix, c.name())),
                    ("ip", n.ip),
                    ("port", n.port.to_string()),
                ],
                i64::from(n.state.status.is_up()),
            ));
        }
    }
    out.push(family(
        "upstream_status",
        "Upstream status from health check",
        MetricType::Gauge,
        upstream,
    ));
    if let Some(etcd) = &state.etcd {
        out.push(family(
            "etcd_reachable",
            "Config server etcd reachable from APISIX, 0 is unreachable",
            MetricType::Gauge,
            vec![(vec![], i64::from(etcd.reachable()))],
        ));
        out.push(family(
            "etcd_modify_indexes",
            "Etcd modify index for APISIX keys",
            MetricType::Gauge,
            etcd.modify_indexes()
                .into_iter()
                .map(|(key, rev)| (vec![("key", key.to_string())], count(rev)))
                .collect(),
        ));
    }
    out.push(family(
        "redis_commands_total",
        "Total number of requests for a specific Redis command",
        MetricType::Counter,
        redis_routes(state)
            .iter()
            .flat_map(|(id, cmds)| {
                cmds.iter().map(|(cmd, c)| {
                    (
                        vec![("route", id.clone()), ("command", cmd.clone())],
                        count(c.count),
                    )
                })
            })
            .collect(),
    ));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    out.push(family(
        "node_info",
        "Info of APISIX node",
        MetricType::Gauge,
        vec![(
            vec![
                ("hostname", hostname),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ],
            1,
        )],
    ));
    out
}

/// The exposition of the current counters in `format`.
pub fn metrics_text(state: &ControlState, prefix: &str, format: Format) -> String {
    let mut text = encode(families(state, prefix), format);
    let latency = redis_latency(&redis_routes(state), prefix);
    if !latency.is_empty() {
        match text.strip_suffix("# EOF\n") {
            Some(body) => text = format!("{body}{latency}# EOF\n"),
            None => text.push_str(&latency),
        }
    }
    text
}

/// Per-command counters of the Redis protocol routes that enable metrics.
fn redis_routes(state: &ControlState) -> Vec<(String, Vec<(String, CommandStats)>)> {
    state
        .snapshot
        .load()
        .routes()
        .iter()
        .filter(|r| {
            r.protocol
                .as_ref()
                .is_some_and(|p| p.metrics && p.name == "redis")
        })
        .map(|r| (r.id.clone(), r.stats.command_stats()))
        .collect()
}

/// The `redis_commands_latency_seconds` histogram (APISIX's buckets, 1 ms
/// to 1 s), written the same in both formats.
fn redis_latency(routes: &[(String, Vec<(String, CommandStats)>)], prefix: &str) -> String {
    let name = format!("{prefix}redis_commands_latency_seconds");
    let mut out = String::new();
    for (route, cmds) in routes {
        for (cmd, c) in cmds {
            let mut labels = String::from("route=\"");
            escape_label(route, &mut labels);
            labels.push_str("\",command=\"");
            escape_label(cmd, &mut labels);
            labels.push('"');
            let mut cumulative = 0;
            for (b, n) in LATENCY_BUCKETS.iter().zip(c.buckets) {
                cumulative += n;
                let _ = writeln!(
                    out,
                    "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
                    fmt_le(*b)
                );
            }
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", c.count);
            let _ = writeln!(out, "{name}_sum{{{labels}}} {}", c.sum);
            let _ = writeln!(out, "{name}_count{{{labels}}} {}", c.count);
        }
    }
    if out.is_empty() {
        return out;
    }
    format!(
        "# HELP {name} Latency of requests for a specific Redis command\n# TYPE {name} histogram\n{out}"
    )
}

/// A bucket bound as Prometheus clients write it (`0.005`, `1.0`).
fn fmt_le(b: f64) -> String {
    if b.fract() == 0.0 {
        format!("{b:.1}")
    } else {
        format!("{b}")
    }
}

/// The Prometheus export server: `GET <export_uri>` only.
pub fn router(state: ControlState, export_uri: &str, prefix: String) -> Router {
    let state = Arc::new((state, prefix));
    Router::new()
        .route(
            export_uri,
            get(
                |State(s): State<Arc<(ControlState, String)>>, headers: HeaderMap| async move {
                    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                    let format = Format::from_accept(accept);
                    (
                        [(header::CONTENT_TYPE, format.content_type())],
                        metrics_text(&s.0, &s.1, format),
                    )
                },
            ),
        )
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                Json(json!({"error_msg": "not found"})),
            )
                .into_response()
        })
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Family> {
        vec![
            Family {
                name: "apisix_stream_status".into(),
                help: "Stream sessions",
                kind: MetricType::Counter,
                samples: vec![(
                    vec![("code", "200".into()), ("node", "a\"b\\c\nd".into())],
                    2,
                )],
            },
            Family {
                name: "apisix_stream_connection_total".into(),
                help: "Total",
                kind: MetricType::Counter,
                samples: vec![
                    (vec![("route", "2".into())], 1),
                    (vec![("route", "1".into())], 3),
                ],
            },
            Family {
                name: "apisix_node_info".into(),
                help: "Info",
                kind: MetricType::Gauge,
                samples: vec![(vec![], 1)],
            },
        ]
    }

    #[test]
    fn text_004_keeps_names_sorts_and_escapes() {
        assert_eq!(
            encode(sample(), Format::Text004),
            "# HELP apisix_node_info Info\n\
             # TYPE apisix_node_info gauge\n\
             apisix_node_info 1\n\
             # HELP apisix_stream_connection_total Total\n\
             # TYPE apisix_stream_connection_total counter\n\
             apisix_stream_connection_total{route=\"1\"} 3\n\
             apisix_stream_connection_total{route=\"2\"} 1\n\
             # HELP apisix_stream_status Stream sessions\n\
             # TYPE apisix_stream_status counter\n\
             apisix_stream_status{code=\"200\",node=\"a\\\"b\\\\c\\nd\"} 2\n"
        );
    }

    #[test]
    fn openmetrics_names_counter_families_without_total() {
        let text = encode(sample(), Format::OpenMetrics);
        assert!(text.contains("# TYPE apisix_stream_connection counter\n"));
        assert!(text.contains("\napisix_stream_connection_total{route=\"1\"} 3\n"));
        assert!(text.contains("# TYPE apisix_stream_status counter\n"));
        assert!(text.contains("\napisix_stream_status_total{code=\"200\""));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn accept_picks_the_format() {
        assert_eq!(Format::from_accept(None), Format::Text004);
        assert_eq!(Format::from_accept(Some("text/plain")), Format::Text004);
        assert_eq!(
            Format::from_accept(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
    }
}
