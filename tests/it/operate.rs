//! Operating it like APISIX: the Prometheus exposition read by a real
//! text-format parser, the access log format and escaping, the error log
//! file and level, and log reopening on SIGUSR1.

use openmetrics_parser::{openmetrics, prometheus, PrometheusType, PrometheusValue};
use serde_json::json;
use tokio::net::TcpStream;

use std::process::{Command, Stdio};

use reqwest::Method;

use crate::backend::{roundtrip, Backend, Mode};
use crate::harness::{
    bin, call, eventually, free_port, wait_listening_logged, within, ChildConfig, ChildGuard,
    TestServer, KEY,
};

/// GET the metrics with an optional `Accept`: content type and body.
async fn scrape(s: &TestServer, accept: Option<&str>) -> (String, String) {
    let addr = s
        .server
        .as_ref()
        .and_then(|x| x.metrics_addr())
        .expect("metrics");
    let mut req = s
        .client
        .get(format!("http://{addr}/apisix/prometheus/metrics"));
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = within(5, req.send()).await.expect("get");
    let ctype = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ctype, within(5, res.text()).await.expect("text"))
}

/// The stream panels' queries an APISIX Grafana dashboard runs against
/// stream metrics (README "Watching it run" lists them): metric name and
/// the labels each query selects or groups by.
const DASHBOARD_QUERIES: &[(&str, &[&str])] = &[
    // sum(rate(apisix_stream_connection_total[$__rate_interval])) by (route)
    ("apisix_stream_connection_total", &["route"]),
    // sum(apisix_stream_active_connections) by (listen_addr)
    ("apisix_stream_active_connections", &["listen_addr"]),
    // sum(rate(apisix_stream_status{code=~"5.."}[$__rate_interval])) by (code, node)
    ("apisix_stream_status", &["code", "listen_addr", "node"]),
    // sum(rate(apisix_stream_bandwidth{side="downstream"}[$__rate_interval])) by (type)
    ("apisix_stream_bandwidth", &["listen_addr", "type", "side"]),
    // apisix_upstream_status == 0
    ("apisix_upstream_status", &["name", "ip", "port"]),
    // count(apisix_node_info) by (version)
    ("apisix_node_info", &["hostname", "version"]),
];

#[tokio::test]
async fn metrics_are_prometheus_text_0_0_4_as_apisix_writes_them() {
    let s = TestServer::with_tcp_specs(
        vec![apisix_stream::config::ListenSpec::new(
            "127.0.0.1:0".parse().expect("addr"),
        )],
        "stream_plugins:\n  - prometheus\n",
    )
    .await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"server_port": s.tcp[0].port(), "plugins": {"prometheus": {}},
                "upstream": {"nodes": {echo.addr.to_string(): 1},
                             "checks": {"active": {"type": "tcp", "healthy": {"interval": 1}}}}}),
    )
    .await;
    let mut c = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut c, b"hello").await, b"hello");
    drop(c);
    let mut text = String::new();
    let mut ctype = String::new();
    let counted = eventually(5, async || {
        (ctype, text) = scrape(&s, None).await;
        text.contains("apisix_stream_connection_total{route=\"1\"} 1")
            && text.contains("apisix_upstream_status{")
    })
    .await;
    assert!(counted, "{text}");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert!(!text.contains("# EOF"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "# TYPE apisix_stream_connection_total counter"),
        "{text}"
    );

    let parsed = prometheus::parse_prometheus(&text).expect("a valid 0.0.4 exposition");
    let kind = |name: &str| {
        parsed
            .families
            .get(name)
            .map(|f| f.family_type.clone())
            .unwrap_or_else(|| panic!("no family {name} in\n{text}"))
    };
    for counter in [
        "apisix_stream_connection_total",
        "apisix_stream_status",
        "apisix_stream_bandwidth",
        "apisix_stream_route_bytes_total",
        "apisix_stream_node_connect_failures_total",
    ] {
        assert_eq!(kind(counter), PrometheusType::Counter, "{counter}");
    }
    for gauge in [
        "apisix_stream_active_connections",
        "apisix_upstream_status",
        "apisix_node_info",
        "apisix_stream_route_active_connections",
    ] {
        assert_eq!(kind(gauge), PrometheusType::Gauge, "{gauge}");
    }
    let conn = &parsed.families["apisix_stream_connection_total"];
    assert_eq!(
        conn.help,
        "Total number of connections handled per stream route in APISIX"
    );
    let one = conn
        .iter_samples()
        .find(|s| {
            s.get_labelset()
                .map(|l| l.get_label_value("route") == Some("1"))
                .unwrap_or(false)
        })
        .expect("route 1 sample");
    match &one.value {
        PrometheusValue::Counter(c) => assert_eq!(c.value.as_f64(), 1.0),
        other => panic!("not a counter value: {other:?}"),
    }

    // Every query of the dashboard finds its metric with the labels it uses.
    for (name, labels) in DASHBOARD_QUERIES {
        let f = parsed
            .families
            .get(*name)
            .unwrap_or_else(|| panic!("dashboard metric {name} missing:\n{text}"));
        assert!(f.iter_samples().next().is_some(), "{name} has no series");
        let have: Vec<&str> = f.get_label_names().iter().map(String::as_str).collect();
        for l in *labels {
            assert!(have.contains(l), "{name} lacks label {l}: {have:?}");
        }
    }

    // A scraper that asks for OpenMetrics gets it, and a strict parser takes it.
    let (om_type, om) = scrape(
        &s,
        Some("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"),
    )
    .await;
    assert!(
        om_type.starts_with("application/openmetrics-text"),
        "{om_type}"
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
    assert!(
        om.contains("# TYPE apisix_stream_connection counter\n"),
        "{om}"
    );
    let parsed = openmetrics::parse_openmetrics(&om).expect("valid OpenMetrics");
    assert!(parsed.families.contains_key("apisix_stream_connection"));
    // ... which a 0.0.4 parser refuses, so the default must not be it.
    assert!(prometheus::parse_prometheus(&om).is_err());
}

