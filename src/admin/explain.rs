//! `GET /apisix/admin/stream_routes_test`: which stream route a connection
//! would take, and why every other route of that port loses.
//!
//! Read-only and answered from the data plane's current snapshot with the
//! real router ([`Snapshot::explain`]), so the answer is exactly what a new
//! connection would see right now. It sits behind the same `allow_admin` and
//! key checks as the rest of the Admin API; viewer keys may call it.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use ipnet::IpNet;
use serde_json::{json, Value};

use super::{query_pairs, AdminError, AdminState};
use crate::snapshot::{canonical_ip, ConnInfo, RouteRt, Snapshot};
use crate::tls::normalize_sni;

/// Default `server_addr` and `remote_addr` when the query leaves them out.
const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Handler of `/apisix/admin/stream_routes_test` (GET only).
pub async fn stream_routes_test(
    State(state): State<Arc<AdminState>>,
    method: Method,
    uri: Uri,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return AdminError::MethodNotAllowed(format!(
            "method {method} is not allowed on stream_routes_test, use GET"
        ))
        .into_response();
    }
    let conn = match conn_from_query(uri.query().unwrap_or_default()) {
        Ok(c) => c,
        Err(msg) => return AdminError::BadRequest(msg).into_response(),
    };
    let Some(shared) = &state.snapshot else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"error_msg": "no data plane runs in this process, nothing to test against"}),
            ),
        )
            .into_response();
    };
    let snapshot = shared.load_full();
    Json(answer(&snapshot, &conn)).into_response()
}

/// Parse `server_port` (required), `server_addr`, `remote_addr`,
/// `remote_port` and `sni` from a query string.
fn conn_from_query(query: &str) -> Result<ConnInfo, String> {
    let mut conn = ConnInfo {
        remote_addr: LOOPBACK,
        remote_port: 0,
        server_addr: LOOPBACK,
        server_port: 0,
        mqtt_client_id: None,
        sni: None,
    };
    let mut port_seen = false;
    for (k, v) in query_pairs(query) {
        match k.as_str() {
            "server_port" => {
                conn.server_port = parse_port(&k, &v)?;
                port_seen = true;
            }
            "remote_port" => conn.remote_port = v.parse().map_err(|_| bad(&k, &v, "a port"))?,
            "server_addr" => conn.server_addr = parse_ip(&k, &v)?,
            "remote_addr" => conn.remote_addr = parse_ip(&k, &v)?,
            "sni" if v.is_empty() => conn.sni = None,
            "sni" => {
                let name = normalize_sni(&v);
                if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
                    return Err(bad(&k, &v, "a host name"));
                }
                conn.sni = Some(name);
            }
            // The key may travel in the query; anything else is ignored as
            // the other Admin API endpoints do.
            _ => {}
        }
    }
    if !port_seen {
        return Err("missing argument server_port".into());
    }
    Ok(conn)
}

fn bad(name: &str, value: &str, what: &str) -> String {
    format!("invalid argument {name}: {value:?} is not {what}")
}

fn parse_port(name: &str, v: &str) -> Result<u16, String> {
    v.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| bad(name, v, "a port (1-65535)"))
}

fn parse_ip(name: &str, v: &str) -> Result<IpAddr, String> {
    v.parse::<IpAddr>()
        .map(canonical_ip)
        .map_err(|_| bad(name, v, "an IP address"))
}

fn net_text(n: &Option<IpNet>) -> Value {
    n.map_or(Value::Null, |n| Value::String(n.to_string()))
}

/// What `route test` shows of a route: its filters, its service and the
/// upstream in force (the service's when the route has none of its own).
fn summary(r: &RouteRt) -> Value {
    let mut v = json!({
        "server_addr": net_text(&r.server_addr),
        "server_port": r.server_port,
        "remote_addr": net_text(&r.remote_addr),
        "sni": r.sni,
    });
    if let Some(s) = r.chain.service_id() {
        v["service_id"] = json!(s);
    }
    match &r.upstream {
        Ok(up) => {
            if let Some(id) = &up.upstream_id {
                v["upstream_id"] = json!(id);
            } else if let Some(nodes) = up.source.get("nodes") {
                v["nodes"] = nodes.clone();
            }
        }
        Err(e) => v["upstream_error"] = json!(e),
    }
    v
}

fn answer(snapshot: &Snapshot, conn: &ConnInfo) -> Value {
    let explained = snapshot.explain(conn);
    let matched = explained
        .first()
        .filter(|(_, why)| why.is_none())
        .map(|(r, _)| r.id.clone());
    let routes: Vec<Value> = explained
        .iter()
        .map(|(r, why)| {
            json!({
                "id": r.id,
                "matched": why.is_none(),
                "reason": why,
                "route": summary(r),
            })
        })
        .collect();
    json!({
        "matched": matched,
        "connection": {
            "server_addr": conn.server_addr.to_string(),
            "server_port": conn.server_port,
            "remote_addr": conn.remote_addr.to_string(),
            "sni": conn.sni,
        },
        "revision": snapshot.revision,
        "routes": routes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let c =
            conn_from_query("server_port=9100&remote_addr=10.0.0.1&sni=A.Test.").expect("parses");
        assert_eq!(c.server_port, 9100);
        assert_eq!(c.remote_addr.to_string(), "10.0.0.1");
        assert_eq!(c.server_addr, LOOPBACK);
        assert_eq!(c.sni.as_deref(), Some("a.test"));
        assert_eq!(
            conn_from_query("remote_addr=1.2.3.4").unwrap_err(),
            "missing argument server_port"
        );
        assert!(conn_from_query("server_port=0")
            .unwrap_err()
            .contains("server_port"));
        assert!(conn_from_query("server_port=1&server_addr=nope")
            .unwrap_err()
            .contains("server_addr"));
    }

    #[test]
    fn empty_snapshot_matches_nothing() {
        let conn = conn_from_query("server_port=9100").expect("parses");
        let v = answer(&Snapshot::empty(), &conn);
        assert_eq!(v["matched"], Value::Null);
        assert_eq!(v["routes"], json!([]));
    }
}
