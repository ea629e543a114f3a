//! Printers: aligned tables that fit 80 columns, pretty JSON, and `route
//! test` reports. Everything goes through [`emit`], which treats a closed
//! stdout (`| head`) as success.

use std::io::Write;

use serde_json::Value;

/// Width the tables fit in.
pub const TABLE_WIDTH: usize = 80;
/// Spaces between table columns (one when two would not fit).
const GAP: usize = 2;

/// Write `text` to stdout; a broken pipe is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let res = out.write_all(text.as_bytes()).and_then(|()| out.flush());
    match res {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot write to stdout: {e}")),
    }
}

/// Pretty JSON with a final newline.
pub fn json_text(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
    s.push('\n');
    s
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// `s` cut to `w` characters, ending in `…` when cut.
pub fn truncate(s: &str, w: usize) -> String {
    if width(s) <= w {
        return s.to_string();
    }
    if w == 0 {
        return String::new();
    }
    let mut out: String = s.chars().take(w - 1).collect();
    out.push('…');
    out
}

/// Render rows under headers, shrinking the widest columns (never below the
/// header, never the first column, which holds ids) until the table fits
/// [`TABLE_WIDTH`]; cut cells end in `…`.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let n = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(n) {
            widths[i] = widths[i].max(width(cell));
        }
    }
    let natural: usize = widths.iter().sum();
    let gap = if natural + GAP * n.saturating_sub(1) <= TABLE_WIDTH {
        GAP
    } else {
        1
    };
    let budget = TABLE_WIDTH.saturating_sub(gap * n.saturating_sub(1));
    let mut floor: Vec<usize> = headers.iter().map(|h| width(h).max(3)).collect();
    if let (Some(f), Some(w)) = (floor.first_mut(), widths.first()) {
        *f = (*w).min(32);
    }
    while widths.iter().sum::<usize>() > budget {
        let widest = (0..n)
            .filter(|&i| widths[i] > floor[i])
            .max_by_key(|&i| (widths[i], std::cmp::Reverse(i)));
        match widest {
            Some(i) => widths[i] -= 1,
            None => break,
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut l = String::new();
        for (i, cell) in cells.enumerate().take(n) {
            let c = truncate(cell, widths[i]);
            l.push_str(&c);
            if i + 1 < n {
                l.push_str(&" ".repeat(widths[i] - width(&c) + gap));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(&mut headers.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// A JSON scalar as a cell; absent or null is `-`.
fn cell(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) if s.is_empty() => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// `host:port` list of an upstream's `nodes` (array or map form).
pub fn nodes_text(nodes: Option<&Value>) -> String {
    let addr = |host: &str, port: &Value| {
        if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        }
    };
    let list: Vec<String> = match nodes {
        Some(Value::Array(a)) => a
            .iter()
            .map(|n| {
                let host = n.get("host").and_then(Value::as_str).unwrap_or("?");
                match n.get("port") {
                    Some(p) => addr(host, p),
                    None => host.to_string(),
                }
            })
            .collect(),
        Some(Value::Object(m)) => m.keys().cloned().collect(),
        _ => Vec::new(),
    };
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

/// The UPSTREAM cell of a route: its `upstream_id`, its inline nodes, or
/// the service it takes them from.
fn route_upstream(r: &Value) -> String {
    if let Some(id) = r.get("upstream_id") {
        return format!("upstream {}", cell(Some(id)));
    }
    if r.get("upstream").is_none() {
        if let Some(sid) = r.get("service_id") {
            return format!("service {}", cell(Some(sid)));
        }
    }
    nodes_text(r.get("upstream").and_then(|u| u.get("nodes")))
}

/// The `service list` table.
pub fn services_table(services: &[Value]) -> String {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            let plugins = s
                .get("plugins")
                .and_then(Value::as_object)
                .map(|p| p.keys().cloned().collect::<Vec<_>>().join(","))
                .filter(|p| !p.is_empty())
                .unwrap_or_else(|| "-".into());
            vec![
                cell(s.get("id")),
                route_upstream(s),
                plugins,
                cell(s.get("name")),
            ]
        })
        .collect();
    table(&["ID", "UPSTREAM", "PLUGINS", "NAME"], &rows)
}

/// The `route list` table.
pub fn routes_table(routes: &[Value]) -> String {
    let rows: Vec<Vec<String>> = routes
        .iter()
        .map(|r| {
            vec![
                cell(r.get("id")),
                cell(r.get("server_addr")),
                cell(r.get("server_port")),
                cell(r.get("remote_addr")),
                cell(r.get("sni")),
                route_upstream(r),
            ]
        })
        .collect();
    table(
        &[
            "ID",
            "SERVER_ADDR",
            "SERVER_PORT",
            "REMOTE_ADDR",
            "SNI",
            "UPSTREAM",
        ],
        &rows,
    )
}

/// The `upstream list` table.
pub fn upstreams_table(ups: &[Value]) -> String {
    let rows: Vec<Vec<String>> = ups
        .iter()
        .map(|u| {
            vec![
                cell(u.get("id")),
                u.get("type")
                    .map_or_else(|| "roundrobin".into(), |t| cell(Some(t))),
                nodes_text(u.get("nodes")),
                cell(u.get("name")),
            ]
        })
        .collect();
    table(&["ID", "TYPE", "NODES", "NAME"], &rows)
}

/// The `ssl list` table.
pub fn ssls_table(ssls: &[Value]) -> String {
    let rows: Vec<Vec<String>> = ssls
        .iter()
        .map(|s| {
            let snis = match (s.get("snis"), s.get("sni")) {
                (Some(Value::Array(a)), _) => a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","),
                (_, Some(one)) => cell(Some(one)),
                _ => "-".into(),
            };
            let mut kind = s
                .get("type")
                .map_or_else(|| "server".into(), |t| cell(Some(t)));
            if s.get("client").and_then(|c| c.get("ca")).is_some() {
                kind.push_str("+mtls");
            }
            vec![cell(s.get("id")), snis, kind]
        })
        .collect();
    table(&["ID", "SNIS", "TYPE"], &rows)
}

/// What `route add` tells people: `server_port 9100 -> 127.0.0.1:3306`.
pub fn route_summary(route: &Value) -> String {
    let mut parts = Vec::new();
    for f in ["server_addr", "server_port", "remote_addr", "sni"] {
        if let Some(v) = route.get(f).filter(|v| !v.is_null()) {
            parts.push(format!("{f} {}", cell(Some(v))));
        }
    }
    let from = if parts.is_empty() {
        "any connection".to_string()
    } else {
        parts.join(" ")
    };
    format!("{from} -> {}", route_upstream(route))
}

/// What `upstream add` tells people: `roundrobin 10.0.0.1:3306,10.0.0.2:3306`.
pub fn upstream_summary(up: &Value) -> String {
    let ty = up
        .get("type")
        .map_or_else(|| "roundrobin".into(), |t| cell(Some(t)));
    format!("{ty} {}", nodes_text(up.get("nodes")))
}

/// What `service add` tells people: `upstream mysql, plugins ip-restriction`.
pub fn service_summary(svc: &Value) -> String {
    let plugins = svc
        .get("plugins")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect::<Vec<_>>().join(","))
        .filter(|p| !p.is_empty());
    match plugins {
        Some(p) => format!("{}, plugins {p}", route_upstream(svc)),
        None => route_upstream(svc),
    }
}

/// One route's filters, for `route test` lines.
fn filters(route: &Value) -> String {
    let mut parts = Vec::new();
    for f in ["server_addr", "server_port", "remote_addr", "sni"] {
        if let Some(v) = route.get(f).filter(|v| !v.is_null()) {
            parts.push(format!("{f}={}", cell(Some(v))));
        }
    }
    if parts.is_empty() {
        "no filters".into()
    } else {
        parts.join(" ")
    }
}

/// The `route test` report; `false` when no route matches.
pub fn route_test_text(answer: &Value) -> (String, bool) {
    let mut out = String::new();
    let conn = answer.get("connection");
    let describe = |k: &str| cell(conn.and_then(|c| c.get(k)));
    let sni = conn
        .and_then(|c| c.get("sni"))
        .filter(|v| !v.is_null())
        .map(|s| format!(" sni {}", cell(Some(s))))
        .unwrap_or_default();
    out.push_str(&format!(
        "connection: {}:{} from {}{}\n",
        describe("server_addr"),
        describe("server_port"),
        describe("remote_addr"),
        sni
    ));
    let routes = answer
        .get("routes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let matched = answer.get("matched").filter(|m| !m.is_null());
    match matched {
        Some(id) => {
            let route = routes
                .iter()
                .find(|r| r.get("matched") == Some(&Value::Bool(true)));
            let summary = route.and_then(|r| r.get("route"));
            let upstream = summary.map(|s| {
                if let Some(e) = s.get("upstream_error") {
                    format!("no usable upstream: {}", cell(Some(e)))
                } else if let Some(u) = s.get("upstream_id") {
                    format!("upstream {}", cell(Some(u)))
                } else {
                    format!("nodes {}", nodes_text(s.get("nodes")))
                }
            });
            out.push_str(&format!(
                "matched: route {} ({}) -> {}\n",
                cell(Some(id)),
                summary.map_or_else(|| "no filters".into(), filters),
                upstream.unwrap_or_else(|| "-".into())
            ));
        }
        None => out.push_str("matched: none\n"),
    }
    let losers: Vec<&Value> = routes
        .iter()
        .filter(|r| r.get("matched") != Some(&Value::Bool(true)))
        .collect();
    if !losers.is_empty() {
        out.push_str("other routes:\n");
        for r in losers {
            out.push_str(&format!(
                "  route {}: {}\n",
                cell(r.get("id")),
                cell(r.get("reason"))
            ));
        }
    }
    (out, matched.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_fit_and_truncate() {
        let long = "x".repeat(200);
        let t = table(
            &["ID", "NAME", "NODES"],
            &[vec!["1".into(), long.clone(), long]],
        );
        for line in t.lines() {
            assert!(line.chars().count() <= TABLE_WIDTH, "{line}");
        }
        assert!(t.contains('…'));
        assert_eq!(truncate("abcdef", 4), "abc…");
        assert_eq!(truncate("abc", 4), "abc");
    }

    #[test]
    fn add_summaries() {
        let r = json!({"server_port": 9100, "upstream": {"nodes": {"127.0.0.1:3306": 1}}});
        assert_eq!(route_summary(&r), "server_port 9100 -> 127.0.0.1:3306");
        let r = json!({"remote_addr": "10.0.0.0/8", "sni": "db.example.com", "upstream_id": "2"});
        assert_eq!(
            route_summary(&r),
            "remote_addr 10.0.0.0/8 sni db.example.com -> upstream 2"
        );
        assert_eq!(
            route_summary(&json!({"upstream_id": 1})),
            "any connection -> upstream 1"
        );
        let u =
            json!({"type": "chash", "nodes": [{"host": "a", "port": 1}, {"host": "b", "port": 2}]});
        assert_eq!(upstream_summary(&u), "chash a:1,b:2");
    }

    #[test]
    fn route_rows() {
        let t = routes_table(&[
            json!({"id": "1", "server_port": 9100, "upstream": {"nodes": [{"host": "::1", "port": 80, "weight": 1}]}}),
            json!({"id": "2", "upstream_id": "7"}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  SERVER_ADDR"));
        assert!(lines[1].contains("9100") && lines[1].contains("[::1]:80"));
        assert!(lines[2].ends_with("upstream 7"));
    }

    #[test]
    fn test_report() {
        let (text, ok) = route_test_text(&json!({
            "matched": "2",
            "connection": {"server_addr": "127.0.0.1", "server_port": 9100, "remote_addr": "10.0.0.1", "sni": null},
            "routes": [
                {"id": "2", "matched": true, "reason": null, "route": {"server_port": 9100, "remote_addr": "10.0.0.0/8", "upstream_id": "1"}},
                {"id": "1", "matched": false, "reason": "matches, but route 2 takes precedence", "route": {}}
            ]
        }));
        assert!(ok);
        assert!(
            text.contains(
                "matched: route 2 (server_port=9100 remote_addr=10.0.0.0/8) -> upstream 1"
            ),
            "{text}"
        );
        assert!(text.contains("  route 1: matches, but route 2 takes precedence"));
        let (_, ok) = route_test_text(&json!({"matched": null, "routes": []}));
        assert!(!ok);
    }
}