fn one_listener() -> Vec<apisix_stream::config::ListenSpec> {
    vec![apisix_stream::config::ListenSpec::new(
        "127.0.0.1:0".parse().expect("addr"),
    )]
}

/// Wait until `path` holds `n` lines; returns them.
async fn lines_of(path: &std::path::Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let done = eventually(5, async || {
        lines = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect();
        lines.len() >= n
    })
    .await;
    assert!(done, "{} holds {lines:?}, want {n} lines", path.display());
    lines
}

#[tokio::test]
async fn custom_access_log_format_gives_the_exact_line() {
    let logs = tempfile::tempdir().expect("tempdir");
    let path = logs.path().join("access.log");
    let extra = format!(
        "nginx_config:\n  stream:\n    enable_access_log: true\n    access_log: {}\n    \
         access_log_format: |\n      $remote_addr:$remote_port -> $server_addr:$server_port \
         $protocol $status sent=$bytes_sent received=$bytes_received route=$route_id \
         upstream=$upstream_addr up_sent=$upstream_bytes_sent up_received=$upstream_bytes_received \
         sni=$ssl_server_name end=\"$session_end\"\n",
        path.display()
    );
    let s = TestServer::with_tcp_specs(one_listener(), &extra).await;
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "7",
        &json!({"server_port": s.tcp[0].port(),
                "upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let mut c = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    let me = c.local_addr().expect("local");
    assert_eq!(roundtrip(&mut c, b"0123456789").await, b"0123456789");
    drop(c);
    let lines = lines_of(&path, 1).await;
    assert_eq!(
        lines,
        [format!(
            "127.0.0.1:{} -> 127.0.0.1:{} TCP 200 sent=10 received=10 route=7 upstream={} \
             up_sent=10 up_received=10 sni=- end=\"closed\"",
            me.port(),
            s.tcp[0].port(),
            echo.addr
        )]
    );
}

#[tokio::test]
async fn json_escaped_access_log_lines_parse_as_json() {
    let logs = tempfile::tempdir().expect("tempdir");
    let path = logs.path().join("access.json");
    let extra = format!(
        "nginx_config:\n  stream:\n    enable_access_log: true\n    access_log: {}\n    \
         access_log_format_escape: json\n    access_log_format: >-\n      \
         {{\"client\":\"$remote_addr\",\"status\":$status,\"route\":\"$route_id\",\
         \"upstream\":\"$upstream_addr\",\"end\":\"$session_end\",\"time\":\"$time_iso8601\"}}\n",
        path.display()
    );
    let s = TestServer::with_tcp_specs(one_listener(), &extra).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let echo = Backend::start("echo", Mode::Echo).await;
    s.put_route(
        "1",
        &json!({"server_port": s.tcp[0].port(),
                "upstream": {"nodes": {echo.addr.to_string(): 1}}}),
    )
    .await;
    let mut c = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    assert_eq!(roundtrip(&mut c, b"hi").await, b"hi");
    drop(c);
    lines_of(&path, 1).await;
    // A failed session: its end is an error message with quotes and colons.
    s.put_route(
        "1",
        &json!({"server_port": s.tcp[0].port(),
                "upstream": {"nodes": {closed.to_string(): 1}}}),
    )
    .await;
    let c = within(5, TcpStream::connect(s.tcp[0]))
        .await
        .expect("connect");
    let lines = lines_of(&path, 2).await;
    drop(c);
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(parsed[0]["status"], 200);
    assert_eq!(parsed[0]["client"], "127.0.0.1");
    assert_eq!(parsed[0]["end"], "closed");
    assert_eq!(parsed[1]["status"], 502);
    assert_eq!(parsed[1]["upstream"], closed.to_string());
    assert!(
        parsed[1]["end"].as_str().is_some_and(|e| e.len() > 6),
        "{}",
        lines[1]
    );
}

/// A child `serve` with one TCP listener, the given `nginx_config` lines,
/// no `RUST_LOG` (the config decides the level) and its stderr in
/// `dir/stderr.log`. Returns the guard, the admin and proxy addresses.
fn serve_child(
    dir: &std::path::Path,
    nginx: &str,
) -> (ChildGuard, std::net::SocketAddr, std::net::SocketAddr) {
    let (admin, port) = (free_port(), free_port());
    let mut yaml = ChildConfig::new(admin).tcp(port).yaml(&dir.join("data"));
    yaml.push_str(&format!("nginx_config:\n{nginx}"));
    let config = dir.join("config.yaml");
    std::fs::write(&config, yaml).expect("write config");
    let stderr = dir.join("stderr.log");
    let child = Command::new(bin())
        .arg("serve")
        .arg("-c")
        .arg(&config)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("stderr file"))
        .spawn()
        .expect("spawn serve");
    let mut guard = ChildGuard { child };
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    wait_listening_logged(admin, &mut guard, &stderr);
    (
        guard,
        admin,
        format!("127.0.0.1:{port}").parse().expect("addr"),
    )
}

async fn put_child_route(admin: std::net::SocketAddr, node: std::net::SocketAddr) {
    let body = json!({"upstream": {"nodes": {node.to_string(): 1}}}).to_string();
    let (st, v) = call(
        &reqwest::Client::new(),
        admin,
        Some(KEY),
        Method::PUT,
        "/apisix/admin/stream_routes/1",
        Some(&body),
    )
    .await;
    assert!(st.is_success(), "{st} {v}");
}

async fn echo_session(proxy: std::net::SocketAddr) {
    let mut c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    assert_eq!(roundtrip(&mut c, b"ping").await, b"ping");
}

#[tokio::test]
async fn error_log_file_at_warn_holds_warnings_and_no_info() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("logs/error.log");
    let nginx = format!("  error_log: {}\n  error_log_level: warn\n", log.display());
    let (_child, admin, proxy) = serve_child(dir.path(), &nginx);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    put_child_route(admin, closed).await;
    let c = within(5, TcpStream::connect(proxy)).await.expect("connect");
    let mut text = String::new();
    let warned = eventually(5, async || {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        text.contains("session failed")
    })
    .await;
    drop(c);
    assert!(warned, "no warning in the error log:\n{text}");
    assert!(
        text.lines()
            .all(|l| l.contains(" WARN ") || l.contains(" ERROR ")),
        "{text}"
    );
    assert!(!text.contains(" INFO "), "{text}");
    assert!(!text.contains("\u{1b}["), "no colours in a file: {text:?}");
    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert!(!stderr.contains("session failed"), "{stderr}");
}

#[tokio::test]
async fn sigusr1_reopens_rotated_logs_and_loses_no_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let access = dir.path().join("logs/access.log");
    let error = dir.path().join("logs/error.log");
    let nginx = format!(
        "  error_log: {}\n  error_log_level: info\n  stream:\n    enable_access_log: true\n    \
         access_log: {}\n    access_log_format: '$remote_port $status'\n",
        error.display(),
        access.display()
    );
    let (child, admin, proxy) = serve_child(dir.path(), &nginx);
    let echo = Backend::start("echo", Mode::Echo).await;
    put_child_route(admin, echo.addr).await;
    for _ in 0..3 {
        echo_session(proxy).await;
    }
    lines_of(&access, 3).await;
    let (access_1, error_1) = (
        dir.path().join("logs/access.log.1"),
        dir.path().join("logs/error.log.1"),
    );
    std::fs::rename(&access, &access_1).expect("mv access.log");
    std::fs::rename(&error, &error_1).expect("mv error.log");
    // Sessions between the move and the signal go to the moved file.
    echo_session(proxy).await;
    lines_of(&access_1, 4).await;
    let status = Command::new("kill")
        .args(["-USR1", &child.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let reopened = eventually(5, async || {
        std::fs::read_to_string(&error).is_ok_and(|t| t.contains("log files reopened"))
            && access.exists()
    })
    .await;
    assert!(reopened, "SIGUSR1 did not reopen the logs");
    for _ in 0..2 {
        echo_session(proxy).await;
    }
    let new = lines_of(&access, 2).await;
    let old = lines_of(&access_1, 4).await;
    assert_eq!((old.len(), new.len()), (4, 2), "old {old:?}, new {new:?}");
    assert!(old.iter().chain(&new).all(|l| l.ends_with(" 200")));
    let old_error = std::fs::read_to_string(&error_1).unwrap_or_default();
    assert!(old_error.contains("apisix-stream started"), "{old_error}");
    assert!(!old_error.contains("log files reopened"), "{old_error}");
}
